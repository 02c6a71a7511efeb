"""`zhenwu run prog.s|prog.bin`: inputs, outputs, report, trace, errors."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys

import ml_dtypes
import numpy as np
from runtime_gemm_asm import gemm_assembly


def _zhenwu(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "zhenwu", *args], check=False,
                          capture_output=True,
                          text=True, timeout=120, cwd=cwd)


def test_run_assembly_with_inputs_outputs_report_and_trace(tmp_path):
    program = tmp_path / "gemm.s"
    program.write_text(gemm_assembly(128, 256, 256, cores=4))
    rng = np.random.default_rng(3)
    a = rng.standard_normal((128, 256)).astype(np.float32)
    np.save(tmp_path / "a.npy", a)
    proc = _zhenwu("run", str(program), "-i", f"a={tmp_path / 'a.npy'}", "--seed", "7",
                   "-o", str(tmp_path / "out.npz"), "--report", str(tmp_path / "r.json"),
                   "--trace", str(tmp_path / "t.json"), "--machine", "m890")
    assert proc.returncode == 0, proc.stderr
    assert "out0 (c): f32 [128, 256]" in proc.stdout
    assert "cycles" in proc.stdout and "simulated time" in proc.stdout
    out = np.load(tmp_path / "out.npz")
    assert list(out.files) == ["out0"] and out["out0"].dtype == np.float32
    report = json.loads((tmp_path / "r.json").read_text())
    for key in ("cycles", "seconds", "flops", "hbm_read_bytes", "hbm_write_bytes",
                "busy_cycles", "busy_fraction", "stall_cycles", "instructions", "kernels"):
        assert key in report
    assert report["flops"] == 2 * 128 * 256 * 256
    assert len(report["busy_fraction"]) == 32
    trace = json.loads((tmp_path / "t.json").read_text())
    _check_trace_format(trace)


def _check_trace_format(trace: dict) -> None:
    """The Chrome trace event format as ui.perfetto.dev reads it."""
    events = trace["traceEvents"]
    names = {(e["pid"], e["tid"]): e["args"]["name"] for e in events
             if e["ph"] == "M" and e["name"] == "thread_name"}
    processes = {e["pid"]: e["args"]["name"] for e in events
                 if e["ph"] == "M" and e["name"] == "process_name"}
    assert processes[1] == "core 0" and len(processes) == 32
    assert set(names.values()) == {"S", "LD", "MX", "VX", "ST"}
    slices = [e for e in events if e["ph"] == "X"]
    assert slices
    for e in slices:
        assert isinstance(e["pid"], int) and isinstance(e["tid"], int)
        assert isinstance(e["ts"], int | float) and isinstance(e["dur"], int | float)
        assert e["dur"] >= 0 and (e["pid"], e["tid"]) in names
    assert {e["name"] for e in slices} >= {"MMA.bf16.f32", "DMA.LD", "DMA.ST"}
    # slices on one track never overlap (in-order engines)
    by_track: dict = {}
    for e in slices:
        by_track.setdefault((e["pid"], e["tid"]), []).append((e["ts"], e["ts"] + e["dur"]))
    for spans in by_track.values():
        spans.sort()
        for (_, end), (start, _) in itertools.pairwise(spans):
            assert start >= end - 1e-9


def test_missing_inputs_are_seeded_and_match_numpy(tmp_path):
    program = tmp_path / "gemm.s"
    program.write_text(gemm_assembly(128, 128, 128, cores=2))
    out = tmp_path / "out.npz"
    proc = _zhenwu("run", str(program), "--seed", "5", "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    rng = np.random.default_rng(5)
    bf = ml_dtypes.bfloat16
    a = rng.standard_normal((128, 128), dtype=np.float32).astype(bf).astype(np.float32)
    b = rng.standard_normal((128, 128), dtype=np.float32).astype(bf).astype(np.float32)
    np.testing.assert_allclose(np.load(out)["out0"], a @ b, rtol=1e-5, atol=1e-4)


def test_binary_runs_like_the_text(tmp_path):
    program = tmp_path / "gemm.s"
    program.write_text(gemm_assembly(128, 128, 256, cores=2))
    binary = tmp_path / "gemm.bin"
    assert _zhenwu("asm", str(program), "-o", str(binary)).returncode == 0
    text_run = _zhenwu("run", str(program), "--report", str(tmp_path / "s.json"))
    bin_run = _zhenwu("run", str(binary), "--report", str(tmp_path / "b.json"))
    assert text_run.returncode == bin_run.returncode == 0, bin_run.stderr
    s = json.loads((tmp_path / "s.json").read_text())
    b = json.loads((tmp_path / "b.json").read_text())
    assert s["cycles"] == b["cycles"] and s["flops"] == b["flops"]


def test_timing_only_cli(tmp_path):
    program = tmp_path / "gemm.s"
    program.write_text(gemm_assembly(256, 256, 256, cores=4))
    proc = _zhenwu("run", str(program), "--timing-only")
    assert proc.returncode == 0, proc.stderr
    assert "timing only" in proc.stdout


def test_input_errors_are_diagnostics(tmp_path):
    program = tmp_path / "gemm.s"
    program.write_text(gemm_assembly(128, 128, 128, cores=2))
    np.save(tmp_path / "wrong.npy", np.zeros((3, 3), np.float32))
    (tmp_path / "junk.npz").write_text("not a zip")
    for args, message in [
        # assembly inputs are read and checked as a .zt program's (compiler/inputs.py)
        (["-i", f"a={tmp_path / 'wrong.npy'}"], "has shape [3, 3], but the parameter is"),
        (["-i", f"zz={tmp_path / 'wrong.npy'}"], "input 'zz' is not an input tensor"),
        (["-i", "a"], "expected NAME=FILE.npy"),
        (["-i", f"a={tmp_path / 'none.npy'}"], "no such file"),
        (["--inputs", str(tmp_path / "junk.npz")], "not an .npz archive"),
    ]:
        proc = _zhenwu("run", str(program), *args)
        assert proc.returncode == (2 if args == ["-i", "a"] else 1), (args, proc.stderr)
        assert message in proc.stderr and "Traceback" not in proc.stderr
    proc = _zhenwu("run", str(tmp_path / "missing.s"))
    assert proc.returncode == 1 and "cannot read" in proc.stderr
    # assembly runs on several chips as written (the same program on each)
    proc = _zhenwu("run", str(program), "--chips", "2")
    assert proc.returncode == 0 and "2 chips (switch) on m890" in proc.stdout
    proc = _zhenwu("run", str(program), "--chips", "2", "--mesh", "tp=2")
    assert proc.returncode == 2 and "--mesh shards a .zt program" in proc.stderr


def test_identical_files_from_separate_processes(tmp_path):
    import os

    program = tmp_path / "gemm.s"
    program.write_text(gemm_assembly(128, 256, 256, cores=4))
    files = []
    for seed in ("1", "2"):
        out, report, trace = (tmp_path / f"{name}{seed}.{ext}"
                              for name, ext in (("o", "npz"), ("r", "json"), ("t", "json")))
        proc = subprocess.run(
            [sys.executable, "-m", "zhenwu", "run", str(program), "-o", str(out),
             "--report", str(report), "--trace", str(trace)],
            check=False, capture_output=True, text=True, timeout=120,
            env={**os.environ, "PYTHONHASHSEED": seed})
        assert proc.returncode == 0, proc.stderr
        files.append((np.load(out)["out0"].tobytes(), report.read_bytes(), trace.read_bytes()))
    assert files[0] == files[1]
