"""`zhenwu bench --compile`: how long a fresh `zhenwu compile` takes.

What a user waits for is a new process: interpreter start, imports, parser tables, the
passes and codegen. Each program is compiled `--repeat` times in a fresh process
(`python -m zhenwu.compiler.cli compile PROG -o <tmp>.s`) and the median wall time is reported,
with the program's op count. The timed runs are preceded by one untimed run, and all of them
may write Python's bytecode cache (`PYTHONDONTWRITEBYTECODE` is cleared for the child): a user's
second compile loads cached bytecode, and that is what is measured. The programs are the benchmark suite (samples/bench/), the
512-wide MLP below, and a chain of 1,000 ops (500 of tanh(h @ w) on 64x64), which shows how
compile time grows with program size.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MLP_512 = ("fn main(x: f32[512, 512], w1: f32[512, 512], b1: f32[512], w2: f32[512, 512], "
           "b2: f32[512]) -> f32[512, 512] { return relu(x @ w1 + b1) @ w2 + b2 }\n")
COMPILE_KEYS = ("name", "ops", "median_seconds", "min_seconds", "runs")


def chain_program(ops: int) -> str:
    """`ops` ops as a chain of tanh(h @ w) on 64x64 (two ops a link)."""
    lines = ["fn main(x: f32[64, 64], w: f32[64, 64]) -> f32[64, 64] {", "    h = x"]
    lines += ["    h = tanh(h @ w)"] * (ops // 2)
    lines += ["    return h", "}"]
    return "\n".join(lines) + "\n"


def programs(bench_dir: Path, names: list[str], workdir: Path) -> dict[str, Path]:
    """The programs to time, by name: the suite's and two generated ones."""
    found = {path.stem: path for path in sorted(bench_dir.glob("*.zt"))}
    (workdir / "mlp_512.zt").write_text(MLP_512)
    (workdir / "chain_1000_ops.zt").write_text(chain_program(1000))
    found["mlp_512"] = workdir / "mlp_512.zt"
    found["chain_1000_ops"] = workdir / "chain_1000_ops.zt"
    return {name: found[name] for name in names} if names else found


def op_count(path: Path) -> int:
    from zhenwu.compiler.frontend import load_program

    return len(load_program(str(path)).ops)


def time_compile(path: Path, repeat: int, workdir: Path) -> list[float]:
    """Wall seconds of `repeat` fresh-process compiles of `path`."""
    command = [sys.executable, "-m", "zhenwu.compiler.cli", "compile", str(path),
               "-o", str(workdir / "out.s")]
    env = {key: value for key, value in os.environ.items() if key != "PYTHONDONTWRITEBYTECODE"}
    seconds = []
    for _ in range(repeat + 1):     # the first run fills the bytecode cache and is not counted
        start = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, check=False, env=env)
        seconds.append(time.perf_counter() - start)
        if done.returncode != 0:
            raise RuntimeError(done.stderr.strip().splitlines()[-1] if done.stderr else
                               f"exit {done.returncode}")
    return seconds[1:]


def run(args, bench_dir: Path) -> int:
    from zhenwu.isa.errors import UsageError

    if args.repeat < 1:
        raise UsageError("--repeat takes a positive number of runs")
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        try:
            chosen = programs(bench_dir, args.names, workdir)
        except KeyError as err:
            known = ", ".join(programs(bench_dir, [], workdir))
            raise UsageError(f"unknown program {err.args[0]!r}; available: {known}") from None
        rows = []
        for name, path in chosen.items():
            seconds = time_compile(path, args.repeat, workdir)
            rows.append({"name": name, "ops": op_count(path),
                         "median_seconds": round(statistics.median(seconds), 3),
                         "min_seconds": round(min(seconds), 3), "runs": len(seconds)})
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"fresh-process `zhenwu compile`, median of {args.repeat}")
    print(f"{'program':<24} {'ops':>6} {'median s':>9} {'min s':>7}")
    for row in rows:
        print(f"{row['name']:<24} {row['ops']:>6} {row['median_seconds']:>9.3f} "
              f"{row['min_seconds']:>7.3f}")
    return 0
