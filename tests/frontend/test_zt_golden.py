"""Golden snapshots of each sample's Graph IR, as checked and after the default pipeline.

A change to the frontend or a pass that changes the IR shows up here as a diff. After
checking the new IR is right, regenerate with `ZHENWU_UPDATE_GOLDEN=1 pytest tests/frontend`.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from zhenwu.compiler.frontend import load_program
from zhenwu.compiler.graph import print_function
from zhenwu.compiler.passes import default_graph_pipeline, run_pipeline

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = Path(__file__).with_name("golden")
SHAPES = {"mlp": {"B": 2}, "softmax": {"N": 2, "C": 3}, "layernorm": {"B": 1, "S": 2},
          "attention": {"B": 1, "S": 4}, "conv": {"B": 1}, "qwen_block": {"S": 4}}


def _check(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("ZHENWU_UPDATE_GOLDEN"):
        path.write_text(text)
    assert path.exists(), f"no golden file {path}; run with ZHENWU_UPDATE_GOLDEN=1"
    assert text == path.read_text()


@pytest.mark.parametrize("sample", sorted(SHAPES))
def test_sample_ir_matches_golden(sample):
    # a relative file name keeps the spans independent of where the checkout lives
    source = (ROOT / "samples" / f"{sample}.zt").read_text()
    fn = load_program(f"samples/{sample}.zt", text=source, shapes=SHAPES[sample])
    _check(f"{sample}.checked.ir", print_function(fn))
    _check(f"{sample}.lowered.ir", print_function(run_pipeline(fn, default_graph_pipeline())))
