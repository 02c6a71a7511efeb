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
loop that revisits a tile pays for the geometry once and for one vectorised lookup of its
blocks after (`L2Cache` keeps its tags in sorted numpy arrays).
"""

from __future__ import annotations

import math

import numpy as np

_SPAN_LIMIT = 1 << 16  # (run, line) pairs expanded at once before the per-run path
# ufunc reductions called directly (no Python wrapper: the L2 is looked up for every DMA)
_max = np.maximum.reduce
_sum = np.add.reduce
_all = np.logical_and.reduce
_TEMPLATES = 1 << 12  # box geometries kept by `L2Cache.lines` (cleared when full)


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
    """What one transfer touches, per block, as numpy arrays in block order: `blocks` (block
    numbers, ascending), `masks` (the lines it touches, bit i = line i of the block), `full`
    (the lines it covers whole); per touched line (only where some line is partial, else
    None): `line_block` (its index in `blocks`), `line_bit` (its bit) and `line_nbytes` (its
    bytes); `total` bytes in all and `lines` lines touched."""

    __slots__ = ("_origin", "_written_rows", "blocks", "box", "full", "line_bit", "line_block",
                 "line_nbytes",
                 "lines", "masks", "total")

    def __init__(self, lines: np.ndarray, nbytes: np.ndarray, line_bytes: int, shift: int):
        blocks = lines >> shift
        # unsigned: a block of 64 lines uses bit 63
        bits = np.left_shift(np.uint64(1), (lines - (blocks << shift)).astype(np.uint64))
        cuts = np.flatnonzero(np.diff(blocks)) + 1
        starts = np.concatenate(([0], cuts)).astype(np.int64) if lines.size else cuts
        self.blocks = blocks[starts]
        self.masks = np.bitwise_or.reduceat(bits, starts) if lines.size else \
            np.zeros(0, np.uint64)
        full = np.where(nbytes == line_bytes, bits, np.uint64(0))
        self.full = np.bitwise_or.reduceat(full, starts) if lines.size else \
            np.zeros(0, np.uint64)
        # per-line bytes only where some line is partial (a whole-line box needs none)
        if bool((nbytes == line_bytes).all()):
            self.line_block = self.line_bit = self.line_nbytes = None
        else:
            self.line_block = np.cumsum(np.concatenate(([0], np.diff(blocks) != 0)))
            self.line_bit = bits
            self.line_nbytes = nbytes.astype(np.int64)
        self.total = int(nbytes.sum())
        self.lines = int(lines.size)  # lines touched: what the L2's bandwidth is charged by
        self._written_rows = None
        self._origin = self  # the box this one is a shifted copy of (shares its rows)
        self.box = None  # (address, shape, strides, itemsize) when made by `L2Cache.lines`

    def shifted(self, blocks: int) -> Lines:
        """The same box moved by a whole number of `blocks`: its blocks move, everything
        else (which lines of each block, their bytes) is the same; the DRAM rows it covers
        partly are its origin's, moved (`L2Cache.partly_written_rows`)."""
        moved = Lines.__new__(Lines)
        moved.blocks = self.blocks + blocks
        moved.masks = self.masks
        moved.full = self.full
        moved.line_block = self.line_block
        moved.line_bit = self.line_bit
        moved.line_nbytes = self.line_nbytes
        moved.total = self.total
        moved.lines = self.lines
        moved._written_rows = None   # row numbers move with the blocks (`partly_written_rows`)
        moved._origin = self._origin
        moved.box = None
        return moved


class L2Cache:
    """The tags of a `size_bytes` cache of `line_bytes` lines in `block_bytes` blocks (both
    powers of two, at most 64 lines a block: the machine loader checks).

    The tags are numpy arrays indexed by block number, grown to the highest block touched:
    `valid` (the mask of valid lines; 0: not resident), `ready` (when the last fill landed)
    and `stamp` (the last use). A transfer is looked up all at once (one gather of its
    blocks), its blocks stamped in the order they are touched, and least recently used means
    smallest stamp: the same replacement as a list that moves each touched block to its end,
    at numpy speed per transfer instead of Python speed per block."""

    queue_slack = 65536  # stale LRU queue entries kept before the stamps are renumbered

    def __init__(self, size_bytes: int, line_bytes: int, block_bytes: int,
                 row_bytes: int | None = None):
        self.line_bytes = line_bytes
        # DRAM rows as masks of a block's lines (a row of a block or more: the block)
        per_block = block_bytes // line_bytes
        per_row = min(per_block, max(1, (row_bytes or block_bytes) // line_bytes))
        ones = (1 << per_row) - 1
        self.row_masks = np.array([ones << i for i in range(0, per_block, per_row)],
                                  dtype=np.uint64)
        # a DRAM row's number: rows of a block or more hold `blocks_per_row` blocks
        self.blocks_per_row = max(1, (row_bytes or block_bytes) // block_bytes)
        self.partial_rows = _NO_ROWS  # the DRAM rows the last read touched only partly
        self.shift = (block_bytes // line_bytes).bit_length() - 1  # line -> block
        self.capacity = size_bytes // line_bytes  # in lines
        self.resident = 0  # valid lines
        self.valid = np.zeros(0, np.uint64)
        self.ready = np.zeros(0, np.float64)
        self.stamp = np.zeros(0, np.int64)
        self.clock = 0  # stamps handed out so far
        # the blocks in stamp order from stamp `_base` (the LRU queue; an entry whose block
        # has a later stamp since, or is gone, is stale), appended in `_pending` chunks,
        # scanned from `_head` by evictions: an eviction costs the entries it passes
        self._order = np.zeros(0, np.int64)
        self._pending: list[np.ndarray] = []
        self._base = 0
        self._head = 0
        self._queued = 0  # entries in `_order[_head:]` and `_pending`
        self.read_bytes = 0
        self.hit_bytes = 0
        self.write_bytes = 0
        self._filled = None  # the blocks the last read filled
        # box geometry at block offset 0.. by (offset, shape, strides, itemsize): `lines`
        self._templates: dict[tuple, Lines] = {}

    def lines(self, address: int, shape: tuple[int, ...], strides: tuple[int, ...],
              itemsize: int) -> Lines:
        """The `Lines` of a box (`strides` in bytes), ready for `read` and `write`.

        A box moved by whole blocks touches the same lines of its (moved) blocks, so the
        geometry is worked out once per shape, strides and offset in a block; the other
        boxes of that kind (the rows and tiles of a tensor) are shifted copies of it."""
        block_bytes = self.line_bytes << self.shift
        offset = address % block_bytes
        key = (offset, shape, strides, itemsize)
        template = self._templates.get(key)
        if template is None:
            if len(self._templates) >= _TEMPLATES:
                self._templates.clear()
            lines, nbytes = box_lines(offset, shape, strides, itemsize, self.line_bytes)
            template = self._templates[key] = Lines(lines, nbytes, self.line_bytes, self.shift)
        moved = template.shifted((address - offset) // block_bytes)
        moved.box = (address, shape, strides, itemsize)
        return moved

    def resident_blocks(self) -> np.ndarray:
        """The block numbers with a valid line, ascending."""
        return np.flatnonzero(self.valid)

    def _grow(self, blocks: np.ndarray) -> None:
        """Make the tables reach the highest of `blocks` (ascending)."""
        if not blocks.size or blocks[-1] < self.valid.size:
            return
        size = max(int(blocks[-1]) + 1, 2 * self.valid.size, 1024)
        grow = size - self.valid.size
        self.valid = np.concatenate([self.valid, np.zeros(grow, np.uint64)])
        self.ready = np.concatenate([self.ready, np.zeros(grow, np.float64)])
        self.stamp = np.concatenate([self.stamp, np.zeros(grow, np.int64)])

    def read(self, box: Lines) -> tuple[int, float]:
        """Look up a read of `box` and fill the lines it misses (`landed` then says when their
        fills land). Return (HBM bytes: whole missed lines, the latest landing time of a line
        that hit)."""
        self.read_bytes += box.total
        blocks = box.blocks
        self._grow(blocks)
        have = self.valid[blocks]
        self.stamp[blocks] = self._stamps(blocks)
        wanted = box.masks
        got = wanted & have
        # a block it hit a line of (ready times are never negative: max from 0)
        hit_ready = float(_max(self.ready[blocks], where=got != 0, initial=0.0))
        if _all(got == wanted):  # every line hit
            self.hit_bytes += box.total
            self.partial_rows = _NO_ROWS
            self._filled = None
            return 0, hit_ready
        missing = wanted ^ got  # wanted & ~have
        missed_lines = int(_sum(np.bitwise_count(missing)))
        self.ready[blocks[have == 0]] = 0.0  # a new block: nothing has landed yet
        self.valid[blocks] = have | wanted
        if box.line_nbytes is None:
            missed_bytes = missed_lines * self.line_bytes
        else:
            missed_bytes = int(box.line_nbytes[(missing[box.line_block] & box.line_bit) != 0]
                               .sum())
        self.hit_bytes += box.total - missed_bytes
        self.partial_rows = _partial(blocks, missing, missing, self.row_masks,
                                     self.blocks_per_row)
        self._filled = blocks[missing != 0]
        self.resident += missed_lines
        self._evict()
        return missed_lines * self.line_bytes, hit_ready

    def landed(self, time: float) -> None:
        """The fills of the last `read` land at `time`."""
        filled = self._filled
        self._filled = None
        if filled is None or not filled.size:
            return
        filled = filled[self.valid[filled] != 0]  # a block the read itself evicted is gone
        self.ready[filled] = time

    def write(self, box: Lines, ready: float) -> None:
        """A write-through store of `box`, landed at `ready`: the lines it covers whole become
        valid; the others keep their state."""
        self.write_bytes += box.total
        blocks = box.blocks
        self._grow(blocks)
        have = self.valid[blocks]
        full = box.full
        stamps = self._stamps(blocks)
        found = have != 0
        touched = found | (full != 0)  # a block it covers no line of whole stays out
        self.stamp[blocks[touched]] = stamps[touched]
        old = blocks[found]
        self.ready[old] = np.maximum(self.ready[old], ready)
        self.ready[blocks[~found & touched]] = ready
        self.valid[blocks] = have | full
        added = int(np.bitwise_count(full & ~have).sum())
        if added:
            self.resident += added
            self._evict()

    def age(self, lines: int) -> None:
        """Make room as if `lines` new lines had been filled (and then forgotten): evict the
        least recently used lines that many fills would have pushed out. Fast-forward calls
        it for skipped fills whose tags it does not replay."""
        if lines <= 0:
            return
        capacity = self.capacity
        self.capacity = max(0, capacity - lines)
        try:
            self._evict()
        finally:
            self.capacity = capacity

    def partly_written_rows(self, box: Lines) -> np.ndarray:
        """The DRAM rows (numbers, ascending) a write of `box` touches but does not cover
        whole."""
        if box._written_rows is None:
            origin = box._origin
            if self.blocks_per_row == 1 and box is not origin:
                # rows within a block: a box moved by d blocks covers its origin's rows,
                # d * rows-per-block later
                rows = self.partly_written_rows(origin)
                moved = int(box.blocks[0] - origin.blocks[0]) if box.blocks.size else 0
                box._written_rows = rows + moved * len(self.row_masks) if moved else rows
            else:
                box._written_rows = _partial(box.blocks, box.masks, box.full, self.row_masks,
                                             self.blocks_per_row)
        return box._written_rows

    def _stamps(self, blocks: np.ndarray) -> np.ndarray:
        """The next stamps, for a transfer's blocks in order, queued in the LRU queue. When
        stale entries would far outnumber the resident lines, the resident blocks' stamps are
        first renumbered 0, 1, ... in their order (nothing changes but the numbers) and the
        queue rebuilt from them."""
        if self._queued + blocks.size > 8 * self.resident + self.queue_slack:
            live = np.flatnonzero(self.valid)
            live = live[np.argsort(self.stamp[live], kind="stable")]
            self.stamp[live] = np.arange(live.size, dtype=np.int64)
            self.clock = live.size
            self._order = live
            self._pending = []
            self._base = self._head = 0
            self._queued = live.size
        stamps = np.arange(self.clock, self.clock + blocks.size, dtype=np.int64)
        self.clock += blocks.size
        self._pending.append(blocks)
        self._queued += blocks.size
        return stamps

    def _evict(self) -> None:
        """Drop least recently used blocks (smallest stamps) until the valid lines fit: walk
        the LRU queue from its head, skipping stale entries."""
        excess = self.resident - self.capacity
        if excess <= 0:
            return
        order = self._order
        position = self._head
        consumed = 0
        chunk = max(64, excess)
        while excess > 0:  # the resident blocks' entries are ahead: it ends
            if position + chunk > order.size and self._pending:  # (only then: copies once)
                order = self._order = np.concatenate([order[position:], *self._pending])
                self._base += position
                position = 0
                self._pending = []
            blocks = order[position:position + chunk]
            valid = self.valid[blocks]
            live = np.flatnonzero((valid != 0) & (self.stamp[blocks] == self._base + position
                                                  + np.arange(blocks.size)))
            lines = np.cumsum(np.bitwise_count(valid[live]).astype(np.int64))
            if lines.size and lines[-1] >= excess:
                cut = int(np.searchsorted(lines, excess)) + 1  # the fewest oldest that do
                self.valid[blocks[live[:cut]]] = 0
                self.resident -= int(lines[cut - 1])
                position += int(live[cut - 1]) + 1
                consumed += int(live[cut - 1]) + 1
                break
            self.valid[blocks[live]] = 0
            if lines.size:
                excess -= int(lines[-1])
                self.resident -= int(lines[-1])
            position += blocks.size
            consumed += blocks.size
            chunk *= 2
        self._queued -= consumed
        self._head = position


_NO_ROWS = np.zeros(0, dtype=np.int64)


def _partial(blocks: np.ndarray, touched: np.ndarray, whole: np.ndarray, row_masks,
             blocks_per_row: int) -> np.ndarray:
    """The numbers of the DRAM rows, over `blocks`, that `touched` (line masks per block)
    touches but `whole` does not cover completely (ascending; a row of several blocks once
    per block it is partly touched in)."""
    found = []
    rows_per_block = len(row_masks)
    for index, row in enumerate(row_masks):
        covered = whole & row
        partly = (touched & row != 0) & (covered != row)
        if partly.any():
            found.append(blocks[partly] // blocks_per_row * rows_per_block + index)
    if not found:
        return _NO_ROWS
    return np.sort(np.concatenate(found)) if len(found) > 1 else found[0]
