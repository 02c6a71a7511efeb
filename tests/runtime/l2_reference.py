"""The L2 model as it was first written (one OrderedDict entry per block, moved to the end
on each use, a Python loop per block): the reference that runtime/l2.py's vectorised cache
must agree with on every read, write and eviction (tests/runtime/test_runtime_l2.py)."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
from zhenwu.runtime.l2 import box_lines


class Lines:
    """What one transfer touches, per block: `blocks` (block numbers), `masks` (the lines it
    touches, bit i = line i of the block), `full` (the lines it covers whole), `nbytes` (its
    bytes in the block) and `offsets` (where the block's entries start in `line_nbytes`, its
    bytes per touched line in line order; both None when every line is whole); `total` bytes
    in all."""

    __slots__ = ("blocks", "full", "line_nbytes", "lines", "masks", "nbytes", "offsets",
                 "total")

    def __init__(self, lines: np.ndarray, nbytes: np.ndarray, line_bytes: int, shift: int):
        blocks = lines >> shift
        # unsigned: a block of 64 lines uses bit 63
        bits = np.left_shift(np.uint64(1), (lines - (blocks << shift)).astype(np.uint64))
        cuts = np.flatnonzero(np.diff(blocks)) + 1
        starts = np.concatenate(([0], cuts)) if lines.size else cuts
        self.blocks = blocks[starts].tolist()
        self.masks = np.bitwise_or.reduceat(bits, starts).tolist() if lines.size else []
        full = np.where(nbytes == line_bytes, bits, 0)
        self.full = np.bitwise_or.reduceat(full, starts).tolist() if lines.size else []
        self.nbytes = np.add.reduceat(nbytes, starts).tolist() if lines.size else []
        # per-line bytes only where some line is partial (a whole-line box needs none)
        whole = bool((nbytes == line_bytes).all())
        self.offsets = None if whole else starts.tolist()
        self.line_nbytes = None if whole else nbytes.tolist()
        self.total = int(nbytes.sum())
        self.lines = int(lines.size)  # lines touched: what the L2's bandwidth is charged by


class L2Cache:
    """The tags of a `size_bytes` cache of `line_bytes` lines in `block_bytes` blocks (both
    powers of two, at most 64 lines a block: the machine loader checks)."""

    def __init__(self, size_bytes: int, line_bytes: int, block_bytes: int,
                 row_bytes: int | None = None):
        self.line_bytes = line_bytes
        # DRAM rows as masks of a block's lines (a row of a block or more: the block)
        per_block = block_bytes // line_bytes
        per_row = min(per_block, max(1, (row_bytes or block_bytes) // line_bytes))
        ones = (1 << per_row) - 1
        self.row_masks = tuple(ones << i for i in range(0, per_block, per_row))
        self.partial_rows = 0  # DRAM rows the last read touched only partly
        self.shift = (block_bytes // line_bytes).bit_length() - 1  # line -> block
        self.capacity = size_bytes // line_bytes  # in lines
        self.resident = 0  # valid lines
        self.blocks: OrderedDict[int, list] = OrderedDict()  # block -> [valid mask, landed at]
        self.read_bytes = 0
        self.hit_bytes = 0
        self.write_bytes = 0
        self._filled: list[list] = []  # the entries the last read filled

    def lines(self, address: int, shape: tuple[int, ...], strides: tuple[int, ...],
              itemsize: int) -> Lines:
        """The `Lines` of a box (`strides` in bytes), ready for `read` and `write`."""
        lines, nbytes = box_lines(address, shape, strides, itemsize, self.line_bytes)
        return Lines(lines, nbytes, self.line_bytes, self.shift)

    def read(self, box: Lines) -> tuple[int, float]:
        """Look up a read of `box` and fill the lines it misses (`landed` then says when their
        fills land). Return (HBM bytes: whole missed lines, the latest landing time of a line
        that hit)."""
        self.read_bytes += box.total
        blocks = self.blocks
        filled = self._filled
        missed_lines = 0
        missed_bytes = 0
        partial = 0
        hit_ready = 0.0
        for index, block in enumerate(box.blocks):
            wanted = box.masks[index]
            entry = blocks.get(block)
            if entry is None:
                entry = blocks[block] = [wanted, 0.0]
                missed_lines += wanted.bit_count()
                missed_bytes += box.nbytes[index]
                partial += self._partial(wanted, wanted)
                filled.append(entry)
                continue
            blocks.move_to_end(block)
            missing = wanted & ~entry[0]
            if missing != wanted and entry[1] > hit_ready:
                hit_ready = entry[1]
            if missing:
                partial += self._partial(missing, missing)
                entry[0] |= missing
                missed_lines += missing.bit_count()
                missed_bytes += (missing.bit_count() * self.line_bytes
                                 if box.line_nbytes is None else
                                 _masked_bytes(wanted, missing, box.line_nbytes,
                                               box.offsets[index]))
                filled.append(entry)
        self.hit_bytes += box.total - missed_bytes
        self.partial_rows = partial
        if missed_lines:
            self.resident += missed_lines
            self._evict()
        return missed_lines * self.line_bytes, hit_ready

    def landed(self, time: float) -> None:
        """The fills of the last `read` land at `time`."""
        for entry in self._filled:
            entry[1] = time
        self._filled = []

    def write(self, box: Lines, ready: float) -> None:
        """A write-through store of `box`, landed at `ready`: the lines it covers whole become
        valid; the others keep their state."""
        self.write_bytes += box.total
        blocks = self.blocks
        added = 0
        for index, block in enumerate(box.blocks):
            full = box.full[index]
            entry = blocks.get(block)
            if entry is None:
                if full:
                    blocks[block] = [full, ready]
                    added += full.bit_count()
                continue
            blocks.move_to_end(block)
            added += (full & ~entry[0]).bit_count()
            entry[0] |= full
            entry[1] = max(entry[1], ready)
        if added:
            self.resident += added
            self._evict()

    def partly_written_rows(self, box: Lines) -> int:
        """The DRAM rows a write of `box` touches but does not cover whole."""
        partial = 0
        for index, mask in enumerate(box.masks):
            partial += self._partial(mask, box.full[index])
        return partial

    def _partial(self, touched: int, whole: int) -> int:
        """DRAM rows of a block that `touched` (a line mask) touches but `whole` does not
        cover completely."""
        count = 0
        for row in self.row_masks:
            if touched & row and whole & row != row:
                count += 1
        return count

    def _evict(self) -> None:
        """Drop least recently used blocks until the valid lines fit."""
        blocks = self.blocks
        while self.resident > self.capacity:
            _, (mask, _) = blocks.popitem(last=False)
            self.resident -= mask.bit_count()


def _masked_bytes(wanted: int, missing: int, line_nbytes: list[int], position: int) -> int:
    """The bytes under `missing` of `line_nbytes[position:]`, one per set bit of `wanted`."""
    total = 0
    bits = wanted
    while bits:
        low = bits & -bits
        if missing & low:
            total += line_nbytes[position]
        position += 1
        bits ^= low
    return total
