"""Every program the fuzzer ever shrank from a failure, rerun through the pipelines (its own
first, from its `# pipeline: O<level> [disabled passes...]` line, then -O0 and -O2)."""

from __future__ import annotations

from pathlib import Path

import pytest
from zhenwu.compiler.fuzz.campaign import PIPELINES, check_program

REGRESSIONS = sorted((Path(__file__).parent / "regressions").glob("*.zt"))


def _pipelines(text: str):
    for line in text.splitlines():
        if line.startswith("# pipeline:"):
            level, *disabled = line.split(":", 1)[1].split()
            return ((level, tuple(disabled)),) + PIPELINES
    return PIPELINES


@pytest.mark.parametrize("path", REGRESSIONS, ids=[p.stem for p in REGRESSIONS])
def test_regression(path):
    text = path.read_text()
    check_program(text, seed=0, pipelines=_pipelines(text))


def test_there_are_regressions():
    assert REGRESSIONS
