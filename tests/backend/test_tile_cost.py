"""The one tile-cost model (compiler/backend/tile_cost.py): the GEMM and conv choosers and the
-O0 matmul nest pick from it, it prices a step with the ISA's own cost rules, and the nests it
chooses compute exactly (several tiles per core, race-checked)."""

from __future__ import annotations

from dataclasses import replace

import pytest
from backend_helpers import compile_and_run
from zhenwu.compiler.backend import tile_cost
from zhenwu.compiler.backend.conv import choose_conv_tile
from zhenwu.compiler.backend.gemm import choose_gemm_tile
from zhenwu.compiler.backend.tile_cost import ConvShape, VectorWork
from zhenwu.isa.instructions import costs
from zhenwu.isa.machine import load_machine


@pytest.mark.parametrize("name", ["m890", "z810e", "a100"])
@pytest.mark.parametrize("batch,m,n,k,dtype,work", [
    (1, 4096, 4096, 4096, "bf16", VectorWork()),
    (1, 16, 5120, 5120, "bf16", VectorWork(1, 1)),
    (8, 512, 784, 128, "f32", VectorWork(2)),
])
def test_the_gemm_chooser_prices_with_the_one_model(name, batch, m, n, k, dtype, work):
    """The chosen tile's estimate is `product_cost` of that tile (in its grouped order)."""
    machine = load_machine(name)
    size = 2 if dtype == "bf16" else 4
    tile = choose_gemm_tile(batch, m, n, k, dtype, "f32", size, size, 2, 0, 0, work, machine)
    group, traffic = tile_cost.choose_group(batch, m, n, k, tile.tile_m, tile.tile_n, size,
                                            size, 2, machine)
    assert tile.group == group
    assert tile.cycles == tile_cost.product_cost(
        batch, m, n, k, tile.tile_m, tile.tile_n, tile.tile_k, tile.acc_copies, size, size, 2,
        dtype, work, machine, traffic)


@pytest.mark.parametrize("shape", [
    ConvShape(8, 1, 512, 28, 28, 128, 1),                # ResNet-50's 1x1
    ConvShape(8, 1, 128, 28, 28, 128, 9, True, 2, 2),    # a 3x3 (the halo tiling may win)
    ConvShape(2, 1, 64, 14, 14, 32, 9),
])
def test_the_conv_chooser_prices_with_the_one_model(shape):
    """The chosen implicit-GEMM tile's estimate is `conv_cost` of that tile."""
    machine = load_machine("m890")
    tile = choose_conv_tile(shape, "bf16", "f32", 2, 0, 0, VectorWork(1), machine)
    assert tile.cycles == tile_cost.conv_cost(
        shape, tile.tile_o, tile.rows, tile.cols, tile.tile_c, tile.acc_copies, tile.ld_copies,
        "bf16", 2, VectorWork(1), machine, tile.stationary, tile.halo)


def test_a_step_is_priced_by_the_isa_costs():
    """The model's per-step terms are the simulator's instruction costs: an MMA of the tile,
    the operand loads, the store, the epilogue's vector and SFU passes."""
    machine = load_machine("m890")
    assert tile_cost.mma_cycles(machine, "fp8", 128, 64, 48) == costs.mma_cost(
        machine, "fp8", 128, 64, 48).occupancy
    assert tile_cost.load_cycles(machine, 1000, 3000) == (
        costs.dma_load_cost(machine, 1000).occupancy + costs.dma_load_cost(machine, 3000).occupancy)
    assert tile_cost.round_trip(machine) == costs.dma_load_cost(machine, 1).latency
    assert tile_cost.drain_cycles(machine, 4096, 1) == costs.dma_store_cost(machine, 4096).occupancy
    assert VectorWork(2, 1).cycles(machine, 1000) == (
        2 * costs.vx_cost(machine, 4000).occupancy + costs.sfu_cost(machine, 1000).occupancy)


def test_the_model_moves_with_the_chips_mx_rate():
    """A matrix engine twice as fast for bf16 (the rate the simulator's MMA charges) makes an
    MX-bound tile's estimate fall by the MMA time it saves."""
    machine = load_machine("m890")
    rates = tuple((dt, r * 2 if dt == "bf16" else r) for dt, r in machine.mx_rates)
    faster = replace(machine, mx_rates=rates)
    args = (1, 4096, 4096, 4096, 256, 256, 512, 1, 2, 2, 2, "bf16", VectorWork())
    slow, fast = tile_cost.product_cost(*args, machine), tile_cost.product_cost(*args, faster)
    assert fast < slow
    assert tile_cost.mma_cycles(faster, "bf16", 256, 256, 512) * 2 == tile_cost.mma_cycles(
        machine, "bf16", 256, 256, 512)


def test_the_floor_stays_under_the_cost_of_every_k_tile():
    machine = load_machine("m890")
    for tile_k in (48, 64, 128, 256, 512):
        for work in (VectorWork(), VectorWork(3, 1)):
            cost = tile_cost.product_cost(2, 600, 700, 1000, 128, 256, tile_k, 1, 2, 2, 2,
                                          "bf16", work, machine, b_k_major=True)
            steps = -(-1008 // tile_k)
            assert tile_cost.product_floor(2, 600, 700, 1000, 128, 256, steps, 2, 2, 2, "bf16",
                                           work, machine) <= cost


@pytest.mark.parametrize("source", [
    # grouped tile order (group 2), 4 tiles per core
    "fn main(a: bf16[768, 64], b: bf16[64, 576]) -> bf16[768, 576] {\n    return a @ b\n}\n",
    # batched f32, several k steps of a deep K
    "fn main(a: f32[5, 80, 48], b: f32[48, 112]) -> f32[5, 80, 112] {\n    return a @ b\n}\n",
    ("fn main(a: bf16[288, 1200], b: bf16[1200, 96]) -> f32[288, 96] {\n"
    "    return cast(a @ b, f32)\n}\n"),
    # B read along k (keys transposed): the k-major pricing
    ('fn main(q: bf16[4, 192, 64], k: bf16[4, 320, 64]) -> bf16[4, 192, 320] {\n'
    '    return einsum("bqd,bkd->bqk", q, k)\n}\n'),
    # exact integers
    ("fn main(a: i8[320, 64], b: i8[64, 288]) -> i32[320, 288] {\n"
    "    return cast(a, i32) @ cast(b, i32)\n}\n"),
])
def test_o0_matmul_nests_compute_exactly(source):
    """-O0's plain product nests, tiled by the one model, on a machine cut to 2 cores (several
    tiles per core): the reference's numbers, no race."""
    _, compiled, _, _ = compile_and_run(source, opt_level=0, cores=2)
    (nest,) = [n for k in compiled.kernels.kernels if k.name.startswith("matmul")
               for n in k.nests]
    assert nest.parallel_tiles >= 2 * 2 or nest.reduction_steps > 1


def test_o0_matmul_walks_the_grouped_order():
    """On 4 cores the model groups the m tiles of a 768 x 576 product in pairs: 16 tiles in
    grouped order, each computed once."""
    _, compiled, _, _ = compile_and_run(
        "fn main(a: bf16[768, 64], b: bf16[64, 576]) -> bf16[768, 576] {\n    return a @ b\n}\n",
        opt_level=0, cores=4)
    (nest,) = compiled.kernels.kernels[0].nests
    assert nest.group == 2 and nest.parallel_tiles == 16
