"""Tile sizes for the three nest shapes, from the loaded machine (docs/design.md section 5).

Pure functions of the iteration extents, the bytes each tile element costs in L1/ACC, and a
`Machine` (`l1_bytes`, `acc_bytes`, `cores`, `mx_m/n/k`). Every tile they return fits L1 and
ACC with both copies of every double-buffered buffer, and, where the extents allow, gives at
least one tile per core. Nothing about the machine is assumed here.
"""

from __future__ import annotations

from dataclasses import dataclass
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


def matmul_tile(batch: int, m: int, n: int, k: int, in_bytes: int, acc_elem_bytes: int,
                machine) -> tuple[int, int, int]:
    """(tile_m, tile_n, tile_k), multiples of the MX shape: the ACC holds two tile_m x
    tile_n accumulators, L1 two copies of the tile_m x tile_k and tile_k x tile_n operands."""
    mx_m, mx_n, mx_k = machine.mx_m, machine.mx_n, machine.mx_k
    tile_m = min(round_up(m, mx_m), 8 * mx_m)
    tile_n = min(round_up(n, mx_n), 16 * mx_n)
    while 2 * tile_m * tile_n * acc_elem_bytes > machine.acc_bytes and tile_n > mx_n:
        tile_n = max(round_up(tile_n // 2, mx_n), mx_n)
    while 2 * tile_m * tile_n * acc_elem_bytes > machine.acc_bytes and tile_m > mx_m:
        tile_m = max(round_up(tile_m // 2, mx_m), mx_m)

    def tiles() -> int:
        return batch * ceil(m / tile_m) * ceil(n / tile_n)

    # Feed every core, but keep tiles at least 2 x 2 MX blocks where they can be.
    while tiles() < machine.cores:
        if tile_n >= tile_m and tile_n > 2 * mx_n:
            tile_n = round_up(tile_n // 2, mx_n)
        elif tile_m > 2 * mx_m:
            tile_m = round_up(tile_m // 2, mx_m)
        else:
            break
    k_cap = machine.l1_bytes // (2 * (tile_m + tile_n) * in_bytes)
    k_cap = max(k_cap // mx_k * mx_k, mx_k)
    tile_k = min(round_up(k, mx_k), k_cap, 32 * mx_k)
    return tile_m, tile_n, tile_k


@dataclass(frozen=True)
class MatmulTile:
    """A matmul tiling and the cycles the cost model expects per core."""

    tile_m: int
    tile_n: int
    tile_k: int
    acc_copies: int
    cycles: float


def matmul_schedule(batch: int, m: int, n: int, k: int, in_dtype: str, in_bytes: int,
                    acc_elem_bytes: int, out_bytes: int, machine) -> MatmulTile:
    """The matmul tiling with the fewest modelled cycles.

    Candidates: tile_m, tile_n of 1, 2, 4, 8, 16 MX blocks, the accumulator double-buffered
    (stores overlap the next tile) or single (room for a bigger, more intense tile), tile_k
    as deep as two copies of the operands allow in L1. A step costs the larger of its MMA
    time and its operand loads (the core's port, or its share of HBM bandwidth when every
    active core loads at once); a tile adds its store when the accumulator is single.
    """
    mx_m, mx_n, mx_k = machine.mx_m, machine.mx_n, machine.mx_k
    rate = machine.mx_rate(in_dtype) or 1.0
    best: MatmulTile | None = None
    for blocks_m in (1, 2, 4, 8, 16):
        tile_m = blocks_m * mx_m
        if tile_m > round_up(m, mx_m) and blocks_m > 1:
            break
        for blocks_n in (1, 2, 4, 8, 16):
            tile_n = blocks_n * mx_n
            if tile_n > round_up(n, mx_n) and blocks_n > 1:
                break
            for copies in (2, 1):
                if copies * tile_m * tile_n * acc_elem_bytes > machine.acc_bytes:
                    continue
                k_cap = machine.l1_bytes // (2 * (tile_m + tile_n) * in_bytes) // mx_k * mx_k
                if k_cap < mx_k:
                    continue
                tile_k = min(round_up(k, mx_k), k_cap, 32 * mx_k)
                tiles = batch * ceil(m / tile_m) * ceil(n / tile_n)
                active = min(tiles, machine.cores)
                steps = ceil(k / tile_k)
                mma = (tile_m // mx_m) * (tile_n // mx_n) * (tile_k // mx_k) / rate
                ld_bytes = (tile_m + tile_n) * tile_k * in_bytes
                load = max(ld_bytes / machine.ld_bytes_per_cycle,
                           ld_bytes * active / machine.hbm_bytes_per_cycle)
                store = (tile_m * tile_n * out_bytes / machine.st_bytes_per_cycle
                         + machine.hbm_latency)
                per_tile = steps * max(mma, load) + (store if copies == 1 else 0)
                cycles = ceil(tiles / machine.cores) * per_tile + machine.hbm_latency + store
                if best is None or cycles < best.cycles * 0.999:
                    best = MatmulTile(tile_m, tile_n, tile_k, copies, cycles)
    assert best is not None, "an MX block always fits"
    return best
