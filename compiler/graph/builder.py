"""Building Graph IR functions op by op, with every result type inferred by the registry."""

from __future__ import annotations

from zhenwu.compiler.graph.ir import Function, Op, TensorType, Value
from zhenwu.compiler.graph.ops import infer_type
from zhenwu.isa.errors import Diagnostic, SourceSpan


def freeze(value):
    """Attribute values are hashable: lists become tuples, recursively."""
    if isinstance(value, (list, tuple)):
        return tuple(freeze(v) for v in value)
    return value


class GraphBuilder:
    """Appends ops to a new function; `emit` checks each op against its registry rule.

    A rule violation becomes a `Diagnostic` at the span of the op being emitted.
    """

    def __init__(self, name: str, start_id: int = 0):
        self.name = name
        self.params: list[Value] = []
        self.ops: list[Op] = []
        self._next_id = start_id

    def fresh_id(self) -> int:
        """A new value id."""
        self._next_id += 1
        return self._next_id - 1

    def param(self, name: str, type: TensorType, value_id: int | None = None,
              span: SourceSpan | None = None) -> Value:
        """Add a named parameter (`span`: its declaration in the source)."""
        value = Value(self.fresh_id() if value_id is None else value_id, type, name, span)
        if value_id is not None:
            self._next_id = max(self._next_id, value_id + 1)
        self.params.append(value)
        return value

    def emit(self, kind: str, inputs, attrs: dict | None = None, *,
             span: SourceSpan | None = None, origin: str | None = None,
             result_id: int | None = None) -> Value:
        """Append `kind(inputs) {attrs}` and return its result value."""
        attrs = {key: freeze(val) for key, val in (attrs or {}).items()}
        inputs = tuple(inputs)
        try:
            result_type = infer_type(kind, tuple(v.type for v in inputs), attrs)
        except Diagnostic as err:
            if err.span is None:
                raise Diagnostic(err.message, span, notes=err.notes) from None
            raise
        if result_id is None:
            result_id = self.fresh_id()
        else:
            self._next_id = max(self._next_id, result_id + 1)
        result = Value(result_id, result_type)
        self.ops.append(Op(result_id, kind, inputs, attrs, result, span, origin))
        return result

    def finish(self, outputs: list[Value], attrs: dict | None = None) -> Function:
        """The built function with these outputs."""
        return Function(self.name, self.params, self.ops, list(outputs), dict(attrs or {}))
