"""`zhenwu validate`: the simulator against operators measured on a real chip.

`isa/machines/validation/<machine>/measured.csv` holds measured operator times (its README
says where they come from); `host.toml` beside it the host-side time of one call of each
operator type in those measurements (framework dispatch, Python, the launch: the measurements
time a whole call), fitted once to the data and saying so. For every point the operator is
written as a `.zt` program, compiled for the machine like any program (the compiler does not
know it is being validated) with the compile options that give the algorithm the measured
library ran (`multipass_rows`), and run timing-only; its simulated time plus the operator's host
time is compared with the measured time. Printed: every point, the mean absolute error per
operator and overall, and the wall time of it all.

`--op OP` (repeatable) simulates one operator type only. `--fit` prints, per operator type,
the host time that minimises that operator's mean absolute error given the simulated times
(how host.toml's constants were obtained).
"""

from __future__ import annotations

import csv
import json
import os
import time
import tomllib
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from zhenwu.isa.errors import UsageError

VALIDATION_DIR = Path(__file__).resolve().parents[2] / "isa" / "machines" / "validation"


def source(op: str, m: int, n: int, k: int, dtype: str) -> str:
    """The `.zt` program of one measured operator."""
    if op == "matmul":
        return (f"fn main(a: {dtype}[{m}, {k}], b: {dtype}[{k}, {n}]) -> {dtype}[{m}, {n}] "
                "{\n    return a @ b\n}\n")
    if op == "softmax":
        return (f"fn main(x: {dtype}[{m}, {n}]) -> {dtype}[{m}, {n}] {{\n"
                f"    return cast(softmax(x, axis=-1), {dtype})\n}}\n")
    if op == "layernorm":
        return (f"fn main(x: {dtype}[{m}, {n}], g: {dtype}[{n}], b: {dtype}[{n}]) -> "
                f"{dtype}[{m}, {n}] {{\n"
                f"    return cast(layernorm(x, g, b, eps=1e-5), {dtype})\n}}\n")
    if op == "gelu":
        return (f"fn main(x: {dtype}[{m}]) -> {dtype}[{m}] {{\n"
                f"    return cast(gelu(x), {dtype})\n}}\n")
    raise UsageError(f"unknown operator '{op}' in the measurements")


def multipass_rows(point: dict) -> bool:
    """Whether the measured kernel makes several passes over each row: the algorithm the
    measurement ran, simulated as such (`CompileOptions.multipass_rows`). The measurements
    are PyTorch's (README.md beside them). PyTorch's CUDA softmax over the last axis
    (aten/src/ATen/native/cuda/SoftMax.cu, `host_softmax`) holds a row in registers and reads
    it once when it has at most 1,024 elements of at most 4,096 bytes (`dispatch_softmax_
    forward`, a warp per row); longer rows go to `cunn_SoftMaxForward`, a block per row that
    reads the row three times: its maximum, the sum of exp(x - max), then exp(x - max) / sum
    written out. Its layer norm and GELU are compiled as any program (docs/internals.md,
    "Validation", says why and what this leaves out)."""
    if point["op"] != "softmax":
        return False
    itemsize = {"f16": 2, "bf16": 2, "f32": 4}[point["dtype"]]
    return not (point["N"] <= 1024 and point["N"] * itemsize <= 4096)


def load_points(directory: Path) -> list[dict]:
    points = []
    with open(directory / "measured.csv", newline="") as handle:
        for row in csv.DictReader(handle):
            dims = [int(row[d]) if row[d] else 0 for d in ("M", "N", "K")]
            dtype = {"f16": "f16", "bf16": "bf16", "f32": "f32"}[row["dtype"]]
            points.append({"op": row["op"], "M": dims[0], "N": dims[1], "K": dims[2],
                           "dtype": dtype, "measured": float(row["seconds"])})
    return points


def simulate(point: dict, machine_spec: str) -> float:
    """Seconds of one point on the simulated chip (timing-only)."""
    import numpy as np
    from zhenwu.compiler.backend.pipeline import CompileOptions, compile_function
    from zhenwu.compiler.frontend import load_program
    from zhenwu.isa.machine import load_machine
    from zhenwu.runtime import run_program

    machine = load_machine(machine_spec)
    text = source(point["op"], point["M"], point["N"], point["K"], point["dtype"])
    fn = load_program(f"<{point['op']}>", text=text)
    compiled = compile_function(fn, machine,
                                CompileOptions(multipass_rows=multipass_rows(point)))
    placeholders = {t.name: np.broadcast_to(np.zeros((), np.float32), tuple(t.shape))
                    for t in compiled.program.inputs}
    report = run_program(compiled.program, machine, placeholders, timing_only=True).report
    return report.seconds


def _label(point: dict) -> str:
    if point["op"] == "matmul":
        return f"{point['M']}x{point['N']}x{point['K']}"
    if point["op"] == "gelu":
        return f"{point['M']}"
    return f"{point['M']}x{point['N']}"


def predict(simulated: float, before: float, after: float) -> float:
    """The measured time of one call: the host's work before the launch, then the kernel
    and the host's work after the launch side by side (the call returns to Python while the
    kernel runs; the synchronize waits for the later of the two)."""
    return before + max(after, simulated)


def _weighted_median(values: list[float], weights: list[float]) -> float:
    pairs = sorted(zip(values, weights))
    half = sum(weights) / 2
    running = 0.0
    for value, weight in pairs:
        running += weight
        if running >= half:
            return value
    return pairs[-1][0] if pairs else 0.0


def _best_host(sims: list[float], measured: list[float]) -> tuple[float, float]:
    """(before, after) minimising the mean of |predict(s, before, after) - m| / m. The
    error is piecewise linear in both, so a minimum lies where two of its kinks meet: for a
    given `after` the best `before` is a weighted median (weights 1/m) of m - max(after, s),
    and `after` is tried at every kink it can meet that at: 0, a simulated time s, a
    measured time m (before 0), and m_i - (m_j - s_j) (points i and j both exact)."""
    weights = [1 / m for m in measured]
    pairs = list(zip(sims, measured))
    candidates = {0.0, *sims, *measured,
                  *(max(0.0, m_i - m_j + s_j) for _, m_i in pairs for s_j, m_j in pairs)}
    best = None
    for after in sorted(candidates):
        before = max(0.0, _weighted_median([m - max(after, s) for s, m in zip(sims, measured)],
                                           weights))
        error = sum(abs(predict(s, before, after) - m) / m for s, m in zip(sims, measured))
        if best is None or error < best[0] - 1e-12:
            best = (error, before, after)
    return (best[1], best[2]) if best is not None else (0.0, 0.0)


def run(args) -> int:
    from zhenwu.isa.machine import load_machine

    machine = load_machine(args.machine)
    directory = VALIDATION_DIR / machine.name
    if not (directory / "measured.csv").is_file():
        raise UsageError(f"no measurements for machine '{machine.name}' (looked in "
                         f"{directory})")
    points = load_points(directory)
    wanted = getattr(args, "op", None) or []
    if wanted:
        known = list(dict.fromkeys(p["op"] for p in points))
        for op in wanted:
            if op not in known:
                raise UsageError(f"no measured operator '{op}' (known: {', '.join(known)})")
        points = [p for p in points if p["op"] in wanted]
    host = tomllib.loads((directory / "host.toml").read_text()) \
        if (directory / "host.toml").is_file() else {}
    spec = args.machine if args.machine.endswith(".toml") else machine.name
    jobs = args.jobs if args.jobs > 0 else (os.cpu_count() or 1)
    start = time.perf_counter()
    # a shape measured twice (the 4096 x 4096 softmax and layernorm are in both sweeps) is
    # simulated once
    keys = [(p["op"], p["M"], p["N"], p["K"], p["dtype"]) for p in points]
    unique = list(dict.fromkeys(keys))
    first = {key: points[keys.index(key)] for key in unique}
    if jobs == 1:
        done = {key: simulate(first[key], spec) for key in unique}
    else:
        with ProcessPoolExecutor(max_workers=jobs) as pool:
            # the big points first: they set the wall time
            order = sorted(unique, key=lambda key: -_work(first[key]))
            futures = {key: pool.submit(simulate, first[key], spec) for key in order}
            done = {key: futures[key].result() for key in unique}
    sims = [done[key] for key in keys]
    wall = time.perf_counter() - start
    ops = list(dict.fromkeys(p["op"] for p in points))
    if args.fit:
        for op in ops:
            chosen = [(s, p["measured"]) for s, p in zip(sims, points) if p["op"] == op]
            before, after = _best_host([s for s, _ in chosen], [m for _, m in chosen])
            print(f"{op}_seconds = {before:.3e}")
            print(f"{op}_overlap_seconds = {after:.3e}")
        return 0
    rows = []
    for point, sim in zip(points, sims):
        overhead = float(host.get(f"{point['op']}_seconds", 0.0))
        overlap = float(host.get(f"{point['op']}_overlap_seconds", 0.0))
        total = predict(sim, overhead, overlap)
        rows.append({**point, "simulated": sim, "host": overhead, "host_overlap": overlap,
                     "predicted": total,
                     "error": (total - point["measured"]) / point["measured"]})
    per_op = {op: sum(abs(r["error"]) for r in rows if r["op"] == op)
              / sum(1 for r in rows if r["op"] == op) for op in ops}
    overall = sum(abs(r["error"]) for r in rows) / len(rows)
    if args.json:
        print(json.dumps({"machine": machine.name, "points": rows, "mean_abs_error": per_op,
                          "overall_mean_abs_error": overall, "wall_seconds": wall}, indent=2))
        return 0
    print(f"machine {machine.name}: {len(rows)} measured operators "
          f"({directory.relative_to(VALIDATION_DIR.parents[1])}/measured.csv)")
    print(f"{'op':<10} {'shape':<22} {'measured us':>12} {'sim us':>10} {'host us':>14} "
          f"{'pred us':>10} {'error':>8}")
    for r in rows:
        host_text = f"{r['host'] * 1e6:.1f}+{r['host_overlap'] * 1e6:.1f}"
        print(f"{r['op']:<10} {_label(r):<22} {r['measured'] * 1e6:>12.1f} "
              f"{r['simulated'] * 1e6:>10.1f} {host_text:>14} "
              f"{r['predicted'] * 1e6:>10.1f} {r['error'] * 100:>+7.1f}%")
    print()
    for op in ops:
        count = sum(1 for r in rows if r["op"] == op)
        print(f"mean absolute error {op:<10} {per_op[op] * 100:5.1f}%  ({count} points)")
    print(f"mean absolute error overall    {overall * 100:5.1f}%  ({len(rows)} points)")
    print(f"simulation wall time {wall:.1f} s ({jobs} at a time)")
    return 0


def _work(point: dict) -> float:
    if point["op"] == "matmul":
        return point["M"] * point["N"] * point["K"] / 1e3
    return max(point["M"], 1) * max(point["N"], 1)
