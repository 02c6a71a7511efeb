"""A generic rewrite driver: rules as data (tinygrad style).

A rule is a function `(op, rewriter) -> Value | None`. The driver walks the ops in order with
operands already rewritten; the first rule that returns a value replaces the op's result
(the rule may emit new ops through `rewriter.emit`, which inherit the op's span and origin).
Ops no rule touches are copied with their ids. Every rewrite can be logged.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from zhenwu.compiler.graph.builder import GraphBuilder
from zhenwu.compiler.graph.ir import Function, Op, Value

Rule = Callable[[Op, "Rewriter"], Value | None]


class Rewriter:
    """Builds the rewritten function; rules call `emit` to add ops for the current op."""

    def __init__(self, fn: Function):
        self.fn = fn
        self.builder = GraphBuilder(fn.name, start_id=fn.next_id())
        self.builder.params = list(fn.params)
        self.producers: dict[int, Op] = {}
        self.current: Op | None = None
        self.log: list[str] = []
        # reads of each value (an output counts as one), carried to the values that
        # replace them: what `single_use` answers for the rewritten graph
        self.uses = {value_id: len(ops) for value_id, ops in fn.users().items()}
        self.output_ids = {value.id for value in fn.outputs}
        for value in fn.outputs:
            self.uses[value.id] = self.uses.get(value.id, 0) + 1

    def single_use(self, value: Value) -> bool:
        """Whether one op reads `value` and it is no output of the function."""
        return self.uses.get(value.id, 0) == 1

    def producer(self, value: Value) -> Op | None:
        """The (rewritten) op defining a value, None for a parameter."""
        return self.producers.get(value.id)

    def emit(self, kind: str, inputs, attrs: dict | None = None, *,
             origin: str | None = None) -> Value:
        """Emit an op for the current op, with its span and origin (or `origin`)."""
        op = self.current
        value = self.builder.emit(kind, inputs, attrs, span=op.span,
                                  origin=origin if origin is not None else op.origin)
        self.producers[value.id] = self.builder.ops[-1]
        return value

    def constant_value(self, value: Value):
        """The splat value of a value defined by a `constant` op, else None."""
        op = self.producer(value)
        if op is not None and op.kind == "constant":
            return op.attrs["value"]
        return None


def rewrite(fn: Function, rules: list[Rule], *, log: list[str] | None = None) -> Function:
    """Apply `rules` to every op of `fn` once, in program order."""
    rw = Rewriter(fn)
    mapping: dict[int, Value] = {v.id: v for v in fn.params}
    for op in fn.ops:
        inputs = tuple(mapping[v.id] for v in op.inputs)
        candidate = replace(op, inputs=inputs)
        rw.current = candidate
        replacement = None
        for rule in rules:
            replacement = rule(candidate, rw)
            if replacement is not None:
                if log is not None:
                    log.append(f"%{op.id} = {op.kind}: {rule.__name__}")
                break
        if replacement is None:
            rw.builder.ops.append(candidate)
            rw.producers[candidate.id] = candidate
            replacement = candidate.result
        elif replacement.type != op.result.type:  # a rule broke the types: a compiler bug
            raise AssertionError(f"rule changed %{op.id} from {op.result.type} to "
                                 f"{replacement.type}")
        if replacement is not candidate.result:
            rw.uses[replacement.id] = rw.uses.get(replacement.id, 0) + rw.uses.get(op.id, 0)
        mapping[op.id] = replacement
    return rw.builder.finish([mapping[v.id] for v in fn.outputs], fn.attrs)
