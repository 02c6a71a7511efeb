"""What `zhenwu run` prints, one way for `.zt`, `.s` and `.bin` programs and the reference.

Each output is one line, `out0: f32 [4, 10]` (with the assembly tensor's name for `.s`/`.bin`:
`out0 (c): f32 [128, 256]`), then, for a run on the chip, the report's summary (cycles and
simulated time, flops and efficiency, HBM bandwidth, engine busy with the busiest engine,
kernels). The reference evaluator's lines add statistics of the values, counting NaN and inf
instead of hiding them.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from zhenwu.isa.errors import InputError


def output_line(index: int, dtype: str, shape, name: str | None = None, note: str = "") -> str:
    """`out{index}[ (name)]: {dtype} [{shape}]` and an optional note."""
    label = f"out{index} ({name})" if name else f"out{index}"
    line = f"{label}: {dtype} {list(shape)}"
    return f"{line} ({note})" if note else line


def value_stats(array: np.ndarray) -> str:
    """min/max/mean of the finite values, and how many are NaN, +inf and -inf."""
    data = np.asarray(array)
    if not data.size:
        return ""
    if data.dtype.kind not in "biu":
        data = np.asarray(data, dtype=np.float64)
        finite = data[np.isfinite(data)]
        parts = []
        if finite.size:
            parts.append(f"min {finite.min():.6g}  max {finite.max():.6g}  "
                         f"mean {finite.mean():.6g}")
        else:
            parts.append("no finite values")
        for label, count in (("NaN", np.isnan(data).sum()), ("+inf", np.isposinf(data).sum()),
                             ("-inf", np.isneginf(data).sum())):
            if count:
                parts.append(f"{label} {count}")
        return "  ".join(parts)
    if data.dtype.kind == "b":
        return f"true {int(data.sum())} of {data.size}"
    return f"min {data.min()}  max {data.max()}"


def run_summary(report, *, kernels: int | None = None,
                compile_seconds: float | None = None) -> str:
    """The lines after the outputs of a run on the chip."""
    lines = []
    if kernels is not None:
        lines.append(f"kernels {kernels}  compile {compile_seconds or 0:.3f} s")
    lines.append(report.to_text())
    return "\n".join(lines)


def write_text(path: str, text: str) -> None:
    """Write `text` to `path`; `-` is standard output."""
    if path == "-":
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    try:
        Path(path).write_text(text)
    except OSError as err:
        raise InputError(f"cannot write '{path}': {err.strerror or err}") from None
