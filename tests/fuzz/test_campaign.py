"""The campaign machinery: a failure is shrunk, written as a readable program with a one-line
command to reproduce it, and the pass bisection names the culprit."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from zhenwu.compiler.fuzz import campaign
from zhenwu.compiler.fuzz.campaign import FuzzFailure, run_campaign


def _fake_check(text, *, seed=0, machine_name="m890", pipelines=None):
    """A 'bug' in -O2's fuse pass that breaks every program using `sigmoid`."""
    disabled = [d for _, ds in (pipelines or campaign.seeded_pipelines(seed)) for d in ds]
    if "sigmoid(" in text and "fuse" not in disabled:
        raise FuzzFailure("O2", "out0: relative error 1 > 0.0001", "O2", ())


def test_a_failure_is_shrunk_written_and_bisected(tmp_path, monkeypatch):
    monkeypatch.setattr(campaign, "check_program", _fake_check)
    result = run_campaign(3.0, seed=1, out_dir=tmp_path, bisect=True)
    assert result.programs > 0 and result.failures
    entry = result.failures[0]
    text = Path(entry["program"]).read_text()
    body = [line for line in text.splitlines() if line.startswith("    ")]
    # shrunk to the one statement that matters, plus the return
    assert len(body) == 2 and "sigmoid(" in body[0], text
    assert "# pipeline: O2" in text
    assert entry["reproduce"].startswith(f"zhenwu run {entry['program']} --seed ")
    assert entry["reproduce"].endswith("--check -O2")
    assert entry["culprit_pass"] == "fuse"
    saved = json.loads((tmp_path / (entry["program"].rsplit("/", 1)[1][:-3] + ".json")).read_text())
    assert saved == entry


@pytest.mark.parametrize("seed", [1558962707, 1264563150])
def test_reserved_parameters_are_never_picked_by_later_steps(seed):
    """Programs of the 10-minute campaigns of 2026-12-05: a NaN step picked gather's i32
    indices, or an attention's bool mask, and the generator typed the result wrongly (a
    generator bug)."""
    from zhenwu.compiler.fuzz.campaign import check_program
    from zhenwu.compiler.fuzz.generator import random_program

    check_program(random_program(seed), seed=seed)
