"""`zhenwu run prog.zt --reference`: run the numpy reference evaluator on the Graph IR.

A thin layer over `Program.reference`'s evaluator (zhenwu/api.py). Prints one line per
output (compiler/commands/summary.py), with the min, max and mean of its finite values and
how many are NaN, +inf or -inf.
"""

from __future__ import annotations

import sys

import numpy as np
from zhenwu.compiler.commands.summary import output_line, value_stats
from zhenwu.compiler.inputs import output_array, warn_on_stderr, write_outputs


def summarize(index: int, array: np.ndarray, type_) -> str:
    """One line per output: name, type, and statistics of its values."""
    line = output_line(index, type_.dtype, type_.shape)
    stats = value_stats(output_array(array))
    return f"{line}  {stats}" if stats else line


def run_reference(args) -> int:
    """`zhenwu run prog.zt --reference`: evaluate, print a summary, write -o."""
    from zhenwu.compiler.inputs import parse_shape_options, read_inputs

    from zhenwu.api import load_function, reference_outputs

    given, sources = read_inputs(args.input or [], args.inputs, args.program)
    fn = load_function(args.program, shapes=parse_shape_options(args.shape or []),
                       entry=args.entry,
                       input_shapes={name: array.shape for name, array in given.items()})
    outputs = reference_outputs(fn, given, args.seed, sources, args.program,
                                require=getattr(args, "require_inputs", False),
                                warn=warn_on_stderr)
    if args.output:
        write_outputs(args.output, outputs)
    for index, (array, value) in enumerate(zip(outputs, fn.outputs)):
        print(summarize(index, array, value.type), file=sys.stdout)
    return 0
