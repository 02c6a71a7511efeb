"""Collectives: the alpha-beta model, their lowering to DMA.PUT/RSIG, and the simulation."""

from __future__ import annotations

import re

import numpy as np
import pytest
from zhenwu.compiler.cli import main
from zhenwu.compiler.collective_codegen import collective_programs
from zhenwu.compiler.collectives import bus_factor, collective_cost, collective_seconds, parse_size
from zhenwu.isa.errors import MachineError, UsageError
from zhenwu.isa.machine import MACHINES_DIR, load_machine, parse_machine
from zhenwu.isa.topology import Topology
from zhenwu.runtime.cluster import run_cluster

M890 = load_machine("m890")
Z810E = load_machine("z810e")
# a collective runs as one kernel: its launch, then a chip barrier after each phase
LAUNCH = M890.kernel_launch_cycles                     # 3000 cycles (2 us)
LAUNCH_S = M890.kernel_launch_seconds
BARRIER = M890.barrier_cycles                          # 100 cycles
BARRIER_S = M890.barrier_cycles / M890.clock_hz


def _machine(topology: str, links: int = 8, per_node: int = 8):
    text = (MACHINES_DIR / "m890.toml").read_text()
    text = re.sub(r'topology = "\w+"', f'topology = "{topology}"', text)
    text = re.sub(r"chips_per_node = \d+", f"chips_per_node = {per_node}", text)
    text = re.sub(r"(\[link\][^\[]*?count\s*=\s*)\d+", rf"\g<1>{links}", text)
    return parse_machine(text, f"{topology}.toml")


def test_small_allreduce_cycles_by_hand():
    """All-reduce of 1000 f32 (4000 B) on 2 M890 chips, direct, lane 1 = core 1.

    The kernel launch first (LAUNCH = 3000 cycles; the times below are after it).
    Core 1: GETID, SUB, BNEZ; RSIG issues at 3, starts at 4, lands at 4 + 1 + 3000 (alpha
    2 us) = 3005. The PUT.add (2000 B: ceil(2000 / 533.3 B/cycle) = 4 cycles) waits for the
    peer's RSIG: 3005 + 4 (wake) = 3009, lands 3009 + 4 + 3000 = 6013. WAIT.S wakes at 6017,
    BAR.CHIP at 6018 releases at 6019 + BARRIER (100). SUB, BNEZ; the all-gather PUT starts
    at 6022 + 100 and lands at 9026 + 100; WAIT.S wakes at 9030 + 100; BAR.CHIP releases at
    9032 + 200; HALT ends at 9033 + 200.
    """
    programs, cost = collective_programs("allreduce", 4000, 2, M890, algorithm="direct")
    assert cost.algorithm == "direct"
    rng = np.random.default_rng(1)
    xs = [rng.standard_normal(1000).astype(np.float32) for _ in range(2)]
    result = run_cluster(programs, M890, [{"buf": x} for x in xs])
    assert result.report.cycles == LAUNCH + 9033 + 2 * BARRIER
    for out in result.outputs:
        np.testing.assert_allclose(out["buf"], xs[0] + xs[1], rtol=1e-6)
    # the model: 3 alphas and 2 pieces of 2000 B through an 800 GB/s port (+ HBM in
    # parallel), the launch and two barriers
    assert cost.seconds == pytest.approx(3 * 2e-6 + 2 * 2000 / 800e9 + LAUNCH_S
                                         + 2 * BARRIER_S)
    assert run_cluster(programs, M890, timing_only=True).report.cycles == \
        LAUNCH + 9033 + 2 * BARRIER


def test_oneshot_allreduce_cycles_by_hand():
    """The same all-reduce, chosen as oneshot by the model (one alpha fewer than direct).

    The kernel launch first (LAUNCH = 3000 cycles; the times below are after it).
    Core 0: GETID, SUB, BNEZ; the copy to scratch (a DMA.PUT to this chip: no alpha; 4000 B
    read and 4000 B written through HBM at 4 TB/s x 0.90 streaming = 2400 B/cycle: 4
    cycles) starts at 4 and lands at 8; WAIT.S wakes at 12, BAR.CHIP at 13 releases at 14 +
    BARRIER (100). Lane 1: SUB, BNEZ; RSIG starts at 117, lands at 117 + 1 + 3000 = 3118;
    the PUT.add of the whole 4000 B (ceil(4000 / 533.3) = 8 cycles) wakes at 3122, lands at
    3122 + 8 + 3000 = 6130; WAIT.S wakes at 6134, BAR.CHIP at 6135 releases at 6136 + 100,
    HALT ends at 6237.
    """
    programs, cost = collective_programs("allreduce", 4000, 2, M890)
    assert cost.algorithm == "oneshot"
    rng = np.random.default_rng(2)
    xs = [rng.standard_normal(1000).astype(np.float32) for _ in range(2)]
    result = run_cluster(programs, M890, [{"buf": x} for x in xs])
    assert result.report.cycles == LAUNCH + 6237
    for out in result.outputs:
        np.testing.assert_allclose(out["buf"], xs[0] + xs[1], rtol=1e-6)
    # the model: the copy (8000 B of HBM), 2 alphas, 4000 B through an 800 GB/s port, the
    # launch and two barriers
    assert cost.seconds == pytest.approx(8000 / 4e12 + 2 * 2e-6 + 4000 / 800e9 + LAUNCH_S
                                         + 2 * BARRIER_S)


def test_rhd_allreduce_cycles_by_hand():
    """Recursive halving-doubling on 2 chips (one step each way), 4000 B, core 0.

    RSIG to the partner starts at 4 and lands at 3005; the halving PUT.add (2000 B, 4
    cycles) waits for it: wakes at 3009, lands at 3009 + 4 + 3000 = 6013; the doubling PUT
    waits for that: wakes at 6017, lands at 6021 + 3000 = 9021; WAIT.NET wakes at 9025,
    BAR.CHIP releases at 9026 + BARRIER (100), HALT ends at 9027 + 100; all after the
    kernel launch (LAUNCH). Model: 3 alphas, 2 x 2000 B at 800 GB/s, the launch and one
    barrier per exchange (the model's two phases; the lowering has one: 67 ns apart).
    """
    programs, cost = collective_programs("allreduce", 4000, 2, M890, algorithm="rhd")
    assert run_cluster(programs, M890, timing_only=True).report.cycles == \
        LAUNCH + 9027 + BARRIER
    assert cost.seconds == pytest.approx(3 * 2e-6 + 2 * 2000 / 800e9 + LAUNCH_S
                                         + 2 * BARRIER_S)


def test_algorithm_chosen_by_size_from_the_machine():
    """On the M890 switch: oneshot below the size where its extra (p-2) x n bytes cost more
    than the alpha it saves, direct above; both from the machine's link numbers."""
    alpha = M890.link_alpha
    port = M890.link_total_bandwidth
    # oneshot: copy + 2 alpha + 7n/port; direct: 3 alpha + 2 (7/8) n / port
    crossover = alpha / ((7 - 2 * 7 / 8) / port + 2 / M890.hbm_bandwidth)
    below, above = int(crossover * 0.9) // 32 * 32, int(crossover * 1.1) // 32 * 32
    assert collective_cost("allreduce", below, 8, M890).algorithm == "oneshot"
    assert collective_cost("allreduce", above, 8, M890).algorithm == "direct"
    # simulated at 4 KiB: oneshot beats direct, rhd and ring (latency-bound: fewer alphas)
    times = {}
    for algorithm in ("oneshot", "direct", "rhd", "ring"):
        programs, cost = collective_programs("allreduce", 4096, 8, M890, algorithm=algorithm)
        times[algorithm] = run_cluster(programs, M890, timing_only=True).report.seconds
        assert times[algorithm] == pytest.approx(cost.seconds, rel=0.01)
    assert times["oneshot"] < times["direct"] < times["rhd"] < times["ring"]
    assert times["oneshot"] - LAUNCH_S == pytest.approx(2 * alpha, rel=0.06)
    assert times["ring"] - LAUNCH_S == pytest.approx(15 * alpha, rel=0.02)


def test_algorithms_refuse_what_they_do_not_handle():
    with pytest.raises(UsageError, match="needs a power-of-two group"):
        collective_cost("allreduce", 4096, 6, M890, algorithm="rhd")
    with pytest.raises(UsageError, match="oneshot is an all-reduce"):
        collective_cost("allgather", 4096, 8, M890, algorithm="oneshot")
    with pytest.raises(UsageError, match="all-to-all is direct"):
        collective_cost("alltoall", 4096, 8, M890, algorithm="rhd")
    # not a candidate where it does not apply: 6 chips never pick rhd
    assert collective_cost("allreduce", 1 << 30, 6, M890).algorithm == "direct"


def _expected(kind: str, xs: list[np.ndarray], rank: int, p: int):
    n = xs[0].size
    piece = [slice(j * n // p, (j + 1) * n // p) for j in range(p)]
    if kind == "allreduce":
        return "buf", slice(None), sum(xs)
    if kind == "allgather":
        return "buf", slice(None), np.concatenate([xs[j][piece[j]] for j in range(p)])
    if kind == "reducescatter":
        return "buf", piece[rank], sum(xs)[piece[rank]]
    return "out", slice(None), np.concatenate([xs[j][piece[rank]] for j in range(p)])


@pytest.mark.parametrize("kind, chips, machine, algorithm", [
    ("allreduce", 8, M890, None), ("allgather", 8, M890, None),
    ("reducescatter", 8, M890, None), ("alltoall", 8, M890, None),
    ("allreduce", 3, M890, "ring"), ("allgather", 5, M890, "ring"),
    ("reducescatter", 4, M890, "ring"), ("alltoall", 7, Z810E, None),
    ("allreduce", 16, M890, None), ("allreduce", 8, M890, "oneshot"),
    ("allreduce", 8, M890, "rhd"), ("reducescatter", 8, M890, "rhd"),
    ("allgather", 4, Z810E, "rhd"), ("allreduce", 2, M890, "oneshot"),
    ("allreduce", 32, M890, None),
])
def test_collectives_compute_what_they_say(kind, chips, machine, algorithm):
    n = 203 if kind != "alltoall" else 224  # unequal pieces; all-to-all needs equal blocks
    programs, cost = collective_programs(kind, n * 4, chips, machine, algorithm=algorithm)
    rng = np.random.default_rng(chips)
    xs = [rng.standard_normal(n).astype(np.float32) for _ in range(chips)]
    result = run_cluster(programs, machine, [{"buf": x} for x in xs])
    for rank, outputs in enumerate(result.outputs):
        name, part, expected = _expected(kind, xs, rank, chips)
        np.testing.assert_allclose(outputs[name][part], expected, rtol=1e-5, atol=1e-5)
    # simulation and the alpha-beta model agree (a few cycles of issue and wake-up apart)
    assert result.report.seconds == pytest.approx(cost.seconds, rel=0.02)


def test_alltoall_needs_whole_blocks():
    with pytest.raises(UsageError, match="not a whole number of blocks for 8 chips"):
        collective_programs("alltoall", 203 * 4, 8, M890)


def test_tiny_buffers_with_empty_pieces():
    programs, _ = collective_programs("allreduce", 3 * 4, 8, M890)
    xs = [np.full(3, float(i + 1), np.float32) for i in range(8)]
    result = run_cluster(programs, M890, [{"buf": x} for x in xs])
    for outputs in result.outputs:
        np.testing.assert_array_equal(outputs["buf"], np.full(3, 36.0, np.float32))


@pytest.mark.parametrize("machine", [M890, Z810E], ids=["m890", "z810e"])
def test_bus_bandwidth_and_model_agreement(machine):
    """>= 90% of the per-chip link peak at 64 MiB, small messages within 10% of the model."""
    peak = Topology(machine, 8).injection_bandwidth()
    for kind in ("allreduce", "allgather", "reducescatter", "alltoall"):
        for nbytes in (4096, 64 << 20):
            programs, cost = collective_programs(kind, nbytes, 8, machine)
            seconds = run_cluster(programs, machine, timing_only=True).report.seconds
            assert seconds == pytest.approx(cost.seconds, rel=0.10)
            if nbytes >= 64 << 20:
                busbw = nbytes / seconds * bus_factor(kind, 8)
                assert busbw >= 0.9 * peak


def test_across_nodes_simulation_agrees_with_model():
    programs, cost = collective_programs("allreduce", 16 << 20, 16, M890)
    assert cost.algorithm == "hierarchical(ring)"
    seconds = run_cluster(programs, M890, timing_only=True).report.seconds
    assert seconds == pytest.approx(cost.seconds, rel=0.05)


def test_rhd_across_nodes_agrees_with_model():
    """32 chips in 4 nodes: recursive halving-doubling across the NICs (2 steps each way,
    not the ring's 3: fewer alphas than even the pipelined ring at 4 MiB), lowered and
    simulated, within 5% of the model."""
    programs, cost = collective_programs("allreduce", 4 << 20, 32, M890)
    assert cost.algorithm == "hierarchical(rhd)"
    ring = collective_cost("allreduce", 4 << 20, 32, M890, algorithm="ring")
    assert cost.seconds < ring.seconds
    share = (4 << 20) / 8  # each chip's share after its node's reduce-scatter
    cross = sum(phase.seconds for phase in cost.phases if "across nodes" in phase.name)
    assert cross == pytest.approx(8e-6 + 4 * 8e-6 + 2 * 3 / 4 * share / 50e9)
    seconds = run_cluster(programs, M890, timing_only=True).report.seconds
    assert seconds == pytest.approx(cost.seconds, rel=0.05)


def test_alltoall_across_nodes(monkeypatch):
    """16 chips in 2 nodes: direct, 8 blocks each way over each NIC; the simulation
    computes it and agrees with the model within 5%; above FLOW_LIMIT chips the model
    costs channel classes, which gives the routed flows' numbers where both apply."""
    import zhenwu.compiler.collectives as model

    n = 16 * 14
    programs, cost = collective_programs("alltoall", n * 4, 16, M890)
    assert cost.algorithm == "direct"
    rng = np.random.default_rng(16)
    xs = [rng.standard_normal(n).astype(np.float32) for _ in range(16)]
    result = run_cluster(programs, M890, [{"buf": x} for x in xs])
    for rank, outputs in enumerate(result.outputs):
        name, part, expected = _expected("alltoall", xs, rank, 16)
        np.testing.assert_array_equal(outputs[name][part], expected)
    for nbytes in (4096, 16 << 20):
        programs, cost = collective_programs("alltoall", nbytes, 16, M890)
        seconds = run_cluster(programs, M890, timing_only=True).report.seconds
        assert seconds == pytest.approx(cost.seconds, rel=0.05)
    # 16 MiB: each NIC sends 8 blocks of 1 MiB at 50 GB/s after two NIC alphas
    big = collective_cost("alltoall", 16 << 20, 16, M890)
    assert big.seconds == pytest.approx(2 * 8e-6 + 8 * (1 << 20) / 50e9 + big.sync_seconds)
    flows = collective_cost("alltoall", 1 << 20, 32, M890).seconds
    monkeypatch.setattr(model, "FLOW_LIMIT", 0)
    assert collective_cost("alltoall", 1 << 20, 32, M890).seconds == pytest.approx(flows)
    monkeypatch.undo()
    huge = collective_cost("alltoall", 1 << 30, 10_000, M890)
    assert huge.seconds == pytest.approx(2 * 8e-6 + 9992 * ((1 << 30) / 10_000) / 50e9
                                         + huge.sync_seconds)
    with pytest.raises(UsageError, match="needs 39 cores"):
        collective_programs("alltoall", 40 * 64, 40, M890)


def test_pipelined_ring():
    """On a ring topology a 64 MiB all-reduce's ring steps are bandwidth-bound: two chunks
    per piece hide all but one alpha per phase. Each step moves 8 MiB over one link bundle
    of 4 x 100 GB/s (T = 20.97 us) and a step starts max(T, T/2 + alpha) = T after the one
    before; per phase 6 T + T + alpha (unpipelined: 7 (T + alpha))."""
    ring = _machine("ring")
    nbytes = 64 << 20
    cost = collective_cost("allreduce", nbytes, 8, ring, algorithm="ring")
    beta = nbytes / 8 / 400e9
    alpha = 2e-6
    assert cost.chunks == 2
    # readiness: one hop to the left neighbour
    assert cost.seconds == pytest.approx(alpha + 2 * (7 * beta + alpha) + cost.sync_seconds)
    assert cost.sync_seconds == pytest.approx(LAUNCH_S + 2 * BARRIER_S)
    programs, _ = collective_programs("allreduce", nbytes, 8, ring, algorithm="ring")
    seconds = run_cluster(programs, ring, timing_only=True).report.seconds
    assert seconds == pytest.approx(cost.seconds, rel=0.005)
    assert seconds < (alpha + 2 * 7 * (beta + alpha) + cost.sync_seconds) * 0.95  # unpipelined
    # functionally, with chunks (several per piece, some pieces uneven)
    n = (1 << 18) + 5
    programs, cost = collective_programs("allreduce", n * 4, 8, ring, algorithm="ring")
    assert cost.chunks > 1
    rng = np.random.default_rng(8)
    xs = [rng.standard_normal(n).astype(np.float32) for _ in range(8)]
    result = run_cluster(programs, ring, [{"buf": x} for x in xs])
    for outputs in result.outputs:
        np.testing.assert_allclose(outputs["buf"], sum(xs), rtol=1e-5, atol=1e-5)
    assert result.report.seconds == pytest.approx(cost.seconds, rel=0.01)
    for kind in ("reducescatter", "allgather"):
        programs, cost = collective_programs(kind, n * 4, 8, ring, algorithm="ring")
        result = run_cluster(programs, ring, [{"buf": x} for x in xs])
        for rank, outputs in enumerate(result.outputs):
            name, part, expected = _expected(kind, xs, rank, 8)
            np.testing.assert_allclose(outputs[name][part], expected, rtol=1e-5, atol=1e-5)


def test_pipelined_hierarchical_allreduce():
    """16 chips in 2 nodes, 64 MiB: three chunks in flight (the node's reduce-scatter of one
    overlapping the NICs' all-reduce of the one before and the all-gather of the one before
    that), simulated within 1% of the model and 10% faster than the phases one after
    another; computed right with 2, 3 and 6 chunks."""
    from zhenwu.compiler.collective_codegen import CollectiveSpec, Region, collective_program
    from zhenwu.isa.program import TensorDecl

    nbytes = 64 << 20
    programs, cost = collective_programs("allreduce", nbytes, 16, M890)
    assert (cost.algorithm, cost.pipeline) == ("hierarchical(ring)", 3)
    node = 2e-6 + 7 / 8 * nbytes / 800e9
    one_by_one = 2e-6 + node + 8e-6 + 2 * (8e-6 + nbytes / 16 / 50e9) + node
    assert cost.seconds < 0.9 * one_by_one
    seconds = run_cluster(programs, M890, timing_only=True).report.seconds
    assert seconds == pytest.approx(cost.seconds, rel=0.01)
    n = 1000
    for pipeline in (2, 3, 6):
        spec = CollectiveSpec("allreduce", "hierarchical(ring)", tuple(range(16)),
                              Region("buf", 0, n * 4, "f32"), None, 8, label="ar",
                              pipeline=pipeline)
        tensors = [TensorDecl("buf", "f32", (n,), 0, "inout")]
        programs = [collective_program(spec, chip, tensors) for chip in range(16)]
        rng = np.random.default_rng(pipeline)
        xs = [rng.standard_normal(n).astype(np.float32) for _ in range(16)]
        result = run_cluster(programs, M890, [{"buf": x} for x in xs])
        for outputs in result.outputs:
            np.testing.assert_allclose(outputs["buf"], sum(xs), rtol=1e-4, atol=1e-4)


def test_model_numbers():
    # 10000 chips, 1 GiB: node reduce-scatter and all-gather, recursive halving-doubling
    # over 1250 nodes' NICs (not a power of two: the fold adds two whole exchanges)
    seconds, algorithm = collective_seconds("allreduce", 1 << 30, 10_000, M890)
    assert algorithm == "hierarchical(rhd)"
    share = (1 << 30) / 8
    inner = 2e-6 + 7 / 8 * (1 << 30) / 800e9
    cross = 8e-6 + 2 * 10 * 8e-6 + 2 * 1023 / 1024 * share / 50e9 + 2 * (8e-6 + share / 50e9)
    cost = collective_cost("allreduce", 1 << 30, 10_000, M890)
    assert seconds == pytest.approx(2e-6 + 2 * inner + cross + cost.sync_seconds)
    # a ring topology: ring beats direct for big messages, not for small ones
    ring = _machine("ring")
    assert collective_cost("allreduce", 1 << 30, 8, ring).algorithm == "ring"
    assert collective_cost("allreduce", 4096, 8, ring).algorithm == "oneshot"
    assert collective_cost("allreduce", 100, 1, M890).seconds == 0.0
    with pytest.raises(UsageError, match="unknown collective"):
        collective_cost("allsum", 1, 8, M890)
    with pytest.raises(UsageError, match="unknown algorithm"):
        collective_cost("allreduce", 1, 8, M890, algorithm="tree")
    assert parse_size("1GiB") == 1 << 30 and parse_size("4 KiB") == 4096
    with pytest.raises(UsageError, match="bad size"):
        parse_size("12 parsecs")


def test_topologies_routes_and_bisection():
    torus = Topology(_machine("torus2d", links=8), 8)  # 2 x 4: 3 distinct neighbours
    assert torus.links_per_neighbour == 2
    assert torus.route(0, 6).channels == ("0>1", "1>2", "2>6")
    ring = Topology(_machine("ring"), 8)
    assert ring.route(0, 6).channels == ("0>7", "7>6")
    assert ring.route(0, 6).alpha_seconds == pytest.approx(4e-6)
    assert ring.bisection_bandwidth() == 2 * 4 * 100e9
    assert Topology(M890, 8).bisection_bandwidth() == 4 * 800e9
    assert Topology(Z810E, 8).bisection_bandwidth() == 16 * 100e9
    assert Topology(M890, 16).route(3, 12).channels == ("nic3.tx", "nic12.rx")


def test_system_section_is_validated():
    text = (MACHINES_DIR / "m890.toml").read_text()
    with pytest.raises(MachineError, match="expected one of switch, ring, full, torus2d"):
        parse_machine(text.replace('topology = "switch"', 'topology = "mesh"'), "m.toml")
    with pytest.raises(MachineError, match="'system.chips_per_node' must be between 1 and 4096"):
        parse_machine(text.replace("chips_per_node = 8", "chips_per_node = 5000"), "m.toml")
    with pytest.raises(MachineError, match="needs at least 7 links per chip, 'link.count' is 4"):
        _machine("full", links=4)
    with pytest.raises(MachineError, match="missing section \\[system\\]"):
        parse_machine(text[:text.index("[system]")], "m.toml")


def test_cli_collective_and_machines(capsys):
    assert main(["collective", "allreduce", "--chips", "10000", "--size", "1GiB"]) == 0
    out = capsys.readouterr().out
    assert "1250 nodes of 8" in out and "hierarchical(rhd)" in out
    assert main(["collective", "all-gather", "--chips", "8", "--size", "1MiB",
                 "--simulate"]) == 0
    assert "simulated (direct)" in capsys.readouterr().out
    assert main(["collective", "allreduce", "--chips", "8", "--size", "lots"]) == 2
    assert main(["machines"]) == 0
    out = capsys.readouterr().out
    assert "per-chip injection (node)" in out and "3.2 TB/s" in out
