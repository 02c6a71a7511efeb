"""`zhenwu run prog.zt --reference`: run the numpy reference evaluator on the Graph IR."""

from __future__ import annotations

import sys

import numpy as np

from compiler.inputs import (
    load_program_and_inputs,
    output_array,
    warn_on_stderr,
    write_outputs,
)
from compiler.reference import evaluate
from isa.errors import Diagnostic


def summarize(index: int, array: np.ndarray, type_) -> str:
    """One line per output: name, type, and a few statistics."""
    data = output_array(array)
    line = f"out{index}: {type_}"
    if data.size and data.dtype.kind == "f":
        finite = data[np.isfinite(data)]
        if finite.size:
            line += (f"  min {finite.min():.6g}  max {finite.max():.6g}  "
                     f"mean {finite.mean():.6g}")
    elif data.size:
        line += f"  min {data.min()}  max {data.max()}"
    return line


def run_reference(args) -> int:
    """`zhenwu run prog.zt --reference`: evaluate, print a summary, write -o."""
    try:
        fn, inputs = load_program_and_inputs(args, warn=warn_on_stderr)
        outputs = evaluate(fn, inputs)
    except MemoryError:
        raise Diagnostic(f"{args.program}: the tensors do not fit in this host's memory for "
                         "the reference evaluator; use smaller --shape values") from None
    except ValueError as err:
        if "too big" not in str(err) and "maximum supported dimension" not in str(err):
            raise
        raise Diagnostic(f"{args.program}: a tensor is too large for numpy ({err})") from None
    if args.output:
        write_outputs(args.output, outputs)
    for index, (array, value) in enumerate(zip(outputs, fn.outputs)):
        print(summarize(index, array, value.type), file=sys.stdout)
    return 0
