"""`cse`: common subexpression elimination.

Two ops of the same kind on the same operands with the same attributes compute the same
value; the later one is replaced by the earlier (which keeps its span and origin).
"""

from __future__ import annotations

from dataclasses import dataclass

from zhenwu.compiler.graph.ir import Op, Value
from zhenwu.compiler.graph.ops import OPS
from zhenwu.compiler.graph.printer import format_attr
from zhenwu.compiler.passes.pass_base import GraphPass, register_pass
from zhenwu.compiler.passes.rewrite import Rewriter, rewrite

# op(a, b) == op(b, a): the op table's `commutative` facet
COMMUTATIVE = frozenset(name for name, op in OPS.items() if op.commutative)


def op_key(op: Op) -> tuple:
    """What makes two ops equal: kind, operands (in any order for commutative kinds),
    attributes (by their printed form, so that 0.0 and -0.0 or 1 and 1.0 stay apart)."""
    attrs = tuple(sorted((k, format_attr(v)) for k, v in op.attrs.items()))
    operands = tuple(v.id for v in op.inputs)
    if OPS[op.kind].commutative:
        operands = tuple(sorted(operands))
    return (op.kind, operands, attrs, op.result.type)


@register_pass
@dataclass(frozen=True)
class CSE(GraphPass):
    """Replace repeated computations by the first one."""

    name = "cse"

    def apply(self, fn):
        seen: dict[tuple, Value] = {}

        def reuse(op: Op, rw: Rewriter) -> Value | None:
            key = op_key(op)
            if key in seen:
                return seen[key]
            seen[key] = op.result
            return None

        return rewrite(fn, [reuse])
