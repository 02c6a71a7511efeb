"""What `zhenwu run` reports (issue 11): one output format for .zt, .s and the reference
(item 12); efficiency against the peak of the dtypes that ran and no stale report field
(item 13); a functional run too big for the host (item 5); progress (item 6)."""

from __future__ import annotations

import io
import json
import resource
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from zhenwu.compiler.cli import main
from zhenwu.runtime import run_program

import zhenwu

ROOT = Path(__file__).resolve().parents[1]
MLP = str(ROOT / "samples" / "mlp.zt")


def zhenwu_cli(capsys, *argv):
    status = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return status, out, err


# -- item 12 ---------------------------------------------------------------------------------

SUMMARY = ("cycles", "simulated time", "efficiency", "HBM read", "GB/s", "busiest",
           "kernels")


def test_zt_and_assembly_print_the_same_summary(tmp_path, capsys):
    status, zt_out, _ = zhenwu_cli(capsys, "run", MLP, "--shape", "B=2")
    assert status == 0
    asm = tmp_path / "mlp.s"
    assert zhenwu_cli(capsys, "compile", MLP, "--shape", "B=2", "-o", asm)[0] == 0
    status, s_out, _ = zhenwu_cli(capsys, "run", asm)
    assert status == 0
    for word in SUMMARY:
        assert word in zt_out, word
        assert word in s_out, word
    # the same report, the same cycles: the .s is what the .zt compiled to
    zt_report = zt_out[zt_out.index("machine "):].splitlines()
    s_report = s_out[s_out.index("machine "):].splitlines()
    assert zt_report[1] == s_report[1] and zt_report[1].startswith("cycles ")
    # outputs one way: out{i}[ (name)]: dtype [shape], zhenwu dtype names
    assert zt_out.startswith("out0: f32 [2, 10]\n")
    assert s_out.splitlines()[0].endswith(": f32 [2, 10]")


def test_reference_summary_counts_nan_and_inf(tmp_path, capsys):
    prog = tmp_path / "p.zt"
    prog.write_text("fn main(x: f32[4]) -> f32[4] { return log(x) }\n")
    x = tmp_path / "x.npy"
    np.save(x, np.array([0.0, -1.0, 1.0, np.inf], np.float32))
    status, out, _ = zhenwu_cli(capsys, "run", prog, "--reference", "-i", f"x={x}")
    assert status == 0
    assert out.startswith("out0: f32 [4]  min 0  max 0  mean 0")
    assert "NaN 1" in out and "+inf 1" in out and "-inf 1" in out


# -- item 13 ---------------------------------------------------------------------------------

FP8_MATMUL = "fn main(a: fp8[1024, 1024], b: fp8[1024, 1024]) -> fp8[1024, 1024] { return a @ b }"


@pytest.fixture(scope="module")
def fp8_program():
    return zhenwu.compile(FP8_MATMUL)


def test_runtime_efficiency_uses_the_peak_of_the_dtype_that_ran():
    from zhenwu.compiler.backend.pipeline import compile_function
    from zhenwu.compiler.frontend import load_program
    from zhenwu.isa.machine import load_machine

    machine = load_machine("m890")
    compiled = compile_function(load_program("fp8.zt", text=FP8_MATMUL), machine)
    result = run_program(compiled.program, machine, {}, timing_only=True)
    report = result.report
    flops = 2 * 1024**3
    # at the bf16 peak (as before) this program reported 127%
    assert 0 < report.efficiency <= 1.0
    assert report.flops_by_dtype == {"fp8": flops}
    assert report.compute_seconds == pytest.approx(flops / machine.peak_flops("fp8"))


def test_zt_report_has_no_stale_field(fp8_program, tmp_path, capsys):
    program = tmp_path / "fp8.zt"
    program.write_text(FP8_MATMUL + "\n")
    report_path = tmp_path / "r.json"
    status, out, _ = zhenwu_cli(capsys, "run", program, "--timing-only", "--report", report_path)
    assert status == 0
    data = json.loads(report_path.read_text())
    assert data["roofline_seconds"] * data["clock_hz"] == pytest.approx(data["roofline_cycles"])
    assert data["efficiency"] == pytest.approx(data["roofline_cycles"] / data["cycles"])
    assert data["efficiency"] <= 1.0 and data["kernels"] == fp8_program.kernel_count
    assert f"efficiency {100 * data['efficiency']:.1f}%" in out


# -- item 5 ----------------------------------------------------------------------------------

def _limit_memory():
    limit = 3 << 30  # 3 GiB of address space: the 4 GiB tensors below cannot be made
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def test_functional_run_larger_than_the_host_is_a_diagnostic(tmp_path):
    program = tmp_path / "big.zt"
    program.write_text("fn main(x: f32[1073741824]) -> f32[1073741824] {\n"
                       "    return relu(x)\n}\n")
    run = subprocess.run([sys.executable, "-m", "zhenwu", "run", str(program)],
                         capture_output=True, text=True, preexec_fn=_limit_memory, timeout=300,
                         check=False)
    assert run.returncode == 1, run.stderr
    assert "Traceback" not in run.stderr
    assert "needs about 16.0 GiB of host memory" in run.stderr
    assert "--timing-only" in run.stderr


def test_host_memory_check_before_allocating(monkeypatch):
    from zhenwu import hostmem

    prog = zhenwu.compile("fn main(x: f32[1024]) -> f32[1024] { return relu(x) }")
    monkeypatch.setattr(hostmem, "available_bytes", lambda: 4096)
    with pytest.raises(zhenwu.Diagnostic, match="needs about 0.0 GiB"):
        prog.run(seed=0)
    assert prog.run(timing_only=True)[1].cycles > 0


# -- item 6 ----------------------------------------------------------------------------------

class _Stream(io.StringIO):
    def __init__(self, tty: bool):
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


def test_progress_shows_on_a_terminal_after_the_delay_only():
    from zhenwu.progress import TerminalProgress

    now = [0.0]
    tty = _Stream(True)
    progress = TerminalProgress(1e9, expected_cycles=4000, stream=tty, clock=lambda: now[0])
    progress(1000, 50)
    assert tty.getvalue() == ""  # under 2 s: nothing
    now[0] = 3.0
    progress(1000, 500)
    text = tty.getvalue()
    assert text.startswith("\rzhenwu: simulated 1.0 us, 500 instructions, 3 s, ETA >= 9 s")
    progress.close()
    assert tty.getvalue().endswith("\r")
    log = _Stream(False)
    progress = TerminalProgress(1e9, expected_cycles=4000, stream=log, clock=lambda: now[0])
    now[0] = 10.0
    progress(1000, 500)
    progress.close()
    assert log.getvalue() == ""


def test_run_program_calls_progress(monkeypatch):
    import zhenwu.runtime.engine

    monkeypatch.setattr(zhenwu.runtime.engine, "PROGRESS_EVERY", 8)
    prog = zhenwu.compile(MLP, shapes={"B": 2})
    calls = []
    _, report = prog.run(timing_only=True, progress=lambda c, i: calls.append((c, i)))
    assert len(calls) > 5
    assert calls == sorted(calls) and calls[-1][0] <= report.cycles


def test_fuzz_progress_writes_no_carriage_returns_into_logs(tmp_path):
    run = subprocess.run([sys.executable, "-m", "zhenwu", "fuzz", "--seconds", "1",
                          "--out", str(tmp_path / "out")],
                         capture_output=True, timeout=300, check=False)  # bytes: keep \r
    assert b"\r" not in run.stderr and b"Traceback" not in run.stderr
    assert b"fuzz: " in run.stderr and b"programs in" in run.stdout


def test_status_line_on_a_terminal_and_in_a_log():
    from zhenwu.progress import StatusLine

    now = [0.0]
    log = _Stream(False)
    status = StatusLine(log, log_interval=30, clock=lambda: now[0])
    status.update("[1/3] a")
    status.update("[1/3] a still")  # within the interval: not logged
    status.update("[1/3] a done", force=True)
    now[0] = 31.0
    status.update("[2/3] b")
    status.close()
    assert log.getvalue() == "[1/3] a\n[1/3] a done\n[2/3] b\n"
    tty = _Stream(True)
    status = StatusLine(tty)
    status.update("[1/3] long name")
    status.update("[2/3] b")
    status.close()
    assert tty.getvalue() == "\r[1/3] long name\r[2/3] b        \r" + " " * 15 + "\r"


def test_reference_larger_than_the_host_is_a_diagnostic(tmp_path):
    program = tmp_path / "big.zt"
    program.write_text("fn main(x: f32[1073741824]) -> f32[1073741824] {\n"
                       "    return relu(x)\n}\n")
    run = subprocess.run([sys.executable, "-m", "zhenwu", "run", str(program), "--reference"],
                         capture_output=True, text=True, preexec_fn=_limit_memory, timeout=300,
                         check=False)
    assert run.returncode == 1 and "Traceback" not in run.stderr, run.stderr
    assert "the reference evaluator needs at least" in run.stderr
