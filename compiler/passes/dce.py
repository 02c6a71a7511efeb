"""`dce`: dead code elimination (ops whose results no output depends on)."""

from __future__ import annotations

from dataclasses import dataclass

from zhenwu.compiler.graph.ir import Function
from zhenwu.compiler.passes.pass_base import GraphPass, register_pass


@register_pass
@dataclass(frozen=True)
class DCE(GraphPass):
    """Remove ops that do not contribute to an output."""

    name = "dce"

    def apply(self, fn: Function) -> Function:
        live = {v.id for v in fn.outputs}
        kept = []
        for op in reversed(fn.ops):
            if op.id in live:
                kept.append(op)
                live.update(v.id for v in op.inputs)
        kept.reverse()
        if len(kept) == len(fn.ops):
            return fn
        return Function(fn.name, list(fn.params), kept, list(fn.outputs), dict(fn.attrs))
