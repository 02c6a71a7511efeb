"""The shared L2 model (runtime/l2.py): lines of a box, LRU sets, and its effect on a run."""

from __future__ import annotations

import re

import numpy as np
import pytest
from runtime_helpers import run_asm
from zhenwu.isa.machine import MACHINES_DIR, parse_machine
from zhenwu.runtime.l2 import L2Cache, box_lines


def machine(l2: str | None = None, cores: int = 1):
    """m890 with `cores` cores and, when given, another `l2_bytes` ("0" turns the L2 off)."""
    text = (MACHINES_DIR / "m890.toml").read_text()
    text = re.sub(r"(\[core\][^\[]*?count\s*=\s*)\d+", rf"\g<1>{cores}", text, count=1)
    if l2 is not None:
        text = re.sub(r'l2_bytes = "[^"]*"', f"l2_bytes = {l2}", text, count=1)
    return parse_machine(text, "m890-test")


# ---- lines of a box -------------------------------------------------------------------


def test_contiguous_box_covers_its_lines_exactly():
    lines, nbytes = box_lines(256, (4, 64), (128, 2), 2, 128)  # 512 contiguous bytes
    assert lines.tolist() == [2, 3, 4, 5]
    assert nbytes.tolist() == [128] * 4


def test_strided_rows_touch_partial_lines():
    # 3 rows of 100 f32 (400 B) every 800 B, from byte 10
    lines, nbytes = box_lines(10, (3, 100), (800, 4), 4, 128)
    assert int(nbytes.sum()) == 1200
    assert lines.tolist() == [0, 1, 2, 3, 6, 7, 8, 9, 12, 13, 14, 15]
    assert nbytes[0] == 118 and nbytes[3] == 26


def test_transposed_and_broadcast_boxes():
    # a column walk: 8 elements 16 B apart, 2 B each
    lines, nbytes = box_lines(0, (8,), (16,), 2, 64)
    assert lines.tolist() == [0, 1] and nbytes.tolist() == [8, 8]
    # a zero stride reads the same row again: a line still holds at most its size
    lines, nbytes = box_lines(0, (4, 64), (0, 2), 2, 64)
    assert lines.tolist() == [0, 1] and nbytes.tolist() == [64, 64]


def test_long_runs_use_the_per_run_path():
    lines, nbytes = box_lines(64, (2, 1 << 20), (1 << 22, 1), 1, 128)
    assert int(nbytes.sum()) == 2 << 20
    assert lines.size == 2 * ((1 << 20) // 128 + 1)


# ---- the cache ------------------------------------------------------------------------


def test_second_read_hits_and_lru_evicts_the_oldest():
    cache = L2Cache(64 * 128, 128, 1024)  # 64 lines in blocks of 8
    first = cache.lines(0, (32, 128), (128, 1), 1)  # 32 lines, 4 blocks
    second = cache.lines(1 << 20, (32, 128), (128, 1), 1)
    assert cache.read(first)[0] == 32 * 128
    assert cache.read(first)[0] == 0
    assert cache.read(second)[0] == 32 * 128
    assert cache.read(first)[0] == 0  # 64 lines fit
    third = cache.lines(2 << 20, (48, 128), (128, 1), 1)
    cache.read(third)  # evicts the 6 least recently used blocks: all of `second`, 2 of `first`
    assert cache.read(first)[0] == 16 * 128
    assert cache.read(third)[0] == 16 * 128  # which evicted third's 2 oldest blocks
    assert cache.resident <= 64


def test_lines_of_a_block_are_valid_one_by_one():
    cache = L2Cache(1 << 20, 128, 4096)
    # every other line of a block, then the whole block: only the other half is missed
    cache.read(cache.lines(0, (16, 128), (256, 1), 1))
    missed, _ = cache.read(cache.lines(0, (4096,), (1,), 1))
    assert missed == 16 * 128
    assert cache.hit_bytes == 16 * 128 and cache.read_bytes == 16 * 128 + 4096


def test_strided_rows_stay_resident():
    cache = L2Cache(1 << 20, 128, 4096)
    # 256 rows of 512 B, 8 KiB apart: 128 KiB of a 1 MiB cache, all resident after one read
    tile = cache.lines(0, (256, 256), (8192, 2), 2)
    cache.read(tile)
    assert cache.read(tile)[0] == 0


def test_a_partial_write_does_not_make_a_line_valid():
    cache = L2Cache(1 << 20, 128, 4096)
    cache.write(cache.lines(0, (64,), (1,), 1), 10.0)  # half a line
    assert cache.read(cache.lines(0, (128,), (1,), 1))[0] == 128
    cache.write(cache.lines(128, (128,), (1,), 1), 10.0)  # a whole line
    assert cache.read(cache.lines(128, (128,), (1,), 1))[0] == 0


def test_a_hit_waits_for_its_fill_to_land():
    cache = L2Cache(1 << 20, 128, 4096)
    box = cache.lines(0, (1024,), (1,), 1)
    cache.read(box)
    cache.landed(700.0)
    assert cache.read(box) == (0, 700.0)


def test_bad_l2_geometry_is_a_machine_error():
    from zhenwu.isa.errors import MachineError

    text = (MACHINES_DIR / "m890.toml").read_text().replace("l2_block_bytes = 4096",
                                                             "l2_block_bytes = 100")
    with pytest.raises(MachineError, match="l2_block_bytes"):
        parse_machine(text, "bad.toml")


# ---- in a run -------------------------------------------------------------------------

RELOAD = """
.tensor a, bf16, [256, 256], 0x0, in
.tensor b, bf16, [256, 256], 0x100000, out
    DESC d0, a, bf16, [256, 256], [256, 1], [256, 256]
    DESC d1, b, bf16, [256, 256], [256, 1], [256, 256]
    DMA.LD L1[0], d0[0, 0] .sig E0
    WAIT.LD E0
    DMA.LD L1[131072], d0[0, 0] .sig E1
    WAIT.ST E1
    DMA.ST d1[0, 0], L1[131072]
    HALT
"""


def test_reloading_a_tile_hits_in_l2():
    tile = 256 * 256 * 2
    with_l2 = run_asm(RELOAD, machine=machine())
    without = run_asm(RELOAD, machine=machine(l2="0"))
    np.testing.assert_array_equal(with_l2.outputs["b"], without.outputs["b"])
    assert with_l2.report.hbm_read_bytes == tile
    assert without.report.hbm_read_bytes == 2 * tile
    assert with_l2.report.l2_hit_bytes == tile and with_l2.report.l2_read_bytes == 2 * tile
    assert without.report.l2_read_bytes == 0
    # the second load waits for l2_latency instead of hbm_latency, and (Little's law) its
    # second half waits for its first to return from the L2, not from HBM
    m = machine()
    port = tile // m.ld_bytes_per_cycle
    assert tile == 2 * m.dma_window_bytes
    from_hbm = max(port, m.hbm_latency + 1) + m.hbm_latency
    from_l2 = max(port, m.l2_latency + 1) + m.l2_latency
    assert without.report.cycles - with_l2.report.cycles == from_hbm - from_l2
    assert "L2 served" in with_l2.report.to_text()


STREAM = """
.tensor a, bf16, [4096, 256], 0x0, in
    DESC d0, a, bf16, [4096, 256], [256, 1], [256, 256]
    LOOP r1, 2
    LI r2, 0
    LOOP r3, 16
    DMA.LD L1[0], d0[r2, 0] .sig E0
    WAIT.LD E0
    ADD r2, r2, 256
    ENDLOOP
    ENDLOOP
    HALT
"""


@pytest.mark.parametrize("l2, second_pass_hits", [('"4 MiB"', True), ('"1 MiB"', False)])
def test_a_stream_larger_than_the_l2_misses_again(l2, second_pass_hits):
    size = 4096 * 256 * 2  # 2 MiB, read twice
    # (fast-forward off: it does not enter the lines of the iterations it skips in the tags)
    report = run_asm(STREAM, machine=machine(l2=l2), timing_only=True,
                     fast_forward=False).report
    assert report.hbm_read_bytes == (size if second_pass_hits else 2 * size)


def test_l2_runs_are_deterministic():
    first = run_asm(STREAM, machine=machine(l2='"1536 KiB"')).report
    second = run_asm(STREAM, machine=machine(l2='"1536 KiB"')).report
    assert (first.cycles, first.hbm_read_bytes, first.l2_hit_bytes) == (
        second.cycles, second.hbm_read_bytes, second.l2_hit_bytes)


def test_vectorised_cache_agrees_with_the_per_block_reference():
    """runtime/l2.py looks a transfer up all at once (sorted tags, LRU stamps); the first,
    per-block OrderedDict model (tests/runtime/l2_reference.py) must give the same misses,
    hit readiness, partial DRAM rows, residency and hits on random reads and writes."""
    import random

    import l2_reference
    for seed in range(24):
        rng = random.Random(seed)
        line = rng.choice([64, 128])
        block = line * rng.choice([1, 4, 8, 64])
        size = line * rng.choice([16, 64, 200, 1000])
        row = rng.choice([None, line, 2 * line, 1024])
        new, old = L2Cache(size, line, block, row), l2_reference.L2Cache(size, line, block, row)
        new.queue_slack = 0 if seed % 2 else 8  # renumber the LRU stamps often, or now and then
        clock = 0.0
        for _ in range(150):
            rows, cols, item = rng.randrange(1, 20), rng.randrange(1, 300), rng.choice([1, 2, 4])
            stride = rng.choice([cols, cols + rng.randrange(0, 500), 0, 4096]) * item
            box = (rng.randrange(0, 64 * block), (rows, cols), (stride, item), item)
            a, b = new.lines(*box), old.lines(*box)
            clock += rng.random() * 100
            if rng.random() < 0.7:
                assert new.read(a) == old.read(b)
                assert len(new.partial_rows) == old.partial_rows  # the rows, by number
                new.landed(clock)
                old.landed(clock)
            else:
                assert len(new.partly_written_rows(a)) == old.partly_written_rows(b)
                new.write(a, clock)
                old.write(b, clock)
            assert (new.resident, new.hit_bytes) == (old.resident, old.hit_bytes)
        assert new.resident_blocks().tolist() == sorted(old.blocks)
