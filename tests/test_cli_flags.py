"""Command-line flags (issue 11, item 9): conflicts refused at once, `-` for stdout,
`--version`, help for every option, `ir --disable-pass a,b`, `fuzz --seconds`, `compile x.ir`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from zhenwu.compiler.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[1]
MLP = str(ROOT / "samples" / "mlp.zt")
AXPY = str(ROOT / "samples" / "asm" / "axpy.s")


def zhenwu(capsys, *argv):
    status = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return status, out, err


@pytest.mark.parametrize("flags, words", [
    (["--timing-only", "-o", "OUT"], "-o writes the outputs"),
    (["--timing-only", "--check"], "--check needs the math"),
    (["--reference", "--check"], "--reference"),
    (["--reference", "--trace", "T"], "--trace does not apply"),
    (["--reference", "--timing-only"], "--reference"),
])
def test_conflicting_run_flags_are_usage_errors_before_anything_runs(tmp_path, capsys,
                                                                     monkeypatch, flags, words):
    from zhenwu.compiler.commands import run_compiled, run_reference

    def never(args):
        raise AssertionError("ran before refusing the flags")

    monkeypatch.setattr(run_compiled, "run_compiled", never)
    monkeypatch.setattr(run_reference, "run_reference", never)
    flags = [str(tmp_path / f) if f in ("OUT", "T") else f for f in flags]
    status, _, err = zhenwu(capsys, "run", MLP, "--shape", "B=2", *flags)
    assert status == 2 and words in err
    assert not (tmp_path / "OUT").exists()


def test_timing_only_with_o_on_assembly_writes_nothing(tmp_path, capsys):
    status, _, _err = zhenwu(capsys, "run", AXPY, "--timing-only", "-o", tmp_path / "o.npz")
    assert status == 2 and not (tmp_path / "o.npz").exists()


def test_dash_is_stdout_for_report_and_dot(capsys):
    status, out, _ = zhenwu(capsys, "run", AXPY, "--timing-only", "--report", "-")
    assert status == 0
    report = json.loads(out[:out.index("\n}\n") + 3])
    assert report["cycles"] > 0
    status, out, _ = zhenwu(capsys, "ir", MLP, "--shape", "B=2", "--dot", "-")
    assert status == 0 and out.startswith("digraph") and "func @main" not in out
    assert not Path("-").exists()


def test_version(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.startswith("zhenwu ")


def _actions(parser):
    for action in parser._actions:
        if action.dest == "command":
            for name, sub in action.choices.items():
                yield from ((name, a) for a in sub._actions)
        else:
            yield "zhenwu", action


def test_every_option_says_what_it_does_and_its_default():
    for command, action in _actions(build_parser()):
        if action.dest in ("help", "command"):
            continue
        assert action.help, f"{command} {action.option_strings or action.dest} has no help"
        if action.option_strings and action.default not in (None, False, [], "==SUPPRESS=="):
            assert "default" in action.help, (command, action.option_strings)
        if action.option_strings and action.nargs != 0 and not action.required \
                and action.dest != "version":
            assert "default" in action.help or "required" in action.help, \
                (command, action.option_strings)


def test_ir_disable_pass_takes_a_comma_separated_list(capsys):
    status, out, _ = zhenwu(capsys, "ir", MLP, "--shape", "B=2", "--disable-pass", "cse,dce")
    assert status == 0 and "func @main" in out
    status, _, err = zhenwu(capsys, "ir", MLP, "--shape", "B=2", "--disable-pass", "cse,nope")
    assert status == 2 and "nope" in err


@pytest.mark.parametrize("seconds", ["-5", "0", "soon"])
def test_fuzz_seconds_must_be_a_positive_number(capsys, seconds):
    with pytest.raises(SystemExit) as info:
        main(["fuzz", "--seconds", seconds])
    assert info.value.code == 2
    assert "--seconds" in capsys.readouterr().err


def test_compile_reads_graph_ir_text(tmp_path, capsys):
    status, ir_text, _ = zhenwu(capsys, "ir", MLP, "--shape", "B=2")
    assert status == 0
    (tmp_path / "mlp.ir").write_text(ir_text)
    status, from_ir, err = zhenwu(capsys, "compile", tmp_path / "mlp.ir")
    assert status == 0, err
    status, from_zt, _ = zhenwu(capsys, "compile", MLP, "--shape", "B=2")
    assert from_ir == from_zt and "MMA" in from_ir
