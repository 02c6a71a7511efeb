"""The `.zt` abstract syntax tree; every node carries its source span."""

from __future__ import annotations

from dataclasses import dataclass, field

from isa.errors import SourceSpan


@dataclass
class Node:
    span: SourceSpan


# ---------------------------------------------------------------- expressions


@dataclass
class Num(Node):
    value: int | float


@dataclass
class Str(Node):
    value: str


@dataclass
class Bool(Node):
    value: bool


@dataclass
class NoneLit(Node):
    pass


@dataclass
class DTypeLit(Node):
    name: str


@dataclass
class Name(Node):
    id: str


@dataclass
class BinOp(Node):
    """`left OP right`, OP one of + - * / // @ ** < <= > >= == !=."""

    op: str
    left: Node
    right: Node


@dataclass
class Unary(Node):
    op: str  # "-" or "+"
    operand: Node


@dataclass
class Keyword(Node):
    name: str
    value: Node


@dataclass
class Call(Node):
    func: str
    func_span: SourceSpan
    args: list[Node]
    kwargs: list[Keyword]


@dataclass
class Slice(Node):
    start: Node | None
    stop: Node | None
    step: Node | None


@dataclass
class Index(Node):
    base: Node
    subscripts: list[Node]


@dataclass
class TupleLit(Node):
    items: list[Node]


@dataclass
class ListLit(Node):
    items: list[Node]


# ---------------------------------------------------------------- statements and items


@dataclass
class Target(Node):
    name: str


@dataclass
class Assign(Node):
    targets: list[Target]
    value: Node


@dataclass
class Return(Node):
    values: list[Node]


@dataclass
class TypeExpr(Node):
    dtype: str
    dims: list[Node]


@dataclass
class Param(Node):
    name: str
    type: TypeExpr | None
    default: Node | None


@dataclass
class FnDef(Node):
    name: str
    name_span: SourceSpan
    params: list[Param]
    returns: list[TypeExpr] | None
    body: list[Node]


@dataclass
class ConstDef(Node):
    name: str
    value: Node


@dataclass
class Module:
    file: str
    text: str
    items: list[Node] = field(default_factory=list)
