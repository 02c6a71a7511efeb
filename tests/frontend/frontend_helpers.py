"""Helpers for the frontend tests: compile a snippet, run it on the reference evaluator.

(A module of its own rather than conftest.py: several test folders have a conftest.)
"""

from __future__ import annotations

import numpy as np
import pytest
from zhenwu.compiler.frontend import load_program
from zhenwu.compiler.reference import evaluate


def compile_zt(src: str, **shapes):
    return load_program("t.zt", text=src, shapes=shapes)


def run_zt(src: str, inputs: dict, **shapes):
    """Check `src` with shapes bound from the inputs and run it; returns the outputs."""
    fn = load_program("t.zt", text=src, shapes=shapes,
                      input_shapes={k: np.shape(v) for k, v in inputs.items()})
    return evaluate(fn, inputs)


def diag(src: str, **shapes) -> str:
    """The formatted diagnostic a snippet produces (fails if it checks fine)."""
    from zhenwu.isa.errors import ZhenwuError

    with pytest.raises(ZhenwuError) as info:
        load_program("t.zt", text=src, shapes=shapes)
    return info.value.format()
