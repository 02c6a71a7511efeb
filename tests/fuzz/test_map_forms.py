"""The fuzzer draws the map-prologue matmul's forms (compiler/passes/prologue_gemm_match.py)
and the forms it refuses, and the drawn programs match the reference on every pipeline."""

from __future__ import annotations

import random

from zhenwu.compiler.frontend import load_program
from zhenwu.compiler.fuzz.campaign import check_program
from zhenwu.compiler.fuzz.generator import ProgramBuilder, RandomChooser
from zhenwu.compiler.passes import default_graph_pipeline, run_pipeline
from zhenwu.compiler.passes.fuse import plan_fusion


def _drawn(seed: int) -> str:
    builder = ProgramBuilder(RandomChooser(random.Random(seed)))
    builder.new_param(builder.new_shape())
    builder.step_map_linear()
    return builder.text(builder.checked or [builder.values[-1]])


def _matched(text: str) -> bool:
    fn = run_pipeline(load_program("t.zt", text=text), default_graph_pipeline())
    return any("map-prologue matmul" in d for d in plan_fusion(fn).decisions)


def test_the_generator_draws_taken_and_refused_forms():
    texts = [_drawn(seed) for seed in range(40)]
    joined = "\n".join(texts)
    for form in ("] * silu(", "* sigmoid(", "silu(p", "))[:, :", "[80, "):
        assert form in joined, form
    matched = [_matched(t) for t in texts]
    assert any(matched) and not all(matched)


def test_drawn_map_forms_match_the_reference():
    for seed in (0, 1, 2, 3, 5, 8):
        check_program(_drawn(seed), seed=seed)
