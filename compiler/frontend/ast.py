"""The `.zt` abstract syntax tree; every node carries its source span."""

from __future__ import annotations

from dataclasses import dataclass, field

from zhenwu.isa.errors import SourceSpan


@dataclass
class Node:
    """Base of every AST node: where it is in the source."""

    span: SourceSpan


# ---------------------------------------------------------------- expressions


@dataclass
class Num(Node):
    """An integer or float literal."""

    value: int | float


@dataclass
class Str(Node):
    """A string literal (einsum specs)."""

    value: str


@dataclass
class Bool(Node):
    """`true` or `false`."""

    value: bool


@dataclass
class NoneLit(Node):
    """`None` (adds an axis when indexing)."""


@dataclass
class EllipsisLit(Node):
    """`...` inside `[ ]`: as many full slices as the other subscripts leave."""


@dataclass
class DTypeLit(Node):
    """A dtype used as a value: `cast(x, bf16)`."""

    name: str


@dataclass
class Name(Node):
    """A name: variable, const, symbolic dim or built-in constant."""

    id: str


@dataclass
class BinOp(Node):
    """`left OP right`, OP one of + - * / // @ ** < <= > >= == !=."""

    op: str
    left: Node
    right: Node


@dataclass
class Unary(Node):
    """Unary `-x` or `+x`."""

    op: str  # "-" or "+"
    operand: Node


@dataclass
class Keyword(Node):
    """A keyword argument `name=value` of a call."""

    name: str
    value: Node


@dataclass
class Call(Node):
    """A call of a builtin, a prelude composite or a user function."""

    func: str
    func_span: SourceSpan
    args: list[Node]
    kwargs: list[Keyword]


@dataclass
class Slice(Node):
    """`start:stop:step` inside `[ ]`; missing parts are None."""

    start: Node | None
    stop: Node | None
    step: Node | None


@dataclass
class Index(Node):
    """`base[subscripts]` (basic indexing)."""

    base: Node
    subscripts: list[Node]


@dataclass
class TupleLit(Node):
    """`(a, b)`: axes."""

    items: list[Node]


@dataclass
class ListLit(Node):
    """`[a, b]`: shapes, permutations, pads, tensor lists."""

    items: list[Node]


# ---------------------------------------------------------------- statements and items


@dataclass
class Target(Node):
    """One name on the left of `=`."""

    name: str


@dataclass
class Assign(Node):
    """`a, b = value`."""

    targets: list[Target]
    value: Node


@dataclass
class Return(Node):
    """`return e1, e2`."""

    values: list[Node]


@dataclass
class TypeExpr(Node):
    """`DTYPE[dims]`; each dim an expression."""

    dtype: str
    dims: list[Node]


@dataclass
class Param(Node):
    """A function parameter, with an optional type and default."""

    name: str
    type: TypeExpr | None
    default: Node | None


@dataclass
class FnDef(Node):
    """`fn NAME(params) -> TYPES { body }`."""

    name: str
    name_span: SourceSpan
    params: list[Param]
    returns: list[TypeExpr] | None
    body: list[Node]


@dataclass
class MeshDef(Node):
    """`mesh tp = 8` or `mesh dp = 2, tp = 4`: the chips' mesh (many-chip runs)."""

    axes: list[tuple[str, Node]]


@dataclass
class ConstDef(Node):
    """`const NAME = EXPR`."""

    name: str
    value: Node


@dataclass
class Module:
    """A parsed `.zt` file: its items, with the file name and text for diagnostics."""

    file: str
    text: str
    items: list[Node] = field(default_factory=list)
