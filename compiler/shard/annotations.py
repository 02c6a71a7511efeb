"""Sharding annotations in `.zt` types: `w1: bf16[D, F@tp]` splits dim F over mesh axis tp.

`extract_shardings(module)` runs between parsing and checking: it records, for every fn, the
mesh axis of each parameter and result dim written `DIM@AXIS` (with its source span), and
rewrites the dim to plain `DIM`, so that the checker and a one-chip compile see an ordinary
program. An unannotated dim is replicated. `@` never means a matrix product inside a type.
"""

from __future__ import annotations

from dataclasses import dataclass

from zhenwu.compiler.frontend import ast
from zhenwu.isa.errors import Diagnostic, SourceSpan


@dataclass(frozen=True)
class DimAxis:
    """Dim `dim` of a parameter or result is split over mesh axis `axis` (written at span)."""

    dim: int
    axis: str
    span: SourceSpan


@dataclass(frozen=True)
class FnShardings:
    """The annotations of one fn: per parameter name and per result index."""

    params: dict[str, tuple[DimAxis, ...]]
    results: tuple[tuple[DimAxis, ...], ...]
    param_types: dict[str, SourceSpan]


def _strip(type_: ast.TypeExpr | None) -> tuple[DimAxis, ...]:
    if type_ is None:
        return ()
    found = []
    for index, dim in enumerate(type_.dims):
        if isinstance(dim, ast.BinOp) and dim.op == "@":
            if not isinstance(dim.right, ast.Name):
                raise Diagnostic("after '@' in a type comes a mesh axis name (e.g. F@tp)",
                                 dim.right.span)
            found.append(DimAxis(index, dim.right.id, dim.span))
            type_.dims[index] = dim.left
    axes = [f.axis for f in found]
    for item in found:
        if axes.count(item.axis) > 1:
            raise Diagnostic(f"mesh axis '{item.axis}' splits two dims of one type: a dim "
                             "can be split over an axis only once", item.span)
    return tuple(found)


@dataclass(frozen=True)
class DeclaredMesh:
    """A `mesh tp = 8` declaration: axes (name, size) in order, and where it is."""

    axes: tuple[tuple[str, int], ...]
    span: SourceSpan


def extract_mesh(module: ast.Module) -> DeclaredMesh | None:
    """The module's `mesh` declaration (at most one; sizes are integer literals), removed
    from its items so that the checker sees only fns and consts."""
    found = [item for item in module.items if isinstance(item, ast.MeshDef)]
    module.items = [item for item in module.items if not isinstance(item, ast.MeshDef)]
    if not found:
        return None
    if len(found) > 1:
        raise Diagnostic("the mesh is declared twice", found[1].span)
    axes = []
    for name, size in found[0].axes:
        if not isinstance(size, ast.Num) or not isinstance(size.value, int) or size.value < 1:
            raise Diagnostic(f"mesh axis '{name}' needs a positive integer size", size.span)
        if name in (n for n, _ in axes):
            raise Diagnostic(f"mesh axis '{name}' is declared twice", size.span)
        axes.append((name, size.value))
    return DeclaredMesh(tuple(axes), found[0].span)


def extract_shardings(module: ast.Module) -> dict[str, FnShardings]:
    """Per fn name, its annotations; the module's types are left without them."""
    out = {}
    for item in module.items:
        if not isinstance(item, ast.FnDef):
            continue
        params = {p.name: _strip(p.type) for p in item.params}
        results = tuple(_strip(t) for t in (item.returns or []))
        out[item.name] = FnShardings({k: v for k, v in params.items() if v}, results,
                                     {p.name: p.type.span for p in item.params
                                      if p.type is not None})
    return out


def strip_pins(fn):
    """`fn` without its `shard` ops (a one-chip compile: a pin changes nothing there)."""
    from zhenwu.compiler.graph.ir import Function, Op

    if not any(op.kind == "shard" for op in fn.ops):
        return fn
    replace: dict[int, object] = {}
    ops = []
    for op in fn.ops:
        inputs = tuple(replace.get(v.id, v) for v in op.inputs)
        if op.kind == "shard":
            replace[op.id] = inputs[0]
            continue
        ops.append(op if inputs == op.inputs else
                   Op(op.id, op.kind, inputs, op.attrs, op.result, op.span, op.origin))
    outputs = [replace.get(v.id, v) for v in fn.outputs]
    return Function(fn.name, fn.params, ops, outputs, dict(fn.attrs))
