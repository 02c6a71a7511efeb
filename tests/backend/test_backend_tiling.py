"""The tiler: tiles fit L1/ACC of the loaded machine and spread over its cores."""

from __future__ import annotations

from dataclasses import replace
from math import ceil

import numpy as np
import pytest
from zhenwu.compiler.backend.tile_cost import VectorWork
from zhenwu.compiler.backend.tiling import map_tile, reduce_tile
from zhenwu.isa.machine import load_machine

MACHINES = ["m890", "z810e"]


def _matmul_nest(batch, m, n, k, dtype, machine):
    """The -O0 plain product's nest of a[batch, m, k] @ b[k, n]."""
    from zhenwu.compiler.backend.lower import TensorView, matmul_nest

    def view(name, shape):
        strides = tuple(int(np.prod(shape[i + 1:])) for i in range(len(shape)))
        return TensorView(name, dtype, 0, shape, strides)

    return matmul_nest(view("a", (batch, m, k)), view("b", (k, n)), view("c", (batch, m, n)),
                       machine)


@pytest.mark.parametrize("name", MACHINES)
@pytest.mark.parametrize("batch,m,n,k", [(1, 1, 1, 1), (1, 7, 13, 17), (1, 4096, 4096, 4096),
                                         (1, 17, 4096, 33), (1, 100000, 16, 16),
                                         (12, 77, 33, 129), (1, 17, 4096, 4096)])
def test_matmul_nest_tile_fits(name, batch, m, n, k):
    """The plain product's tile (the GEMM chooser's) is made of MX blocks and every copy of
    every buffer fits L1 and ACC."""
    machine = load_machine(name)
    for dtype in ("bf16", "f32") + (("fp8",) if machine.mx_rate("fp8") else ()):
        nest = _matmul_nest(batch, m, n, k, dtype, machine)
        tm, tn, tk = nest.tile[-3:]
        assert tm % machine.mx_m == 0 and tn % machine.mx_n == 0 and tk % machine.mx_k == 0
        for level, size in (("L1", machine.l1_bytes), ("ACC", machine.acc_bytes)):
            used = [b for b in nest.buffers if b.level == level]
            assert max(b.offset + b.footprint for b in used) <= size


def test_matmul_nest_takes_the_gemm_kernels_tile():
    """-O0's plain product and -O2's GEMM kernel of no epilogue choose from the one model:
    the same tile, accumulator copies and grouped order; every core has a tile."""
    from zhenwu.compiler.backend.gemm import choose_gemm_tile

    machine = load_machine("m890")
    for m, n, k in ((4096, 4096, 4096), (256, 256, 64), (64, 12288, 512)):
        nest = _matmul_nest(1, m, n, k, "bf16", machine)
        tile = choose_gemm_tile(1, m, n, k, "bf16", "f32", 2, 2, 2, 0, 0, VectorWork(), machine)
        assert nest.tile[-3:] == (tile.tile_m, tile.tile_n, tile.tile_k)
        assert nest.buffer("c").copies == tile.acc_copies
        assert nest.group == (tile.group if tile.group > 1 else 0)
        assert ceil(m / tile.tile_m) * ceil(n / tile.tile_n) >= machine.cores


def test_tiles_follow_a_smaller_machine():
    small = replace(load_machine("m890"), l1_bytes=64 * 1024, acc_bytes=16 * 1024, cores=4)
    nest = _matmul_nest(1, 4096, 4096, 4096, "bf16", small)
    tm, tn, tk = nest.tile[-3:]
    assert nest.buffer("c").copies * tm * tn * 4 <= small.acc_bytes
    assert 2 * (tm * tk + tk * tn) * 2 <= small.l1_bytes
    tile = map_tile((1 << 20,), 24, small)
    assert tile[0] * 24 <= small.l1_bytes


@pytest.mark.parametrize("extents", [(1,), (13,), (7, 1), (3, 5, 7), (1 << 22,), (5000, 5000)])
def test_map_tile_fits(extents):
    machine = load_machine("m890")
    tile = map_tile(extents, 24, machine)
    assert all(1 <= t <= e for t, e in zip(tile, extents))
    assert tile[-1] * (tile[-2] if len(tile) > 1 else 1) * 24 <= machine.l1_bytes


@pytest.mark.parametrize("kept,reduced", [((1,), (1 << 20,)), ((4096,), (10,)), ((7,), (13,))])
def test_reduce_tile_fits(kept, reduced):
    machine = load_machine("m890")
    kt, rt = reduce_tile(kept, reduced, 4, 4, machine)
    rows, cols = kt[-1], rt[-1]
    assert rows <= kept[-1] and cols <= reduced[-1]
    assert 2 * rows * cols * 4 + 2 * rows * 4 <= machine.l1_bytes


def test_grouped_gemm_runs_every_tile_once():
    """A GEMM of 16 x 12 tiles on 32 cores in grouped order (several tiles per core, race
    checked): every tile computed once, exactly."""
    from backend_helpers import compile_and_run

    _, compiled, _, _ = compile_and_run(
        "fn main(a: bf16[2048, 64], b: bf16[64, 1536]) -> bf16[2048, 1536] {\n"
        "    return a @ b\n}\n", opt_level=2)
    (nest,) = compiled.kernels.kernels[0].nests
    assert nest.group > 1 and nest.parallel_tiles > 2 * 32
    assert nest.grid[0] % nest.group == 0


def test_skinny_gemm_reads_its_big_operand_once():
    """M = 64 against a 12288 x 12288 B that does not fit the A100's L2: the tile covers all
    of M (or a group does), so B streams from HBM once, not once per m tile."""
    from math import ceil

    from zhenwu.compiler.backend.gemm import choose_gemm_tile
    from zhenwu.compiler.backend.tile_cost import hbm_traffic

    target = load_machine("a100")
    tile = choose_gemm_tile(1, 64, 12288, 12288, "f16", "f32", 2, 2, 2, 0, 0, VectorWork(),
                            target)
    assert ceil(64 / tile.tile_m) <= tile.group
    once = 64 * 12288 * 2 + 12288 * 12288 * 2 + 64 * 12288 * 2
    assert hbm_traffic(1, 64, 12288, 12288, tile.tile_m, tile.tile_n, 2, 2, 2, tile.group,
                       target) == once


def test_grouped_order_cuts_hbm_traffic_of_a_big_square_gemm():
    """8192^3 f16 on the A100 (A and B 128 MiB each, L2 40 MiB): row-major order re-reads B
    once per m tile; the chosen group shares B panels and reads far less."""
    from zhenwu.compiler.backend.gemm import choose_gemm_tile
    from zhenwu.compiler.backend.tile_cost import hbm_traffic

    target = load_machine("a100")
    tile = choose_gemm_tile(1, 8192, 8192, 8192, "f16", "f32", 2, 2, 2, 0, 0, VectorWork(),
                            target)
    args = (1, 8192, 8192, 8192, tile.tile_m, tile.tile_n, 2, 2, 2)
    assert tile.group > 1
    assert hbm_traffic(*args, tile.group, target) * 4 < hbm_traffic(*args, 1, target)


def test_a_plain_gemm_keeps_l1_for_its_operands_when_acc_is_double_buffered():
    """The A100's ACC (256 KiB register file) holds two 128 x 256 f32 accumulators; a plain
    product has no epilogue tiles in L1, so the second accumulator copy must not take L1 too
    (it did: 128 KiB of the 164 KiB L1, leaving tile_k 20). Two copies of the operand tiles
    fill the L1: tile_k = 164 KiB - 8 alignments over 2 (tile_m + tile_n) 2 B."""
    from zhenwu.compiler.backend.gemm import choose_gemm_tile
    from zhenwu.compiler.backend.lower import ALIGN

    target = load_machine("a100")
    tile = choose_gemm_tile(1, 8192, 4096, 4096, "f16", "f32", 2, 2, 2, 0, 0, VectorWork(),
                            target)
    assert tile.acc_copies == 2
    cap = (target.l1_bytes - 8 * ALIGN) // (2 * (tile.tile_m + tile.tile_n) * 2) // 4 * 4
    assert tile.tile_k > 100 and tile.tile_k <= cap
    assert 2 * (tile.tile_m + tile.tile_n) * tile.tile_k * 2 <= target.l1_bytes


def test_tile_search_floor_prunes_without_changing_the_choice():
    """`choose_gemm_tile` skips tilings whose `product_floor` is out of reach of the best found
    so far; with `ranked` (the tuner's full list) it visits every one. Both must choose the
    same tile, on every machine, for products of many shapes, dtypes and options."""
    import random

    from zhenwu.compiler.backend.gemm import choose_gemm_tile
    from zhenwu.compiler.backend.tile_cost import product_cost, product_floor
    from zhenwu.compiler.graph.dtypes import itemsize
    from zhenwu.isa.machine import load_machine

    rng = random.Random(7)
    for name in ("m890", "z810e", "a100"):
        machine = load_machine(name)
        dtypes = ["bf16", "f32"] + (["fp8"] if machine.mx_rate("fp8") else [])
        for _ in range(60):
            m = rng.choice([1, 16, 100, 512, 4096])
            n = rng.choice([64, 96, 1024, 5120])
            k = rng.choice([16, 300, 512, 5120])
            dtype = rng.choice(dtypes)
            size = itemsize(dtype)
            options = {"b_k_major": rng.random() < 0.3, "whole_rows": rng.random() < 0.3}
            if rng.random() < 0.2:
                options.update(prologue_bytes=4, setup_bytes=4096)
            args = (rng.choice([1, 2, 8]), m, n, k, dtype, "f32", size, size,
                    rng.choice([2, 4]), rng.choice([0, 8]), rng.choice([0, 4]),
                    VectorWork(rng.choice([0, 2]), rng.choice([0, 1])), machine)
            ranked = []
            assert choose_gemm_tile(*args, **options) == choose_gemm_tile(
                *args, ranked=ranked, **options), (name, args, options)
    # the floor is below the cost of every k tile of a tiling
    machine = load_machine("m890")
    for tile_k in (64, 128, 256, 512):
        cost = product_cost(1, 512, 512, 512, 128, 128, tile_k, 2, 4, 4, 4, "f32",
                            VectorWork(1), machine)
        steps = -(-512 // tile_k)
        assert product_floor(1, 512, 512, 512, 128, 128, steps, 4, 4, 4, "f32", VectorWork(1),
                             machine) <= cost
