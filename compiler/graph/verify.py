"""The Graph IR verifier, run between passes: SSA, topological order, consistent types.

A failure here is a compiler bug (a pass broke the IR), reported as a `CompileError` naming
the op and the pass.
"""

from __future__ import annotations

from zhenwu.compiler.graph.ir import Function
from zhenwu.compiler.graph.ops import OPS, infer_type
from zhenwu.isa.errors import CompileError, Diagnostic


def verify_function(fn: Function, *, after: str | None = None,
                    primitives_only: bool = False) -> None:
    """Check that every value is defined once before use, every op's result type is what its
    rule infers, op ids equal result ids, and outputs are defined. Raises CompileError."""
    where = f" after pass '{after}'" if after else ""

    def fail(message: str, op=None):
        span = op.span if op is not None else None
        raise CompileError(f"invalid Graph IR{where}: {message}", span)

    defined: set[int] = set()
    for value in fn.params:
        if value.id in defined:
            fail(f"parameter id {value.id} is used twice")
        defined.add(value.id)
    for op in fn.ops:
        if op.kind not in OPS:
            fail(f"unknown op kind '{op.kind}'", op)
        if primitives_only and not OPS[op.kind].primitive:
            fail(f"%{op.id} = {op.kind} is not a primitive op", op)
        if op.id != op.result.id:
            fail(f"op id {op.id} differs from its result id {op.result.id}", op)
        for value in op.inputs:
            if value.id not in defined:
                fail(f"%{op.id} = {op.kind} uses %{value.id} before it is defined", op)
        if op.result.id in defined:
            fail(f"%{op.id} is defined twice", op)
        try:
            inferred = infer_type(op.kind, tuple(v.type for v in op.inputs), op.attrs)
        except Diagnostic as err:
            fail(f"%{op.id} = {op.kind}: {err.message}", op)
        if inferred != op.result.type:
            fail(f"%{op.id} = {op.kind} has type {op.result.type} but its rule gives {inferred}",
                 op)
        defined.add(op.result.id)
    for value in fn.outputs:
        if value.id not in defined:
            fail(f"output %{value.id} is not defined")
