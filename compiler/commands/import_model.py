"""`zhenwu import model.onnx -o model.zt`: write an ONNX model as a `.zt` program.

The initializers the program uses go to an .npz beside the program (`model.npz` for
`-o model.zt`, or `--weights FILE`), which the program's header names (`# weights:
model.npz`) so that `zhenwu run model.zt` binds them. Without `-o` the program goes to
standard output and the weights to `model.npz` beside the model.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
from zhenwu.isa.errors import InputError, UsageError


def run(args) -> int:
    from zhenwu.compiler.importers.onnx import import_onnx

    model = Path(args.model)
    if model.suffix != ".onnx":
        raise UsageError(f"'{args.model}': expected an .onnx model")
    program = Path(args.output) if args.output else None
    if args.weights:
        weights_path = Path(args.weights)
    else:
        weights_path = (program or model).with_suffix(".npz")
    base = program.parent if program else Path(".")
    relative = os.path.relpath(weights_path, base if str(base) else ".")
    source, weights = import_onnx(str(model), weights_file=relative)
    if weights:
        try:
            weights_path.parent.mkdir(parents=True, exist_ok=True)
            with open(weights_path, "wb") as handle:
                np.savez(handle, **weights)
        except OSError as err:
            raise InputError(f"cannot write '{weights_path}': {err.strerror or err}") from None
    if program is None:
        sys.stdout.write(source)
        return 0
    try:
        program.parent.mkdir(parents=True, exist_ok=True)
        program.write_text(source)
    except OSError as err:
        raise InputError(f"cannot write '{program}': {err.strerror or err}") from None
    nbytes = sum(a.nbytes for a in weights.values())
    statements = sum(1 for line in source.splitlines() if line.startswith("    ")
                     and " = " in line)
    print(f"wrote {program} ({statements} statements)"
          + (f" and {weights_path} ({len(weights)} arrays, {nbytes / 1e6:.3g} MB)"
             if weights else ""))
    return 0
