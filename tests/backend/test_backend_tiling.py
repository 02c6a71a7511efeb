"""The tiler: tiles fit L1/ACC of the loaded machine and spread over its cores."""

from __future__ import annotations

from dataclasses import replace
from math import ceil

import pytest

from compiler.backend.tiling import map_tile, matmul_tile, reduce_tile
from isa.machine import load_machine

MACHINES = ["m890", "z810e"]


@pytest.mark.parametrize("name", MACHINES)
@pytest.mark.parametrize("m,n,k", [(1, 1, 1), (7, 13, 17), (4096, 4096, 4096), (17, 4096, 33),
                                   (100000, 16, 16)])
def test_matmul_tile_fits(name, m, n, k):
    machine = load_machine(name)
    for in_bytes in (1, 2, 4):
        tm, tn, tk = matmul_tile(1, m, n, k, in_bytes, 4, machine)
        assert tm % machine.mx_m == 0 and tn % machine.mx_n == 0 and tk % machine.mx_k == 0
        assert 2 * tm * tn * 4 <= machine.acc_bytes
        assert 2 * (tm * tk + tk * tn) * in_bytes <= machine.l1_bytes


def test_matmul_tiles_feed_every_core():
    machine = load_machine("m890")
    tm, tn, _ = matmul_tile(1, 4096, 4096, 4096, 2, 4, machine)
    assert ceil(4096 / tm) * ceil(4096 / tn) >= machine.cores
    tm, tn, _ = matmul_tile(1, 256, 256, 64, 2, 4, machine)
    assert ceil(256 / tm) * ceil(256 / tn) >= machine.cores


def test_tiles_follow_a_smaller_machine():
    small = replace(load_machine("m890"), l1_bytes=64 * 1024, acc_bytes=16 * 1024, cores=4)
    tm, tn, tk = matmul_tile(1, 4096, 4096, 4096, 2, 4, small)
    assert 2 * tm * tn * 4 <= small.acc_bytes
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


@pytest.mark.parametrize("name", MACHINES)
@pytest.mark.parametrize("batch,m,n,k", [(1, 1, 1, 1), (1, 4096, 4096, 4096), (12, 77, 33, 129),
                                         (1, 17, 4096, 4096)])
def test_matmul_schedule_fits(name, batch, m, n, k):
    from compiler.backend.tiling import matmul_schedule

    machine = load_machine(name)
    plan = matmul_schedule(batch, m, n, k, "bf16", 2, 4, 2, machine)
    assert plan.tile_m % machine.mx_m == 0 and plan.tile_n % machine.mx_n == 0
    assert plan.tile_k % machine.mx_k == 0 and plan.acc_copies in (1, 2)
    assert plan.acc_copies * plan.tile_m * plan.tile_n * 4 <= machine.acc_bytes
    assert 2 * (plan.tile_m + plan.tile_n) * plan.tile_k * 2 <= machine.l1_bytes


def test_big_gemm_takes_the_intense_single_buffered_tile():
    from compiler.backend.tiling import matmul_schedule

    plan = matmul_schedule(1, 4096, 4096, 4096, "bf16", 2, 4, 2, load_machine("m890"))
    assert (plan.tile_m, plan.tile_n, plan.acc_copies) == (256, 256, 1)
