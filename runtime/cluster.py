"""Many chips: N whole chips, each with its own HBM, joined by a timed network.

    from zhenwu.runtime.cluster import run_cluster
    result = run_cluster(programs, machine, inputs, timing_only=False, trace=False)
    result.outputs[chip]   # dict[str, np.ndarray] per chip (empty with timing_only)
    result.report          # ClusterReport: .cycles .seconds .chips[i] (a Report per chip)
                           # .links (bytes and busy cycles per network channel)
    result.trace           # Perfetto trace: a process per chip and core, and one for the links

Every chip is the one-chip model of runtime/engine.py (its cores, engine queues, HBM and L2
servers), running its own program (one per chip; an SPMD program is the same Program N times)
with the NET engine added for the cluster instructions (isa/instructions/net.py). All chips
share one event heap, so everything happens in global simulated-time order; cross-chip effects
are events on that heap:

- a `DMA.PUT` passes its bytes through this chip's HBM (as every DMA), each channel of its
  route (isa/topology.py: switch ports, link bundles, NICs; `BandwidthServer`s, so transfers
  sharing a channel share its bandwidth) and the peer's HBM (a write, and a read too for
  `.add`); it occupies the NET engine until the slowest of these has passed its bytes and
  lands the route's alpha later;
- at landing, its event is signalled on the peer's core of the same index (`RSIG`: a signal
  alone, after the alpha), and its own `.sig`s here.

Functional runs execute a transfer's semantics when it starts (as every engine instruction);
programs order their accesses with the cross-chip events, which the collectives the compiler
builds do. Checks: every chip's own checks (races in L1/ACC, bounds, events at HALT), a
deadlock anywhere (a chip waiting for an event no peer will send: reported with its chip), and
an event that a peer signals after the receiving core halted.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import asdict, dataclass, field

import numpy as np
from zhenwu.isa.errors import ChipTrap, InputError
from zhenwu.isa.instructions.net import topology as network_of
from zhenwu.isa.program import ENGINES, NUM_EVENTS, Program
from zhenwu.runtime.bandwidth import BandwidthServer
from zhenwu.runtime.blas import single_blas_thread
from zhenwu.runtime.context import ScalarContext
from zhenwu.runtime.decode import decode_program
from zhenwu.runtime.engine import _COMPLETE, _TRY, CoreState, Simulator, Timing
from zhenwu.runtime.interpreter import (
    DEFAULT_MAX_INSTRUCTIONS,
    build_report,
    check_tensors,
    load_inputs,
    read_outputs,
)
from zhenwu.runtime.l2 import L2Cache
from zhenwu.runtime.memory import GlobalMemory, LocalMemory
from zhenwu.runtime.report import Report
from zhenwu.runtime.trace import TraceRecorder

CLUSTER_ENGINES = ENGINES  # S LD MX VX ST NET
NET = CLUSTER_ENGINES.index("NET")


@dataclass(frozen=True)
class _RemoteSignal:
    """The `.sigs` a landed transfer fires on the peer (read by Simulator._signal)."""

    sigs: tuple[tuple[int, int], ...]


@dataclass
class LinkStats:
    """One network channel over a run: bytes passed and cycles busy."""

    name: str
    bytes_per_second: float
    bytes: int = 0
    busy_cycles: float = 0.0
    transfers: int = 0


@dataclass
class ClusterReport:
    """The report of a many-chip run: one `Report` per chip, the links, and the totals."""

    machine: str
    clock_hz: float
    topology: str
    cycles: int
    chips: list[Report]
    links: list[LinkStats] = field(default_factory=list)
    timing_only: bool = False

    @property
    def seconds(self) -> float:
        return self.cycles / self.clock_hz

    @property
    def link_bytes(self) -> int:
        """Bytes sent chip to chip (counted once per transfer, at its first channel)."""
        return sum(chip.net_bytes for chip in self.chips)

    def to_json(self) -> dict:
        return {
            "machine": self.machine, "clock_hz": self.clock_hz, "topology": self.topology,
            "cycles": self.cycles, "seconds": self.seconds, "timing_only": self.timing_only,
            "chips": [chip.to_json() for chip in self.chips],
            "links": [dict(asdict(link), utilization=round(link.busy_cycles / max(self.cycles, 1),
                                                          6)) for link in self.links],
        }

    def to_text(self) -> str:
        lines = [(f"{len(self.chips)} chips ({self.topology}) on {self.machine}: "
                 f"{self.cycles} cycles = {self.seconds * 1e6:.3f} us")]
        for index, chip in enumerate(self.chips):
            lines.append(f"  chip {index}: {chip.cycles} cycles, {chip.flops / 1e9:.3g} GFLOP, "
                         f"HBM {chip.hbm_read_bytes + chip.hbm_write_bytes} B, "
                         f"NET busy {_net_busy(chip):.1%}")
        busy = [link for link in self.links if link.bytes]
        if busy:
            lines.append("  links (bytes, utilization):")
            for link in busy:
                lines.append(f"    {link.name:<14} {link.bytes:>14} B  "
                             f"{link.busy_cycles / max(self.cycles, 1):6.1%}")
        return "\n".join(lines)


def _net_busy(report: Report) -> float:
    if not report.busy_cycles or "NET" not in report.engines:
        return 0.0
    return max(core["NET"] for core in report.busy_cycles) / max(report.cycles, 1)


@dataclass
class ClusterResult:
    outputs: list[dict[str, np.ndarray]]
    report: ClusterReport
    trace: dict | None


class ChipSimulator(Simulator):
    """One chip of a cluster: the one-chip simulator on the cluster's shared heap, with the
    network timing of its cluster instructions."""

    def __init__(self, cluster: _Cluster, chip: int, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.cluster = cluster
        self.chip = chip
        self.heap = cluster.heap
        self.net_bytes = 0

    def _push(self, time: int, kind: int, core: CoreState, engine: int, payload=None) -> None:
        self.cluster.seq += 1
        heapq.heappush(self.heap, (time, self.cluster.seq, kind, (self.chip, core.index),
                                   engine, payload))

    def network(self, core: CoreState, engine: int, net, now: int, occupancy: int,
                latency: int) -> tuple[int, int]:
        return self.cluster.transfer(self, core, engine, net, now, occupancy, latency)


class _Cluster:
    """The shared state of a run: the heap, the chips and the network's servers."""

    def __init__(self, machine, chips: int, trace: bool):
        self.machine = machine
        self.heap: list = []
        self.seq = 0
        self.sims: list[ChipSimulator] = []
        self.topology = network_of(machine, chips)
        clock = machine.clock_hz
        self.servers = {name: BandwidthServer(name, channel.bytes_per_second / clock)
                        for name, channel in self.topology.channels.items()}
        self.transfers = {name: 0 for name in self.servers}
        self.link_slices: list[tuple[str, float, float, str]] | None = [] if trace else None

    def transfer(self, sim: ChipSimulator, core: CoreState, engine: int, net, now: int,
                 occupancy: int, latency: int) -> tuple[int, int]:
        """Pass a cluster instruction's bytes through the route and the peer's HBM; schedule
        its landing on the peer. Returns the NET engine's occupancy and the latency."""
        peer_sim = self.sims[net.peer]
        end = now + occupancy
        if net.nbytes:
            route = () if net.peer == sim.chip else \
                self.topology.route(sim.chip, net.peer).channels
            for name in route:
                server = self.servers[name]
                begin = max(server.free_at, now)
                finish = server.reserve(now, net.nbytes)
                self.transfers[name] += 1
                if self.link_slices is not None:
                    self.link_slices.append((name, begin, finish - begin,
                                             f"chip {sim.chip} > chip {net.peer}"))
                end = max(end, finish)
            remote = net.nbytes * (2 if net.reduce else 1)
            end = max(end, peer_sim.hbm.reserve(now, remote))
            peer_sim.hbm_write += net.nbytes
            peer_sim.hbm_read += net.nbytes if net.reduce else 0
            sim.net_bytes += net.nbytes
        finish = math.ceil(end - 1e-9)
        if finish - now > occupancy:
            core.stall("link_bandwidth:NET", finish - now - occupancy)
            occupancy = finish - now
        landing = now + occupancy + latency
        target = peer_sim.cores[core.index]
        clock = [0] * len(CLUSTER_ENGINES) if target.races is not None else None
        peer_sim._push(landing, _COMPLETE, target, NET, (_RemoteSignal(net.events), clock))
        return occupancy, latency

    def run(self) -> int:
        heap = self.heap
        sims = self.sims
        for sim in sims:
            for core in sim.cores:
                sim._resume(core, 0)
        while heap:
            time, _, kind, (chip, core_index), engine, payload = heapq.heappop(heap)
            sim = sims[chip]
            sim.now = time
            core = sim.cores[core_index]
            try:
                if kind == _TRY:
                    core.try_pending[engine] = False
                    sim._try_start(core, engine, time)
                elif kind == _COMPLETE:
                    if isinstance(payload[0], _RemoteSignal) and core.halted:
                        raise ChipTrap(
                            "a peer chip signalled an event after this core halted: "
                            + ", ".join(f"E{k}:{n}" for k, n in payload[0].sigs),
                            core=core_index, engines=("NET",))
                    sim._signal(core, payload, time, engine)
                else:
                    core.resume_pending = False
                    sim._run_scalar(core, time)
            except ChipTrap as err:
                raise _on_chip(err, chip) from None
        for sim in sims:
            unfinished = [c for c in sim.cores if not c.halted]
            if unfinished:
                try:
                    sim._deadlock(unfinished)
                except ChipTrap as err:
                    raise _on_chip(err, sim.chip) from None
        ends = []
        for sim in sims:
            ends.append(max(c.halt_time for c in sim.cores))
            sim._close_kernels()
        return max(ends)


def _on_chip(err: ChipTrap, chip: int) -> ChipTrap:
    if err.chip is None:
        err.chip = chip
    return err


def run_cluster(programs: list[Program], machine, inputs: list[dict[str, np.ndarray]] | None
                = None, *, timing_only: bool = False, max_instructions: int | None = None,
                trace: bool = False) -> ClusterResult:
    """Run `programs[i]` on chip i of a system of `len(programs)` chips of `machine`.

    `inputs[i]` are chip i's input tensors (as `runtime.run_program`'s `inputs`). Raises
    `ChipTrap` (with the chip) when a chip traps, `InputError` for inputs that do not fit.
    """
    chips = len(programs)
    if chips < 1:
        raise InputError("a cluster run needs at least one chip")
    inputs = inputs if inputs is not None else [{} for _ in programs]
    if len(inputs) != chips:
        raise InputError(f"{len(inputs)} input sets for {chips} chips")
    functional = not timing_only
    cluster = _Cluster(machine, chips, trace)
    gms = [GlobalMemory(machine.hbm_bytes, f"GM{c}") for c in range(chips)] if functional \
        else [None] * chips
    for gm in gms:
        if gm is not None:
            gm.peers = gms  # type: ignore[assignment]
    budget = max_instructions or DEFAULT_MAX_INSTRUCTIONS
    recorders = []
    for chip, (program, gm) in enumerate(zip(programs, gms)):
        check_tensors(program, machine)
        try:
            load_inputs(program, inputs[chip], gm)
        except InputError as err:
            raise InputError(f"chip {chip}: {err.message}") from None
        l2 = L2Cache(machine.l2_bytes, machine.l2_line_bytes, machine.l2_block_bytes) \
            if machine.l2_bytes else None
        ops = decode_program(program, machine, CLUSTER_ENGINES, functional=functional, gm=gm,
                             chip=chip, chips=chips, l2=l2)
        cores = []
        for index in range(machine.cores):
            memories = {"L1": LocalMemory(machine.l1_bytes, "L1"),
                        "ACC": LocalMemory(machine.acc_bytes, "ACC")}
            core = CoreState(index, chip, len(CLUSTER_ENGINES), NUM_EVENTS, memories,
                             ("L1", "ACC"), race_check=functional)
            core.scalar_ctx = ScalarContext(core, machine, program, chip=chip, chips=chips)
            cores.append(core)
        timing = Timing.for_machine(machine, l2)
        recorder = TraceRecorder(machine.clock_hz, list(CLUSTER_ENGINES), machine.cores,
                                 chip=chip, chips=chips) if trace else None
        recorders.append(recorder)
        cluster.sims.append(ChipSimulator(
            cluster, chip, ops, timing, list(CLUSTER_ENGINES), cores, max_instructions=budget,
            trace=recorder, kernels=[name for name, _ in program.kernels]))
    with single_blas_thread(), np.errstate(all="ignore"):
        cycles = cluster.run()
    outputs = [read_outputs(program, gm) if gm is not None else {}
               for program, gm in zip(programs, gms)]
    reports = []
    for program, sim in zip(programs, cluster.sims):
        end = max(c.halt_time for c in sim.cores)
        report = build_report(program, machine, sim, end, timing_only, CLUSTER_ENGINES)
        report.chips = chips
        report.net_bytes = sim.net_bytes
        reports.append(report)
    links = [LinkStats(name, server.bytes_per_cycle * machine.clock_hz, server.bytes,
                       server.busy_cycles, cluster.transfers[name])
             for name, server in cluster.servers.items()]
    report = ClusterReport(machine.name, machine.clock_hz, machine.topology, cycles, reports,
                           links, timing_only)
    trace_dict = _merge_traces(recorders, cluster, machine) if trace else None
    return ClusterResult(outputs, report, trace_dict)


def _merge_traces(recorders, cluster: _Cluster, machine) -> dict:
    """The chips' traces in one, plus a `links` process with one track per channel."""
    events: list[dict] = []
    for recorder in recorders:
        events += recorder.to_dict()["traceEvents"]
    pid = 10**6
    events.append({"ph": "M", "name": "process_name", "pid": pid, "tid": 0,
                   "args": {"name": "links"}})
    events.append({"ph": "M", "name": "process_sort_index", "pid": pid, "tid": 0,
                   "args": {"sort_index": pid}})
    tids = {name: index + 1 for index, name in enumerate(cluster.servers)}
    for name, tid in tids.items():
        events.append({"ph": "M", "name": "thread_name", "pid": pid, "tid": tid,
                       "args": {"name": name}})
    ns_per_cycle = 1e9 / machine.clock_hz
    for name, start, duration, label in cluster.link_slices or ():
        begin = round(start * ns_per_cycle)
        end = round((start + duration) * ns_per_cycle)
        events.append({"ph": "X", "name": label, "cat": "link", "pid": pid, "tid": tids[name],
                       "ts": begin / 1000, "dur": (end - begin) / 1000})
    return {"traceEvents": events, "displayTimeUnit": "ns"}


__all__ = ["ClusterReport", "ClusterResult", "LinkStats", "run_cluster"]
