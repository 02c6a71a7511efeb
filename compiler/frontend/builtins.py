"""The builtins of the `.zt` language (docs/design.md section 3), one rule each.

A rule turns checked arguments into Graph IR ops through the checker: primitives directly,
`conv2d`/pools/`einsum` as single registry ops (lowered later by `decompose`), and a few
composites that need shapes (`mean`, `expand_dims`, `squeeze`, `split`, indexing) as short
sequences of primitives. Composites expressible in the language live in prelude.zt.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import pairwise
from math import prod

from zhenwu.compiler.frontend import ast
from zhenwu.compiler.frontend.checker import Checker, DType, Tensor, check_dim, describe, to_float
from zhenwu.compiler.graph.dtypes import DTYPES, is_float, limits
from zhenwu.compiler.graph.ops import OPS, OpDef, on_register, parse_einsum, result_dtype
from zhenwu.isa.errors import Diagnostic, SourceSpan
from zhenwu.isa.lazy import numpy as np

Args = dict[str, tuple[object, SourceSpan]]


@dataclass(frozen=True)
class Builtin:
    """A builtin's parameters (a `*name` takes the rest of the positional arguments), their
    defaults, and its rule `(checker, args, call) -> value`."""

    params: list[str]
    rule: Callable[[Checker, Args, ast.Call], object]
    defaults: dict = field(default_factory=dict)


BUILTINS: dict[str, Builtin] = {}


def builtin(name: str, params: str, **defaults):
    """Register a builtin: `params` is a space-separated parameter list."""

    def register(rule):
        BUILTINS[name] = Builtin(params.split(), rule, defaults)
        return rule

    return register


# ------------------------------------------------------------------ argument helpers


def tensor_arg(chk: Checker, args: Args, name: str) -> Tensor:
    """Argument `name` as a tensor (a Python number becomes a constant)."""
    value, span = args[name]
    if isinstance(value, Tensor):
        return value
    if isinstance(value, (bool, int, float)):
        return chk.as_tensor(value, span)
    raise Diagnostic(f"'{name}' must be a tensor, got {describe(value)}", span)


def int_arg(args: Args, name: str, *, minimum: int | None = None) -> int:
    """Argument `name` as an integer."""
    value, span = args[name]
    return as_int(value, span, name, minimum=minimum)


def as_int(value, span, what: str, *, minimum: int | None = None) -> int:
    """A value that must be an integer (not a bool), at least `minimum`."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise Diagnostic(f"'{what}' must be an integer, got {describe(value)}", span)
    if minimum is not None and value < minimum:
        raise Diagnostic(f"'{what}' must be at least {minimum}, got {value}", span)
    return value


def int_list(value, span, what: str) -> list[int]:
    """A list or tuple of integers."""
    if isinstance(value, (list, tuple)):
        return [as_int(v, span, what) for v in value]
    raise Diagnostic(f"'{what}' must be a list of integers, got {describe(value)}", span)


def bool_arg(args: Args, name: str) -> bool:
    """Argument `name` as true/false."""
    value, span = args[name]
    if not isinstance(value, bool):
        raise Diagnostic(f"'{name}' must be true or false, got {describe(value)}", span)
    return value


def dtype_arg(args: Args, name: str) -> str | None:
    """Argument `name` as a dtype name, or None."""
    value, span = args[name]
    if value is None:
        return None
    if isinstance(value, DType):
        return value.name
    if isinstance(value, str) and value in DTYPES:
        return value
    raise Diagnostic(f"'{name}' must be a dtype ({', '.join(DTYPES)}), got {describe(value)}",
                     span)


def norm_axis(axis, rank: int, span, t: Tensor | None = None) -> int:
    """An axis in range for `rank`, made non-negative."""
    axis = as_int(axis, span, "axis")
    if not -rank <= axis < rank:
        where = f" for {t.type}" if t is not None else ""
        raise Diagnostic(f"axis {axis} is out of range{where} (rank {rank})", span)
    return axis % rank


def axes_arg(args: Args, name: str, t: Tensor) -> tuple[int, ...]:
    """`axis=` as None (all axes), an int, or a tuple/list of ints; sorted and checked."""
    value, span = args[name]
    if value is None:
        return tuple(range(t.type.rank))
    items = list(value) if isinstance(value, (list, tuple)) else [value]
    axes = [norm_axis(a, t.type.rank, span, t) for a in items]
    if len(set(axes)) != len(axes):
        raise Diagnostic(f"repeated axis in {list(items)}", span)
    return tuple(sorted(axes))


def shape_arg(args: Args, name: str) -> tuple[int, ...]:
    """A shape: an int or a list of positive ints."""
    value, span = args[name]
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value]
    dims = int_list(value, span, name)
    for d in dims:
        if d < 1:
            raise Diagnostic(f"'{name}' dims must be positive, got {dims}", span)
        check_dim(d, span)
    return tuple(dims)


def pair_arg(args: Args, name: str, *, minimum: int) -> tuple[int, int]:
    """An int (used twice) or a pair of ints, each at least `minimum`."""
    value, span = args[name]
    if isinstance(value, (list, tuple)):
        if len(value) != 2:
            raise Diagnostic(f"'{name}' must be an integer or a pair, got {len(value)} values",
                             span)
        pair = tuple(as_int(v, span, name, minimum=minimum) for v in value)
    else:
        pair = (as_int(value, span, name, minimum=minimum),) * 2
    return pair


def padding_arg(args: Args, name: str = "padding") -> tuple[tuple[int, int], tuple[int, int]]:
    """Padding for 2-D windows: p, (ph, pw) or ((top, bottom), (left, right))."""
    value, span = args[name]
    if isinstance(value, (list, tuple)) and value and isinstance(value[0], (list, tuple)):
        if len(value) != 2 or any(len(v) != 2 for v in value):
            raise Diagnostic(f"'{name}' must be p, [ph, pw] or [[top, bottom], [left, right]]",
                             span)
        return tuple(tuple(as_int(v, span, name, minimum=0) for v in pair) for pair in value)
    ph, pw = pair_arg(args, name, minimum=0)
    return (ph, ph), (pw, pw)


# ------------------------------------------------------------------ elementwise

# The elementwise and reduction builtins come from the op table (compiler/graph/ops.py):
# each op whose entry's `Frontend` has the form `unary`, `binary` or `reduce` gets the rule
# of that form below (`_table_builtin`); the others have rules of their own in this file.


def unary(chk: Checker, kind: str, x: Tensor, span, attrs=None) -> Tensor:
    """An elementwise unary op; integer operands of float functions become f32."""
    if x.dtype == "bool":
        raise Diagnostic(f"{kind}() is not defined on bool ({x.type})", span)
    if OPS[kind].float_only and not is_float(x.dtype):
        x = chk.cast(x, "f32", span)
    return chk.emit(kind, [x], attrs, span)


def is_number(value) -> bool:
    """A weakly typed Python number (a literal, const or bound symbol; not a bool)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def number_math(kind: str, value: float, attrs: dict | None = None) -> float:
    """An elementwise builtin of a number, done at check time. The result is a number again:
    weakly typed, as JAX's math on Python scalars, so `x_bf16 * rsqrt(128.0)` stays bf16.
    Integer-valued functions of an integer give an integer; the rest is computed in f32 by
    the op's own reference (as `jnp.rsqrt(128.0)` is), then held as that f32 value."""
    if isinstance(value, int) and OPS[kind].int_math is not None:
        return OPS[kind].int_math(value)
    with np.errstate(all="ignore"):
        result = OPS[kind].reference([np.asarray(value, np.float32)], attrs or {})
    return float(np.float32(result))


def _unary_rule(kind: str):
    """`name(x, flag=...)`: the parameters after `x` are the op's attributes, true/false
    flags (gelu's `approximate`)."""

    def rule(chk: Checker, args: Args, call: ast.Call):
        attrs = {name: bool_arg(args, name) for name in args if name != "x"} or None
        if is_number(args["x"][0]):
            return number_math(kind, args["x"][0], attrs)
        return unary(chk, kind, tensor_arg(chk, args, "x"), call.span, attrs)

    return rule


def _binary_rule(kind: str):
    def rule(chk: Checker, args: Args, call: ast.Call):
        (a, sa), (b, sb) = args["a"], args["b"]
        for value, span in ((a, sa), (b, sb)):
            if not isinstance(value, (Tensor, bool, int, float)):
                raise Diagnostic(f"expected a tensor or a number, got {describe(value)}", span)
        if is_number(a) and is_number(b):
            return _number_binary(chk, kind, a, b, call.span)
        if not isinstance(a, Tensor) and not isinstance(b, Tensor):
            a = chk.as_tensor(a, sa)
        return chk.binary(kind, a, b, call.span, sa, sb)

    return rule


def _number_binary(chk: Checker, kind: str, a, b, span) -> float:
    """maximum/minimum/pow of two numbers at check time: a weakly typed number (NaN
    propagates through maximum and minimum, as numpy's do)."""
    if kind == "pow":
        return chk.python_binary("**", a, b, span)
    if any(isinstance(v, float) and math.isnan(v) for v in (a, b)):
        return math.nan
    result = max(a, b) if kind == "maximum" else min(a, b)
    return float(result) if isinstance(a, float) or isinstance(b, float) else result




@builtin("where", "cond a b")
def _where(chk: Checker, args: Args, call: ast.Call):
    cond, cspan = args["cond"]
    if isinstance(cond, bool):
        cond = chk.as_tensor(cond, cspan)
    if not isinstance(cond, Tensor) or cond.dtype != "bool":
        raise Diagnostic(f"where() needs a bool condition, got {describe(cond)}", cspan)
    (a, b), _ = chk.unify([args["a"][0], args["b"][0]], [args["a"][1], args["b"][1]])
    return chk.emit("where", [cond, a, b], None, call.span)


@builtin("cast", "x dtype")
def _cast(chk: Checker, args: Args, call: ast.Call):
    dtype = dtype_arg(args, "dtype")
    if dtype is None:
        raise Diagnostic("cast() needs a dtype", args["dtype"][1])
    value = args["x"][0]
    if isinstance(value, (bool, int, float)):
        return chk.constant(value, dtype, call.span)
    return chk.cast(tensor_arg(chk, args, "x"), dtype, call.span)


# ------------------------------------------------------------------ reductions


def reduce(chk: Checker, kind: str, x: Tensor, axes: tuple[int, ...], keepdims: bool,
           span) -> Tensor:
    """A reduction over `axes` (none: the value itself); bool counts as i32."""
    if not axes:
        return x
    if x.dtype == "bool":
        x = chk.cast(x, "i32", span)
    return chk.emit(kind, [x], {"axes": axes, "keepdims": keepdims}, span)


def _reduce_rule(kind: str):
    def rule(chk: Checker, args: Args, call: ast.Call):
        x = tensor_arg(chk, args, "x")
        return reduce(chk, kind, x, axes_arg(args, "axis", x), bool_arg(args, "keepdims"),
                      call.span)

    return rule


_TABLE_RULES = {"unary": _unary_rule, "binary": _binary_rule, "reduce": _reduce_rule}


def _table_builtin(op: OpDef, present: bool) -> None:
    """The builtin of a table op spelt by a generic form (`on_register` calls it for every
    op, and for ops registered later)."""
    spelling = op.frontend
    if spelling is None or spelling.name is None or spelling.form not in _TABLE_RULES:
        return
    if not present:
        BUILTINS.pop(spelling.name, None)
        return
    builtin(spelling.name, spelling.params, **dict(spelling.defaults))(
        _TABLE_RULES[spelling.form](op.name))


on_register(_table_builtin)


@builtin("mean", "x axis keepdims", axis=None, keepdims=False)
def _mean(chk: Checker, args: Args, call: ast.Call):
    x = tensor_arg(chk, args, "x")
    axes = axes_arg(args, "axis", x)
    if not is_float(x.dtype):
        x = chk.cast(x, "f32", call.span)
    if not axes:
        return x
    count = prod(x.shape[a] for a in axes)
    saved = chk.origin
    chk.enter_composite("mean")
    try:
        # as JAX: narrow floats are summed and divided in f32, then rounded once
        dtype = x.dtype
        x = chk.cast(x, "f32", call.span)
        total = reduce(chk, "reduce_sum", x, axes, bool_arg(args, "keepdims"), call.span)
        return chk.cast(chk.binary("div", total, float(count), call.span), dtype, call.span)
    finally:
        chk.origin = saved


def order_reversed(chk: Checker, x: Tensor, span) -> Tensor:
    """A tensor whose argmax is x's argmin, exactly: -x for floats (NaN stays NaN, so the
    first NaN still wins, as in numpy's argmin), -x - 1 (= ~x, which never overflows) for
    integers, `x == false` for bool."""
    if x.dtype == "bool":
        return chk.binary("eq", x, False, span)
    negated = chk.emit("neg", [x], None, span)
    return negated if is_float(x.dtype) else chk.binary("sub", negated, 1, span)


@builtin("argmin", "x axis keepdims", axis=None, keepdims=False)
def _argmin(chk: Checker, args: Args, call: ast.Call):
    x = tensor_arg(chk, args, "x")
    args = {**args, "x": (order_reversed(chk, x, call.span), args["x"][1])}
    return _argmax(chk, args, call, "argmin")


@builtin("argmax", "x axis keepdims", axis=None, keepdims=False)
def _argmax(chk: Checker, args: Args, call: ast.Call, name: str = "argmax"):
    x = tensor_arg(chk, args, "x")
    keepdims = bool_arg(args, "keepdims")
    value, span = args["axis"]
    if isinstance(value, (list, tuple)):
        raise Diagnostic(f"{name}() takes one axis, not a tuple", span)
    if value is None:
        flat = chk.reshape(x, (x.type.numel,), call.span)
        out = chk.emit("argmax", [flat], {"axes": (0,), "keepdims": False}, call.span)
        return chk.reshape(out, (1,) * x.type.rank, call.span) if keepdims else out
    axis = norm_axis(value, x.type.rank, span, x)
    return chk.emit("argmax", [x], {"axes": (axis,), "keepdims": keepdims}, call.span)


# ------------------------------------------------------------------ linear algebra


def acc_attrs(kind: str, in_dtype: str, acc: str | None, acc_span) -> dict:
    """The `acc` attribute of a product of `in_dtype` operands (none when `acc` is absent or
    the operands' own dtype); a Diagnostic at `acc_span` for a dtype it cannot be."""
    try:
        result_dtype(in_dtype, acc, kind)
    except Diagnostic as err:
        raise Diagnostic(err.message, acc_span) from None
    return {} if acc is None or acc == in_dtype else {"acc": acc}


def matmul(chk: Checker, a, b, span, a_span=None, b_span=None, acc: str | None = None,
           acc_span=None) -> Tensor:
    """numpy matmul: 1-D operands are promoted to matrices and the added axis removed.
    `acc` is the accumulation and result dtype (JAX's preferred_element_type)."""
    a_span, b_span = a_span or span, b_span or span
    for value, vspan in ((a, a_span), (b, b_span)):
        if not isinstance(value, Tensor):
            raise Diagnostic(f"@ needs tensors, got {describe(value)}", vspan)
        if value.type.rank == 0:
            raise Diagnostic(f"@ needs operands of rank >= 1, got {value.type}", vspan)
    ta, tb = a.type, b.type
    k_a = ta.shape[-1]
    k_b = tb.shape[0] if tb.rank == 1 else tb.shape[-2]
    if k_a != k_b:
        raise Diagnostic(f"cannot multiply (@) {ta} and {tb}: contracted dims differ "
                         f"({k_a} vs {k_b})", span)
    (a, b), dtype = chk.unify([a, b], [a_span, b_span])
    if dtype == "bool":
        a, b = chk.cast(a, "i32", span), chk.cast(b, "i32", span)
    if ta.rank == 1:
        a = chk.reshape(a, (1, ta.shape[0]), span)
    if tb.rank == 1:
        b = chk.reshape(b, (tb.shape[0], 1), span)
    attrs = acc_attrs("matmul", a.type.dtype, acc, acc_span or span)
    out = chk.emit("matmul", [a, b], attrs or None, span)
    shape = out.shape
    if ta.rank == 1:
        shape = shape[:-2] + shape[-1:]
    if tb.rank == 1:
        shape = shape[:-1]
    return chk.reshape(out, shape, span)


@builtin("matmul", "a b acc", acc=None)
def _matmul(chk: Checker, args: Args, call: ast.Call):
    return matmul(chk, args["a"][0], args["b"][0], call.span, args["a"][1], args["b"][1],
                  dtype_arg(args, "acc"), args["acc"][1])


@builtin("einsum", "spec *operands acc", acc=None)
def _einsum(chk: Checker, args: Args, call: ast.Call):
    spec, spec_span = args["spec"]
    operands, ospan = args["operands"]
    if not isinstance(spec, str):
        raise Diagnostic(f"einsum() needs a spec string first, got {describe(spec)}", spec_span)
    if not operands:
        raise Diagnostic("einsum() needs at least one operand", call.span)
    for value in operands:
        if not isinstance(value, Tensor):
            raise Diagnostic(f"einsum() operands must be tensors, got {describe(value)}", ospan)
    try:
        inputs, output = parse_einsum(spec, [t.type.rank for t in operands])
    except Diagnostic as err:
        raise Diagnostic(err.message, spec_span) from None
    operands, dtype = chk.unify(list(operands), [ospan] * len(operands))
    if dtype == "bool":
        operands = [chk.cast(t, "i32", call.span) for t in operands]
    acc = acc_attrs("einsum", operands[0].type.dtype, dtype_arg(args, "acc"), args["acc"][1])
    if len(operands) <= 2:
        return chk.emit("einsum", operands,
                        {"spec": ",".join(inputs) + "->" + output, **acc}, call.span)
    # More operands: contract left to right, keeping the letters still needed later.
    current, letters = operands[0], inputs[0]
    for index in range(1, len(operands)):
        later = set(output).union(*inputs[index + 1:])
        keep = "".join(ch for ch in dict.fromkeys(letters + inputs[index]) if ch in later)
        step = f"{letters},{inputs[index]}->{keep}"
        # with `acc`, the first step widens and the later ones multiply acc-typed operands
        step_acc = acc if index == 1 else {}
        if index > 1 and acc:
            operands[index] = chk.cast(operands[index], acc["acc"], call.span)
        current = chk.emit("einsum", [current, operands[index]], {"spec": step, **step_acc},
                           call.span)
        letters = keep
    if letters != output:
        current = chk.emit("einsum", [current], {"spec": f"{letters}->{output}"}, call.span)
    return current


# ------------------------------------------------------------------ shape


@builtin("reshape", "x shape")
def _reshape(chk: Checker, args: Args, call: ast.Call):
    x = tensor_arg(chk, args, "x")
    value, span = args["shape"]
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value]
    dims = int_list(value, span, "shape")
    if dims.count(-1) > 1:
        raise Diagnostic(f"reshape(): only one dim may be -1, got {dims}", span)
    if any(d < 1 and d != -1 for d in dims):
        raise Diagnostic(f"reshape(): dims must be positive or -1, got {dims}", span)
    for d in dims:
        check_dim(max(d, 1), span)
    known = prod(d for d in dims if d != -1)
    numel = x.type.numel
    if -1 in dims:
        if numel % known:
            raise Diagnostic(f"cannot reshape {x.type} ({numel} elements) to {dims}: {numel} "
                             f"is not a multiple of {known}", call.span)
        dims = [numel // known if d == -1 else d for d in dims]
    elif known != numel:
        raise Diagnostic(f"cannot reshape {x.type} ({numel} elements) to {dims} ({known} "
                         "elements)", call.span)
    return chk.reshape(x, tuple(dims), call.span)


@builtin("shard", "x spec")
def _shard(chk: Checker, args: Args, call: ast.Call):
    """Pin a value's sharding: one entry per dim, a mesh axis or `_` (replicated)."""
    x = tensor_arg(chk, args, "x")
    spec, span = args["spec"]
    if not isinstance(spec, str):
        raise Diagnostic(f"shard() needs a string like \"_, tp\" (one entry per dim: a mesh "
                         f"axis or _), got {describe(spec)}", span)
    axes = tuple(part.strip() for part in spec.split(",")) if spec.strip() else ()
    if len(axes) != x.type.rank:
        raise Diagnostic(f"shard(): {len(axes)} entries for {x.type}, which has "
                         f"{x.type.rank} dims", span)
    for axis in axes:
        if not (axis == "_" or axis.isidentifier()):
            raise Diagnostic(f"shard(): '{axis}' is neither a mesh axis name nor _", span)
    named = [a for a in axes if a != "_"]
    if len(set(named)) != len(named):
        raise Diagnostic("shard(): a mesh axis can split only one dim", span)
    return chk.emit("shard", [x], {"axes": axes}, call.span)


@builtin("transpose", "x perm", perm=None)
def _transpose(chk: Checker, args: Args, call: ast.Call):
    x = tensor_arg(chk, args, "x")
    value, span = args["perm"]
    rank = x.type.rank
    if value is None:
        perm = list(range(rank))[::-1]
    else:
        perm = int_list(value, span, "perm")
        if sorted(p % rank if -rank <= p < rank else p for p in perm) != list(range(rank)):
            raise Diagnostic(f"transpose(): {perm} is not a permutation of the {rank} axes of "
                             f"{x.type}", span)
        perm = [p % rank for p in perm]
    if perm == list(range(rank)):
        return x
    return chk.emit("transpose", [x], {"perm": tuple(perm)}, call.span)


@builtin("expand_dims", "x axis")
def _expand_dims(chk: Checker, args: Args, call: ast.Call):
    x = tensor_arg(chk, args, "x")
    value, span = args["axis"]
    items = list(value) if isinstance(value, (list, tuple)) else [value]
    rank = x.type.rank + len(items)
    axes = sorted(norm_axis(a, rank, span) for a in items)
    if len(set(axes)) != len(axes):
        raise Diagnostic(f"repeated axis in {items}", span)
    dims = iter(x.shape)
    shape = tuple(1 if i in axes else next(dims) for i in range(rank))
    return chk.reshape(x, shape, call.span)


@builtin("squeeze", "x axis", axis=None)
def _squeeze(chk: Checker, args: Args, call: ast.Call):
    x = tensor_arg(chk, args, "x")
    value, span = args["axis"]
    if value is None:
        axes = [i for i, d in enumerate(x.shape) if d == 1]
    else:
        axes = list(axes_arg(args, "axis", x))
        for axis in axes:
            if x.shape[axis] != 1:
                raise Diagnostic(f"cannot squeeze axis {axis} of {x.type}: its size is "
                                 f"{x.shape[axis]}, not 1", span)
    shape = tuple(d for i, d in enumerate(x.shape) if i not in axes)
    return chk.reshape(x, shape, call.span)


@builtin("broadcast_to", "x shape")
def _broadcast_to(chk: Checker, args: Args, call: ast.Call):
    x = tensor_arg(chk, args, "x")
    shape = shape_arg(args, "shape")
    if shape == x.shape:
        return x
    return chk.emit("broadcast_to", [x], {"shape": shape}, call.span)


@builtin("concat", "xs axis", axis=0)
def _concat(chk: Checker, args: Args, call: ast.Call):
    values, span = args["xs"]
    if not isinstance(values, (list, tuple)) or not values:
        raise Diagnostic(f"concat() needs a non-empty list of tensors, got {describe(values)}",
                         span)
    for v in values:
        if not isinstance(v, Tensor):
            raise Diagnostic(f"concat() needs tensors, got {describe(v)}", span)
    tensors, _ = chk.unify(list(values), [span] * len(values))
    axis = norm_axis(args["axis"][0], tensors[0].type.rank, args["axis"][1], tensors[0])
    if len(tensors) == 1:
        return tensors[0]
    return chk.emit("concat", tensors, {"axis": axis}, call.span)


def slice_axis(chk: Checker, x: Tensor, axis: int, lo: int, hi: int, span) -> Tensor:
    """x[..., lo:hi, ...] along one axis."""
    starts = [0] * x.type.rank
    stops = list(x.shape)
    starts[axis], stops[axis] = lo, hi
    return chk.emit("slice", [x], {"starts": tuple(starts), "stops": tuple(stops),
                                   "steps": (1,) * x.type.rank}, span)


@builtin("split", "x n axis", axis=0)
def _split(chk: Checker, args: Args, call: ast.Call):
    x = tensor_arg(chk, args, "x")
    axis = norm_axis(args["axis"][0], x.type.rank, args["axis"][1], x)
    value, span = args["n"]
    size = x.shape[axis]
    if isinstance(value, (list, tuple)):
        cuts = int_list(value, span, "n")
        bounds = [0] + cuts + [size]
        if any(b <= a for a, b in pairwise(bounds)):
            raise Diagnostic(f"split(): indices {cuts} must increase strictly within 1..{size - 1}",
                             span)
    else:
        n = as_int(value, span, "n", minimum=1)
        if size % n:
            raise Diagnostic(f"split(): axis {axis} of {x.type} (size {size}) does not divide "
                             f"into {n} equal parts", span)
        bounds = [i * (size // n) for i in range(n + 1)]
    return tuple(slice_axis(chk, x, axis, a, b, call.span) for a, b in pairwise(bounds))


@builtin("pad", "x pads value", value=0)
def _pad(chk: Checker, args: Args, call: ast.Call):
    x = tensor_arg(chk, args, "x")
    value, span = args["pads"]
    rank = x.type.rank
    if isinstance(value, int) and not isinstance(value, bool):
        pads = [(value, value)] * rank
    elif isinstance(value, (list, tuple)) and all(isinstance(p, (list, tuple)) for p in value):
        pads = [tuple(int_list(p, span, "pads")) for p in value]
        if len(pads) != rank or any(len(p) != 2 for p in pads):
            raise Diagnostic(f"pad(): need one [lo, hi] pair per axis of {x.type} ({rank}), got "
                             f"{[list(p) for p in pads]}", span)
    else:
        raise Diagnostic(f"pad(): 'pads' must be an integer or a list of [lo, hi] pairs, got "
                         f"{describe(value)}", span)
    if any(p < 0 for pair in pads for p in pair):
        raise Diagnostic(f"pad(): padding must be non-negative, got {[list(p) for p in pads]}",
                         span)
    for dim, (lo, hi) in zip(x.shape, pads):
        check_dim(dim + lo + hi, span)
    fill, fspan = args["value"]
    if isinstance(fill, bool) or not isinstance(fill, (int, float)):
        raise Diagnostic(f"pad(): 'value' must be a number, got {describe(fill)}", fspan)
    if is_float(x.dtype):
        fill = to_float(fill)
    elif math.isinf(fill):  # -inf/inf pad an integer tensor with its lowest/highest value
        fill = limits(x.dtype)[0 if fill < 0 else 1]
    else:
        low, high = limits(x.dtype)
        if fill != int(fill) or not low <= fill <= high:
            raise Diagnostic(f"pad(): {fill} is not a value of {x.dtype}", fspan)
        fill = int(fill)
    if all(p == (0, 0) for p in pads):
        return x
    return chk.emit("pad", [x], {"pads": tuple(pads), "value": fill}, call.span)


# ------------------------------------------------------------------ creation


def _fill(chk: Checker, args: Args, call: ast.Call, value) -> Tensor:
    shape = shape_arg(args, "shape")
    dtype = dtype_arg(args, "dtype")
    if dtype is None:
        dtype = "bool" if isinstance(value, bool) else "i32" if isinstance(value, int) else "f32"
    return chk.constant(value, dtype, call.span, shape)


@builtin("zeros", "shape dtype", dtype=DType("f32"))
def _zeros(chk: Checker, args: Args, call: ast.Call):
    return _fill(chk, args, call, 0)


@builtin("ones", "shape dtype", dtype=DType("f32"))
def _ones(chk: Checker, args: Args, call: ast.Call):
    return _fill(chk, args, call, 1)


@builtin("full", "shape value dtype", dtype=None)
def _full(chk: Checker, args: Args, call: ast.Call):
    value, span = args["value"]
    if not isinstance(value, (bool, int, float)):
        raise Diagnostic(f"full(): 'value' must be a number, got {describe(value)}", span)
    return _fill(chk, args, call, value)


@builtin("arange", "start stop step dtype", stop=None, step=1, dtype=None)
def _arange(chk: Checker, args: Args, call: ast.Call):
    numbers = {}
    for name in ("start", "stop", "step"):
        value, span = args[name]
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise Diagnostic(f"arange(): '{name}' must be a number, got {describe(value)}", span)
        numbers[name] = value
    start, stop, step = numbers["start"], numbers["stop"], numbers["step"]
    if stop is None:
        start, stop = 0, start
    if step == 0:
        raise Diagnostic("arange(): 'step' must not be 0", args["step"][1])
    if all(isinstance(v, int) for v in (start, stop, step)):
        count = -((start - stop) // step)  # ceil((stop - start) / step), exactly
    else:
        quotient = (to_float(stop) - to_float(start)) / to_float(step)
        if not math.isfinite(quotient):
            raise Diagnostic("arange(): the bounds must be finite", call.span)
        count = math.ceil(quotient)
    check_dim(max(count, 1), call.span)
    if count < 1:
        raise Diagnostic(f"arange({start}, {stop}, {step}) is empty", call.span)
    dtype = dtype_arg(args, "dtype")
    if dtype is None:
        dtype = "f32" if any(isinstance(v, float) for v in (start, stop, step)) else "i32"
    if dtype == "bool":
        raise Diagnostic("arange() cannot make bool", args["dtype"][1])
    iota = chk.emit("iota", [], {"n": count, "dtype": dtype}, call.span)
    if step != 1:
        iota = chk.binary("mul", iota, step, call.span)
    if start != 0:
        iota = chk.binary("add", iota, start, call.span)
    return chk.cast(iota, dtype, call.span)


# ------------------------------------------------------------------ neural nets


@builtin("conv2d", "x w stride padding dilation groups", stride=1, padding=0, dilation=1,
         groups=1)
def _conv2d(chk: Checker, args: Args, call: ast.Call):
    x, w = tensor_arg(chk, args, "x"), tensor_arg(chk, args, "w")
    (x, w), dtype = chk.unify([x, w], [args["x"][1], args["w"][1]])
    if dtype == "bool":
        raise Diagnostic("conv2d() is not defined on bool", call.span)
    attrs = {"strides": pair_arg(args, "stride", minimum=1), "pads": padding_arg(args),
             "dilation": pair_arg(args, "dilation", minimum=1),
             "groups": int_arg(args, "groups", minimum=1)}
    return chk.emit("conv2d", [x, w], attrs, call.span)


def _pool_rule(kind: str):
    def rule(chk: Checker, args: Args, call: ast.Call):
        x = tensor_arg(chk, args, "x")
        kernel = pair_arg(args, "kernel", minimum=1)
        strides = kernel if args["stride"][0] is None else pair_arg(args, "stride", minimum=1)
        if kind == "avgpool2d" and not is_float(x.dtype):
            x = chk.cast(x, "f32", call.span)
        attrs = {"kernel": kernel, "strides": strides, "pads": padding_arg(args)}
        return chk.emit(kind, [x], attrs, call.span)

    return rule


for _kind in ("maxpool2d", "avgpool2d"):
    builtin(_kind, "x kernel stride padding", stride=None, padding=0)(_pool_rule(_kind))


@builtin("gather", "x indices axis", axis=0)
def _gather(chk: Checker, args: Args, call: ast.Call):
    """x.take(indices, axis): integer indices, negative from the end, out of range -> 0."""
    x, indices = tensor_arg(chk, args, "x"), tensor_arg(chk, args, "indices")
    if not is_float(x.dtype):
        raise Diagnostic(f"gather() needs floating-point data, got {x.type}", args["x"][1])
    if indices.dtype not in ("i32", "i8"):
        raise Diagnostic(f"gather() needs integer indices, got {indices.type}",
                         args["indices"][1])
    axis = norm_axis(int_arg(args, "axis"), x.type.rank, args["axis"][1], x)
    return chk.emit("gather", [x, indices], {"axis": axis}, call.span)


# ------------------------------------------------------------------ indexing


def index_tensor(chk: Checker, node: ast.Index, scope: dict) -> Tensor:
    """Basic indexing `x[a:b:s, i, None]`: one slice op, then a reshape for the ints/None."""
    base = chk.eval(node.base, scope)
    if not isinstance(base, Tensor):
        raise Diagnostic(f"only tensors can be indexed, got {describe(base)}", node.base.span)
    rank = base.type.rank
    subscripts = list(node.subscripts)
    ellipses = [s for s in subscripts if isinstance(s, ast.EllipsisLit)]
    if len(ellipses) > 1:
        raise Diagnostic("an index can only have a single '...'", ellipses[1].span)
    used = sum(1 for s in subscripts if not isinstance(s, (ast.NoneLit, ast.EllipsisLit)))
    if used > rank:
        raise Diagnostic(f"too many indices for {base.type}: {used} for rank {rank}", node.span)
    if ellipses:
        at = subscripts.index(ellipses[0])
        full = ast.Slice(ellipses[0].span, None, None, None)
        subscripts[at:at + 1] = [full] * (rank - used)
    starts, stops, steps, shape = [], [], [], []
    axis = 0
    for sub in subscripts:
        if isinstance(sub, ast.NoneLit):
            shape.append(1)
            continue
        dim = base.shape[axis]
        if isinstance(sub, ast.Slice):
            parts = []
            for part in (sub.start, sub.stop, sub.step):
                value = None if part is None else chk.eval(part, scope)
                if value is not None:
                    value = as_int(value, part.span, "a slice bound")
                parts.append(value)
            if parts[2] is not None and parts[2] <= 0:
                raise Diagnostic(f"slice step must be positive, got {parts[2]}",
                                 sub.step.span)
            lo, hi, step = slice(*parts).indices(dim)
            count = len(range(lo, hi, step))
            if count == 0:
                raise Diagnostic(f"slice selects no elements of axis {axis} of {base.type}",
                                 sub.span or node.span)
            starts.append(lo)
            stops.append(lo + (count - 1) * step + 1)
            steps.append(step if count > 1 else 1)  # one element: the step does not matter
            shape.append(count)
        else:
            value = chk.eval(sub, scope)
            if isinstance(value, Tensor):
                raise Diagnostic("indexing with a tensor is not supported; indices must be "
                                 "integers or slices", sub.span)
            index = as_int(value, sub.span, "an index")
            if not -dim <= index < dim:
                raise Diagnostic(f"index {index} is out of bounds for axis {axis} of "
                                 f"{base.type} (size {dim})", sub.span)
            index %= dim
            starts.append(index)
            stops.append(index + 1)
            steps.append(1)
        axis += 1
    for rest in range(axis, rank):
        starts.append(0)
        stops.append(base.shape[rest])
        steps.append(1)
        shape.append(base.shape[rest])
    result = base
    if tuple(stops) != base.shape or any(starts) or any(s != 1 for s in steps):
        result = chk.emit("slice", [base], {"starts": tuple(starts), "stops": tuple(stops),
                                            "steps": tuple(steps)}, node.span)
    return chk.reshape(result, tuple(shape), node.span)


__all__ = ["BUILTINS", "Builtin", "index_tensor", "matmul"]
