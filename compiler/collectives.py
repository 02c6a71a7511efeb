"""The alpha-beta cost of collectives, from the machine file alone (no simulation).

    from zhenwu.compiler.collectives import collective_seconds, collective_cost
    seconds, algorithm = collective_seconds("allreduce", 1 << 30, 10_000, machine)
    cost = collective_cost("allgather", 64 << 20, 8, machine)   # .seconds .algorithm
                                                                 # .phases .algbw .busbw

Kinds: `allreduce`, `allgather`, `reducescatter`, `alltoall`. `nbytes` is the buffer as
nccl-tests counts it: the vector every chip reduces (all-reduce), the whole gathered output
(all-gather), the whole input that is scattered (reduce-scatter), and each chip's whole send
buffer (all-to-all).

Algorithms, exactly as compiler/collective_codegen.py lowers them to DMA.PUT and RSIG, so
that simulation and this model agree:

- `direct`: every chip sends its p-1 pieces of `nbytes / p` to all peers at once (one core per
  peer: "lanes"); all-reduce is a direct reduce-scatter (puts with `.add`) then a direct
  all-gather. Time: a readiness signal (alpha), then per phase the busiest channel's bytes
  over its bandwidth (switch port, link bundle, NIC, or a chip's HBM) plus the largest alpha.
- `oneshot` (all-reduce only): every chip copies its buffer to a scratch buffer in its own
  HBM (HBM read and write), says it is ready, and adds the whole scratch into every peer's
  buffer at once: one alpha fewer than `direct` for p-1 times the bytes, so it wins for small
  (latency-bound) messages.
- `ring`: p-1 steps to the next chip (2(p-1) for all-reduce), each waiting for the previous
  step's piece: per step alpha + piece / bandwidth; plus the readiness alpha. Pipelined:
  a piece goes in chunks, and chunk j of a step waits only for chunk j of the previous
  step, so the alphas hide behind the transfers (`ring_pipeline` picks the count).
- `rhd` (recursive halving-doubling; a power-of-two group; not all-to-all): a readiness
  signal to the log2(p) partners, then log2(p) halving steps (reduce-scatter: step k adds
  half of the current block into the partner at distance p / 2^k) and log2(p) doubling steps
  (all-gather), each waiting for the previous: per step alpha + its bytes / bandwidth.
- between nodes (more chips than `[system] chips_per_node`): `hierarchical`: a direct
  reduce-scatter inside each node, an all-reduce of each chip's 1/c share across the nodes
  over the NICs (`ring`, or recursive halving-doubling `rhd`, lowered for a power-of-two
  number of nodes; the model also folds other counts), then a direct all-gather inside
  each node. With the ring, large messages are pipelined: cut into chunks, the node's
  reduce-scatter of one chunk runs while the NICs carry the one before and the node
  all-gathers the one before that (`_pipelined`; the count from the model). All-to-all
  across nodes is `direct` over all the chips (NIC routes between nodes; lowered up to
  `cores` + 1 chips, one core per peer).

Each phase's time is alpha + beta terms: alpha from `link.alpha_seconds` per hop or
`nic.alpha_seconds`, beta from the channels' bandwidths (isa/topology.py). The choice is the
cheapest algorithm for the size, among those that apply to the kind and the group: on a
switch, oneshot for small all-reduces and direct otherwise; ring for large messages on a
ring topology.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from zhenwu.isa.errors import UsageError
from zhenwu.isa.machine import Machine
from zhenwu.isa.program import NUM_EVENTS
from zhenwu.isa.topology import Topology

KINDS = ("allreduce", "allgather", "reducescatter", "alltoall")
# algorithms the compiler can lower (and the simulator run); "hierarchical" is the composite
# across nodes
LOWERED = ("direct", "oneshot", "ring", "rhd")
INTER_NODE = ("ring", "rhd")
EVENTS_PER_PHASE = 4  # a lowered phase's events: ready, arrivals (two kinds), rsdone
LANES = ("direct", "oneshot")  # one core per peer: at most `cores` + 1 chips when lowered
FLOW_LIMIT = 64  # chips: above, all-to-all across nodes is costed per channel class


@dataclass(frozen=True)
class Phase:
    """One step of a collective's schedule: what runs, among how many chips, and its time."""

    name: str
    algorithm: str
    chips: int
    nbytes: int
    seconds: float
    alpha_seconds: float
    chunks: int = 1  # a ring's pieces are sent in this many chunks (pipelined steps)


@dataclass(frozen=True)
class CollectiveCost:
    """The alpha-beta estimate of one collective."""

    kind: str
    nbytes: int
    chips: int
    algorithm: str
    phases: tuple[Phase, ...]
    pipeline: int = 1  # hierarchical all-reduce: chunks in flight through node and NIC
    sync_seconds: float = 0.0  # the collective kernel's launch and its phases' chip barriers

    @property
    def seconds(self) -> float:
        return sum(phase.seconds for phase in self.phases) + self.sync_seconds

    @property
    def chunks(self) -> int:
        """The chunks a ring phase sends each piece in (1: whole pieces)."""
        return max((phase.chunks for phase in self.phases), default=1)

    @property
    def algbw(self) -> float:
        """Algorithm bandwidth: bytes over time (nccl-tests)."""
        return self.nbytes / self.seconds if self.seconds else 0.0

    @property
    def busbw(self) -> float:
        """Bus bandwidth: algbw times the kind's factor (nccl-tests)."""
        return self.algbw * bus_factor(self.kind, self.chips)


def bus_factor(kind: str, chips: int) -> float:
    """nccl-tests' bus-bandwidth factor: 2(n-1)/n for all-reduce, (n-1)/n otherwise."""
    if chips <= 1:
        return 0.0
    share = (chips - 1) / chips
    return 2 * share if kind == "allreduce" else share


def collective_seconds(kind: str, nbytes: int, chips: int, machine: Machine) -> tuple[float,
                                                                                       str]:
    """The alpha-beta time of collective `kind` of `nbytes` over `chips` chips of `machine`,
    and the algorithm that gives it (the cheapest)."""
    cost = collective_cost(kind, nbytes, chips, machine)
    return cost.seconds, cost.algorithm


def collective_cost(kind: str, nbytes: int, chips: int, machine: Machine,
                    algorithm: str | None = None, group: tuple[int, ...] | None = None,
                    lowered_only: bool = False) -> CollectiveCost:
    """The estimate of `kind` over `chips` chips (or the chips `group` of a run of `chips`),
    with the cheapest algorithm or the one named (`lowered_only`: the cheapest the compiler
    can lower, for a simulated run). A collective runs as one kernel: its launch and a chip
    barrier after each phase are added to the phases' alpha-beta times."""
    cost = _collective_cost(kind, nbytes, chips, machine, algorithm, group, lowered_only)
    if not cost.phases:
        return cost
    barrier = machine.barrier_cycles / machine.clock_hz
    barriers = sum(1 for phase in cost.phases if phase.algorithm != "signal")
    return replace(cost, sync_seconds=machine.kernel_launch_seconds + barrier * barriers)


def _collective_cost(kind: str, nbytes: int, chips: int, machine: Machine,
                     algorithm: str | None, group: tuple[int, ...] | None,
                     lowered_only: bool) -> CollectiveCost:
    _check(kind, nbytes, chips)
    group = tuple(range(chips)) if group is None else group
    if len(group) == 1:
        return CollectiveCost(kind, nbytes, 1, "none", ())
    per_node = machine.chips_per_node
    nodes = {chip // per_node for chip in group}
    if len(nodes) > 1 and kind == "alltoall":
        return _alltoall_across(nbytes, group, machine, algorithm, lowered_only)
    if len(nodes) > 1:
        if algorithm is not None and algorithm.startswith("hierarchical("):
            algorithm = algorithm[len("hierarchical("):-1]
        return _hierarchical(kind, nbytes, group, machine, algorithm, lowered_only)
    if algorithm is None:
        candidates = tuple(name for name in LOWERED
                           if applies(name, kind, len(group)) is None
                           and not (lowered_only and name in LANES
                                    and len(group) > machine.cores))
    else:
        if algorithm not in LOWERED:
            raise UsageError(f"unknown algorithm '{algorithm}' inside a node (one of: "
                             f"{', '.join(LOWERED)})")
        reason = applies(algorithm, kind, len(group))
        if reason is not None:
            raise UsageError(f"no {algorithm} schedule for {kind} over {len(group)} chips: "
                             f"{reason}")
        candidates = (algorithm,)
    best = None
    for name in candidates:
        phases = _node_phases(kind, nbytes, group, machine, name)
        cost = CollectiveCost(kind, nbytes, len(group), name, phases)
        if best is None or cost.seconds < best.seconds:
            best = cost
    assert best is not None
    return best


def applies(algorithm: str, kind: str, chips: int) -> str | None:
    """Why `algorithm` has no schedule for `kind` over `chips` chips (None: it has one)."""
    if algorithm == "oneshot" and kind != "allreduce":
        return "oneshot is an all-reduce (direct is the one-shot form of the others)"
    if algorithm in ("ring", "rhd") and kind == "alltoall":
        return "all-to-all is direct"
    if algorithm == "rhd" and chips & (chips - 1):
        return "recursive halving-doubling needs a power-of-two group"
    return None


def _check(kind: str, nbytes: int, chips: int) -> None:
    if kind not in KINDS:
        raise UsageError(f"unknown collective '{kind}' (one of: {', '.join(KINDS)})")
    if nbytes < 0:
        raise UsageError(f"a collective of {nbytes} bytes")
    if chips < 1:
        raise UsageError(f"a collective over {chips} chips")


# ---- inside a node ----------------------------------------------------------------------


def _topology(machine: Machine, group: tuple[int, ...]) -> Topology:
    return Topology(machine, max(group) + 1)


def _flows_seconds(topology: Topology, flows: list[tuple], reduce: bool
                   ) -> tuple[float, float]:
    """All `flows` (src, dst, bytes[, adds]) at once: (seconds, alpha seconds). The beta part
    is the busiest channel's (or HBM's) bytes over its bandwidth (a flow that adds reads
    the destination too: `adds`, default `reduce`); the alpha the largest route's."""
    machine = topology.machine
    load: dict[str, float] = {}
    hbm: dict[int, float] = {}
    alpha = 0.0
    for flow in flows:
        src, dst, nbytes = flow[:3]
        adds = flow[3] if len(flow) > 3 else reduce  # type: ignore[misc]
        route = topology.route(src, dst)
        alpha = max(alpha, route.alpha_seconds)
        for name in route.channels:
            load[name] = load.get(name, 0.0) + nbytes
        hbm[src] = hbm.get(src, 0.0) + nbytes
        hbm[dst] = hbm.get(dst, 0.0) + nbytes * (2 if adds else 1)
    beta = max([load[name] / topology.channels[name].bytes_per_second for name in load]
               + [bytes_ / machine.hbm_bandwidth for bytes_ in hbm.values()] + [0.0])
    return beta + alpha, alpha


def _node_phases(kind: str, nbytes: int, group: tuple[int, ...], machine: Machine,
                 algorithm: str) -> tuple[Phase, ...]:
    topology = _topology(machine, group)
    p = len(group)
    if algorithm == "oneshot":
        return _oneshot_phases(nbytes, group, topology)
    if algorithm == "rhd":
        return _rhd_phases(kind, nbytes, group, topology)
    piece = nbytes / p
    if algorithm == "direct":
        def phase(name: str, reduce: bool) -> Phase:
            flows = [(group[r], group[(r + k) % p], piece) for r in range(p) for k in range(1, p)]
            seconds, alpha = _flows_seconds(topology, flows, reduce)
            return Phase(name, "direct", p, round(piece * (p - 1)), seconds, alpha)
    else:
        def phase(name: str, reduce: bool) -> Phase:
            flows = [(group[r], group[(r + 1) % p], piece) for r in range(p)]
            step, alpha = _flows_seconds(topology, flows, reduce)
            chunks, seconds = ring_pipeline(p - 1, step - alpha, alpha, machine)
            return Phase(name, "ring", p, round(piece * (p - 1)), seconds, alpha * (p - 1),
                         chunks)
    ready_flows = [(group[r], group[(r - 1) % p], 0.0) for r in range(p)]
    if algorithm == "direct":
        ready_flows = [(group[r], group[(r - k) % p], 0.0) for r in range(p)
                       for k in range(1, p)]
    ready, _ = _flows_seconds(topology, ready_flows, False)
    phases = [Phase("ready", "signal", p, 0, ready, ready)]
    if kind in ("allreduce", "reducescatter"):
        phases.append(phase("reduce-scatter", True))
    if kind in ("allreduce", "allgather"):
        phases.append(phase("all-gather", False))
    if kind == "alltoall":
        phases.append(phase("all-to-all", False))
    return tuple(phases)


def ring_pipeline(steps: int, beta: float, alpha: float, machine: Machine
                  ) -> tuple[int, float]:
    """The chunk count (1 .. the NET queue's depth) that makes `steps` ring steps of `beta`
    seconds of bytes and `alpha` start-up fastest, and that time. The chunks of a piece go
    back to back on one NET queue; chunk j of step s waits only for chunk j of step s-1
    from the left: step s starts max(beta, beta / chunks + alpha) after step s-1, and the
    last lands beta + alpha after it starts (one chunk: steps x (alpha + beta), the
    unpipelined ring). Each chunk's wait costs an event wake-up, which the choice counts
    (so latency-bound pieces are not cut up for nothing)."""
    wake = machine.event_wake_latency / machine.clock_hz
    best, best_score = (1, steps * (alpha + beta)), steps * (alpha + beta + wake)
    for chunks in range(2, machine.queue_depth + 1):
        seconds = (steps - 1) * max(beta, beta / chunks + alpha) + beta + alpha
        if seconds + steps * chunks * wake < best_score:
            best, best_score = (chunks, seconds), seconds + steps * chunks * wake
    return best


def _oneshot_phases(nbytes: int, group: tuple[int, ...], topology: Topology
                    ) -> tuple[Phase, ...]:
    """All-reduce in one shot: copy to scratch (HBM read and write), readiness, then every
    chip adds its whole buffer into all p-1 peers at once."""
    p = len(group)
    copy = 2 * nbytes / topology.machine.hbm_bandwidth
    ready_flows = [(group[r], group[(r - k) % p], 0.0) for r in range(p) for k in range(1, p)]
    ready, _ = _flows_seconds(topology, ready_flows, False)
    flows = [(group[r], group[(r + k) % p], float(nbytes)) for r in range(p)
             for k in range(1, p)]
    seconds, alpha = _flows_seconds(topology, flows, True)
    return (Phase("copy to scratch", "local", p, nbytes, copy, 0.0),
            Phase("ready", "signal", p, 0, ready, ready),
            Phase("all-reduce", "oneshot", p, nbytes * (p - 1), seconds, alpha))


def rhd_distances(chips: int) -> tuple[int, ...]:
    """The partner distances of recursive halving (p/2, p/4, ..., 1) for a power of two."""
    return tuple(chips >> k for k in range(1, chips.bit_length()))


def _rhd_phases(kind: str, nbytes: int, group: tuple[int, ...], topology: Topology
                ) -> tuple[Phase, ...]:
    """Readiness to every partner at once, then one step per distance, each waiting for the
    previous: halving (reduce-scatter, distances p/2 .. 1, 1/2 .. 1/p of the buffer) and
    doubling (all-gather, distances 1 .. p/2)."""
    p = len(group)
    distances = rhd_distances(p)
    ready_flows = [(group[r], group[r ^ d], 0.0) for r in range(p) for d in distances]
    ready, _ = _flows_seconds(topology, ready_flows, False)
    phases = [Phase("ready", "signal", p, 0, ready, ready)]

    def steps(name: str, order: tuple[int, ...], reduce: bool) -> Phase:
        seconds = alphas = 0.0
        for d in order:
            flows = [(group[r], group[r ^ d], nbytes * d / p) for r in range(p)]
            step, alpha = _flows_seconds(topology, flows, reduce)
            seconds, alphas = seconds + step, alphas + alpha
        return Phase(name, "rhd", p, round(nbytes * (p - 1) / p), seconds, alphas)

    if kind in ("allreduce", "reducescatter"):
        phases.append(steps("reduce-scatter (halving)", distances, True))
    if kind in ("allreduce", "allgather"):
        phases.append(steps("all-gather (doubling)", distances[::-1], False))
    return tuple(phases)


# ---- across nodes -----------------------------------------------------------------------


def _hierarchical(kind: str, nbytes: int, group: tuple[int, ...], machine: Machine,
                  algorithm: str | None, lowered_only: bool = False) -> CollectiveCost:
    """Inside each node directly, across nodes over the NICs (see the module docstring).
    The group must be whole nodes of consecutive chips. `lowered_only`: rhd across nodes
    only for a power-of-two number of nodes (the fold is not lowered)."""
    per_node = machine.chips_per_node
    chips = len(group)
    if group != tuple(range(group[0], group[0] + chips)) or group[0] % per_node \
            or chips % per_node:
        raise UsageError(f"a collective across nodes needs whole nodes of {per_node} "
                         f"consecutive chips, got {chips} chips from chip {group[0]}")
    nodes = chips // per_node
    local = tuple(range(group[0], group[0] + per_node))
    share = nbytes / per_node  # each chip's piece after the node's reduce-scatter
    inner = _node_phases("reducescatter" if kind != "allgather" else "allgather", nbytes,
                         local, machine, "direct")
    choices = INTER_NODE if algorithm is None else (algorithm,)
    if lowered_only and algorithm is None and nodes & (nodes - 1):
        choices = ("ring",)
    best = None
    for name in choices:
        if name not in INTER_NODE:
            raise UsageError(f"unknown algorithm '{name}' across nodes (one of: "
                             f"{', '.join(INTER_NODE)})")
        cross = _inter_node(kind, share, nodes, machine, name)
        phases = list(inner[:2]) if kind != "allgather" else []
        phases += list(cross)
        if kind == "allreduce":
            phases.append(_node_phases("allgather", nbytes, local, machine, "direct")[1])
        elif kind == "allgather":
            phases += list(inner)
        cost = CollectiveCost(kind, nbytes, chips, f"hierarchical({name})", tuple(phases))
        if best is None or cost.seconds < best.seconds:
            best = cost
        if kind == "allreduce" and name == "ring":
            for chunks in range(2, max_pipeline(machine) + 1):
                cost = _pipelined(nbytes, group, machine, chunks)
                if cost.seconds < best.seconds:
                    best = cost
    assert best is not None
    return best


def max_pipeline(machine: Machine) -> int:
    """The most chunks a pipelined hierarchical all-reduce can have in flight: its chunks +
    2 stages take a phase's events each, and a stage runs the node's reduce-scatter and
    all-gather lanes at once (2 (p - 1) cores besides core 0, p chips per node)."""
    if 2 * (machine.chips_per_node - 1) >= machine.cores:
        return 1
    return max(1, NUM_EVENTS // EVENTS_PER_PHASE - 2)


def _pipelined(nbytes: int, group: tuple[int, ...], machine: Machine, chunks: int
               ) -> CollectiveCost:
    """A hierarchical(ring) all-reduce in `chunks` chunks, software-pipelined in chunks + 2
    stages: in stage t the node reduce-scatters chunk t (lanes 1 .. p-1 of a node of p), the
    NICs all-reduce chunk t-1's shares (core 0, an unchunked ring) and the node all-gathers
    chunk t-2 (lanes p .. 2p-2), each stage ending with a chip barrier. A stage takes its
    slowest part: the node's (readiness, then the reduce-scatter and all-gather flows
    sharing the ports) or the NICs'."""
    per_node = machine.chips_per_node
    nodes = len(group) // per_node
    local = tuple(range(group[0], group[0] + per_node))
    topology = _topology(machine, local)
    piece = nbytes / chunks / per_node
    nic = _inter_node("allreduce", nbytes / chunks / per_node, nodes, machine, "ring",
                      pipelined=False)
    cross = sum(phase.seconds for phase in nic)
    cross_alpha = sum(phase.alpha_seconds for phase in nic)
    phases = []
    for stage in range(chunks + 2):
        flows: list[tuple] = []
        if stage < chunks:
            flows += [(a, b, piece, True) for a in local for b in local if a != b]
        if stage >= 2:
            flows += [(a, b, piece, False) for a in local for b in local if a != b]
        node, alpha = _flows_seconds(topology, flows, False) if flows else (0.0, 0.0)
        if stage < chunks:
            node += machine.link_alpha  # the readiness signal before the adds
            alpha += machine.link_alpha
        seconds = node
        if 1 <= stage <= chunks and cross > node:
            seconds, alpha = cross, cross_alpha
        phases.append(Phase(f"stage {stage}", "pipeline", len(group),
                            round(piece * (per_node - 1) * (2 if flows else 0)), seconds,
                            alpha))
    return CollectiveCost("allreduce", nbytes, len(group), "hierarchical(ring)",
                          tuple(phases), chunks)


def _alltoall_across(nbytes: int, group: tuple[int, ...], machine: Machine,
                     algorithm: str | None, lowered_only: bool) -> CollectiveCost:
    """All-to-all across nodes: direct, every chip sending its p-1 blocks at once, inside
    its node over the links and to the other nodes over its NIC. Up to FLOW_LIMIT chips
    every flow is routed (as inside a node); above, by symmetry, one node's flows give the
    links' time and each chip's NIC carries its (p - c) blocks each way (whole nodes)."""
    p = len(group)
    if algorithm not in (None, "direct"):
        raise UsageError(f"all-to-all across nodes is direct, not '{algorithm}'")
    if lowered_only and p > machine.cores:
        raise UsageError(f"a direct all-to-all over {p} chips needs {p - 1} cores (one per "
                         f"peer); {machine.name} has {machine.cores}")
    if p <= FLOW_LIMIT:
        return CollectiveCost("alltoall", nbytes, p, "direct",
                              _node_phases("alltoall", nbytes, group, machine, "direct"))
    per_node = machine.chips_per_node
    if p % per_node or group != tuple(range(group[0], group[0] + p)) or group[0] % per_node:
        raise UsageError(f"an all-to-all across nodes needs whole nodes of {per_node} "
                         f"consecutive chips, got {p} chips from chip {group[0]}")
    piece = nbytes / p
    local = tuple(range(per_node))
    topology = _topology(machine, local)
    flows = [(a, b, piece) for a in local for b in local if a != b]
    node_seconds, node_alpha = _flows_seconds(topology, flows, False) if per_node > 1 \
        else (0.0, 0.0)
    beta = max(node_seconds - node_alpha, (p - per_node) * piece / machine.nic_bandwidth,
               2 * (p - 1) * piece / machine.hbm_bandwidth)
    alpha = machine.nic_alpha
    return CollectiveCost("alltoall", nbytes, p, "direct", (
        Phase("ready", "signal", p, 0, alpha, alpha),
        Phase("all-to-all", "direct", p, round(piece * (p - 1)), alpha + beta, alpha)))


def _inter_node(kind: str, nbytes: float, nodes: int, machine: Machine,
                algorithm: str, pipelined: bool = True) -> list[Phase]:
    """The cross-node part over each chip's NIC: all-reduce (or reduce-scatter/all-gather)
    of `nbytes` among `nodes` chips (one per node)."""
    alpha, bandwidth = machine.nic_alpha, machine.nic_bandwidth
    halves = 2 if kind == "allreduce" else 1
    name = {"allreduce": "all-reduce", "reducescatter": "reduce-scatter",
            "allgather": "all-gather"}[kind] + " across nodes"
    ready = Phase("ready across nodes", "signal", nodes, 0, alpha, alpha)
    if algorithm == "ring":
        steps = halves * (nodes - 1)
        # each half pipelined on its own (the all-gather's first step waits for the last
        # reduce-scatter chunk)
        chunks, half = ring_pipeline(nodes - 1, nbytes / nodes / bandwidth, alpha, machine)
        if not pipelined:
            chunks, half = 1, (nodes - 1) * (alpha + nbytes / nodes / bandwidth)
        return [ready, Phase(name, "ring", nodes, round(nbytes * (nodes - 1) / nodes),
                             halves * half, steps * alpha, chunks)]
    # recursive halving (reduce-scatter) then doubling (all-gather); a node count that is
    # not a power of two first folds the extra nodes in (one exchange of the whole message
    # each way)
    power = 1 << (nodes.bit_length() - 1)
    steps = halves * int(math.log2(power))
    seconds = steps * alpha + halves * (power - 1) / power * nbytes / bandwidth
    if power != nodes:
        seconds += 2 * (alpha + nbytes / bandwidth)
        steps += 2
    return [ready, Phase(name, "rhd", nodes, round(nbytes), seconds, steps * alpha)]


def parse_size(text: str) -> int:
    """`1GiB`, `64 MiB`, `4KiB`, `1e6`, `512` (bytes) as an integer number of bytes."""
    import re

    units = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
             "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40, "K": 2**10, "M": 2**20,
             "G": 2**30}
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*([A-Za-z]*)\s*", text)
    if match is None or match[2] not in units:
        raise UsageError(f"bad size '{text}' (e.g. 4KiB, 64MiB, 1GiB, 1e6)")
    return int(float(match[1]) * units[match[2]])
