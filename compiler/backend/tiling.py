"""Tile sizes of the elementwise and reduction nests, from the loaded machine.

Pure functions of the iteration extents, the bytes each tile element costs in L1, and a
`Machine` (`l1_bytes`, `cores`). Every tile they return fits L1 with both copies of every
double-buffered buffer, and, where the extents allow, gives at least one tile per core.
Nothing about the machine is assumed here. Matrix products are tiled by the one tile-cost
model instead (compiler/backend/tile_cost.py, searched by `gemm.choose_gemm_tile`).
"""

from __future__ import annotations

from math import ceil, prod

# Below this many elements a tile's fixed costs (DMA latency, instruction issue) dominate,
# so the tiler does not shrink tiles under it just to feed more cores.
MIN_TILE_ELEMS = 1024


def round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def map_tile(extents: tuple[int, ...], bytes_per_elem: int, machine,
             reserve: int = 0) -> tuple[int, ...]:
    """The tile of an elementwise nest: at most the last two axes are cut, rows x cols.

    `bytes_per_elem` is the L1 bytes one tile element costs over all buffers and copies;
    `reserve` bytes of L1 are kept for alignment.
    """
    capacity = max((machine.l1_bytes - reserve) // max(bytes_per_elem, 1), 1)
    total = prod(extents)
    per_core = ceil(total / machine.cores)
    elems = max(min(capacity, max(per_core, MIN_TILE_ELEMS)), 1)
    elems = min(elems, capacity)
    tile = [1] * len(extents)
    cols = min(extents[-1], elems)
    tile[-1] = cols
    if len(extents) >= 2:
        tile[-2] = max(min(extents[-2], elems // cols), 1)
    return tuple(tile)


def reduce_tile(kept: tuple[int, ...], reduced: tuple[int, ...], load_bytes: int,
                acc_bytes: int, machine, reserve: int = 0
                ) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Tiles of a reduction nest: rows over the last kept axis, cols over the last reduced
    axis. `load_bytes`: L1 bytes per loaded element (double-buffered); `acc_bytes`: L1 bytes
    per row of the accumulators (double-buffered); `reserve` bytes kept for alignment."""
    budget = machine.l1_bytes - reserve
    cols = min(reduced[-1], max(budget // (4 * load_bytes), 1))
    rows_cap = max(budget // (2 * load_bytes * cols + 2 * acc_bytes), 1)
    rows = min(kept[-1], rows_cap)
    outer = prod(kept[:-1])
    if outer < machine.cores and rows > 1:
        want_tiles_last = ceil(machine.cores / outer)
        rows = max(min(rows, ceil(kept[-1] / want_tiles_last)),
                   min(rows, max(MIN_TILE_ELEMS // cols, 1)))
    kept_tile = (1,) * (len(kept) - 1) + (rows,)
    reduced_tile = (1,) * (len(reduced) - 1) + (cols,)
    return kept_tile, reduced_tile
