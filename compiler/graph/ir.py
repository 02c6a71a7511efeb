"""The Graph IR: a flat, SSA, topologically ordered list of ops (docs/internals.md section 2).

A `Function` has named parameters, a list of `Op`s each defining one `Value`, and a list of
output values. Every op keeps the source span it came from and, for ops that a composite
builtin expanded into, its `origin` (`softmax#2`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from math import prod
from typing import TYPE_CHECKING

from zhenwu.compiler.graph.dtypes import itemsize
from zhenwu.isa.errors import SourceSpan

if TYPE_CHECKING:
    import networkx as nx


@dataclass(frozen=True)
class TensorType:
    """A tensor's dtype name and concrete shape; `shape == ()` is a scalar."""

    dtype: str
    shape: tuple[int, ...]

    @property
    def rank(self) -> int:
        return len(self.shape)

    @property
    def numel(self) -> int:
        return prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.numel * itemsize(self.dtype)

    def __str__(self) -> str:
        return f"{self.dtype}[{','.join(str(d) for d in self.shape)}]"


@dataclass(eq=False)
class Value:
    """An SSA value: a parameter (with its `.zt` name) or the result of one op.

    Values compare by identity; `id` is unique within a function.
    """

    id: int
    type: TensorType
    name: str | None = None
    span: SourceSpan | None = None  # a parameter's declaration (later errors point at it)

    def __repr__(self) -> str:
        return f"%{self.name if self.name is not None else self.id}: {self.type}"


@dataclass(eq=False)
class Op:
    """One operation `result = kind(inputs) {attrs}`; `id` equals `result.id`."""

    id: int
    kind: str
    inputs: tuple[Value, ...]
    attrs: dict
    result: Value
    span: SourceSpan | None = None
    origin: str | None = None

    def __repr__(self) -> str:
        args = ", ".join(f"%{v.name if v.name is not None else v.id}" for v in self.inputs)
        return f"%{self.id} = {self.kind} {args} : {self.result.type}"


@dataclass(eq=False)
class Function:
    """A Graph IR function: parameters, ops in topological order, outputs."""

    name: str
    params: list[Value]
    ops: list[Op]
    outputs: list[Value]
    attrs: dict = field(default_factory=dict)

    def next_id(self) -> int:
        """An id no value of this function uses yet."""
        ids = [v.id for v in self.params] + [op.id for op in self.ops]
        return max(ids, default=-1) + 1

    def producers(self) -> dict[int, Op]:
        """Value id -> the op defining it."""
        return {op.result.id: op for op in self.ops}

    def users(self) -> dict[int, list[Op]]:
        """Value id -> the ops that read it, in program order."""
        users: dict[int, list[Op]] = {v.id: [] for v in self.params}
        for op in self.ops:
            users.setdefault(op.result.id, [])
            for value in op.inputs:
                users.setdefault(value.id, []).append(op)
        return users

    def to_networkx(self) -> nx.MultiDiGraph:
        """The dataflow graph: one node per value id (params and op results), one edge per
        operand use, from the operand to the op's result (a multigraph: `x * x` has two).

        Node attributes: `value` (the Value), `op` (the defining Op or None for a parameter),
        `label` (for DOT output). Topological order, dominators and liveness come from
        networkx on this graph.
        """
        import networkx as nx  # imported here: it costs a fresh compile 0.2 s it rarely needs

        graph = nx.MultiDiGraph(name=self.name)
        for value in self.params:
            graph.add_node(value.id, value=value, op=None, label=f"{value.name}: {value.type}")
        for op in self.ops:
            label = f"%{op.id} {op.kind}\n{op.result.type}"
            graph.add_node(op.id, value=op.result, op=op, label=label)
            for index, operand in enumerate(op.inputs):
                graph.add_edge(operand.id, op.id, operand=index)
        for index, value in enumerate(self.outputs):
            graph.nodes[value.id]["output"] = index
        return graph

    def __str__(self) -> str:
        from zhenwu.compiler.graph.printer import print_function

        return print_function(self)


def to_dot(fn: Function) -> str:
    """Graphviz text for the function's dataflow graph (outputs drawn as double octagons)."""
    graph = fn.to_networkx()
    lines = [f'digraph "{fn.name}" {{', "  node [shape=box, fontname=monospace];"]
    for node, data in graph.nodes(data=True):
        label = data["label"].replace('"', '\\"').replace("\n", "\\n")
        shape = "ellipse" if data["op"] is None else "box"
        if "output" in data:
            label += f"\\n-> out{data['output']}"
            shape = "doubleoctagon"
        lines.append(f'  n{node} [label="{label}", shape={shape}];')
    for src, dst, data in graph.edges(data=True):
        lines.append(f'  n{src} -> n{dst} [label="{data["operand"]}"];')
    lines.append("}")
    return "\n".join(lines) + "\n"
