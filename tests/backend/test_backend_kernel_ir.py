"""Kernel IR: print -> parse -> print is the identity, for hand-built and lowered programs."""

from __future__ import annotations

import pytest
from zhenwu.compiler.backend.hbm import plan_hbm
from zhenwu.compiler.backend.kernel_ir import (
    Buffer,
    Iota,
    Kernel,
    KernelProgram,
    Load,
    Mma,
    Nest,
    Reduce,
    Store,
    Tensor,
    Vec,
    View,
    parse_kernels,
    print_kernels,
)
from zhenwu.compiler.backend.lower import lower_function
from zhenwu.compiler.frontend import load_program
from zhenwu.isa.machine import load_machine


def _hand_built() -> KernelProgram:
    x = View("x", "bf16", 8, (0, 2), (4, 784), (784, 1), (0, -1))
    y = View("y", "f32", 0, (0, 1), (4, 256), (256, 1), (0, 0))
    nest = Nest(
        (4, 256, 784), (16, 128, 256), ("p", "p", "r"),
        (Buffer("a", "L1", "bf16", 16, 256, 0, 2, 16384), Buffer("c", "ACC", "f32", 16, 128)),
        (Vec("DUP", "f32", "c", (float("-inf"),)), Iota("i32", "c", 1)),
        (Load("a", x, 1.5), Mma("bf16", "f32", "c", "a", "a"),
         Reduce("ARGMAX", "f32", "c", "a", "c", 2), Reduce("SUM", "f32", "c", "a"),
         Vec("CMP.lt", "f32", "c", ("a", 0.5))),
        (Store(y, "c"),),
        group=4,
    )
    tensors = (Tensor("x", "bf16", (4, 784), "in", 0), Tensor("y", "f32", (4, 256), "out"))
    return KernelProgram(tensors, (Kernel("k_0", (3, 4), (nest,)),))


def test_hand_built_round_trip():
    program = _hand_built()
    text = print_kernels(program)
    assert "group 4" in text
    assert parse_kernels(text) == program
    assert print_kernels(parse_kernels(text)) == text


@pytest.mark.parametrize("source", [
    ("fn main(x: bf16[B, 784], w: bf16[784, 256], b: f32[256]) -> f32[B, 256] {\n"
     "  return softmax(relu(x @ w + b), axis=-1)\n}\n"),
    ("fn main(x: f32[3, 5, 7]) -> (f32[5], i32[3, 7]) {\n"
     "  return sum(x, axis=(0, 2)), argmax(x, axis=1)\n}\n"),
    ("fn main(x: f32[6, 4]) -> f32[4, 8] {\n"
     "  return pad(transpose(x)[:, 1:5], [[0, 0], [2, 2]])\n}\n"),
])
def test_lowered_round_trip(source):
    machine = load_machine("m890")
    fn = load_program("t.zt", text=source, shapes={"B": 3} if "B" in source else {})
    tensors, kernels, spans = lower_function(fn, machine)
    program = plan_hbm(KernelProgram(tuple(tensors), tuple(kernels)), machine.hbm_bytes, spans)
    text = print_kernels(program)
    assert parse_kernels(text) == program
    assert print_kernels(parse_kernels(text)) == text
