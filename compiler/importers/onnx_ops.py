"""The ONNX operator table: one rule per operator, writing `.zt` onto the builtins.

`OPS[op_type](importer, node, inputs, attrs) -> list of values` (one per node output).
Inputs are `Const` (known at import) or `Tensor` (run-time) values, None for an omitted
optional input. A rule writes one statement per node where it can (`importer.emit`), refuses
what it does not handle with `importer.fail(...)` (naming the attribute or input), and never
guesses. `fold` computes a node whose inputs are all known at import (numpy, or the onnx
package's reference implementation for numeric operators); shape arithmetic on symbolic dims
stays symbolic.
"""

from __future__ import annotations

from math import prod

import numpy as np
from zhenwu.compiler.importers.onnx import (
    Const,
    Dim,
    NotFoldable,
    Sym,
    Tensor,
    dim_op,
    dim_text,
    dims_product,
    literal,
    shape_text,
    zt_dtype_of_np,
)

INT64_MAX = 2**63 - 1


# ------------------------------------------------------------------ dtypes and constants


def zt_dtype(imp, elem_type: int, what: str) -> str:
    """The zt dtype of an ONNX element type (int64 narrows to i32, double to f32)."""
    from onnx import TensorProto

    table = {TensorProto.FLOAT: "f32", TensorProto.DOUBLE: "f32", TensorProto.FLOAT16: "f16",
             TensorProto.BFLOAT16: "bf16", TensorProto.FLOAT8E4M3FN: "fp8",
             TensorProto.INT64: "i32", TensorProto.INT32: "i32", TensorProto.INT16: "i32",
             TensorProto.UINT16: "i32", TensorProto.UINT8: "i32", TensorProto.INT8: "i8",
             TensorProto.BOOL: "bool"}
    if elem_type not in table:
        name = TensorProto.DataType.Name(elem_type) if elem_type in TensorProto.DataType.values() \
            else str(elem_type)
        raise imp.fail(f"{what}: dtype {name} is not supported (zhenwu has f32 bf16 f16 fp8 "
                       "i32 i8 bool; int64 becomes i32 and double f32)")
    return table[elem_type]


def const_from_tensor(imp, proto) -> Const:
    """A Const from a TensorProto (an initializer or a Constant's value)."""
    from onnx import numpy_helper

    zt_dtype(imp, proto.data_type, f"tensor '{proto.name}'")
    try:
        array = numpy_helper.to_array(proto)
    except Exception as err:
        raise imp.fail(f"tensor '{proto.name}' cannot be read ({type(err).__name__}: "
                       f"{err})") from None
    return Const(np.array(array))


def to_runtime_array(imp, array: np.ndarray) -> np.ndarray:
    """The array a Const becomes as a parameter: int64 -> int32 (checked), f64 -> f32."""
    if array.dtype == object:
        raise imp.fail("a tensor computed from symbolic dims is used as run-time data")
    if array.size == 0:
        raise imp.fail(f"an empty tensor (shape {list(array.shape)}) is not supported")
    dtype = zt_dtype_of_np(array.dtype)
    if dtype is None:
        raise imp.fail(f"a constant of dtype {array.dtype} is not supported")
    if dtype == "i32" and array.dtype != np.int32:
        info = np.iinfo(np.int32)
        if array.min() < info.min or array.max() > info.max:
            raise imp.fail("an integer constant does not fit in i32 (zhenwu's widest integer)")
        return array.astype(np.int32)
    if dtype == "f32" and array.dtype != np.float32:
        return array.astype(np.float32)
    return array


def value_dtype(value) -> str:
    return value.dtype if isinstance(value, Tensor) else zt_dtype_of_np(value.array.dtype)


def value_shape(value) -> tuple:
    return value.shape


def rank_of(value) -> int:
    return len(value.shape)


def const_ints(imp, value, what: str) -> list:
    """An input that must be known at import (axes, shapes, pads) as a list of dims."""
    if value is None:
        return None
    if isinstance(value, Tensor):
        raise imp.fail(f"{what} is computed at run time from tensor data (a data-dependent "
                       "shape); zhenwu needs it at import")
    return [d if isinstance(d, Sym) else int(d) for d in value.array.reshape(-1)]


def concrete_ints(imp, value, what: str) -> list[int]:
    ints = const_ints(imp, value, what)
    if ints is not None and any(isinstance(d, Sym) for d in ints):
        raise imp.fail(f"{what} depends on a symbolic dim; zhenwu needs numbers here")
    return ints


def axis_tuple(axes) -> str:
    return "(" + ", ".join(str(a) for a in axes) + ("," if len(axes) == 1 else "") + ")"


def normalize_axes(imp, axes, rank: int, what: str = "axes") -> list[int]:
    out = []
    for a in axes:
        if not -rank <= a < max(rank, 1):
            raise imp.fail(f"{what} {a} is out of range for rank {rank}")
        out.append(a % rank if rank else 0)
    return out


def broadcast(imp, *shapes) -> tuple:
    """numpy broadcasting of dims; a symbolic dim against 1 or itself is known, against a
    number it is taken to be that number (the checker verifies every statement)."""
    rank = max(len(s) for s in shapes)
    out = []
    for axis in range(rank):
        dims = [s[axis - rank + len(s)] for s in shapes if axis - rank + len(s) >= 0]
        pick: Dim = 1
        for d in dims:
            if isinstance(d, int) and d == 1:
                continue
            if isinstance(pick, int) and pick == 1:
                pick = d
            elif isinstance(pick, Sym) and isinstance(d, int):
                pick = d
            elif isinstance(pick, int) and isinstance(d, int) and pick != d:
                raise imp.fail(f"shapes {[list(map(dim_text, s)) for s in shapes]} do not "
                               "broadcast")
        out.append(pick)
    return tuple(out)


class Like:
    """A stand-in for a run-time operand of a given rank (decides literal vs tensor)."""

    def __init__(self, rank: int):
        self.rank = rank


def operands(imp, values) -> list[str]:
    """Texts of operands that broadcast together: Consts of one element become literals
    when a run-time operand has at least their rank."""
    live = [v for v in values if isinstance(v, Tensor) or v.recipe is not None and v.array.size > 1]
    if not live:
        return [imp.tensor(v) for v in values]
    rank = max(rank_of(v) for v in live)
    return [imp.tensor(v, Like(rank)) if isinstance(v, Const) else v.name for v in values]


def zero_literal(dtype: str) -> str:
    return "false" if dtype == "bool" else ("0" if dtype in ("i32", "i8") else "0.0")


# ------------------------------------------------------------------ elementwise


def unary(fn: str):
    def rule(imp, node, ins, attrs):
        (x,) = ins[:1]
        text = imp.tensor(x)
        return [imp.emit(f"{fn}({text})", value_dtype(x), x.shape)]

    return rule


def _float_unary(fn: str):
    def rule(imp, node, ins, attrs):
        x = ins[0]
        dtype = value_dtype(x)
        if dtype not in ("f32", "bf16", "f16", "fp8"):
            raise imp.fail(f"{node.op_type} of {dtype} input is not supported")
        return [imp.emit(f"{fn}({imp.tensor(x)})", dtype, x.shape)]

    return rule


def _neg(imp, node, ins, attrs):
    x = ins[0]
    return [imp.emit(f"-{imp.tensor(x)}", value_dtype(x), x.shape)]


_COMPARE = {"Equal": "==", "Less": "<", "Greater": ">", "LessOrEqual": "<=",
            "GreaterOrEqual": ">="}


def binary(op: str):
    def rule(imp, node, ins, attrs):
        a, b = ins[:2]
        dtype = value_dtype(a)
        ta, tb = operands(imp, [a, b])
        shape = broadcast(imp, a.shape, b.shape)
        if op in _COMPARE.values():
            return [imp.emit(f"{ta} {op} {tb}", "bool", shape)]
        if op == "/" and dtype in ("i32", "i8"):
            # ONNX's integer division truncates toward zero; zt's cast of a float does too.
            return [imp.emit(f"cast({ta} / {tb}, {dtype})", dtype, shape)]
        text = f"{ta} {op} {tb}"
        if op == "**" and value_dtype(b) != dtype and dtype in ("i32", "i8"):
            text = f"cast({text}, {dtype})"
        return [imp.emit(text, dtype, shape)]

    return rule


def _logical(kind: str):
    def rule(imp, node, ins, attrs):
        if kind == "Not":
            x = ins[0]
            return [imp.emit(f"{imp.tensor(x)} == false", "bool", x.shape)]
        a, b = ins[:2]
        ta, tb = operands(imp, [a, b])
        shape = broadcast(imp, a.shape, b.shape)
        text = {"And": f"where({ta}, {tb}, false)", "Or": f"where({ta}, true, {tb})",
                "Xor": f"{ta} != {tb}"}[kind]
        return [imp.emit(text, "bool", shape)]

    return rule


def _variadic(fn: str):
    def rule(imp, node, ins, attrs):
        values = [v for v in ins if v is not None]
        texts = operands(imp, values)
        text = texts[0]
        for other in texts[1:]:
            text = f"{fn}({text}, {other})"
        shape = broadcast(imp, *[v.shape for v in values])
        return [imp.emit(text, value_dtype(values[0]), shape)]

    return rule


def _where(imp, node, ins, attrs):
    cond, a, b = ins
    tc, ta, tb = operands(imp, [cond, a, b])
    shape = broadcast(imp, cond.shape, a.shape, b.shape)
    dtype = value_dtype(a) if isinstance(a, Tensor) or isinstance(b, Const) else value_dtype(b)
    return [imp.emit(f"where({tc}, {ta}, {tb})", dtype, shape)]


def _clip(imp, node, ins, attrs):
    x = ins[0]
    text = imp.tensor(x)
    lo = ins[1] if len(ins) > 1 else None
    hi = ins[2] if len(ins) > 2 else None
    if "min" in attrs:  # opsets before 11
        lo = Const(np.array(attrs["min"], dtype=np.float32))
    if "max" in attrs:
        hi = Const(np.array(attrs["max"], dtype=np.float32))
    like = Like(x.rank)
    if lo is not None:
        text = f"maximum({text}, {imp.tensor(lo, like)})"
    if hi is not None:
        text = f"minimum({text}, {imp.tensor(hi, like)})"
    return [imp.emit(text, value_dtype(x), x.shape)]


def _leaky_relu(imp, node, ins, attrs):
    x = ins[0]
    alpha = float(attrs.get("alpha", 0.01))
    t = imp.tensor(x)
    return [imp.emit(f"where({t} >= 0.0, {t}, {t} * {literal(alpha, np.float32)})",
                     value_dtype(x), x.shape)]


def _gelu(imp, node, ins, attrs):
    x = ins[0]
    approximate = attrs.get("approximate", "none")
    if approximate not in ("none", "tanh"):
        raise imp.fail(f"approximate='{approximate}' is not supported (none or tanh)")
    flag = "" if approximate == "tanh" else ", approximate=false"
    return [imp.emit(f"gelu({imp.tensor(x)}{flag})", value_dtype(x), x.shape)]


def _cast(imp, node, ins, attrs):
    x = ins[0]
    if node.op_type == "CastLike":
        dtype = value_dtype(ins[1])
    else:
        dtype = zt_dtype(imp, attrs["to"], "to")
    text = imp.tensor(x)
    if dtype == "fp8" and attrs.get("saturate", 1) and value_dtype(x) != "fp8":
        # ONNX saturates out-of-range values (infinities included) to e4m3fn's largest, 448
        text = f"clip({text}, -448.0, 448.0)"
    return [imp.emit(f"cast({text}, {dtype})", dtype, x.shape)]


# ------------------------------------------------------------------ linear algebra


def matmul_shape(imp, a: tuple, b: tuple) -> tuple:
    if len(a) == 1 and len(b) == 1:
        return ()
    if len(a) == 1:
        return tuple(b[:-2]) + (b[-1],)
    if len(b) == 1:
        return tuple(a[:-1])
    return broadcast(imp, a[:-2], b[:-2]) + (a[-2], b[-1])


def _matmul(imp, node, ins, attrs):
    a, b = ins
    ta, tb = imp.tensor(a), imp.tensor(b)
    return [imp.emit(f"{ta} @ {tb}", value_dtype(a), matmul_shape(imp, a.shape, b.shape))]


def _gemm(imp, node, ins, attrs):
    a, b = ins[:2]
    c = ins[2] if len(ins) > 2 else None
    alpha, beta = float(attrs.get("alpha", 1.0)), float(attrs.get("beta", 1.0))
    ta, tb = imp.tensor(a), imp.tensor(b)
    m = a.shape[1] if attrs.get("transA", 0) else a.shape[0]
    n = b.shape[0] if attrs.get("transB", 0) else b.shape[1]
    if attrs.get("transA", 0):
        ta = f"transpose({ta})"
    if attrs.get("transB", 0):
        tb = f"transpose({tb})"
    text = f"{ta} @ {tb}"
    if alpha != 1.0:
        text = f"({text}) * {literal(alpha, np.float32)}"
    if c is not None and beta != 0.0:
        tc = imp.tensor(c, Like(2))
        text += f" + {tc}" if beta == 1.0 else f" + {tc} * {literal(beta, np.float32)}"
    return [imp.emit(text, value_dtype(a), (m, n))]


def _einsum(imp, node, ins, attrs):
    spec = attrs["equation"].replace(" ", "")
    if "." in spec:
        raise imp.fail(f"equation '{spec}': ellipsis (...) is not supported")
    lhs, arrow, out = spec.partition("->")
    terms = lhs.split(",")
    if len(terms) != len(ins):
        raise imp.fail(f"equation '{spec}' has {len(terms)} operands, the node {len(ins)}")
    sizes: dict[str, Dim] = {}
    for term, value in zip(terms, ins):
        if len(term) != rank_of(value):
            raise imp.fail(f"equation '{spec}': '{term}' does not match rank {rank_of(value)}")
        for ch, d in zip(term, value.shape):
            if ch not in sizes or sizes[ch] == 1:
                sizes[ch] = d
    if not arrow:
        out = "".join(sorted(ch for ch in sizes if lhs.count(ch) == 1))
    texts = ", ".join(imp.tensor(v) for v in ins)
    return [imp.emit(f'einsum("{spec}", {texts})', value_dtype(ins[0]),
                     tuple(sizes[ch] for ch in out))]


# ------------------------------------------------------------------ reductions and nn


def _axes_input(imp, node, ins, attrs, rank: int):
    """A reduction's axes: the `axes` attribute (older opsets) or the second input."""
    if "axes" in attrs:
        axes = list(attrs["axes"])
    elif len(ins) > 1 and ins[1] is not None:
        axes = concrete_ints(imp, ins[1], "axes")
    else:
        axes = []
    return normalize_axes(imp, axes, rank)


def reduction(fn: str, pre: str = "{x}", post: str = "{r}"):
    """A reduction `post(fn(pre(x)))` over the axes of the attribute or the second input."""

    def rule(imp, node, ins, attrs):
        x = ins[0]
        axes = _axes_input(imp, node, ins, attrs, x.rank)
        keep = bool(attrs.get("keepdims", 1))
        if not axes:
            if attrs.get("noop_with_empty_axes", 0):
                return [imp.emit(imp.tensor(x), value_dtype(x), x.shape)]
            axes = list(range(x.rank))
        dtype = value_dtype(x)
        shape = tuple(1 if i in axes else d for i, d in enumerate(x.shape) if keep or i not in axes)
        operand = pre.format(x=imp.tensor(x))
        text = post.format(r=f"{fn}({operand}, axis={axis_tuple(sorted(set(axes)))}, "
                             f"keepdims={'true' if keep else 'false'})")
        if (fn == "mean" or post != "{r}") and dtype in ("i32", "i8") or dtype == "bool":
            text = f"cast({text}, {dtype})"  # zt reduces these to f32 / i32
        return [imp.emit(text, dtype, shape)]

    return rule


def _arg_reduction(negate: bool):
    def rule(imp, node, ins, attrs):
        x = ins[0]
        if attrs.get("select_last_index", 0):
            raise imp.fail("select_last_index=1 is not supported")
        axis = normalize_axes(imp, [attrs.get("axis", 0)], x.rank, "axis")[0]
        keep = bool(attrs.get("keepdims", 1))
        shape = tuple(1 if i == axis else d for i, d in enumerate(x.shape)
                      if keep or i != axis)
        operand = f"-{imp.tensor(x)}" if negate else imp.tensor(x)
        return [imp.emit(f"argmax({operand}, axis={axis}, keepdims={'true' if keep else 'false'})",
                         "i32", shape)]

    return rule


def template(text: str, dtype: str | None = None, **defaults):
    """An elementwise rule written as a `.zt` expression of `{x}` and float attributes
    (`{alpha}`), for floating-point inputs; `dtype` is the result's (default: x's)."""

    def rule(imp, node, ins, attrs):
        x = ins[0]
        if value_dtype(x) not in ("f32", "bf16", "f16", "fp8"):
            raise imp.fail(f"{node.op_type} of {value_dtype(x)} input is not supported")
        values = {k: literal(float(attrs.get(k, v)), np.float32) for k, v in defaults.items()}
        values = {k: f"({v})" if v.startswith("-") else v for k, v in values.items()}
        return [imp.emit(text.format(x=imp.tensor(x), **values), dtype or value_dtype(x),
                         x.shape)]

    return rule


def _isinf(imp, node, ins, attrs):
    x = ins[0]
    t = imp.tensor(x)
    text = {(1, 1): f"abs({t}) == inf", (1, 0): f"{t} == inf", (0, 1): f"{t} == -inf",
            (0, 0): f"abs({t}) < 0.0"}[(attrs.get("detect_positive", 1) != 0,
                                          attrs.get("detect_negative", 1) != 0)]
    return [imp.emit(text, "bool", x.shape)]


def _prelu(imp, node, ins, attrs):
    x, slope = ins
    tx, ts = operands(imp, [x, slope])
    return [imp.emit(f"where({tx} < 0.0, {ts} * {tx}, {tx})", value_dtype(x),
                     broadcast(imp, x.shape, slope.shape))]


def _mean(imp, node, ins, attrs):
    values = [v for v in ins if v is not None]
    texts = operands(imp, values)
    shape = broadcast(imp, *[v.shape for v in values])
    return [imp.emit(f"({' + '.join(texts)}) / {float(len(values))}", value_dtype(values[0]),
                     shape)]


def _pad(imp, node, ins, attrs):
    x = ins[0]
    mode = attrs.get("mode", "constant")
    if mode != "constant":
        raise imp.fail(f"mode='{mode}' is not supported (constant is)")
    pads = concrete_ints(imp, ins[1], "pads") if len(ins) > 1 and ins[1] is not None \
        else list(attrs.get("pads", []))
    axes = concrete_ints(imp, ins[3], "axes") if len(ins) > 3 and ins[3] is not None \
        else list(range(x.rank))
    axes = normalize_axes(imp, axes, x.rank)
    if len(pads) != 2 * len(axes):
        raise imp.fail(f"{len(pads)} pads for {len(axes)} axes")
    if any(p < 0 for p in pads):
        raise imp.fail(f"negative pads {pads} (cropping) are not supported")
    pairs = [[0, 0] for _ in range(x.rank)]
    for i, a in enumerate(axes):
        pairs[a] = [pads[i], pads[i + len(axes)]]
    value = ins[2] if len(ins) > 2 and ins[2] is not None else None
    if value is not None and not isinstance(value, Const):
        raise imp.fail("a run-time pad value is not supported")
    dtype = value_dtype(x)
    fill = literal(value.array.reshape(-1)[0], value.array.dtype) if value is not None \
        else zero_literal(dtype)
    shape = tuple(dim_op("+", d, p[0] + p[1]) for d, p in zip(x.shape, pairs))
    return [imp.emit(f"pad({imp.tensor(x)}, {pairs}, value={fill})", dtype, shape)]


def _tile(imp, node, ins, attrs):
    x = ins[0]
    repeats = concrete_ints(imp, ins[1], "repeats")
    if len(repeats) != x.rank or any(r < 1 for r in repeats):
        raise imp.fail(f"repeats {repeats} must be one positive count per axis")
    text, shape = imp.tensor(x), list(x.shape)
    for axis, r in enumerate(repeats):
        if r > 1:
            text = f"concat([{', '.join([text] * r)}], axis={axis})"
            shape[axis] = dim_op("*", shape[axis], r)
    return [imp.emit(text, value_dtype(x), tuple(shape))]


def _instance_norm(imp, node, ins, attrs):
    x, scale, bias = ins
    eps = literal(float(attrs.get("epsilon", 1e-5)), np.float32)
    axes = axis_tuple(list(range(2, x.rank)))
    more = ", ".join(["None"] * (x.rank - 2))
    xt = imp.tensor(x)
    center = imp.fresh(f"{node.output[0]}_centered")
    imp.lines.append(imp._with_comment(f"{center} = {xt} - mean({xt}, axis={axes}, "
                                       "keepdims=true)"))
    text = (f"{center} * rsqrt(mean({center} * {center}, axis={axes}, keepdims=true) + {eps})"
            f" * {imp.tensor(scale)}[:, {more}] + {imp.tensor(bias)}[:, {more}]")
    return [imp.emit(text, value_dtype(x), x.shape)]


def _softmax(fn: str):
    def rule(imp, node, ins, attrs):
        x = ins[0]
        opset = imp.opsets.get("ai.onnx", 13)
        axis = normalize_axes(imp, [attrs.get("axis", -1 if opset >= 13 else 1)], x.rank)[0]
        if opset < 13 and axis != x.rank - 1:
            raise imp.fail(f"axis={axis} before opset 13 (softmax of the flattened trailing "
                           "axes) is not supported")
        return [imp.emit(f"{fn}({imp.tensor(x)}, axis={axis - x.rank})", value_dtype(x),
                         x.shape)]

    return rule


def _only_first_output(imp, node, what: str = "only the first output is supported"):
    for name in node.output[1:]:
        if name:
            raise imp.fail(f"output '{name}' is used: {what}")


def _norm(kind: str):
    """LayerNormalization, RMSNormalization and SimplifiedLayerNormalization."""

    def rule(imp, node, ins, attrs):
        if kind == "layer" and any(node.output[1:]):
            return _layernorm_stats(imp, node, ins, attrs)
        _only_first_output(imp, node, "the inverse deviation output is not supported")
        x, scale = ins[0], ins[1]
        bias = ins[2] if len(ins) > 2 and kind == "layer" else None
        eps = literal(float(attrs.get("epsilon", 1e-5)), np.float32)
        axis = normalize_axes(imp, [attrs.get("axis", -1)], x.rank, "axis")[0]
        dtype = value_dtype(x)
        xt = imp.tensor(x)
        wide = dtype in ("bf16", "f16", "fp8") and attrs.get("stash_type", 1) == 1
        if wide:
            xt = f"cast({xt}, f32)"
        g = imp.tensor(scale, Like(x.rank))
        b = imp.tensor(bias, Like(x.rank)) if bias is not None else "0.0"
        if axis == x.rank - 1:
            text = f"layernorm({xt}, {g}, {b}, eps={eps})" if kind == "layer" else \
                f"rmsnorm({xt}, {g}, eps={eps})"
        else:
            axes = axis_tuple(list(range(axis, x.rank)))
            if kind == "layer":
                center = imp.fresh(f"{node.output[0]}_centered")
                imp.lines.append(imp._with_comment(
                    f"{center} = {xt} - mean({xt}, axis={axes}, keepdims=true)"))
                text = (f"{center} * rsqrt(mean({center} * {center}, axis={axes}, keepdims=true)"
                        f" + {eps}) * {g} + {b}")
            else:
                text = f"{xt} * rsqrt(mean({xt} * {xt}, axis={axes}, keepdims=true) + {eps}) * {g}"
        if wide:
            text = f"cast({text}, {dtype})"
        return [imp.emit(text, dtype, x.shape)]

    return rule


def _layernorm_stats(imp, node, ins, attrs):
    """LayerNormalization whose Mean / InvStdDev outputs are used: three statements."""
    x, scale = ins[0], ins[1]
    bias = ins[2] if len(ins) > 2 else None
    eps = literal(float(attrs.get("epsilon", 1e-5)), np.float32)
    axis = normalize_axes(imp, [attrs.get("axis", -1)], x.rank, "axis")[0]
    axes = axis_tuple(list(range(axis, x.rank)))
    dtype = value_dtype(x)
    xt = imp.tensor(x) if dtype == "f32" else f"cast({imp.tensor(x)}, f32)"
    stat_shape = tuple(d if i < axis else 1 for i, d in enumerate(x.shape))
    names = list(node.output) + ["", ""]
    mean = imp.emit(f"mean({xt}, axis={axes}, keepdims=true)", "f32", stat_shape,
                    names[1] or f"{node.output[0]}_mean")
    inv = imp.emit(f"rsqrt(mean(({xt} - {mean.name}) * ({xt} - {mean.name}), axis={axes}, "
                   f"keepdims=true) + {eps})", "f32", stat_shape,
                   names[2] or f"{node.output[0]}_invstd")
    g = imp.tensor(scale, Like(x.rank))
    text = f"({xt} - {mean.name}) * {inv.name} * {g}"
    if bias is not None:
        text += f" + {imp.tensor(bias, Like(x.rank))}"
    if dtype != "f32":
        text = f"cast({text}, {dtype})"
    y = imp.emit(text, dtype, x.shape)
    return [y, mean if names[1] else None, inv if names[2] else None]


def _sum(imp, node, ins, attrs):
    values = [v for v in ins if v is not None]
    texts = operands(imp, values)
    shape = broadcast(imp, *[v.shape for v in values])
    return [imp.emit(" + ".join(texts), value_dtype(values[0]), shape)]


def _batchnorm(imp, node, ins, attrs):
    _only_first_output(imp, node, "training mode is not supported")
    if attrs.get("training_mode", 0):
        raise imp.fail("training_mode=1 is not supported")
    x = ins[0]
    params = ins[1:5]
    eps = float(attrs.get("epsilon", 1e-5))
    if any(not isinstance(p, Const) for p in params):
        # run-time statistics: (x - mean) * rsqrt(var + eps) * scale + bias per channel
        more = ", ".join(["None"] * (x.rank - 2))
        scale, bias, mean, var = (f"{imp.tensor(p)}[:, {more}]" if more else imp.tensor(p)
                                  for p in params)
        text = (f"({imp.tensor(x)} - {mean}) * rsqrt({var} + {literal(eps, np.float32)}) "
                f"* {scale} + {bias}")
        return [imp.emit(text, value_dtype(x), x.shape)]
    scale, bias, mean, var = (p.array.astype(np.float32) for p in params)
    mul = scale / np.sqrt(var + eps)
    add = bias - mean * mul
    shape = (-1,) + (1,) * (x.rank - 2)
    dtype = value_dtype(x)
    wm = imp.tensor(Const(mul.reshape(shape)), Like(x.rank))
    wa = imp.tensor(Const(add.reshape(shape)), Like(x.rank))
    text = f"{imp.tensor(x)} * {wm} + {wa}"
    if dtype != "f32":
        text = f"cast({text}, {dtype})"
    return [imp.emit(text, dtype, x.shape)]


def _spatial_attrs(imp, node, attrs, x, kernel):
    """Strides, dilations and [[begin, end], ...] pads of a 1-D or 2-D window."""
    nd = len(kernel)
    strides = list(attrs.get("strides", [1] * nd))
    dilations = list(attrs.get("dilations", [1] * nd))
    pads = list(attrs.get("pads", [0] * (2 * nd)))
    auto = attrs.get("auto_pad", "NOTSET")
    spatial = x.shape[2:]
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        if any(isinstance(d, Sym) for d in spatial):
            raise imp.fail(f"auto_pad={auto} on symbolic spatial dims is not supported")
        pads = [0] * (2 * nd)
        for i in range(nd):
            out = -(-spatial[i] // strides[i])
            total = max(0, (out - 1) * strides[i] + (kernel[i] - 1) * dilations[i] + 1
                        - spatial[i])
            small, big = total // 2, total - total // 2
            pads[i], pads[i + nd] = (small, big) if auto == "SAME_UPPER" else (big, small)
    elif auto == "VALID":
        pads = [0] * (2 * nd)
    elif auto != "NOTSET":
        raise imp.fail(f"auto_pad={auto} is not supported")
    pairs = [[pads[i], pads[i + nd]] for i in range(nd)]
    return strides, dilations, pairs


def _window_out(imp, dim, k, s, d, pad, ceil=False):
    if isinstance(dim, Sym):
        if (k, s, d, pad) == (1, 1, 1, [0, 0]):
            return dim
        raise imp.fail("a window over a symbolic spatial dim is not supported")
    span = dim + pad[0] + pad[1] - d * (k - 1) - 1
    if span < 0:
        raise imp.fail("the window is larger than the padded input")
    return (-(-span // s) if ceil else span // s) + 1


def _conv(imp, node, ins, attrs):
    x, w = ins[:2]
    bias = ins[2] if len(ins) > 2 else None
    nd = rank_of(x) - 2
    if nd not in (1, 2):
        raise imp.fail(f"a {nd}-D convolution is not supported (1-D and 2-D are)")
    kernel = list(attrs.get("kernel_shape", w.shape[2:]))
    if any(isinstance(k, Sym) for k in kernel):
        raise imp.fail("a kernel with symbolic dims is not supported")
    strides, dilations, pads = _spatial_attrs(imp, node, attrs, x, kernel)
    groups = int(attrs.get("group", 1))
    xt, wt = imp.tensor(x), imp.tensor(w)
    if nd == 1:
        xt, wt = f"expand_dims({xt}, 2)", f"expand_dims({wt}, 2)"
        strides, dilations, pads = [1] + strides, [1] + dilations, [[0, 0]] + pads
    args = [xt, wt]
    if strides != [1, 1]:
        args.append(f"stride={strides}")
    if any(p != [0, 0] for p in pads):
        args.append(f"padding={pads}")
    if dilations != [1, 1]:
        args.append(f"dilation={dilations}")
    if groups != 1:
        args.append(f"groups={groups}")
    text = f"conv2d({', '.join(args)})"
    if nd == 1:
        text = f"squeeze({text}, 2)"
    if bias is not None:
        text += f" + {imp.tensor(bias)}[:, {', '.join(['None'] * nd)}]"
    spatial = [_window_out(imp, dim, k, s, d, p) for dim, k, s, d, p in
               zip(x.shape[2:], kernel, strides[-nd:], dilations[-nd:], pads[-nd:])]
    return [imp.emit(text, value_dtype(x), (x.shape[0], w.shape[0], *spatial))]


def _pool(kind: str):
    def rule(imp, node, ins, attrs):
        _only_first_output(imp, node, "the indices output is not supported")
        x = ins[0]
        nd = rank_of(x) - 2
        if nd not in (1, 2):
            raise imp.fail(f"a {nd}-D pool is not supported (1-D and 2-D are)")
        kernel = list(attrs["kernel_shape"])
        strides, dilations, pads = _spatial_attrs(imp, node, attrs, x, kernel)
        if any(d != 1 for d in dilations):
            raise imp.fail(f"dilations={dilations} is not supported")
        ceil = bool(attrs.get("ceil_mode", 0))
        include_pad = bool(attrs.get("count_include_pad", 0)) and kind == "avg"
        spatial = []
        for i, dim in enumerate(x.shape[2:]):
            out = _window_out(imp, dim, kernel[i], strides[i], 1, pads[i], ceil)
            if ceil and (out - 1) * strides[i] >= dim + pads[i][0]:
                out -= 1  # ONNX drops a last window that starts in the end padding
            extra = (out - 1) * strides[i] + kernel[i] - (dim + pads[i][0] + pads[i][1])
            if extra > 0:
                if include_pad:
                    raise imp.fail("ceil_mode=1 with count_include_pad=1 is not supported")
                pads[i] = [pads[i][0], pads[i][1] + extra]
            spatial.append(out)
        xt = imp.tensor(x)
        if nd == 1:
            xt = f"expand_dims({xt}, 2)"
            kernel, strides, pads = [1] + kernel, [1] + strides, [[0, 0]] + pads
        if include_pad and any(p != [0, 0] for p in pads):
            xt = f"pad({xt}, {[[0, 0], [0, 0]] + pads})"
            pads = [[0, 0], [0, 0]]
        args = [xt, str(kernel), f"stride={strides}"]
        if any(p != [0, 0] for p in pads):
            args.append(f"padding={pads}")
        text = f"{kind}pool2d({', '.join(args)})"
        if nd == 1:
            text = f"squeeze({text}, 2)"
        dtype = value_dtype(x)
        return [imp.emit(text, dtype, (*x.shape[:2], *spatial))]

    return rule


def _global_pool(fn: str):
    def rule(imp, node, ins, attrs):
        x = ins[0]
        axes = list(range(2, x.rank))
        return [imp.emit(f"{fn}({imp.tensor(x)}, axis={axis_tuple(axes)}, keepdims=true)",
                         value_dtype(x), (*x.shape[:2], *([1] * len(axes))))]

    return rule


# ------------------------------------------------------------------ shape


def _identity(imp, node, ins, attrs):
    _only_first_output(imp, node, "the dropout mask is not supported")
    if node.op_type == "Dropout" and len(ins) > 2 and ins[2] is not None:
        mode = ins[2]
        if not isinstance(mode, Const) or bool(mode.array.reshape(-1)[0]):
            raise imp.fail("training_mode must be a constant false")
    return [ins[0]]


def _transpose(imp, node, ins, attrs):
    x = ins[0]
    perm = list(attrs.get("perm", range(x.rank - 1, -1, -1)))
    perm = normalize_axes(imp, perm, x.rank, "perm")
    return [imp.emit(f"transpose({imp.tensor(x)}, {perm})", value_dtype(x),
                     tuple(x.shape[p] for p in perm))]


def reshape_target(imp, in_shape: tuple, target: list, allowzero: bool) -> tuple[list, tuple]:
    """The dims to write and the result shape of a reshape (0 copies, one -1 is inferred)."""
    dims = []
    for i, d in enumerate(target):
        if isinstance(d, int) and d == 0:
            if allowzero:
                raise imp.fail("allowzero=1 with a 0 in the shape (an empty tensor) is not "
                               "supported")
            if i >= len(in_shape):
                raise imp.fail(f"shape {target}: 0 at axis {i} has no input dim to copy")
            d = in_shape[i]
        elif isinstance(d, int) and d < -1:
            raise imp.fail(f"shape {target}: dim {d} is not valid")
        dims.append(d)
    if sum(1 for d in dims if isinstance(d, int) and d == -1) > 1:
        raise imp.fail(f"shape {target}: more than one -1")
    result = list(dims)
    if any(isinstance(d, int) and d == -1 for d in dims):
        at = next(i for i, d in enumerate(dims) if isinstance(d, int) and d == -1)
        result[at] = infer_minus_one(list(in_shape), [d for d in dims if not (
            isinstance(d, int) and d == -1)])
    return dims, tuple(result)


def infer_minus_one(have: list, known: list) -> Dim:
    """numel(have) / prod(known), cancelling equal symbolic dims first."""
    have, rest = list(have), []
    for d in known:
        if isinstance(d, Sym) and d in have:
            have.remove(d)
        else:
            rest.append(d)
    num_sym = [d for d in have if isinstance(d, Sym)]
    num_int = prod(d for d in have if isinstance(d, int))
    den_sym = [d for d in rest if isinstance(d, Sym)]
    den_int = prod(d for d in rest if isinstance(d, int))
    if not den_sym:
        if num_int % den_int == 0:
            return dim_op("*", dims_product(num_sym), num_int // den_int)
        return dim_op("//", dims_product(num_sym + [num_int]), den_int)
    return dim_op("//", dims_product(num_sym + [num_int]), dims_product(den_sym + [den_int]))


def _reshape(imp, node, ins, attrs):
    x, shape = ins[:2]
    target = const_ints(imp, shape, "the target shape")
    dims, result = reshape_target(imp, x.shape, target, bool(attrs.get("allowzero", 0)))
    return [imp.emit(f"reshape({imp.tensor(x)}, {shape_text(dims)})", value_dtype(x), result)]


def _flatten(imp, node, ins, attrs):
    x = ins[0]
    axis = attrs.get("axis", 1)
    axis = axis % x.rank if x.rank and axis < 0 else axis
    dims = (dims_product(x.shape[:axis]), dims_product(x.shape[axis:]))
    return [imp.emit(f"reshape({imp.tensor(x)}, {shape_text(dims)})", value_dtype(x), dims)]


def _squeeze(imp, node, ins, attrs):
    x = ins[0]
    if "axes" in attrs:
        axes = list(attrs["axes"])
    elif len(ins) > 1 and ins[1] is not None:
        axes = concrete_ints(imp, ins[1], "axes")
    else:
        axes = [i for i, d in enumerate(x.shape) if isinstance(d, int) and d == 1]
    axes = sorted(set(normalize_axes(imp, axes, x.rank)))
    for a in axes:
        if not (isinstance(x.shape[a], int) and x.shape[a] == 1):
            raise imp.fail(f"axis {a} has size {dim_text(x.shape[a])}, not 1")
    shape = tuple(d for i, d in enumerate(x.shape) if i not in axes)
    if not axes:
        return [x]
    return [imp.emit(f"squeeze({imp.tensor(x)}, {axis_tuple(axes)})", value_dtype(x), shape)]


def _unsqueeze(imp, node, ins, attrs):
    x = ins[0]
    axes = list(attrs["axes"]) if "axes" in attrs else concrete_ints(imp, ins[1], "axes")
    out_rank = x.rank + len(axes)
    axes = sorted(set(normalize_axes(imp, axes, out_rank)))
    shape, rest = [], iter(x.shape)
    for i in range(out_rank):
        shape.append(1 if i in axes else next(rest))
    return [imp.emit(f"expand_dims({imp.tensor(x)}, {axis_tuple(axes)})", value_dtype(x),
                     tuple(shape))]


def _concat(imp, node, ins, attrs):
    values = [v for v in ins if v is not None]
    rank = rank_of(values[0])
    axis = normalize_axes(imp, [attrs["axis"]], rank, "axis")[0]
    texts = [imp.tensor(v) for v in values]
    size = 0
    for v in values:
        size = dim_op("+", size, v.shape[axis])
    shape = list(values[0].shape)
    shape[axis] = size
    dtype = next((v.dtype for v in values if isinstance(v, Tensor)), value_dtype(values[0]))
    return [imp.emit(f"concat([{', '.join(texts)}], axis={axis})", dtype, tuple(shape))]


def _slice_bounds(imp, dim, start, end, step):
    """The text `a:b:s` of one axis and its size; a symbolic dim keeps Python's meaning."""
    if step == 0:
        raise imp.fail("a step of 0 is not supported")
    if step < 0:
        raise imp.fail(f"a negative step ({step}) is not supported")
    if isinstance(dim, int):
        lo, hi, _ = slice(start, end, step).indices(dim)
        size = max(0, -(-(hi - lo) // step))
        if size == 0:
            raise imp.fail("the slice is empty (zhenwu has no empty tensors)")
        text = f"{lo if lo else ''}:{hi if hi != dim else ''}" + (f":{step}" if step != 1 else "")
        return text, size
    big = end >= INT64_MAX // 2
    lo_text = str(start) if start else ""
    hi_text = "" if big else str(end)
    if step != 1:
        raise imp.fail("a strided slice of a symbolic dim is not supported")
    if big:
        size = dim_op("-", dim, start) if start >= 0 else -start
    elif end < 0:
        size = dim_op("-", dim_op("+", dim, end), start) if start >= 0 else end - start
    else:
        if start < 0:
            raise imp.fail("a slice from the end to a fixed index of a symbolic dim is not "
                           "supported")
        size = end - start
    return f"{lo_text}:{hi_text}", size


def _slice(imp, node, ins, attrs):
    x = ins[0]
    if "starts" in attrs:
        starts, ends = list(attrs["starts"]), list(attrs["ends"])
        axes = list(attrs.get("axes", range(len(starts))))
        steps = [1] * len(starts)
    else:
        starts = concrete_ints(imp, ins[1], "starts")
        ends = concrete_ints(imp, ins[2], "ends")
        axes = concrete_ints(imp, ins[3], "axes") if len(ins) > 3 and ins[3] is not None \
            else list(range(len(starts)))
        steps = concrete_ints(imp, ins[4], "steps") if len(ins) > 4 and ins[4] is not None \
            else [1] * len(starts)
    axes = normalize_axes(imp, axes, x.rank)
    parts = [":"] * x.rank
    shape = list(x.shape)
    for a, s, e, st in zip(axes, starts, ends, steps):
        parts[a], shape[a] = _slice_bounds(imp, x.shape[a], s, e, st)
    while parts and parts[-1] == ":":
        parts.pop()
    text = imp.tensor(x) + (f"[{', '.join(parts)}]" if parts else "")
    return [imp.emit(text, value_dtype(x), tuple(shape))]


def _split(imp, node, ins, attrs):
    x = ins[0]
    axis = normalize_axes(imp, [attrs.get("axis", 0)], x.rank, "axis")[0]
    outs = list(node.output)
    dim = x.shape[axis]
    if "split" in attrs:
        sizes = list(attrs["split"])
    elif len(ins) > 1 and ins[1] is not None:
        sizes = concrete_ints(imp, ins[1], "split")
    else:
        n = int(attrs.get("num_outputs", len(outs)))
        if isinstance(dim, Sym):
            sizes = [dim_op("//", dim, n)] * n
        else:
            chunk = -(-dim // n)
            sizes = [min(chunk, dim - i * chunk) for i in range(n)]
            if any(s <= 0 for s in sizes):
                raise imp.fail(f"splitting {dim} into {n} parts leaves an empty part")
    if len(sizes) != len(outs):
        raise imp.fail(f"{len(sizes)} split sizes for {len(outs)} outputs")
    if isinstance(dim, Sym):
        if not all(s == sizes[0] for s in sizes):
            raise imp.fail("uneven splits of a symbolic dim are not supported")
        arg = str(len(sizes))
    else:
        if sum(sizes) != dim or any(s <= 0 for s in sizes):
            raise imp.fail(f"split sizes {sizes} do not add up to {dim} in positive parts")
        cuts, total = [], 0
        for s in sizes[:-1]:
            total += s
            cuts.append(total)
        arg = str(cuts) if len(set(sizes)) > 1 else str(len(sizes))
    dtype = value_dtype(x)
    results = []
    for out, size in zip(outs, sizes):
        shape = list(x.shape)
        shape[axis] = size
        results.append((out, dtype, tuple(shape)))
    if len(outs) == 1:
        return [x]
    return imp.emit_many(f"split({imp.tensor(x)}, {arg}, axis={axis})", results)


def _expand(imp, node, ins, attrs):
    x, shape = ins
    target = const_ints(imp, shape, "the target shape")
    out = broadcast(imp, x.shape, tuple(target))
    return [imp.emit(f"broadcast_to({imp.tensor(x)}, {shape_text(out)})", value_dtype(x), out)]


def _shape(imp, node, ins, attrs):
    x = ins[0]
    dims = list(x.shape)[attrs.get("start", 0): attrs.get("end", None)]
    return [Const(symbolic_array(dims))]


def _size(imp, node, ins, attrs):
    return [Const(symbolic_array([dims_product(ins[0].shape)]).reshape(()))]


def symbolic_array(dims: list) -> np.ndarray:
    """A 1-D int64 array of dims, object dtype when some are symbolic."""
    if any(isinstance(d, Sym) for d in dims):
        array = np.empty(len(dims), dtype=object)
        array[:] = dims
        return array
    return np.array(dims, dtype=np.int64)


def _constant(imp, node, ins, attrs):
    for key in ("value_string", "value_strings", "sparse_value"):
        if key in attrs:
            raise imp.fail(f"a {key} constant is not supported")
    if "value" in attrs:
        return [const_from_tensor(imp, attrs["value"])]
    for key, dtype in (("value_float", np.float32), ("value_floats", np.float32),
                       ("value_int", np.int64), ("value_ints", np.int64)):
        if key in attrs:
            return [Const(np.array(attrs[key], dtype=dtype))]
    raise imp.fail("a Constant without a value")


def _constant_of_shape(imp, node, ins, attrs):
    dims = const_ints(imp, ins[0], "the shape")
    value = const_from_tensor(imp, attrs["value"]).array.reshape(-1)[0] if "value" in attrs \
        else np.float32(0)
    dtype = zt_dtype_of_np(np.asarray(value).dtype)
    return [imp.emit(f"full({shape_text(dims)}, {literal(value, np.asarray(value).dtype)}, "
                     f"{dtype})", dtype, tuple(dims))]


def _range(imp, node, ins, attrs):
    """`arange`: of numbers (when recomputed on the chip) or up to a symbolic dim."""
    bounds = []
    for v in ins:
        if not isinstance(v, Const):
            raise imp.fail("a range whose bounds are computed at run time (a data-dependent "
                           "shape) is not supported")
        bounds.append(v.array.reshape(-1)[0])
    start, limit, delta = bounds
    floating = any(isinstance(b, (float, np.floating)) for b in bounds)
    if isinstance(start, Sym) or isinstance(delta, Sym):
        raise imp.fail("a range with a symbolic start or step is not supported")
    if isinstance(limit, Sym):
        if delta != 1 or floating:
            raise imp.fail("a range of symbolic length needs an integer step of 1")
        size = dim_op("-", limit, int(start))
    else:
        size = int(max(np.ceil((float(limit) - float(start)) / float(delta)), 0))
        if size == 0:
            raise imp.fail("the range is empty (zhenwu has no empty tensors)")

    def text(b):
        return literal(b, np.float32 if floating else np.int64)

    if not floating and start == 0 and delta == 1:
        call = f"arange({text(limit)})"
    else:
        call = f"arange({text(start)}, {text(limit)}" + (f", {text(delta)})" if delta != 1
                                                          else ")")
    return [imp.emit(call, "f32" if floating else "i32", (size,))]


def _trilu(imp, node, ins, attrs):
    x = ins[0]
    k = concrete_ints(imp, ins[1], "k")[0] if len(ins) > 1 and ins[1] is not None else 0
    rows, cols = x.shape[-2], x.shape[-1]
    op = ">=" if attrs.get("upper", 1) else "<="
    mask = f"arange({dim_text(cols)})[None, :] - arange({dim_text(rows)})[:, None] {op} {k}"
    dtype = value_dtype(x)
    return [imp.emit(f"where({mask}, {imp.tensor(x)}, {zero_literal(dtype)})", dtype, x.shape)]


def _gather(imp, node, ins, attrs):
    data, indices = ins
    axis = normalize_axes(imp, [attrs.get("axis", 0)], rank_of(data), "axis")[0]
    shape = tuple(data.shape[:axis]) + tuple(indices.shape) + tuple(data.shape[axis + 1:])
    dtype = value_dtype(data)
    if isinstance(indices, Const) and isinstance(data, Tensor) and not indices.symbolic:
        flat = [int(i) for i in indices.array.reshape(-1)]
        prefix = ", ".join([":"] * axis)
        prefix = prefix + ", " if prefix else ""
        if indices.array.ndim == 0:
            return [imp.emit(f"{data.name}[{prefix}{flat[0]}]", dtype, shape)]
        size = data.shape[axis]
        if isinstance(size, int):
            flat = [i % size if -size <= i < 0 else i for i in flat]
        if indices.array.ndim == 1 and all(b == a + 1 for a, b in zip(flat, flat[1:])) \
                and flat[0] >= 0 and (not isinstance(size, int) or flat[-1] < size):
            return [imp.emit(f"{data.name}[{prefix}{flat[0]}:{flat[-1] + 1}]", dtype, shape)]
    if dtype not in ("f32", "bf16", "f16", "fp8"):
        raise imp.fail(f"gathering from {dtype} data at run time is not supported (gather "
                       "multiplies by a one-hot matrix, which needs floating-point data)")
    texts = imp.tensor(data), imp.tensor(indices)
    return [imp.emit(f"gather({texts[0]}, {texts[1]}, axis={axis})", dtype, shape)]


# ------------------------------------------------------------------ the table

OPS = {
    # elementwise
    "Add": binary("+"), "Sub": binary("-"), "Mul": binary("*"), "Div": binary("/"),
    "Pow": binary("**"),
    "Equal": binary("=="), "Less": binary("<"), "Greater": binary(">"),
    "LessOrEqual": binary("<="), "GreaterOrEqual": binary(">="),
    "Not": _logical("Not"), "And": _logical("And"), "Or": _logical("Or"),
    "Xor": _logical("Xor"),
    "Neg": _neg, "Abs": unary("abs"), "Relu": unary("relu"), "Sign": unary("sign"),
    "Floor": _float_unary("floor"), "Ceil": _float_unary("ceil"),
    "Sqrt": _float_unary("sqrt"), "Reciprocal": _float_unary("reciprocal"),
    "Exp": _float_unary("exp"), "Log": _float_unary("log"), "Tanh": _float_unary("tanh"),
    "Sigmoid": _float_unary("sigmoid"), "Erf": _float_unary("erf"),
    "Sin": _float_unary("sin"), "Cos": _float_unary("cos"),
    "Gelu": _gelu, "LeakyRelu": _leaky_relu, "Clip": _clip,
    "Max": _variadic("maximum"), "Min": _variadic("minimum"), "Sum": _sum,
    "Where": _where, "Cast": _cast, "CastLike": _cast,
    # linear algebra
    "MatMul": _matmul, "Gemm": _gemm, "Einsum": _einsum,
    # reductions and neural nets
    "ReduceMean": reduction("mean"), "ReduceSum": reduction("sum"),
    "ReduceMax": reduction("max"), "ReduceMin": reduction("min"),
    "ReduceProd": reduction("prod"),
    "Softmax": _softmax("softmax"), "LogSoftmax": _softmax("log_softmax"),
    "LayerNormalization": _norm("layer"), "RMSNormalization": _norm("rms"),
    "SimplifiedLayerNormalization": _norm("rms"), "BatchNormalization": _batchnorm,
    "Conv": _conv, "MaxPool": _pool("max"), "AveragePool": _pool("avg"),
    "GlobalAveragePool": _global_pool("mean"), "GlobalMaxPool": _global_pool("max"),
    # shape
    "Identity": _identity, "Dropout": _identity, "Transpose": _transpose,
    "Reshape": _reshape, "Flatten": _flatten, "Squeeze": _squeeze, "Unsqueeze": _unsqueeze,
    "Concat": _concat, "Slice": _slice, "Split": _split, "Expand": _expand,
    "Shape": _shape, "Size": _size, "Constant": _constant,
    "ConstantOfShape": _constant_of_shape, "Range": _range, "Trilu": _trilu,
    "Gather": _gather,
    # more activations, written as expressions
    "Softplus": template("log(exp({x}) + 1.0)"),
    "Softsign": template("{x} / (abs({x}) + 1.0)"),
    "Elu": template("where({x} > 0.0, {x}, {alpha} * (exp({x}) - 1.0))", alpha=1.0),
    "Celu": template("maximum({x}, 0.0) + minimum({alpha} * (exp({x} / {alpha}) - 1.0), 0.0)",
                     alpha=1.0),
    "Selu": template("where({x} > 0.0, {gamma} * {x}, {gamma} * ({alpha} * exp({x}) - {alpha}))",
                     alpha=1.67326319217681884765625, gamma=1.05070102214813232421875),
    "HardSigmoid": template("clip({alpha} * {x} + {beta}, 0.0, 1.0)", alpha=0.2, beta=0.5),
    "HardSwish": template("{x} * clip({x} / 6.0 + 0.5, 0.0, 1.0)"),
    "Mish": template("{x} * tanh(log(exp({x}) + 1.0))"),
    "ThresholdedRelu": template("where({x} > {alpha}, {x}, 0.0)", alpha=1.0),
    "Tan": template("sin({x}) / cos({x})"),
    "IsNaN": template("{x} != {x}", dtype="bool"), "IsInf": _isinf, "PRelu": _prelu,
    "Mean": _mean, "Pad": _pad, "Tile": _tile, "InstanceNormalization": _instance_norm,
    "ArgMax": _arg_reduction(False), "ArgMin": _arg_reduction(True),
    "ReduceSumSquare": reduction("sum", pre="{x} * {x}"),
    "ReduceL1": reduction("sum", pre="abs({x})"),
    "ReduceL2": reduction("sum", pre="{x} * {x}", post="sqrt({r})"),
    "ReduceLogSum": reduction("sum", post="log({r})"),
    "ReduceLogSumExp": reduction("sum", pre="exp({x})", post="log({r})"),
}


# The attributes each rule reads; any other (an older opset's form, a new option) is refused
# rather than ignored. Operators not listed take none.
ATTRS = {
    "Gelu": ("approximate",), "LeakyRelu": ("alpha",), "Clip": ("min", "max"),
    "Cast": ("to", "saturate"), "CastLike": ("saturate",),
    "Gemm": ("alpha", "beta", "transA", "transB"), "Einsum": ("equation",),
    **{op: ("axes", "keepdims", "noop_with_empty_axes")
       for op in ("ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd")},
    "Softmax": ("axis",), "LogSoftmax": ("axis",),
    "LayerNormalization": ("axis", "epsilon", "stash_type"),
    "RMSNormalization": ("axis", "epsilon", "stash_type"),
    "SimplifiedLayerNormalization": ("axis", "epsilon", "stash_type"),
    "BatchNormalization": ("epsilon", "momentum", "training_mode"),
    "Conv": ("kernel_shape", "strides", "pads", "dilations", "group", "auto_pad"),
    "MaxPool": ("kernel_shape", "strides", "pads", "dilations", "auto_pad", "ceil_mode",
                "storage_order"),
    "AveragePool": ("kernel_shape", "strides", "pads", "dilations", "auto_pad", "ceil_mode",
                    "count_include_pad"),
    "Dropout": ("seed", "ratio"), "Transpose": ("perm",), "Reshape": ("allowzero",),
    "Flatten": ("axis",), "Squeeze": ("axes",), "Unsqueeze": ("axes",), "Concat": ("axis",),
    "Slice": ("starts", "ends", "axes"), "Split": ("axis", "split", "num_outputs"),
    "Shape": ("start", "end"),
    "Constant": ("value", "value_float", "value_floats", "value_int", "value_ints",
                 "value_string", "value_strings", "sparse_value"),
    "ConstantOfShape": ("value",), "Trilu": ("upper",), "Gather": ("axis",),
    "Elu": ("alpha",), "Celu": ("alpha",), "Selu": ("alpha", "gamma"),
    "HardSigmoid": ("alpha", "beta"), "ThresholdedRelu": ("alpha",),
    "IsInf": ("detect_positive", "detect_negative"), "Pad": ("mode", "pads"),
    "InstanceNormalization": ("epsilon",),
    "ArgMax": ("axis", "keepdims", "select_last_index"),
    "ArgMin": ("axis", "keepdims", "select_last_index"),
    **{op: ("axes", "keepdims", "noop_with_empty_axes")
       for op in ("ReduceSumSquare", "ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp")},
}


# ------------------------------------------------------------------ folding


def _np(array):
    """Object arrays without symbols become int64."""
    if array.dtype == object and not any(isinstance(v, Sym) for v in array.reshape(-1)):
        return array.astype(np.int64)
    return array


def _fold_binary(fn):
    def fold(arrays, attrs, imp, node):
        a, b = arrays[:2]
        return [fn(a, b)]

    return fold


def _int_div(a, b):
    if a.dtype.kind in "iuO" and b.dtype.kind in "iuO":
        if a.dtype == object or b.dtype == object:
            return np.vectorize(lambda x, y: dim_op("//", x, y), otypes=[object])(a, b)
        return (np.trunc(a / b)).astype(np.result_type(a, b))
    return a / b


def _fold_gather(arrays, attrs, imp, node):
    data, indices = arrays
    return [np.take(data, indices.astype(np.int64), axis=attrs.get("axis", 0))]


def _fold_concat(arrays, attrs, imp, node):
    values = [a for a in arrays if a is not None]
    if any(a.dtype == object for a in values):
        values = [a.astype(object) for a in values]
    return [np.concatenate(values, axis=attrs["axis"])]


def _fold_unsqueeze(arrays, attrs, imp, node):
    x = arrays[0]
    axes = list(attrs["axes"]) if "axes" in attrs else [int(a) for a in arrays[1].reshape(-1)]
    rank = x.ndim + len(axes)
    return [np.expand_dims(x, tuple(a % rank for a in axes))]


def _fold_squeeze(arrays, attrs, imp, node):
    x = arrays[0]
    if "axes" in attrs:
        axes = list(attrs["axes"])
    elif len(arrays) > 1 and arrays[1] is not None:
        axes = [int(a) for a in arrays[1].reshape(-1)]
    else:
        return [np.squeeze(x)]
    return [np.squeeze(x, tuple(a % x.ndim for a in axes))]


def _fold_slice(arrays, attrs, imp, node):
    x = arrays[0]
    starts = [int(v) for v in arrays[1]]
    ends = [int(v) for v in arrays[2]]
    axes = [int(v) for v in arrays[3]] if len(arrays) > 3 and arrays[3] is not None \
        else list(range(len(starts)))
    steps = [int(v) for v in arrays[4]] if len(arrays) > 4 and arrays[4] is not None \
        else [1] * len(starts)
    index = [slice(None)] * x.ndim
    for a, s, e, st in zip(axes, starts, ends, steps):
        index[a % x.ndim] = slice(s, e if e < INT64_MAX // 2 or st < 0 else None, st)
    return [x[tuple(index)]]


def _fold_reshape(arrays, attrs, imp, node):
    x, shape = arrays
    target = [int(v) for v in shape]
    target = [x.shape[i] if d == 0 and not attrs.get("allowzero", 0) else d
              for i, d in enumerate(target)]
    return [x.reshape(target)]


def _fold_cast(arrays, attrs, imp, node):
    x = arrays[0]
    if x.dtype == object:
        from onnx import TensorProto

        if attrs["to"] in (TensorProto.INT64, TensorProto.INT32):
            return [x]
        raise NotFoldable("a symbolic dim cast to a non-integer type")
    return None


def _fold_equal(arrays, attrs, imp, node):
    a, b = arrays
    if a.dtype != object and b.dtype != object:
        return None
    a, b = np.broadcast_arrays(a.astype(object), b.astype(object))
    out = np.empty(a.shape, dtype=bool)
    for i, (x, y) in enumerate(zip(a.reshape(-1), b.reshape(-1))):
        if isinstance(x, Sym) or isinstance(y, Sym):
            if x != y:
                raise NotFoldable("a symbolic dim compared with a different value")
            out.reshape(-1)[i] = True
        else:
            out.reshape(-1)[i] = x == y
    return [out]


def _fold_where(arrays, attrs, imp, node):
    c, a, b = arrays
    if a.dtype == object or b.dtype == object:
        return [np.where(c, a.astype(object), b.astype(object))]
    return None


def _fold_identity(arrays, attrs, imp, node):
    return [arrays[0]]


def _fold_range(arrays, attrs, imp, node):
    start, limit, delta = (a.reshape(()).item() for a in arrays)
    if any(isinstance(v, Sym) for v in (start, limit, delta)):
        raise NotFoldable("a range of symbolic length")
    return None


def _fold_constant_of_shape(arrays, attrs, imp, node):
    if arrays[0].dtype == object:
        raise NotFoldable("a tensor of symbolic shape")
    return None


def _fold_mul_like(fn, op):
    def fold(arrays, attrs, imp, node):
        a, b = arrays[:2]
        if a.dtype != object and b.dtype != object:
            return None
        return [np.vectorize(lambda x, y: dim_op(op, x, y), otypes=[object])(
            a.astype(object), b.astype(object))]

    return fold


# Folds that also handle symbolic dims (object arrays); a fold returning None leaves the
# node to the onnx reference implementation (plain numbers only).
FOLDS = {
    "Shape": None, "Size": None, "Constant": None,  # rules handle these
    "Identity": _fold_identity, "Gather": _fold_gather, "Concat": _fold_concat,
    "Unsqueeze": _fold_unsqueeze, "Squeeze": _fold_squeeze, "Slice": _fold_slice,
    "Reshape": _fold_reshape, "Cast": _fold_cast, "Equal": _fold_equal, "Where": _fold_where,
    "Mul": _fold_mul_like(None, "*"), "Add": _fold_mul_like(None, "+"),
    "Sub": _fold_mul_like(None, "-"), "Div": _fold_mul_like(None, "//"),
    "Range": _fold_range, "ConstantOfShape": _fold_constant_of_shape,
}
_SHAPE_RULES = {"Shape", "Size", "Constant"}


def fold(imp, node, inputs, attrs):
    """The outputs of a node whose inputs are all known at import, or None to leave it to
    its rule (an op on symbolic dims the folds do not compute)."""
    if node.op_type in _SHAPE_RULES:
        return None
    arrays = [None if v is None else _np(v.array) for v in inputs]
    symbolic = any(a is not None and a.dtype == object for a in arrays)
    rule = FOLDS.get(node.op_type)
    try:
        outs = rule(arrays, attrs, imp, node) if rule is not None else None
    except NotFoldable:
        return None
    if outs is None:
        if symbolic or node.op_type not in OPS:
            return None
        outs = _reference_fold(imp, node, arrays)
    return [None if o is None else Const(_np(np.asarray(o))) for o in outs]


def _reference_fold(imp, node, arrays):
    """One node on numbers, by the onnx package's reference implementation."""
    from onnx import helper
    from onnx.reference import ReferenceEvaluator

    inputs, feeds = [], {}
    for name, array in zip(node.input, arrays):
        if name and array is not None:
            inputs.append(helper.make_tensor_value_info(
                name, helper.np_dtype_to_tensor_dtype(array.dtype), list(array.shape)))
            feeds[name] = array
    outputs = [helper.make_empty_tensor_value_info(o) for o in node.output if o]
    graph = helper.make_graph([node], "fold", inputs, outputs)
    model = helper.make_model(graph, opset_imports=list(imp.model.opset_import))
    try:
        results = ReferenceEvaluator(model).run(None, feeds)
    except Exception as err:
        raise imp.fail(f"cannot compute this node on its constant inputs "
                       f"({type(err).__name__}: {err})") from None
    named = dict(zip([o for o in node.output if o], results))
    return [named.get(o) if o else None for o in node.output]
