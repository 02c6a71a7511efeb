"""The checker: AST -> Graph IR.

It resolves names, binds symbolic dims (from `--shape`, from the input arrays, and at each
call of a helper), inlines every call, infers each shape and dtype (numpy broadcasting, JAX
promotion, Python scalars weakly typed) and emits Graph IR ops through `GraphBuilder`, which
checks each op against its registry rule. Every user mistake is a `Diagnostic` at the span of
the construct that caused it.

Values during checking are: `Tensor` (a Graph IR value), Python `int`/`float`/`bool` (weakly
typed scalars: consts, bound symbols, literals, and arithmetic on them), `str`, `DType`,
`None`, lists and tuples of these.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from zhenwu.compiler.frontend import ast
from zhenwu.compiler.frontend.parser import parse_source
from zhenwu.compiler.graph.builder import GraphBuilder
from zhenwu.compiler.graph.dtypes import DTYPES, is_float, is_int, limits, promote
from zhenwu.compiler.graph.ir import Function, TensorType, Value
from zhenwu.compiler.graph.ops import OPS, broadcast_shapes
from zhenwu.isa.errors import Diagnostic, InputError, SourceSpan
from zhenwu.isa.program import MAX_RANK

PRELUDE_PATH = Path(__file__).with_name("prelude.zt")
MAX_DIM = 2**62  # larger dims can never be allocated; they would overflow numpy's int64


def _span_text(span: SourceSpan | None) -> str:
    """The source text a one-line span covers (for messages)."""
    line = span.source_line() if span is not None else None
    if line is None or span.end_col is None or span.end_line not in (None, span.line):
        return "?"
    return line[span.col - 1:span.end_col - 1]


GLOBAL_CONSTANTS = {"inf": math.inf, "pi": math.pi}


@dataclass(frozen=True)
class DType:
    """A dtype used as a value (`cast(x, bf16)`)."""

    name: str


@dataclass(frozen=True)
class Tensor:
    """A tensor value during checking: the Graph IR value that holds it."""

    value: Value

    @property
    def type(self) -> TensorType:
        return self.value.type

    @property
    def dtype(self) -> str:
        return self.value.type.dtype

    @property
    def shape(self) -> tuple[int, ...]:
        return self.value.type.shape


class _ReturnSignal(Exception):
    def __init__(self, values, span):
        self.values, self.span = values, span


def nearest(name: str, candidates) -> str | None:
    """The closest candidate to a misspelt name, if any is close."""
    matches = difflib.get_close_matches(name, sorted(set(candidates)), n=1, cutoff=0.6)
    return matches[0] if matches else None


def to_float(value) -> float:
    """A Python number as a float; integers beyond the float range become +-inf."""
    try:
        return float(value)
    except OverflowError:
        return math.inf if value > 0 else -math.inf


def check_dim(value: int, span) -> int:
    """A dim must be positive and allocatable."""
    if value < 1:
        raise Diagnostic(f"a dim must be positive, got {value}", span)
    if value > MAX_DIM:
        raise Diagnostic(f"a dim must be at most 2**62, got {value}", span)
    return value


def check_rank(type_: TensorType, span) -> None:
    """A tensor has at most MAX_RANK dims (the chip's descriptors have that many)."""
    if type_.rank > MAX_RANK:
        raise Diagnostic(f"{type_} has {type_.rank} dims; tensors have at most {MAX_RANK}",
                         span)


def did_you_mean(name: str, candidates) -> str:
    """`; did you mean 'x'?` for the nearest candidate, or ''."""
    match = nearest(name, candidates)
    return f"; did you mean '{match}'?" if match else ""


def describe(value) -> str:
    """How a checker value is named in messages."""
    if isinstance(value, Tensor):
        return str(value.type)
    if isinstance(value, bool):
        return "a bool"
    if isinstance(value, int):
        return f"the integer {value}"
    if isinstance(value, float):
        return f"the number {value}"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, DType):
        return f"the dtype {value.name}"
    if value is None:
        return "None"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, tuple):
        return f"{len(value)} values"
    return type(value).__name__


def _fmt_dims(dims) -> str:
    return "[" + ", ".join(str(d) for d in dims) + "]"


# infix operator -> the elementwise binary op the table spells with it (`+` -> add)
_BINOP_KINDS = {op.frontend.operator: name for name, op in OPS.items()
                if op.frontend is not None and op.frontend.operator and op.arity == 2
                and op.vector is not None}
_VERBS = {**{name: op.verb for name, op in OPS.items() if op.verb}, "floordiv": "divide"}


class Checker:
    """Checks one program and builds the Graph IR of its entry function."""

    def __init__(self, module: ast.Module, prelude: ast.Module | Mapping[str, ast.FnDef] | None):
        self.module = module
        self.prelude_fns: Mapping[str, ast.FnDef] = {}
        self.fns: dict[str, ast.FnDef] = {}
        self.consts: dict[str, object] = {}
        self.builder: GraphBuilder | None = None
        self.origin: str | None = None
        self.span_override: SourceSpan | None = None
        self.origin_counts: dict[str, int] = {}
        self.call_stack: list[str] = []
        if isinstance(prelude, ast.Module):
            self.prelude_fns = {item.name: item for item in prelude.items
                                if isinstance(item, ast.FnDef)}
        elif prelude is not None:
            self.prelude_fns = prelude
        for item in module.items:
            if isinstance(item, ast.FnDef):
                if item.name in self.fns:
                    raise Diagnostic(f"function '{item.name}' is defined twice", item.name_span)
                self.fns[item.name] = item
            elif isinstance(item, ast.ConstDef):
                if item.name in self.consts:
                    raise Diagnostic(f"const '{item.name}' is defined twice", item.span)
                if item.name in GLOBAL_CONSTANTS:
                    raise Diagnostic(f"'{item.name}' is a built-in constant", item.span)
                value = self.eval(item.value, {})
                if not isinstance(value, (int, float)):
                    raise Diagnostic(f"const '{item.name}' must be a number, got "
                                     f"{describe(value)}", item.value.span)
                self.consts[item.name] = value

    # ------------------------------------------------------------------ entry

    def select_entry(self, entry: str | None) -> ast.FnDef:
        """The entry function: --entry, else `main`, else the only function."""
        if entry is not None:
            if entry not in self.fns:
                raise Diagnostic(f"no function '{entry}' in {self.module.file}"
                                 f"{did_you_mean(entry, self.fns)}")
            return self.fns[entry]
        if "main" in self.fns:
            return self.fns["main"]
        if len(self.fns) == 1:
            return next(iter(self.fns.values()))
        if not self.fns:
            raise Diagnostic(f"{self.module.file} defines no function",
                             SourceSpan(self.module.file, 1, 1, None, None, self.module.text))
        names = ", ".join(self.fns)
        raise Diagnostic(f"no function 'main' and several functions ({names}); "
                         "pass --entry NAME")

    def check_entry(self, entry: str | None, shapes: dict[str, int],
                    input_shapes: dict[str, tuple[int, ...]] | None) -> Function:
        """Bind the entry's dims, check its body, and build its Graph IR function."""
        fn = self.select_entry(entry)
        input_shapes = dict(input_shapes or {})
        param_names = [p.name for p in fn.params]
        for name in input_shapes:
            if name not in param_names:
                raise InputError(f"unknown input '{name}'{did_you_mean(name, param_names)}; "
                                 f"the parameters of '{fn.name}' are {', '.join(param_names)}",
                                 fn.name_span)
        for param in fn.params:
            if param.type is None:
                raise Diagnostic(f"parameter '{param.name}' of the entry function '{fn.name}' "
                                 "needs a type", param.span)
            if param.default is not None:
                raise Diagnostic(f"parameter '{param.name}' of the entry function '{fn.name}' "
                                 "cannot have a default", param.default.span)
        scope = self.bind_entry_symbols(fn, shapes, input_shapes)
        self.builder = GraphBuilder(fn.name)
        for param in fn.params:
            type_ = self.eval_type(param.type, scope)
            check_rank(type_, param.span)
            if param.name in input_shapes:
                self.check_input_shape(param, type_, input_shapes[param.name])
            if param.name in scope:
                raise Diagnostic(f"parameter '{param.name}' has the name of a symbolic dim or "
                                 "another parameter", param.span)
            scope[param.name] = Tensor(self.builder.param(param.name, type_, span=param.span))
        results = self.run_body(fn, scope)
        outputs = [self.as_tensor(value, fn.span) for value in results]
        self.check_returns(fn, [o.type for o in outputs], scope)
        return self.builder.finish([o.value for o in outputs])

    def bind_entry_symbols(self, fn: ast.FnDef, shapes: dict[str, int],
                           input_shapes: dict[str, tuple[int, ...]]) -> dict:
        """Bind the entry's symbolic dims from --shape and then from the input arrays."""
        symbols = {}
        for param in fn.params:
            for dim in param.type.dims:
                if isinstance(dim, ast.Name) and not self.is_known_name(dim.id):
                    symbols.setdefault(dim.id, dim)
                for name in self.names_in(dim):
                    if not self.is_known_name(name):
                        symbols.setdefault(name, dim)
        for name, size in shapes.items():
            if name not in symbols:
                known = ", ".join(symbols) or "none"
                raise InputError(f"--shape {name}={size}: '{name}' is not a symbolic dim of "
                                 f"'{fn.name}' (symbolic dims: {known})"
                                 f"{did_you_mean(name, symbols) if symbols else ''}")
            if not isinstance(size, int) or size < 1:
                raise InputError(f"--shape {name}={size}: a dim must be a positive integer")
        bound: dict[str, int] = dict(shapes)
        source = {name: f"--shape {name}={size}" for name, size in shapes.items()}
        for param in fn.params:
            if param.name not in input_shapes:
                continue
            actual = tuple(input_shapes[param.name])
            if len(actual) != len(param.type.dims):
                raise InputError(f"input '{param.name}' has shape {list(actual)}, but parameter "
                                 f"'{param.name}' has rank {len(param.type.dims)}",
                                 param.type.span)
            for dim, size in zip(param.type.dims, actual):
                if isinstance(dim, ast.Name) and dim.id in symbols:
                    if dim.id in bound and bound[dim.id] != size:
                        raise InputError(f"symbolic dim '{dim.id}' is {bound[dim.id]} by "
                                         f"{source[dim.id]} but {size} by input "
                                         f"'{param.name}'", dim.span)
                    bound[dim.id] = size
                    source.setdefault(dim.id, f"input '{param.name}'")
        self.infer_dim_expressions(fn, symbols, input_shapes, bound, source)
        for name, dim in symbols.items():
            if name not in bound:
                raise Diagnostic(f"symbolic dim '{name}' is not bound; pass --shape "
                                 f"{name}=<size> or an input file", dim.span)
        return dict(bound)

    def infer_dim_expressions(self, fn: ast.FnDef, symbols: dict, input_shapes: dict,
                              bound: dict[str, int], source: dict[str, str]) -> None:
        """Bind the symbols of dims written as expressions (`x: f32[2 * N]`) from the input
        arrays' sizes, where an expression has one unbound symbol and can be inverted
        (`+`, `-`, `*` and unary minus; `//` and `**` are not). Repeats until nothing new is
        bound, so that `N + M` binds M once N is known. The shapes are checked against the
        evaluated types afterwards (check_input_shape)."""
        changed = True
        while changed:
            changed = False
            for param in fn.params:
                if param.name not in input_shapes:
                    continue
                for dim, size in zip(param.type.dims, tuple(input_shapes[param.name])):
                    unbound = {n for n in self.names_in(dim) if n in symbols and n not in bound}
                    if len(unbound) != 1:
                        continue
                    solved = self.solve_dim(dim, int(size), bound, f"input '{param.name}'")
                    if solved is None:
                        continue
                    name, value = solved
                    if value < 1:
                        raise InputError(f"input '{param.name}' has {size} where its type says "
                                         f"'{_span_text(dim.span)}': that makes '{name}' "
                                         f"{value}, not a positive dim", dim.span)
                    bound[name] = value
                    source.setdefault(name, f"input '{param.name}'")
                    changed = True

    def solve_dim(self, node, value: int, bound: dict[str, int],
                  who: str) -> tuple[str, int] | None:
        """(symbol, size) making dim expression `node` equal `value`, or None when the
        expression cannot be inverted; an InputError when no integer size gives `value`."""
        if isinstance(node, ast.Name):
            return None if node.id in bound or self.is_known_name(node.id) else (node.id, value)
        if isinstance(node, ast.Unary) and node.op in "+-":
            return self.solve_dim(node.operand, -value if node.op == "-" else value, bound,
                                  who)
        if not isinstance(node, ast.BinOp) or node.op not in ("+", "-", "*"):
            return None

        def known(side) -> int | None:
            if any(n not in bound and not self.is_known_name(n) for n in self.names_in(side)):
                return None
            result = self.eval(side, dict(bound))
            return result if isinstance(result, int) and not isinstance(result, bool) else None

        left, right = known(node.left), known(node.right)
        if left is None and right is None:
            return None
        if node.op == "+":
            return self.solve_dim(node.right, value - left, bound, who) if left is not None \
                else self.solve_dim(node.left, value - right, bound, who)
        if node.op == "-":
            return self.solve_dim(node.right, left - value, bound, who) if left is not None \
                else self.solve_dim(node.left, value + right, bound, who)
        factor = left if left is not None else right
        other = node.right if left is not None else node.left
        if factor == 0 or value % factor:
            raise InputError(f"{who} has {value} where its type says "
                             f"'{_span_text(node.span)}', which no integer size gives",
                             node.span)
        return self.solve_dim(other, value // factor, bound, who)

    def check_input_shape(self, param: ast.Param, type_: TensorType, actual) -> None:
        """An input array must have the parameter's concrete shape."""
        actual = tuple(actual)
        for axis, (want, got) in enumerate(zip(type_.shape, actual)):
            if want != got:
                raise InputError(f"input '{param.name}' has shape {list(actual)}, but parameter "
                                 f"'{param.name}' is {type_}: dims {axis} differ ({got} vs "
                                 f"{want})", param.type.span)

    def check_returns(self, fn: ast.FnDef, got: list[TensorType], scope: dict) -> None:
        """The values returned must have the declared result types, if any."""
        if fn.returns is None:
            return
        want = [self.eval_type(t, scope) for t in fn.returns]
        if want != got:
            span = fn.returns[0].span
            raise Diagnostic(f"'{fn.name}' returns ({', '.join(map(str, got))}) but declares "
                             f"({', '.join(map(str, want))})", span)

    # ------------------------------------------------------------------ names and types

    def is_known_name(self, name: str) -> bool:
        """A const or a built-in constant (not a symbolic dim)."""
        return name in self.consts or name in GLOBAL_CONSTANTS

    def names_in(self, node) -> list[str]:
        """The names a dim expression mentions."""
        if isinstance(node, ast.Name):
            return [node.id]
        if isinstance(node, ast.BinOp):
            return self.names_in(node.left) + self.names_in(node.right)
        if isinstance(node, ast.Unary):
            return self.names_in(node.operand)
        return []

    def eval_dim(self, node, scope: dict) -> int:
        """A dim expression as a positive integer."""
        value = self.eval(node, scope)
        if isinstance(value, bool) or not isinstance(value, int):
            raise Diagnostic(f"a dim must be an integer, got {describe(value)}", node.span)
        return check_dim(value, node.span)

    def eval_type(self, node: ast.TypeExpr, scope: dict) -> TensorType:
        """A type expression with every dim evaluated."""
        return TensorType(node.dtype, tuple(self.eval_dim(d, scope) for d in node.dims))

    # ------------------------------------------------------------------ emitting

    def emit(self, kind: str, inputs, attrs: dict | None, span: SourceSpan) -> Tensor:
        """Emit an op at `span` (the call site inside a composite), with the current origin."""
        span = self.span_override or span
        values = [t.value for t in inputs]
        result = Tensor(self.builder.emit(kind, values, attrs, span=span, origin=self.origin))
        check_rank(result.type, span)
        return result

    def constant(self, value, dtype: str, span: SourceSpan, shape=()) -> Tensor:
        """A splat constant; integer constants of a float value truncate (as `cast`) and
        saturate."""
        if dtype == "bool":
            value = bool(value)
        elif is_int(dtype) and isinstance(value, float):
            low, high = limits(dtype)
            value = 0 if math.isnan(value) else int(min(max(value, low), high))
        elif is_int(dtype) and isinstance(value, bool):
            value = int(value)
        elif is_float(dtype) and not isinstance(value, float):
            value = to_float(value)
        return self.emit("constant", [], {"value": value, "dtype": dtype, "shape": shape}, span)

    def cast(self, tensor: Tensor, dtype: str, span: SourceSpan) -> Tensor:
        """The tensor in `dtype` (a cast op only when it differs)."""
        if tensor.dtype == dtype:
            return tensor
        return self.emit("cast", [tensor], {"dtype": dtype}, span)

    def reshape(self, tensor: Tensor, shape, span: SourceSpan) -> Tensor:
        """The tensor with `shape` (a reshape op only when it differs)."""
        if tuple(shape) == tensor.shape:
            return tensor
        return self.emit("reshape", [tensor], {"shape": tuple(shape)}, span)

    def as_tensor(self, value, span: SourceSpan, dtype: str | None = None) -> Tensor:
        """A tensor from a tensor or a Python scalar (default dtype: i32, f32 or bool)."""
        if isinstance(value, Tensor):
            return value
        if isinstance(value, (bool, int, float)):
            if dtype is None:
                dtype = "bool" if isinstance(value, bool) else (
                    "i32" if isinstance(value, int) else "f32")
            return self.constant(value, dtype, span)
        raise Diagnostic(f"expected a tensor, got {describe(value)}", span)

    def scalar_dtype(self, scalar, other: str) -> str:
        """The dtype a weakly typed Python scalar takes next to a tensor of dtype `other`."""
        if isinstance(scalar, float) and not isinstance(scalar, bool) and not is_float(other):
            return "f32"
        if isinstance(scalar, int) and not isinstance(scalar, bool) and other == "bool":
            return "i32"
        return other

    def unify(self, values: list, spans: list[SourceSpan]) -> tuple[list[Tensor], str]:
        """Promote a mix of tensors and Python scalars to one dtype (JAX rules)."""
        tensors = [v for v in values if isinstance(v, Tensor)]
        for value, span in zip(values, spans):
            if not isinstance(value, (Tensor, bool, int, float)):
                raise Diagnostic(f"expected a tensor or a number, got {describe(value)}", span)
        if tensors:
            dtype = tensors[0].dtype
            for t in tensors[1:]:
                dtype = promote(dtype, t.dtype)
            for value in values:
                if not isinstance(value, Tensor):
                    dtype = self.scalar_dtype(value, dtype)
        else:
            if any(isinstance(v, float) for v in values):
                dtype = "f32"
            elif all(isinstance(v, bool) for v in values):
                dtype = "bool"
            else:
                dtype = "i32"
        out = [self.cast(self.as_tensor(v, s, dtype), dtype, s) for v, s in zip(values, spans)]
        return out, dtype

    # ------------------------------------------------------------------ functions

    def run_body(self, fn: ast.FnDef, scope: dict) -> list:
        """Execute a function body in `scope`; returns the values of its `return`."""
        try:
            for index, stmt in enumerate(fn.body):
                if isinstance(stmt, ast.Return) and index + 1 < len(fn.body):
                    raise Diagnostic("statement after 'return' is never run",
                                     fn.body[index + 1].span)
                self.exec(stmt, scope)
        except _ReturnSignal as ret:
            return ret.values
        raise Diagnostic(f"function '{fn.name}' has no return statement", fn.name_span)

    def exec(self, stmt, scope: dict) -> None:
        """Execute one statement."""
        if isinstance(stmt, ast.Assign):
            value = self.eval(stmt.value, scope)
            if len(stmt.targets) == 1:
                if isinstance(value, tuple) and len(value) > 1 and isinstance(
                        stmt.value, ast.Call):
                    raise Diagnostic(f"'{stmt.value.func}' returns {len(value)} values; unpack "
                                     f"them: {', '.join(f'v{i}' for i in range(len(value)))} = "
                                     "...", stmt.value.span)
                scope[stmt.targets[0].name] = value
                return
            if not isinstance(value, (tuple, list)):
                raise Diagnostic(f"cannot unpack {describe(value)} into {len(stmt.targets)} "
                                 "names", stmt.value.span)
            if len(value) != len(stmt.targets):
                raise Diagnostic(f"cannot unpack {len(value)} values into "
                                 f"{len(stmt.targets)} names", stmt.span)
            for target, item in zip(stmt.targets, value):
                scope[target.name] = item
            return
        if isinstance(stmt, ast.Return):
            nodes = stmt.values
            if len(nodes) == 1 and isinstance(nodes[0], ast.TupleLit):
                nodes = nodes[0].items  # return (a, b)
            values = [self.eval(v, scope) for v in nodes]
            for node, value in zip(nodes, values):
                if isinstance(value, tuple) and isinstance(node, ast.Call):
                    raise Diagnostic(f"'{node.func}' returns {len(value)} values; unpack them "
                                     "before returning", node.span)
                if not isinstance(value, (Tensor, bool, int, float)):
                    raise Diagnostic(f"cannot return {describe(value)}", node.span)
            raise _ReturnSignal(values, stmt.span)
        raise Diagnostic("unsupported statement", stmt.span)  # pragma: no cover

    def call_function(self, fn: ast.FnDef, args: list, kwargs: dict, call: ast.Call,
                      prelude: bool):
        """Inline a call of a user fn or a prelude composite; returns its value(s)."""
        if fn.name in self.call_stack:
            raise Diagnostic(f"recursive call of '{fn.name}' (functions are inlined, so they "
                             "cannot recurse)", call.func_span)
        params = [p.name for p in fn.params]
        bound = bind_arguments(fn.name, params, {p.name: p.default for p in fn.params
                                                 if p.default is not None}, args, kwargs, call)
        scope: dict = {}
        saved = (self.origin, self.span_override)
        if prelude:
            self.enter_composite(fn.name)
            self.span_override = self.span_override or call.span
        self.call_stack.append(fn.name)
        try:
            for param in fn.params:
                value, span = bound[param.name]
                if isinstance(value, ast.Node):  # a default, evaluated in the callee
                    value = self.eval(value, scope)
                if param.type is not None:
                    value = self.bind_param(fn, param, value, span, scope)
                scope[param.name] = value
            results = self.run_body(fn, scope)
            if fn.returns is not None:
                got = [self.as_tensor(v, call.span).type for v in results]
                self.check_returns(fn, got, scope)
        except Diagnostic as err:
            if prelude and not err.message.startswith(f"{fn.name}"):
                # a mistake inside a composite is reported at the call, naming the composite
                raise Diagnostic(f"{fn.name}: {err.message}", call.span, notes=err.notes) \
                    from None
            raise
        finally:
            self.call_stack.pop()
            self.origin, self.span_override = saved
        return results[0] if len(results) == 1 else tuple(results)

    def enter_composite(self, name: str) -> None:
        """Ops emitted from now on come from composite `name` (outermost one wins); the
        caller restores `self.origin` afterwards."""
        if self.origin is None:
            count = self.origin_counts.get(name, 0) + 1
            self.origin_counts[name] = count
            self.origin = f"{name}#{count}"

    def bind_param(self, fn: ast.FnDef, param: ast.Param, value, span, scope: dict) -> Tensor:
        """Check an argument against a typed parameter, binding the callee's symbolic dims."""
        type_node = param.type
        if not isinstance(value, Tensor):
            if isinstance(value, (bool, int, float)) and not type_node.dims:
                value = self.constant(value, type_node.dtype, span)
            else:
                raise Diagnostic(f"argument '{param.name}' of '{fn.name}' must be a "
                                 f"{type_node.dtype} tensor, got {describe(value)}", span)
        if len(type_node.dims) != len(value.shape):
            raise Diagnostic(f"argument '{param.name}' of '{fn.name}' is {value.type}, but the "
                             f"parameter has rank {len(type_node.dims)}", span)
        for dim, size in zip(type_node.dims, value.shape):
            if isinstance(dim, ast.Name) and not self.is_known_name(dim.id):
                if dim.id in scope and scope[dim.id] != size:
                    raise Diagnostic(f"symbolic dim '{dim.id}' of '{fn.name}' is bound to "
                                     f"{scope[dim.id]} and to {size} (argument "
                                     f"'{param.name}' is {value.type})", span)
                scope[dim.id] = size
        for axis, (dim, size) in enumerate(zip(type_node.dims, value.shape)):
            for name in self.names_in(dim):
                if name not in scope and not self.is_known_name(name):
                    raise Diagnostic(f"cannot infer symbolic dim '{name}' of '{fn.name}' from "
                                     "its arguments", dim.span)
            want = self.eval_dim(dim, scope)
            if want != size:
                raise Diagnostic(f"argument '{param.name}' of '{fn.name}' is {value.type}, but "
                                 f"the parameter is {type_node.dtype}"
                                 f"{_fmt_dims(self.eval_type(type_node, scope).shape)}: dims "
                                 f"{axis} differ ({size} vs {want})", span)
        if value.dtype != type_node.dtype:
            raise Diagnostic(f"argument '{param.name}' of '{fn.name}' is {value.type}, but the "
                             f"parameter is {type_node.dtype}: dtypes differ", span)
        return value

    # ------------------------------------------------------------------ expressions

    def lookup(self, node: ast.Name, scope: dict):
        """The value of a name: local, const, or built-in constant."""
        if node.id in scope:
            return scope[node.id]
        if node.id in self.consts:
            return self.consts[node.id]
        if node.id in GLOBAL_CONSTANTS:
            return GLOBAL_CONSTANTS[node.id]
        from zhenwu.compiler.frontend.builtins import BUILTINS

        if node.id in BUILTINS or node.id in self.fns or node.id in self.prelude_fns:
            raise Diagnostic(f"'{node.id}' is a function; call it as {node.id}(...)", node.span)
        names = list(scope) + list(self.consts) + list(GLOBAL_CONSTANTS) + list(DTYPES)
        raise Diagnostic(f"unknown name '{node.id}'{did_you_mean(node.id, names)}", node.span)

    def eval(self, node, scope: dict):
        """Evaluate an expression to a checker value (emitting ops for tensor work)."""
        if isinstance(node, ast.Num):
            return node.value
        if isinstance(node, ast.Bool):
            return node.value
        if isinstance(node, ast.Str):
            return node.value
        if isinstance(node, ast.NoneLit):
            return None
        if isinstance(node, ast.DTypeLit):
            return DType(node.name)
        if isinstance(node, ast.Name):
            return self.lookup(node, scope)
        if isinstance(node, ast.ListLit):
            return [self.eval(item, scope) for item in node.items]
        if isinstance(node, ast.TupleLit):
            return tuple(self.eval(item, scope) for item in node.items)
        if isinstance(node, ast.Unary):
            value = self.eval(node.operand, scope)
            if node.op == "+":
                self.number_or_tensor(value, node.operand.span)
                return value
            return self.negate(value, node)
        if isinstance(node, ast.BinOp):
            return self.binop(node, scope)
        if isinstance(node, ast.Call):
            return self.call(node, scope)
        if isinstance(node, ast.Index):
            from zhenwu.compiler.frontend.builtins import index_tensor

            return index_tensor(self, node, scope)
        if isinstance(node, (ast.Slice, ast.Keyword, ast.EllipsisLit)):
            what = "'...'" if isinstance(node, ast.EllipsisLit) else "a slice"
            raise Diagnostic(f"{what} is only allowed inside [ ]", node.span)
        raise Diagnostic("unsupported expression", node.span)  # pragma: no cover

    def number_or_tensor(self, value, span):
        """Reject values that are neither a tensor nor a number."""
        if isinstance(value, bool) or not isinstance(value, (Tensor, int, float)):
            raise Diagnostic(f"expected a tensor or a number, got {describe(value)}", span)

    def negate(self, value, node: ast.Unary):
        """`-value`."""
        self.number_or_tensor(value, node.operand.span)
        if isinstance(value, Tensor):
            if value.dtype == "bool":
                raise Diagnostic(f"cannot negate {value.type}", node.span)
            return self.emit("neg", [value], None, node.span)
        return -value

    def binop(self, node: ast.BinOp, scope: dict):
        """A binary operator expression."""
        left = self.eval(node.left, scope)
        right = self.eval(node.right, scope)
        return self.apply_binary(node.op, left, right, node.span, node.left.span,
                                 node.right.span)

    def apply_binary(self, op: str, left, right, span, left_span, right_span):
        """A binary operator on two checker values (numbers fold at check time)."""
        python = (int, float)
        if isinstance(left, python) and isinstance(right, python):
            return self.python_binary(op, left, right, span)
        if op == "@":
            from zhenwu.compiler.frontend.builtins import matmul

            return matmul(self, left, right, span, left_span, right_span)
        for value, vspan in ((left, left_span), (right, right_span)):
            if not isinstance(value, (Tensor, bool, int, float)):
                raise Diagnostic(f"expected a tensor or a number, got {describe(value)}", vspan)
        kind = "floordiv" if op == "//" else _BINOP_KINDS[op]
        return self.binary(kind, left, right, span, left_span, right_span)

    def binary(self, kind: str, left, right, span, left_span=None, right_span=None) -> Tensor:
        """A broadcasting elementwise binary op on tensors and/or Python scalars."""
        left_span, right_span = left_span or span, right_span or span
        if isinstance(left, Tensor) and isinstance(right, Tensor):
            try:
                broadcast_shapes(left.shape, right.shape, _VERBS[kind], str(left.type),
                                 str(right.type))
            except Diagnostic as err:
                raise Diagnostic(err.message, self.span_override or span) from None
        (a, b), dtype = self.unify([left, right], [left_span, right_span])
        if kind == "div" and not is_float(dtype):
            a, b = self.cast(a, "f32", span), self.cast(b, "f32", span)
        elif kind == "floordiv":
            if is_float(dtype):
                return self.emit("floor", [self.emit("div", [a, b], None, span)], None, span)
            kind = "div"
        if dtype == "bool" and kind in ("add", "sub", "mul", "div", "pow", "lt", "le", "gt",
                                        "ge"):
            a, b = self.cast(a, "i32", span), self.cast(b, "i32", span)
        return self.emit(kind, [a, b], None, span)

    def python_binary(self, op: str, a, b, span):
        """A binary operator on two Python numbers (consts, dims, literals)."""
        try:
            if op == "+":
                return a + b
            if op == "-":
                return a - b
            if op == "*":
                return a * b
            if op == "/":
                return a / b
            if op == "//":
                return a // b
            if op == "**":
                if (isinstance(a, int) and isinstance(b, int) and abs(a) > 1
                        and a.bit_length() * b > 4096):
                    raise Diagnostic(f"{a} ** {b} is too large", span)
                result = a ** b
                if isinstance(result, complex):
                    raise Diagnostic(f"{a} ** {b} is not a real number", span)
                return result
            return {"<": a < b, "<=": a <= b, ">": a > b, ">=": a >= b, "==": a == b,
                    "!=": a != b}[op]
        except ZeroDivisionError:
            raise Diagnostic("division by zero", span) from None
        except OverflowError:
            raise Diagnostic("number too large", span) from None

    def call(self, node: ast.Call, scope: dict):
        """A call: user function, prelude composite, or builtin (in that order)."""
        from zhenwu.compiler.frontend.builtins import BUILTINS

        args = [(self.eval(a, scope), a.span) for a in node.args]
        kwargs = {}
        for kw in node.kwargs:
            if kw.name in kwargs:
                raise Diagnostic(f"keyword argument '{kw.name}' is given twice", kw.span)
            kwargs[kw.name] = (self.eval(kw.value, scope), kw.span)
        if node.func in self.fns:
            return self.call_function(self.fns[node.func], args, kwargs, node, prelude=False)
        if node.func in self.prelude_fns:
            return self.call_function(self.prelude_fns[node.func], args, kwargs, node,
                                      prelude=True)
        if node.func in BUILTINS:
            builtin = BUILTINS[node.func]
            bound = bind_arguments(node.func, builtin.params, builtin.defaults, args, kwargs,
                                   node)
            values = {name: (self.eval(v, {}) if isinstance(v, ast.Node) else v, s)
                      for name, (v, s) in bound.items()}
            return builtin.rule(self, values, node)
        names = list(self.fns) + list(self.prelude_fns) + list(BUILTINS)
        raise Diagnostic(f"unknown function '{node.func}'{did_you_mean(node.func, names)}",
                         node.func_span)


def bind_arguments(name: str, params: list[str], defaults: dict, args: list, kwargs: dict,
                   call: ast.Call) -> dict:
    """Match positional and keyword arguments to parameters, Python style.

    A parameter spelled `*name` takes the remaining positional arguments as a list. Returns
    name -> (value or default node, span).
    """
    bound: dict = {}
    star = next((p for p in params if p.startswith("*")), None)
    positional = [p for p in params if not p.startswith("*")]
    if star is not None:
        before = params.index(star)
        fixed = positional[:before]
        if len(args) < len(fixed):
            fixed_args = args
        else:
            fixed_args = args[:len(fixed)]
        for param, arg in zip(fixed, fixed_args):
            bound[param] = arg
        rest = args[len(fixed):]
        bound[star[1:]] = ([v for v, _ in rest], rest[0][1] if rest else call.span)
    else:
        if len(args) > len(positional):
            required = sum(1 for p in positional if p not in defaults)
            takes = (f"{len(positional)}" if required == len(positional)
                     else f"{required} to {len(positional)}")
            raise Diagnostic(f"{name}() takes {takes} positional argument"
                             f"{'s' if len(positional) != 1 else ''} but {len(args)} were given",
                             args[len(positional)][1])
        for param, arg in zip(positional, args):
            bound[param] = arg
    for key, value in kwargs.items():
        if key not in positional:
            hint = did_you_mean(key, positional) or (
                f" (parameters: {', '.join(positional)})" if positional else "")
            raise Diagnostic(f"{name}() has no parameter '{key}'{hint}", value[1])
        if key in bound:
            raise Diagnostic(f"{name}() got two values for '{key}'", value[1])
        bound[key] = value
    for param in positional:
        if param not in bound:
            if param in defaults:
                bound[param] = (defaults[param], call.span)
            else:
                raise Diagnostic(f"{name}() is missing argument '{param}'", call.span)
    return bound


def check_module(module: ast.Module, *, entry: str | None = None,
                 shapes: dict[str, int] | None = None,
                 input_shapes: dict[str, tuple[int, ...]] | None = None) -> Function:
    """Check a parsed program and build the Graph IR of its entry function."""
    checker = Checker(module, PRELUDE)
    return checker.check_entry(entry, dict(shapes or {}), input_shapes)


_PRELUDE: list[ast.Module] = []


def load_prelude() -> ast.Module:
    """The parsed prelude (composites written in the language), parsed once."""
    if not _PRELUDE:
        _PRELUDE.append(parse_source(PRELUDE_PATH.read_text(), str(PRELUDE_PATH)))
    return _PRELUDE[0]


class _LazyPrelude(Mapping):
    """The prelude's composites by name, parsed on the first use of one: a program that
    calls none (most small ones) never parses the prelude. The names come from a scan of
    the file's `fn NAME(` lines, so lookups, suggestions and shadowing need no parse."""

    @cached_property
    def _names(self) -> tuple[str, ...]:
        return tuple(re.findall(r"^fn\s+([A-Za-z_][A-Za-z0-9_]*)\s*\(",
                                PRELUDE_PATH.read_text(), re.MULTILINE))

    @cached_property
    def _fns(self) -> dict[str, ast.FnDef]:
        return {item.name: item for item in load_prelude().items
                if isinstance(item, ast.FnDef)}

    def __getitem__(self, name: str) -> ast.FnDef:
        if name not in self._names:
            raise KeyError(name)
        return self._fns[name]

    def __contains__(self, name) -> bool:
        return name in self._names

    def __iter__(self):
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)


PRELUDE = _LazyPrelude()


__all__ = ["DTYPES", "Checker", "DType", "Tensor", "check_module"]
