"""Many-chip runs (runtime/cluster.py): DMA.PUT and RSIG timing, contention, data, checks."""

from __future__ import annotations

import numpy as np
import pytest
from zhenwu.isa.asm import parse_assembly
from zhenwu.isa.errors import ChipTrap
from zhenwu.isa.machine import load_machine
from zhenwu.runtime.cluster import run_cluster

PUT = """
.tensor buf, f32, [1024], 0x0, inout
.kernel k
    GETID r0, core
    BNEZ r0, done
    GETID r1, chip
    BNEZ r1, receiver
    DMA.PUT 1, buf, buf, 4096, E1 .sig E2
    WAIT.S E2
    JMP done
receiver:
    WAIT.S E1
done:
    HALT
"""


# every chip first pays the kernel launch (the machine file's kernel_launch_seconds, 2 us)
LAUNCH = load_machine("m890").kernel_launch_cycles  # 3000


def _run(text: str, chips: int, inputs=None, machine="m890", **options):
    program = parse_assembly(text, "test.s")
    return run_cluster([program] * chips, load_machine(machine), inputs, **options)


def test_put_timing_by_hand_and_data():
    """4 KiB from chip 0 to chip 1 through the M890 node switch, cycle by cycle, after
    each chip's kernel launch (LAUNCH = 3000 cycles: every time below is LAUNCH later).

    The PUT issues at cycle 4 (GETID, BNEZ, GETID, BNEZ) and is in the NET queue at 5. It
    occupies NET ceil(4096 B / (800 GB/s / 1.5 GHz = 533.3 B/cycle)) = 8 cycles (both switch
    ports pass it in 7.68 cycles, both HBMs in 1.5) and lands alpha = 2 us = 3000 cycles
    later, at 5 + 8 + 3000 = 3013. Chip 1's WAIT.S wakes at 3013 + 4 (event wake) = 3017,
    issues (1), HALT at 3018 ends it at 3019; chip 0's WAIT.S on the PUT's own .sig likewise
    plus its JMP: 3020.
    """
    data = np.arange(1024, dtype=np.float32)
    result = _run(PUT, 2, [{"buf": data}, {"buf": np.zeros(1024, np.float32)}])
    assert [chip.cycles for chip in result.report.chips] == [LAUNCH + 3020, LAUNCH + 3019]
    assert result.report.cycles == LAUNCH + 3020
    np.testing.assert_array_equal(result.outputs[1]["buf"], data)
    links = {link.name: link for link in result.report.links}
    assert links["chip0.tx"].bytes == links["chip1.rx"].bytes == 4096
    assert links["chip1.tx"].bytes == 0
    assert result.report.chips[0].net_bytes == 4096
    # timing-only gives the same cycles without data
    assert _run(PUT, 2, timing_only=True).report.cycles == LAUNCH + 3020


def test_put_over_nic_between_nodes():
    """Chips 0 and 8 are in different nodes: 4096 B at 50 GB/s (33.3 B/cycle) = 123 cycles
    of NET, then the NIC's alpha 8 us = 12000 cycles: lands at 5 + 123 + 12000 = 12128
    after the launch."""
    text = PUT.replace("DMA.PUT 1,", "DMA.PUT 8,").replace("BNEZ r1, receiver",
                                                          "BNEZ r1, receiver")
    program = parse_assembly(text, "t.s")
    idle = parse_assembly(".kernel k\n    HALT\n", "idle.s")
    receiver = parse_assembly(PUT, "r.s")
    programs = [program] + [idle] * 7 + [receiver]
    result = run_cluster(programs, load_machine("m890"), timing_only=True)
    assert result.report.chips[8].cycles == LAUNCH + 12128 + 4 + 1 + 1
    links = {link.name: link.bytes for link in result.report.links}
    assert links["nic0.tx"] == links["nic8.rx"] == 4096


def test_two_senders_share_a_receive_port():
    """Chips 1 and 2 each send 64 KiB to chip 0 at once: chip 0's switch port (533.3
    B/cycle) passes 128 KiB in 245.76 cycles, so the second PUT ends at 5 + 246 instead of
    5 + 123 (after the launch): contention is real."""
    text = """
.tensor buf, f32, [65536], 0x0, inout
.kernel k
    GETID r0, core
    BNEZ r0, done
    GETID r1, chip
    BEQZ r1, receiver
    MUL r2, r1, 65536
    DMA.PUT 0, r2, r2, 65536, E1 .sig E2
    WAIT.S E2
    JMP done
receiver:
    WAIT.S E1:2
done:
    HALT
"""
    result = _run(text, 3, timing_only=True)
    # PUTs issue at 5 (one more scalar instruction: MUL): in the queue at 6
    ends = sorted(chip.cycles for chip in result.report.chips[1:])
    assert ends == [LAUNCH + 6 + 123 + 3000 + 4 + 1 + 1 + 1,
                    LAUNCH + 6 + 246 + 3000 + 4 + 1 + 1 + 1]
    assert result.report.chips[0].cycles == LAUNCH + 6 + 246 + 3000 + 4 + 1 + 1


def test_put_add_reduces_in_the_peer():
    text = """
.tensor buf, bf16, [256], 0x0, inout
.kernel k
    GETID r0, core
    BNEZ r0, done
    GETID r1, chip
    BNEZ r1, receiver
    DMA.PUT.bf16 1, buf, buf, 512, E1 .add .sig E2
    WAIT.S E2
    JMP done
receiver:
    WAIT.S E1
done:
    HALT
"""
    a = np.linspace(-2, 2, 256).astype(np.float32)
    b = np.linspace(1, 3, 256).astype(np.float32)
    result = _run(text, 2, [{"buf": a}, {"buf": b}])
    import ml_dtypes
    expected = (a.astype(ml_dtypes.bfloat16).astype(np.float32)
                + b.astype(ml_dtypes.bfloat16).astype(np.float32)).astype(ml_dtypes.bfloat16)
    np.testing.assert_array_equal(result.outputs[1]["buf"], expected)


def test_rsig_deadlock_and_bad_peer_trap_with_the_chip():
    waits_forever = """
.kernel k
    GETID r0, core
    BNEZ r0, done
    GETID r1, chip
    BNEZ r1, done
    WAIT.S E1
done:
    HALT
"""
    with pytest.raises(ChipTrap, match="deadlock") as info:
        _run(waits_forever, 2)
    assert info.value.chip == 0
    bad_peer = PUT.replace("DMA.PUT 1,", "DMA.PUT 5,")
    with pytest.raises(ChipTrap, match="peer chip 5 is not in this run of 2 chips"):
        _run(bad_peer, 2)
    late = """
.kernel k
    GETID r0, core
    BNEZ r0, done
    GETID r1, chip
    BNEZ r1, done
    RSIG 1, E3
done:
    HALT
"""
    with pytest.raises(ChipTrap, match="signalled an event after this core halted") as info:
        _run(late, 2)
    assert info.value.chip == 1


def test_cluster_trace_has_a_process_per_chip_and_link_tracks():
    result = _run(PUT, 2, trace=True, timing_only=True)
    names = {e["args"]["name"] for e in result.trace["traceEvents"]
             if e["ph"] == "M" and e["name"] == "process_name"}
    assert {"chip 0 core 0", "chip 1 core 31", "links"} <= names
    link_slices = [e for e in result.trace["traceEvents"] if e.get("cat") == "link"]
    assert {e["name"] for e in link_slices} == {"chip 0 > chip 1"}
