"""The chip's shared L2: a sector cache of GM lines in front of HBM (timing only).

Every DMA between GM and a core passes the L2 (docs/design.md sections 7 and 8). The model keeps
tags, not data: GM always holds the current bytes (the L2 is write-through), so the cache only
decides where a transfer's bytes come from, what it costs, and how much HBM traffic it makes.

The cache holds `l2_bytes` of `l2_line_bytes` lines, allocated in blocks of `l2_block_bytes`
(a sector cache: a block's lines are valid one by one) and replaced whole blocks at a time,
least recently used first, over the whole cache (fully associative: no set conflicts).

- A **read** looks up each line its box touches. Bytes in valid lines are *hits*: they come
  from the L2 (L2 bandwidth and latency). Each other line is a *miss*: it is read whole from HBM
  (HBM bandwidth and latency; a line is the unit of HBM traffic) and becomes valid. Streaming a
  line-aligned tensor once costs exactly its bytes; a box that ends inside a line fetches the
  whole line, and the next box that reads the rest of it hits.
- A **write** goes through to HBM (its exact bytes) and makes valid every line it covers
  completely (allocate without fetch); a line it covers partly keeps its state.
- A line being filled is usable once its fill has landed: a hit completes no earlier than that
  (the miss merging of a real cache), so an L2 never makes data arrive before HBM does. Landing
  times are kept per block.

`l2_bytes = 0` in a machine file turns the model off (every byte then comes from HBM).

`L2Cache.lines` turns a strided box into the blocks it touches, with per block the mask of the
lines it reads and its bytes in each; the simulator caches that per decoded operand set, so a
loop that revisits a tile pays for the geometry once and for a dict lookup per block after.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import numpy as np

_SPAN_LIMIT = 1 << 16  # (run, line) pairs expanded at once before the per-run path


def collapse(shape: tuple[int, ...], strides: tuple[int, ...],
             itemsize: int) -> tuple[list[int], list[int]]:
    """Drop unit dims, order the rest by stride (which bytes a box touches does not depend on
    the order it walks them: a transposed box touches what its transpose does) and merge dims
    that are contiguous in each other (byte strides)."""
    dims = sorted(((n, s) for n, s in zip(shape, strides) if n != 1), key=lambda d: -abs(d[1]))
    merged: list[list[int]] = []  # innermost first while building
    for n, s in reversed(dims):
        if merged and s == merged[-1][0] * merged[-1][1]:
            merged[-1][0] *= n
        else:
            merged.append([n, s])
    merged.reverse()
    if not merged or merged[-1][1] != itemsize:
        merged.append([1, itemsize])  # innermost run of one element
    return [n for n, _ in merged], [s for _, s in merged]


def box_lines(address: int, shape: tuple[int, ...], strides: tuple[int, ...], itemsize: int,
              line_bytes: int) -> tuple[np.ndarray, np.ndarray]:
    """The GM lines a box touches (sorted, unique) and how many of its bytes fall in each.

    `strides` are in bytes. The box is cut into contiguous runs (its innermost contiguous
    dims merged); each run covers the lines from its first to its last byte.
    """
    if math.prod(shape) == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty
    # a zero-stride dim reads the same bytes again: walk them once, count them `repeat` times
    repeat = math.prod(n for n, s in zip(shape, strides) if s == 0)
    kept = [(n, s) for n, s in zip(shape, strides) if s != 0]
    dims, dim_strides = collapse(tuple(n for n, _ in kept), tuple(s for _, s in kept), itemsize)
    run = dims[-1] * dim_strides[-1]
    starts = np.array([address], dtype=np.int64)
    for n, s in zip(dims[:-1], dim_strides[:-1]):
        starts = (starts[:, None] + np.arange(n, dtype=np.int64)[None, :] * s).reshape(-1)
    ends = starts + run
    first = starts // line_bytes
    last = (ends - 1) // line_bytes
    span = int((last - first).max()) + 1
    if span * starts.size > _SPAN_LIMIT and span > 1:
        # long runs: whole middle lines are full; only the two end lines are partial
        counts = last - first + 1
        lines = np.repeat(first - np.cumsum(counts) + counts, counts) + np.arange(counts.sum())
        lo = np.maximum(lines * line_bytes, np.repeat(starts, counts))
        hi = np.minimum((lines + 1) * line_bytes, np.repeat(ends, counts))
    else:
        lines = first[:, None] + np.arange(span, dtype=np.int64)[None, :]
        valid = lines <= last[:, None]
        lo = np.maximum(lines * line_bytes, starts[:, None])[valid]
        hi = np.minimum((lines + 1) * line_bytes, ends[:, None])[valid]
        lines = lines[valid]
    if lines.size > 1 and bool((lines[1:] > lines[:-1]).all()):
        unique, counts = lines, hi - lo  # runs in address order that share no line
    else:
        unique, inverse = np.unique(lines, return_inverse=True)
        counts = np.bincount(inverse, weights=(hi - lo)).astype(np.int64)
    # a zero stride reads the same bytes again: a line still holds at most line_bytes
    counts = np.minimum(counts, line_bytes)
    if repeat > 1:
        counts = np.minimum(counts * min(repeat, line_bytes), line_bytes)
    return unique, counts


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
