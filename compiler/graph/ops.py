"""The op registry: every Graph IR op kind, defined once (docs/design.md section 4).

Each `OpDef` holds the kind's shape/dtype rule (`infer`), its numpy reference
(`reference`), its fusion class (TVM's op patterns: elementwise, broadcast, injective, reduce,
contraction, opaque), its cost (`flops`, `bytes`) and whether the backend lowers it directly
(`primitive`). Non-primitive kinds (`conv2d`, pools, `einsum`) are rewritten into primitives
by the `decompose` pass, one rule each (compiler/passes/decompose.py).

Rules raise `Diagnostic` without a span; whoever emits the op adds the span.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from math import prod

from zhenwu.compiler.graph.dtypes import DTYPES, is_float, is_int, limits, np_dtype, promote
from zhenwu.compiler.graph.ir import TensorType
from zhenwu.compiler.graph.opfacets import OUT, Frontend, Fuzz, Step, VectorLowering
from zhenwu.isa.errors import Diagnostic
from zhenwu.isa.lazy import numpy as np
from zhenwu.isa.lazy import numpy_function as _np

Types = tuple[TensorType, ...]


@dataclass(frozen=True)
class OpDef:
    """One op kind.

    `infer(types, attrs) -> TensorType` checks operands and attributes and gives the result
    type. `reference(arrays, attrs) -> ndarray` computes the result from operands already
    converted to their compute dtype (f32 for the narrow floats); the evaluator casts the
    result to the result type. `attrs` names the attributes the kind requires.
    """

    name: str
    fusion: str
    infer: Callable[[Types, dict], TensorType]
    reference: Callable[[list[np.ndarray], dict], np.ndarray]
    attrs: tuple[str, ...] = ()
    arity: int | None = 1  # None: any number of operands (concat)
    optional_attrs: tuple[str, ...] = ()  # attributes the kind may carry (matmul's `acc`)
    primitive: bool = True
    flop_rule: Callable[[Types, TensorType, dict], int] | None = None
    # the facets every other layer reads (compiler/graph/opfacets.py)
    frontend: Frontend | None = None  # how .zt spells it
    float_only: bool = False  # takes floats (the frontend makes integer arguments f32)
    vector: VectorLowering | None = None  # an elementwise op's vector instructions
    reduce_instr: str | None = None  # a reduction's VR* instruction
    row_kernel: bool = False  # a last-axis reduction a fused row kernel computes
    kernel: str = ""  # how the backend lowers an op that has no vector steps
    fuzz: Fuzz | None = None  # how the fuzz generator draws it
    doc: str = ""  # its line in docs/language.md
    verb: str = ""  # a binary op's verb in diagnostics ("cannot multiply ...")
    commutative: bool = False  # op(a, b) == op(b, a): CSE matches both orders
    int_math: Callable[[int], int] | None = None  # its value on a Python integer, exactly

    def flops(self, types: Types, result: TensorType, attrs: dict) -> int:
        """Floating-point (or integer) operations; shape ops cost none."""
        if self.flop_rule is not None:
            return self.flop_rule(types, result, attrs)
        return result.numel if self.fusion == "elementwise" else 0

    def bytes(self, types: Types, result: TensorType) -> int:
        """Bytes read and written if the op runs on its own (no fusion)."""
        return sum(t.nbytes for t in types) + result.nbytes


OPS: dict[str, OpDef] = {}
# `hook(op, present)` for every op registered (present) or removed: the frontend makes a
# builtin of each op its entry spells (compiler/frontend/builtins.py)
_REGISTER_HOOKS: list[Callable[[OpDef, bool], None]] = []


def _register(op: OpDef) -> None:
    OPS[op.name] = op
    for hook in _REGISTER_HOOKS:
        hook(op, True)


def register_op(op: OpDef) -> None:
    """Add an op to the table (how a new op is added: docs/internals.md, "How to add an
    op"); every layer that reads the table sees it, the frontend's builtins included."""
    if op.name in OPS:
        raise ValueError(f"op '{op.name}' is already defined")
    _register(op)


def unregister_op(name: str) -> None:
    """Remove an op `register_op` added (tests that define an op of their own)."""
    op = OPS.pop(name)
    for hook in _REGISTER_HOOKS:
        hook(op, False)


def on_register(hook: Callable[[OpDef, bool], None]) -> None:
    """Call `hook(op, True)` for every op in the table now and every one registered later,
    `hook(op, False)` for every one removed."""
    _REGISTER_HOOKS.append(hook)
    for op in list(OPS.values()):
        hook(op, True)


def fmt_type(t: TensorType) -> str:
    return str(t)


# --------------------------------------------------------------------------- helpers


def broadcast_shapes(a: tuple[int, ...], b: tuple[int, ...], what: str, ta=None, tb=None):
    """numpy broadcasting of two shapes; the error names both types and the differing dim."""
    rank = max(len(a), len(b))
    pa = (1,) * (rank - len(a)) + tuple(a)
    pb = (1,) * (rank - len(b)) + tuple(b)
    out = []
    for axis, (x, y) in enumerate(zip(pa, pb)):
        if x != y and x != 1 and y != 1:
            left = ta if ta is not None else f"[{','.join(map(str, a))}]"
            right = tb if tb is not None else f"[{','.join(map(str, b))}]"
            raise Diagnostic(f"cannot {what} {left} and {right}: dims {axis} differ ({x} vs {y})")
        out.append(max(x, y) if x != 1 else y)
    return tuple(out)


def reshape_groups(src: tuple[int, ...], dst: tuple[int, ...]):
    """Pairs of (source dims, destination dims) whose products match, in order."""
    groups, i, j = [], 0, 0
    while i < len(src) or j < len(dst):
        gi, gj = [], []
        a = b = 1
        while True:
            if a <= b and i < len(src):
                a *= src[i]
                gi.append(i)
                i += 1
            elif j < len(dst):
                b *= dst[j]
                gj.append(j)
                j += 1
            else:
                break
            if a == b and (i == len(src) or src[i] != 1) and (j == len(dst) or dst[j] != 1):
                break
        groups.append((gi, gj))
    return groups


def _norm_axis(axis: int, rank: int, t: TensorType | None = None) -> int:
    if not isinstance(axis, int) or isinstance(axis, bool) or not -rank <= axis < max(rank, 1):
        where = f" for {t}" if t is not None else ""
        raise Diagnostic(f"axis {axis} is out of range{where} (rank {rank})")
    return axis % rank if rank else 0


def _same_dtype(kind: str, types: Types) -> str:
    dtypes = {t.dtype for t in types}
    if len(dtypes) != 1:
        raise Diagnostic(f"{kind}: operands must have one dtype, got {', '.join(map(str, types))}")
    return types[0].dtype


def _check_arity(op: OpDef, types: Types) -> None:
    if op.arity is not None and len(types) != op.arity:
        raise Diagnostic(f"{op.name} takes {op.arity} operands, got {len(types)}")


def infer_type(kind: str, types: Types, attrs: dict) -> TensorType:
    """The result type of `kind` on operands `types` (raises Diagnostic without a span)."""
    op = OPS.get(kind)
    if op is None:
        raise Diagnostic(f"unknown op kind '{kind}'")
    _check_arity(op, types)
    missing = [a for a in op.attrs if a not in attrs]
    if missing:
        raise Diagnostic(f"{kind}: missing attribute {', '.join(missing)}")
    extra = [a for a in attrs if a not in op.attrs + op.optional_attrs]
    if extra:
        raise Diagnostic(f"{kind}: unknown attribute {', '.join(extra)}")
    try:
        return op.infer(types, attrs)
    except (TypeError, ValueError, IndexError, KeyError, AttributeError):
        # attributes of the wrong kind (only possible in hand-written Graph IR text)
        shown = ", ".join(f"{k}={v!r}" for k, v in attrs.items())
        raise Diagnostic(f"{kind}: malformed attributes {{{shown}}}") from None


# --------------------------------------------------------------------------- elementwise

@cache
def _erf_vectorized():
    return np.vectorize(math.erf, otypes=[np.float64])   # at first use: numpy is lazy


def _erf(x):
    return _erf_vectorized()(x)


def _gelu(x: np.ndarray, approximate: bool) -> np.ndarray:
    if approximate:
        # 0.5 x (1 + tanh(u)) = x sigmoid(2u): the same function without the cancellation
        # of 1 + tanh(u) for u < 0 (in f64 it is 0 from u = -19 on, gelu(-9) ~ -1e-28 is not)
        inner = np.sqrt(2.0 / np.pi) * (x + 0.044715 * x**3)
        e = np.exp(-2.0 * np.abs(inner))
        return np.where(inner >= 0, x / (1.0 + e), x * e / (1.0 + e))
    return 0.5 * x * (1.0 + _erf(x.astype(np.float64) / np.sqrt(2.0)).astype(x.dtype))


def _unary_rule(kind: str):
    def infer(types: Types, attrs: dict) -> TensorType:
        (t,) = types
        if kind == "gelu" and not isinstance(attrs.get("approximate"), bool):
            raise Diagnostic("gelu: 'approximate' must be true or false")
        if OPS[kind].float_only and not is_float(t.dtype):
            raise Diagnostic(f"{kind} needs a floating-point operand, got {t}")
        if t.dtype == "bool" and kind != "cast":
            raise Diagnostic(f"{kind} is not defined on bool ({t})")
        return t

    return infer


def _unary_ref(fn: Callable):
    return lambda xs, attrs: fn(xs[0])


def unary_op(name: str, fn: Callable, instr: str | tuple[Step, ...], doc: str, *,
             fuzz: str | Fuzz, float_only: bool = False, int_steps=None, attrs=(),
             attr_steps=(), params: str = "x", defaults=(),
             reference: Callable | None = None, int_math: Callable | None = None) -> OpDef:
    """An elementwise unary op's entry: numpy `fn` (or `reference(xs, attrs)`) is its
    semantics, `instr` the vector instruction computing it (or the steps of an expansion),
    `fuzz` the generator's template (`{x}`: an existing value), `doc` its line in the docs.
    `float_only`: integer arguments become f32 in the frontend, the op itself takes floats;
    `int_math`: its value on a Python integer (check-time math keeps an integer exact)."""
    steps = (Step(instr),) if isinstance(instr, str) else instr
    return OpDef(name, "elementwise", _unary_rule(name),
                 reference or _unary_ref(fn), attrs=attrs, float_only=float_only,
                 int_math=int_math,
                 frontend=Frontend(name, "unary", params, defaults),
                 vector=VectorLowering(steps, int_steps, attr_steps),
                 fuzz=fuzz if isinstance(fuzz, Fuzz) else Fuzz(fuzz), doc=doc)


_INT_IDENTITY = (Step("VCOPY"),)  # floor/ceil of an integer is the integer
# 0.5 x (1 + erf(x / sqrt 2)): gelu's erf form (it reads x after writing the result)
_GELU_ERF = (Step("VMUL", ("in0", 0.7071067811865476)), Step("VERF", (OUT,)),
             Step("VADD", (OUT, 1.0)), Step("VMUL", (OUT, "in0")), Step("VMUL", (OUT, 0.5)))

for _op in (
    unary_op("neg", _np("negative"), "VNEG", "-x", fuzz="neg({x})", int_math=lambda v: -v),
    unary_op("abs", _np("abs"), "VABS", "absolute value", fuzz="abs({x})", int_math=abs),
    unary_op("exp", _np("exp"), "VEXP", "e to the x", fuzz="exp(tanh({x}))", float_only=True),
    unary_op("log", _np("log"), "VLOG", "natural logarithm", fuzz="log(abs({x}) + 1.0)",
             float_only=True),
    unary_op("sqrt", _np("sqrt"), "VSQRT", "square root", fuzz="sqrt(abs({x}))", float_only=True),
    unary_op("rsqrt", lambda x: 1.0 / np.sqrt(x), "VRSQRT", "1 / sqrt(x)",
             fuzz="rsqrt(abs({x}) + 1.0)", float_only=True),
    unary_op("reciprocal", lambda x: 1.0 / x, "VRCP", "1 / x",
             fuzz="reciprocal(abs({x}) + 1.0)", float_only=True),
    unary_op("tanh", _np("tanh"), "VTANH", "hyperbolic tangent", fuzz="tanh({x})",
             float_only=True),
    unary_op("sigmoid", lambda x: 1.0 / (1.0 + np.exp(-x)), "VSIGM", "1 / (1 + exp(-x))",
             fuzz="sigmoid({x})", float_only=True),
    unary_op("relu", lambda x: np.maximum(x, np.zeros((), x.dtype)), "VRELU", "max(x, 0)",
             fuzz="relu({x})", int_math=lambda v: max(v, 0)),
    unary_op("erf", lambda x: _erf(x.astype(np.float64)).astype(x.dtype), "VERF",
             "the error function", fuzz="erf({x})", float_only=True),
    unary_op("sin", _np("sin"), "VSIN", "sine", fuzz="sin({x})", float_only=True),
    unary_op("cos", _np("cos"), "VCOS", "cosine", fuzz="cos({x})", float_only=True),
    unary_op("floor", _np("floor"), "VFLOOR", "round down (integers unchanged)",
             fuzz=Fuzz("floor({x})", inputs_only=True), int_steps=_INT_IDENTITY,
             int_math=lambda v: v),
    unary_op("ceil", _np("ceil"), "VCEIL", "round up (integers unchanged)",
             fuzz=Fuzz("ceil({x})", inputs_only=True), int_steps=_INT_IDENTITY,
             int_math=lambda v: v),
    unary_op("sign", _np("sign"), "VSIGN", "-1, 0 or 1 by the sign of x",
             fuzz=Fuzz("sign({x})", inputs_only=True), int_math=lambda v: (v > 0) - (v < 0)),
    unary_op("gelu", None, "VGELU",
             "0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))); `approximate=false`: "
             "0.5 x (1 + erf(x / sqrt 2))",
             fuzz="gelu({x})", float_only=True, attrs=("approximate",),
             attr_steps=(("approximate", False, _GELU_ERF),), params="x approximate",
             defaults=(("approximate", True),),
             reference=lambda xs, attrs: _gelu(xs[0], attrs["approximate"])),
):
    _register(_op)


def _cast_infer(types: Types, attrs: dict) -> TensorType:
    if attrs["dtype"] not in DTYPES:
        raise Diagnostic(f"cast: unknown dtype '{attrs['dtype']}'")
    return TensorType(attrs["dtype"], types[0].shape)


def _cast_ref(xs, attrs):
    x = xs[0]
    target = attrs["dtype"]
    if is_int(target) and np.issubdtype(x.dtype, np.floating):
        # float -> int truncates toward zero (as C, numpy and JAX); NaN/inf become 0/limits
        # (in f64, where every i32 limit is exact: f32 would round 2147483647 up to 2**31)
        info = np.iinfo(np_dtype(target))
        x = np.trunc(x.astype(np.float64))
        x = np.clip(np.nan_to_num(x, nan=0.0, posinf=info.max, neginf=info.min),
                    info.min, info.max)
    return x.astype(np_dtype(target))


_register(OpDef("cast", "elementwise", _cast_infer, _cast_ref, attrs=("dtype",),
                frontend=Frontend("cast", "special", "x dtype"),
                vector=VectorLowering((Step("VCOPY", dtype="target"),)),
                fuzz=Fuzz(step="cast"),
                doc="convert to `dtype` (float to int truncates toward zero and saturates, "
                    "NaN to 0; int to a narrower int wraps)"))



def _div_ref(xs, attrs):
    a, b = xs
    if np.issubdtype(a.dtype, np.integer):
        safe = np.where(b == 0, 1, b)
        return np.where(b == 0, 0, np.floor_divide(a, safe))
    return a / b


def _pow_ref(xs, attrs):
    a, b = xs
    if np.issubdtype(a.dtype, np.integer):
        # a negative power is 1 / a**-b truncated toward zero: 1 for a = 1, +-1 for a = -1,
        # and 0 otherwise (0 for a = 0 too: integer division by zero gives 0)
        a, b = np.broadcast_arrays(a, b)
        negative = b < 0
        inverse = np.where(a == 1, 1, np.where(a == -1, np.where(b % 2 == 0, 1, -1), 0))
        return np.where(negative, inverse, np.power(a, np.where(negative, 0, b))).astype(a.dtype)
    return np.power(a, b)


def _binary_rule(kind: str):
    def infer(types: Types, attrs: dict) -> TensorType:
        a, b = types
        verb = OPS[kind].verb
        shape = broadcast_shapes(a.shape, b.shape, verb, str(a), str(b))
        if a.dtype != b.dtype:
            raise Diagnostic(f"cannot {verb} {a} and {b}: dtypes differ")
        if a.dtype == "bool" and kind not in ("eq", "ne", "maximum", "minimum"):
            raise Diagnostic(f"cannot {verb} bool tensors ({a} and {b})")
        return TensorType("bool" if kind in COMPARISONS else a.dtype, shape)

    return infer


def binary_op(name: str, verb: str, reference: Callable, instr: str, doc: str, *,
              fuzz: str | Fuzz,
              builtin: str | None = None, operator: str | None = None, cond=None,
              int_steps=None, int_temps=(), commutative: bool = False) -> OpDef:
    """An elementwise binary op's entry (numpy broadcasting; operands of one dtype): the
    verb of its diagnostics ("cannot multiply f32[2] and f32[3]"), `reference(xs, attrs)`,
    its vector instruction `instr` (VCMP with condition `cond` for a comparison, whose
    result is bool), the integer expansion when it differs, the builtin name and/or infix
    operator, the fuzz template (`{a}`, `{b}`), the doc line and whether it commutes."""
    step = Step(instr, ("in0", "in1"), cond=cond)
    form = "binary" if builtin else "operator"
    return OpDef(name, "elementwise", _binary_rule(name), reference, arity=2, verb=verb,
                 commutative=commutative,
                 frontend=Frontend(builtin, form, "a b" if builtin else "", (), operator),
                 vector=VectorLowering((step,), int_steps, (), int_temps,
                                       "bool" if cond else "value"),
                 fuzz=fuzz if isinstance(fuzz, Fuzz) else Fuzz(fuzz), doc=doc)


# integer division: floor division giving 0 (not a trap) where the divisor is 0; it rewrites
# the divisor in place (a tile, never an immediate)
_INT_DIV = (Step("VCMP", ("in1", 0.0), "zero", cond="eq"),
            Step("VSEL", ("zero", 1.0, "in1"), "in1"),
            Step("VDIV", ("in0", "in1")),
            Step("VSEL", ("zero", 0.0, OUT)))
# no integer VPOW: f32 (exact while results stay below 2^24); the store's cast truncates a
# negative power toward zero (2 ** -1 -> 0, (-1) ** -3 -> -1); a zero base takes the
# exponent n * n (0 ** n is 1 for n = 0, else 0, never inf)
_INT_POW = (Step("VCMP", ("in0", 0.0), "zero", cond="eq", dtype="f32"),
            Step("VMUL", ("in1", "in1"), dtype="f32"),
            Step("VSEL", ("zero", OUT, "in1"), "in1", dtype="f32"),
            Step("VPOW", ("in0", "in1"), dtype="f32"))
_ZERO_MASK = (("zero", "bool"),)

for _op in (
    binary_op("add", "add", lambda xs, attrs: xs[0] + xs[1], "VADD", "a + b", operator="+",
              fuzz="{a} + {b}", commutative=True),
    binary_op("sub", "subtract", lambda xs, attrs: xs[0] - xs[1], "VSUB", "a - b",
              operator="-", fuzz="{a} - {b}"),
    binary_op("mul", "multiply", lambda xs, attrs: xs[0] * xs[1], "VMUL", "a * b",
              operator="*", fuzz="{a} * {b}", commutative=True),
    binary_op("div", "divide", _div_ref, "VDIV",
              "a / b (integers: floor division, 0 where b is 0)", operator="/",
              fuzz="{a} / (abs({b}) + 1.0)", int_steps=_INT_DIV, int_temps=_ZERO_MASK),
    binary_op("pow", "raise", _pow_ref, "VPOW",
              "a to the power b (integers: a negative power truncates toward zero)",
              builtin="pow", operator="**", fuzz="pow(abs({a}) + 0.5, tanh({b}))",
              int_steps=_INT_POW, int_temps=_ZERO_MASK),
    binary_op("maximum", "take the maximum of", lambda xs, attrs: np.maximum(xs[0], xs[1]),
              "VMAX", "the larger of a and b (NaN propagates)", builtin="maximum",
              fuzz="maximum({a}, {b})", commutative=True),
    binary_op("minimum", "take the minimum of", lambda xs, attrs: np.minimum(xs[0], xs[1]),
              "VMIN", "the smaller of a and b (NaN propagates)", builtin="minimum",
              fuzz="minimum({a}, {b})", commutative=True),
    binary_op("lt", "compare", lambda xs, attrs: xs[0] < xs[1], "VCMP", "a < b (bool)",
              operator="<", cond="lt", fuzz="where({a} < {b}, {b}, {a})"),
    binary_op("le", "compare", lambda xs, attrs: xs[0] <= xs[1], "VCMP", "a <= b (bool)",
              operator="<=", cond="le", fuzz="where({a} <= {b}, {b}, {a})"),
    binary_op("gt", "compare", lambda xs, attrs: xs[0] > xs[1], "VCMP", "a > b (bool)",
              operator=">", cond="gt", fuzz=Fuzz(step="integer")),
    binary_op("ge", "compare", lambda xs, attrs: xs[0] >= xs[1], "VCMP", "a >= b (bool)",
              operator=">=", cond="ge", fuzz=Fuzz(step="attention")),
    binary_op("eq", "compare", lambda xs, attrs: xs[0] == xs[1], "VCMP", "a == b (bool)",
              operator="==", cond="eq", fuzz=Fuzz(step="integer"), commutative=True),
    binary_op("ne", "compare", lambda xs, attrs: xs[0] != xs[1], "VCMP", "a != b (bool)",
              operator="!=", cond="ne", fuzz=Fuzz(step="integer"), commutative=True),
):
    _register(_op)
COMPARISONS = tuple(name for name, op in OPS.items()
                    if op.vector is not None and op.vector.result == "bool")


def _where_infer(types: Types, attrs: dict) -> TensorType:
    c, a, b = types
    if c.dtype != "bool":
        raise Diagnostic(f"where: the condition must be bool, got {c}")
    if a.dtype != b.dtype:
        raise Diagnostic(f"where: branches must have one dtype, got {a} and {b}")
    shape = broadcast_shapes(c.shape, a.shape, "select with", str(c), str(a))
    shape = broadcast_shapes(shape, b.shape, "select with", str(TensorType(a.dtype, shape)), str(b))
    return TensorType(a.dtype, shape)


_register(OpDef("where", "elementwise", _where_infer,
                lambda xs, attrs: np.where(xs[0], xs[1], xs[2]), arity=3,
                frontend=Frontend("where", "special", "cond a b"),
                vector=VectorLowering((Step("VSEL", ("in0", "in1", "in2")),)),
                fuzz=Fuzz("where({a} > {b}, {a}, {b})"),
                doc="a where cond else b (cond bool, all three broadcast)"))

# --------------------------------------------------------------------------- reductions


def _reduce_rule(kind: str):
    def infer(types: Types, attrs: dict) -> TensorType:
        (t,) = types
        axes = attrs["axes"]
        if not isinstance(axes, tuple) or not axes:
            raise Diagnostic(f"{kind}: axes must be a non-empty tuple")
        norm = [_norm_axis(a, t.rank, t) for a in axes]
        if len(set(norm)) != len(norm) or tuple(norm) != axes:
            raise Diagnostic(f"{kind}: axes {axes} must be sorted, distinct and non-negative")
        if kind == "argmax" and len(axes) != 1:
            raise Diagnostic("argmax reduces exactly one axis")
        if t.dtype == "bool" and kind != "argmax":
            raise Diagnostic(f"{kind} is not defined on bool ({t})")
        if attrs["keepdims"]:
            shape = tuple(1 if i in axes else d for i, d in enumerate(t.shape))
        else:
            shape = tuple(d for i, d in enumerate(t.shape) if i not in axes)
        return TensorType("i32" if kind == "argmax" else t.dtype, shape)

    return infer


def _argmax_ref(xs, attrs):
    (axis,) = attrs["axes"]
    out = np.argmax(xs[0], axis=axis)
    if attrs["keepdims"]:
        out = np.expand_dims(out, axis)
    return out


def _reduce_flops(types, result, attrs):
    return types[0].numel


def _reduce_ref(fn: Callable):
    return lambda xs, attrs: fn(xs[0], axis=attrs["axes"], keepdims=attrs["keepdims"])


def reduce_op(name: str, builtin: str, reference: Callable, instr: str, doc: str, *,
              row_kernel: bool, fuzz: Fuzz) -> OpDef:
    """A reduction's entry: `reference(xs, attrs)`, the `.zt` builtin, the VR* instruction
    of its reduce nests, whether a fused row kernel computes it (a last-axis reduction with
    keepdims joins the kernel producing its input), the fuzz step and the doc line."""
    return OpDef(name, "reduce", _reduce_rule(name), reference, attrs=("axes", "keepdims"),
                 flop_rule=_reduce_flops, reduce_instr=instr, row_kernel=row_kernel,
                 frontend=Frontend(builtin, "reduce" if name != "argmax" else "special",
                                   "x axis keepdims", (("axis", None), ("keepdims", False))),
                 fuzz=fuzz, doc=doc)


for _op in (
    reduce_op("reduce_sum", "sum", _reduce_ref(_np("sum")), "VRSUM", "the sum over `axis`",
              row_kernel=True, fuzz=Fuzz(step="reduce")),
    reduce_op("reduce_max", "max", _reduce_ref(_np("max")), "VRMAX",
              "the maximum over `axis` (NaN propagates)", row_kernel=True,
              fuzz=Fuzz(step="reduce")),
    reduce_op("reduce_min", "min", _reduce_ref(_np("min")), "VRMIN",
              "the minimum over `axis` (NaN propagates)", row_kernel=True,
              fuzz=Fuzz(step="reduce")),
    reduce_op("reduce_prod", "prod", _reduce_ref(_np("prod")), "VRPROD", "the product over `axis`",
              row_kernel=False, fuzz=Fuzz(step="reduce", operand="1.0 + 0.01 * tanh({x})")),
    reduce_op("argmax", "argmax", _argmax_ref, "VRARGMAX",
              "the index (i32) of the first maximum along one axis (the first NaN wins)",
              row_kernel=False, fuzz=Fuzz(step="argmax")),
):
    _register(_op)

# --------------------------------------------------------------------------- contraction


def _matmul_infer(types: Types, attrs: dict) -> TensorType:
    a, b = types
    if a.rank < 2 or b.rank < 2:
        raise Diagnostic(f"matmul operands must have rank >= 2, got {a} and {b}")
    if a.dtype != b.dtype:
        raise Diagnostic(f"cannot multiply (@) {a} and {b}: dtypes differ")
    if a.dtype == "bool":
        raise Diagnostic(f"cannot multiply (@) bool tensors ({a} and {b})")
    if a.shape[-1] != b.shape[-2]:
        raise Diagnostic(f"cannot multiply (@) {a} and {b}: contracted dims differ "
                         f"({a.shape[-1]} vs {b.shape[-2]})")
    batch = broadcast_shapes(a.shape[:-2], b.shape[:-2], "multiply (@)", str(a), str(b))
    return TensorType(result_dtype(a.dtype, attrs.get("acc"), "matmul"),
                      batch + (a.shape[-2], b.shape[-1]))


# The accumulation/result dtypes a product of each operand dtype may ask for with `acc`
# (JAX's preferred_element_type): the operands' own dtype or a wider one of the same kind.
ACC_DTYPES = {"i8": ("i8", "i32"), "i32": ("i32",), "fp8": ("fp8", "bf16", "f16", "f32"),
              "bf16": ("bf16", "f32"), "f16": ("f16", "f32"), "f32": ("f32",)}


def result_dtype(in_dtype: str, acc: str | None, kind: str) -> str:
    """The result dtype of a product of `in_dtype` operands with accumulation dtype `acc`
    (None: the operands' dtype); Diagnostic for a combination it cannot be."""
    if acc is None:
        return in_dtype
    allowed = ACC_DTYPES.get(in_dtype, ())
    if acc not in allowed:
        wanted = (f"one of {', '.join(allowed)}" if len(allowed) > 1 else allowed[0]
                  if allowed else "none")
        raise Diagnostic(f"{kind}: acc={acc} is not an accumulation dtype for {in_dtype} "
                         f"operands (allowed: {wanted})")
    return acc


def _product_ref(compute, *xs, terms: int = 1):
    """A product exactly as the chip's MX computes it: integers in wrapping 32-bit arithmetic
    (int64 here, wrapped when the evaluator casts to the result dtype: the same residues),
    floats accumulated in f32. Integer sums that stay below 2^53 (`terms` products of the
    largest magnitudes: any i8 product) are exact in f64, where numpy uses BLAS."""
    if np.issubdtype(xs[0].dtype, np.integer):
        wide = [x.astype(np.int64) for x in xs]
        bound = float(terms)
        for x in wide:
            bound *= float(np.max(np.abs(x), initial=0))
        if bound < 2.0 ** 53:
            return compute(*[x.astype(np.float64) for x in wide]).astype(np.int64)
        return compute(*wide)
    return compute(*[x.astype(np.float32) for x in xs])


def _matmul_ref(xs, attrs):
    return _product_ref(np.matmul, *xs, terms=xs[0].shape[-1])


def _matmul_flops(types, result, attrs):
    return 2 * result.numel * types[0].shape[-1]


_register(OpDef("matmul", "contraction", _matmul_infer, _matmul_ref, arity=2,
                optional_attrs=("acc",), flop_rule=_matmul_flops,
                frontend=Frontend("matmul", "special", "a b acc", (("acc", None),), "@"),
                kernel="a matmul nest: MMA tiles accumulating in ACC (compiler/backend/gemm.py)",
                fuzz=Fuzz(step="matmul"),
                doc="the matrix product, batched with numpy broadcasting (`a @ b`); `acc`: "
                    "the accumulation and result dtype"))

# --------------------------------------------------------------------------- shape


def _reshape_infer(types: Types, attrs: dict) -> TensorType:
    (t,) = types
    shape = attrs["shape"]
    if not all(isinstance(d, int) and d >= 1 for d in shape):
        raise Diagnostic(f"reshape: bad target shape {list(shape)}")
    if prod(shape) != t.numel:
        raise Diagnostic(f"cannot reshape {t} ({t.numel} elements) to {list(shape)} "
                         f"({prod(shape)} elements)")
    return TensorType(t.dtype, tuple(shape))


def _transpose_infer(types: Types, attrs: dict) -> TensorType:
    (t,) = types
    perm = attrs["perm"]
    if sorted(perm) != list(range(t.rank)):
        raise Diagnostic(f"transpose: {list(perm)} is not a permutation of the {t.rank} axes "
                         f"of {t}")
    return TensorType(t.dtype, tuple(t.shape[p] for p in perm))


def _broadcast_to_infer(types: Types, attrs: dict) -> TensorType:
    (t,) = types
    shape = tuple(attrs["shape"])
    if len(shape) < t.rank:
        raise Diagnostic(f"cannot broadcast {t} to {list(shape)}: fewer dims")
    padded = (1,) * (len(shape) - t.rank) + t.shape
    for axis, (src, dst) in enumerate(zip(padded, shape)):
        if src != dst and src != 1:
            raise Diagnostic(f"cannot broadcast {t} to {list(shape)}: dims {axis} differ "
                             f"({src} vs {dst})")
    return TensorType(t.dtype, shape)


def _slice_infer(types: Types, attrs: dict) -> TensorType:
    (t,) = types
    starts, stops, steps = attrs["starts"], attrs["stops"], attrs["steps"]
    if not len(starts) == len(stops) == len(steps) == t.rank:
        raise Diagnostic(f"slice: starts, stops and steps need {t.rank} entries for {t}")
    shape = []
    for axis, (lo, hi, step, dim) in enumerate(zip(starts, stops, steps, t.shape)):
        if step < 1 or not 0 <= lo < hi <= dim:
            raise Diagnostic(f"slice: bad range {lo}:{hi}:{step} for axis {axis} of {t}")
        shape.append((hi - lo + step - 1) // step)
    return TensorType(t.dtype, tuple(shape))


def _slice_ref(xs, attrs):
    index = tuple(slice(a, b, c) for a, b, c in
                  zip(attrs["starts"], attrs["stops"], attrs["steps"]))
    return xs[0][index]


def _concat_infer(types: Types, attrs: dict) -> TensorType:
    if not types:
        raise Diagnostic("concat needs at least one tensor")
    first = types[0]
    axis = attrs["axis"]
    if not isinstance(axis, int) or not 0 <= axis < first.rank:
        raise Diagnostic(f"concat: axis {axis} is out of range for {first} (rank {first.rank})")
    total = 0
    for t in types:
        if t.dtype != first.dtype:
            raise Diagnostic(f"cannot concatenate {first} and {t}: dtypes differ")
        if t.rank != first.rank:
            raise Diagnostic(f"cannot concatenate {first} and {t}: ranks differ")
        for i, (x, y) in enumerate(zip(first.shape, t.shape)):
            if i != axis and x != y:
                raise Diagnostic(f"cannot concatenate {first} and {t}: dims {i} differ "
                                 f"({x} vs {y})")
        total += t.shape[axis]
    shape = list(first.shape)
    shape[axis] = total
    return TensorType(first.dtype, tuple(shape))


def _pad_infer(types: Types, attrs: dict) -> TensorType:
    (t,) = types
    pads = attrs["pads"]
    if len(pads) != t.rank or not all(len(p) == 2 and p[0] >= 0 and p[1] >= 0 for p in pads):
        raise Diagnostic(f"pad: need one non-negative [lo, hi] pair per axis of {t}, "
                         f"got {[list(p) for p in pads]}")
    if isinstance(attrs["value"], bool) or not isinstance(attrs["value"], (int, float)):
        raise Diagnostic(f"pad: the value must be a number, got {attrs['value']!r}")
    return TensorType(t.dtype, tuple(d + lo + hi for d, (lo, hi) in zip(t.shape, pads)))


def _pad_ref(xs, attrs):
    x = xs[0]
    value = attrs["value"]
    if np.issubdtype(x.dtype, np.integer) and isinstance(value, float) and math.isinf(value):
        info = np.iinfo(x.dtype)
        value = info.max if value > 0 else info.min
    return np.pad(x, attrs["pads"], constant_values=value)


_VIEW = "a view: a strided DMA descriptor, no kernel (a copy when it cannot be one)"
_register(OpDef("reshape", "injective", _reshape_infer,
                lambda xs, attrs: xs[0].reshape(attrs["shape"]), attrs=("shape",),
                frontend=Frontend("reshape", "special", "x shape"), kernel=_VIEW,
                fuzz=Fuzz(step="reshape"), doc="the same elements in `shape`"))
_register(OpDef("transpose", "injective", _transpose_infer,
                lambda xs, attrs: np.transpose(xs[0], attrs["perm"]), attrs=("perm",),
                frontend=Frontend("transpose", "special", "x perm"), kernel=_VIEW,
                fuzz=Fuzz(step="transpose"), doc="the axes permuted by `perm`"))
_register(OpDef("broadcast_to", "broadcast", _broadcast_to_infer,
                lambda xs, attrs: np.broadcast_to(xs[0], attrs["shape"]), attrs=("shape",),
                frontend=Frontend("broadcast_to", "special", "x shape"), kernel=_VIEW,
                fuzz=Fuzz(step="broadcast"), doc="numpy broadcasting to `shape`"))
_register(OpDef("slice", "injective", _slice_infer, _slice_ref,
                attrs=("starts", "stops", "steps"),
                frontend=Frontend(None, "special", operator="x[a:b:c]"), kernel=_VIEW,
                fuzz=Fuzz(step="slice"), doc="`x[a:b:c, ...]`, positive steps"))
_register(OpDef("concat", "injective", _concat_infer,
                lambda xs, attrs: np.concatenate(xs, axis=attrs["axis"]), attrs=("axis",),
                arity=None, frontend=Frontend("concat", "special", "xs axis"),
                kernel="one copy nest per operand into its slice of the result",
                fuzz=Fuzz(step="concat"), doc="the operands joined along `axis`"))
_register(OpDef("pad", "injective", _pad_infer, _pad_ref, attrs=("pads", "value"),
                frontend=Frontend("pad", "special", "x pads value"),
                kernel="a copy nest whose loads read `value` outside the source",
                fuzz=Fuzz(step="pad"), doc="`value` added before and after each axis"))


def _shard_infer(types: Types, attrs: dict) -> TensorType:
    (t,) = types
    if len(attrs["axes"]) != t.rank:
        raise Diagnostic(f"shard: {len(attrs['axes'])} entries for {t}, which has rank {t.rank}")
    return t


# `shard(x, "_, tp")`: pins a value's sharding over the mesh (compiler/shard/); the value
# itself is unchanged (a one-chip compile drops it)
_register(OpDef("shard", "injective", _shard_infer, lambda xs, attrs: xs[0], attrs=("axes",),
                frontend=Frontend("shard", "special", "x spec"),
                kernel="none: the sharding pass consumes it (a one-chip compile drops it)",
                fuzz=Fuzz(not_drawn="a one-chip program drops it; many-chip fuzzing splits "
                          "parameters instead (compiler/fuzz/generator.py, add_shardings)"),
                doc="pins a value's sharding over the mesh; the value is unchanged"))

# --------------------------------------------------------------------------- creation


def _constant_infer(types: Types, attrs: dict) -> TensorType:
    dtype, shape, value = attrs["dtype"], tuple(attrs["shape"]), attrs["value"]
    if dtype not in DTYPES:
        raise Diagnostic(f"constant: unknown dtype '{dtype}'")
    if not isinstance(value, (int, float, bool)):
        raise Diagnostic(f"constant: value must be a number, got {value!r}")
    if not all(isinstance(d, int) and d >= 1 for d in shape):
        raise Diagnostic(f"constant: bad shape {list(shape)}")
    if is_int(dtype) and not isinstance(value, bool):
        info = np.iinfo(np_dtype(dtype))
        if isinstance(value, float) or not info.min <= value <= info.max:
            raise Diagnostic(f"{value} is not a value of {dtype} ({info.min}..{info.max})")
    return TensorType(dtype, shape)


def _constant_ref(xs, attrs):
    return np.full(attrs["shape"], attrs["value"], dtype=np_dtype(attrs["dtype"]))


def _iota_infer(types: Types, attrs: dict) -> TensorType:
    n, dtype = attrs["n"], attrs["dtype"]
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise Diagnostic(f"iota: n must be a positive integer, got {n!r}")
    if dtype not in DTYPES or dtype == "bool":
        raise Diagnostic(f"iota: bad dtype '{dtype}'")
    return TensorType(dtype, (n,))


_register(OpDef("constant", "elementwise", _constant_infer, _constant_ref,
                attrs=("value", "dtype", "shape"), arity=0, flop_rule=lambda *a: 0,
                frontend=Frontend("full", "special", "shape value dtype"),
                kernel="an immediate of its users' instructions, else a VDUP map nest",
                fuzz=Fuzz(step="creation"),
                doc="a splat of `value` (numbers, `zeros`, `ones`, `full`)"))
_register(OpDef("iota", "elementwise", _iota_infer,
                lambda xs, attrs: np.arange(attrs["n"]).astype(np_dtype(attrs["dtype"])),
                attrs=("n", "dtype"), arity=0, flop_rule=lambda *a: 0,
                frontend=Frontend("arange", "special", "start stop step dtype"),
                kernel="a VIOTA map nest", fuzz=Fuzz(step="creation"),
                doc="0, 1, ..., n - 1 (`arange`)"))

# --------------------------------------------------------------------------- composites
# Kept as single ops until `decompose` so that the reference evaluator and the fuser see
# them whole; each has one decomposition rule in compiler/passes/decompose.py.


def _pair(value, what: str) -> tuple[int, int]:
    if isinstance(value, int):
        return value, value
    if isinstance(value, tuple) and len(value) == 2 and all(isinstance(v, int) for v in value):
        return value
    raise Diagnostic(f"{what} must be an int or a pair of ints, got {value!r}")


def conv_out_size(size: int, kernel: int, stride: int, lo: int, hi: int, dilation: int) -> int:
    """Output length of a window sweep (floor mode)."""
    span = dilation * (kernel - 1) + 1
    return (size + lo + hi - span) // stride + 1


def _window_check(kind, t: TensorType, kernel, strides, pads, dilation):
    for name, pair, low in (("kernel", kernel, 1), ("stride", strides, 1),
                            ("dilation", dilation, 1)):
        if any(v < low for v in pair):
            raise Diagnostic(f"{kind}: {name} must be positive, got {list(pair)}")
    if any(p < 0 for pp in pads for p in pp):
        raise Diagnostic(f"{kind}: padding must be non-negative, got {[list(p) for p in pads]}")
    out = []
    for axis in range(2):
        size = conv_out_size(t.shape[2 + axis], kernel[axis], strides[axis], *pads[axis],
                             dilation[axis])
        if size < 1:
            raise Diagnostic(f"{kind}: the window ({kernel[axis]}, dilation {dilation[axis]}) "
                             f"does not fit axis {2 + axis} of {t} with padding "
                             f"{list(pads[axis])}")
        out.append(size)
    return tuple(out)


def _conv2d_infer(types: Types, attrs: dict) -> TensorType:
    x, w = types
    if x.rank != 4 or w.rank != 4:
        raise Diagnostic(f"conv2d: expected x as NCHW and w as OIHW (rank 4), got {x} and {w}")
    if x.dtype != w.dtype:
        raise Diagnostic(f"conv2d: operands must have one dtype, got {x} and {w}")
    groups = attrs["groups"]
    n, c, _, _ = x.shape
    o, cg, kh, kw = w.shape
    if groups < 1 or c % groups or o % groups:
        raise Diagnostic(f"conv2d: groups={groups} must divide the input channels ({c}) and "
                         f"the output channels ({o})")
    if c // groups != cg:
        raise Diagnostic(f"conv2d: {x} with groups={groups} needs w with {c // groups} input "
                         f"channels per group, got {w}: dims 1 differ ({cg} vs {c // groups})")
    oh, ow = _window_check("conv2d", x, (kh, kw), attrs["strides"], attrs["pads"],
                           attrs["dilation"])
    return TensorType(x.dtype, (n, o, oh, ow))


def _windows(x: np.ndarray, kernel, strides, dilation, out):
    """Yield (kh, kw, view) for every kernel tap: x[..., kh*dh + sh*i, kw*dw + sw*j]."""
    for i in range(kernel[0]):
        for j in range(kernel[1]):
            hs = i * dilation[0]
            ws = j * dilation[1]
            yield i, j, x[:, :, hs:hs + strides[0] * (out[0] - 1) + 1:strides[0],
                          ws:ws + strides[1] * (out[1] - 1) + 1:strides[1]]


def _conv2d_ref(xs, attrs):
    x, w = xs
    acc = np.float32 if np.issubdtype(x.dtype, np.floating) else np.int32
    x = np.pad(x.astype(acc), ((0, 0), (0, 0)) + tuple(attrs["pads"]))
    w = w.astype(acc)
    groups = attrs["groups"]
    o, cg, kh, kw = w.shape
    n = x.shape[0]
    out_hw = (conv_out_size(x.shape[2], kh, attrs["strides"][0], 0, 0, attrs["dilation"][0]),
              conv_out_size(x.shape[3], kw, attrs["strides"][1], 0, 0, attrs["dilation"][1]))
    og = o // groups
    result = np.zeros((n, o) + out_hw, dtype=acc)
    for i, j, view in _windows(x, (kh, kw), attrs["strides"], attrs["dilation"], out_hw):
        for g in range(groups):
            patch = view[:, g * cg:(g + 1) * cg]  # n, cg, oh, ow
            weight = w[g * og:(g + 1) * og, :, i, j]  # og, cg
            result[:, g * og:(g + 1) * og] += np.einsum("nchw,oc->nohw", patch, weight)
    return result


def _conv2d_flops(types, result, attrs):
    _, cg, kh, kw = types[1].shape
    return 2 * result.numel * cg * kh * kw


def _pool_infer(kind):
    def infer(types: Types, attrs: dict) -> TensorType:
        (x,) = types
        if x.rank != 4:
            raise Diagnostic(f"{kind}: expected x as NCHW (rank 4), got {x}")
        if x.dtype == "bool":
            raise Diagnostic(f"{kind} is not defined on bool ({x})")
        if kind == "avgpool2d" and not is_float(x.dtype):
            raise Diagnostic(f"avgpool2d needs a floating-point operand, got {x}")
        out = _window_check(kind, x, attrs["kernel"], attrs["strides"], attrs["pads"], (1, 1))
        for axis in range(2):
            if max(attrs["pads"][axis]) >= attrs["kernel"][axis]:
                raise Diagnostic(f"{kind}: padding {list(attrs['pads'][axis])} must be smaller "
                                 f"than the kernel ({attrs['kernel'][axis]})")
        return TensorType(x.dtype, x.shape[:2] + out)

    return infer


def window_fill(kind: str, dtype: str) -> float | None:
    """What a window op's own padding fills with: conv2d zeros, maxpool2d the lowest value
    (-inf for floats); None for avgpool2d, whose padding is left out of its count."""
    if kind == "conv2d":
        return 0.0
    if kind == "maxpool2d":
        return float(limits(dtype)[0])   # as _pool_ref pads
    return None


def _pool_ref(kind):
    def ref(xs, attrs):
        x = xs[0]
        kernel, strides, pads = attrs["kernel"], attrs["strides"], attrs["pads"]
        out = tuple(conv_out_size(x.shape[2 + a], kernel[a], strides[a], *pads[a], 1)
                    for a in range(2))
        if kind == "maxpool2d":
            low = -np.inf if np.issubdtype(x.dtype, np.floating) else np.iinfo(x.dtype).min
            padded = np.pad(x, ((0, 0), (0, 0)) + tuple(pads), constant_values=low)
            return np.max(np.stack([v for _, _, v in _windows(padded, kernel, strides, (1, 1),
                                                              out)]), axis=0)
        padded = np.pad(x, ((0, 0), (0, 0)) + tuple(pads))
        ones = np.pad(np.ones((1, 1) + x.shape[2:], x.dtype), ((0, 0), (0, 0)) + tuple(pads))
        total = sum(v for _, _, v in _windows(padded, kernel, strides, (1, 1), out))
        count = sum(v for _, _, v in _windows(ones, kernel, strides, (1, 1), out))
        return total / count

    return ref


def _pool_flops(types, result, attrs):
    return result.numel * attrs["kernel"][0] * attrs["kernel"][1]


def parse_einsum(spec: str, ranks: list[int]) -> tuple[list[str], str]:
    """Split an einsum spec into operand subscripts and the output subscript (implicit mode:
    the letters used once, sorted). Raises Diagnostic on a malformed spec."""
    if not isinstance(spec, str):
        raise Diagnostic(f"einsum: the spec must be a string, got {spec!r}")
    text = spec.replace(" ", "")
    lhs, arrow, rhs = text.partition("->")
    inputs = lhs.split(",")
    for part in inputs + ([rhs] if arrow else []):
        bad = [ch for ch in part if not ch.isalpha()]
        if bad:
            raise Diagnostic(f"einsum: '{bad[0]}' in \"{spec}\" is not a subscript letter "
                             "(ellipsis is not supported)")
    if len(inputs) != len(ranks):
        raise Diagnostic(f"einsum: \"{spec}\" names {len(inputs)} operands, got {len(ranks)}")
    for part, rank in zip(inputs, ranks):
        if len(part) != rank:
            raise Diagnostic(f"einsum: subscripts '{part}' need an operand of rank {len(part)}, "
                             f"got rank {rank}")
    if not arrow:
        letters = "".join(inputs)
        rhs = "".join(sorted(ch for ch in set(letters) if letters.count(ch) == 1))
    if len(set(rhs)) != len(rhs):
        raise Diagnostic(f"einsum: output subscripts '{rhs}' repeat a letter")
    used = set("".join(inputs))
    for ch in rhs:
        if ch not in used:
            raise Diagnostic(f"einsum: output letter '{ch}' appears in no operand")
    for part in inputs:
        if len(set(part)) != len(part):
            raise Diagnostic(f"einsum: repeated letters in one operand ('{part}', a diagonal) "
                             "are not supported")
    return inputs, rhs


def einsum_sizes(inputs: list[str], types: Types) -> dict[str, int]:
    """Letter -> size over the operands; a letter with two sizes is a Diagnostic."""
    sizes: dict[str, int] = {}
    for part, t in zip(inputs, types):
        for axis, (ch, dim) in enumerate(zip(part, t.shape)):
            if sizes.setdefault(ch, dim) != dim:
                raise Diagnostic(f"einsum: letter '{ch}' is {sizes[ch]} in one operand and "
                                 f"{dim} in {t} (dim {axis})")
    return sizes


def _einsum_infer(types: Types, attrs: dict) -> TensorType:
    if len(types) not in (1, 2):
        raise Diagnostic(f"einsum op takes 1 or 2 operands, got {len(types)}")
    inputs, out = parse_einsum(attrs["spec"], [t.rank for t in types])
    if len({t.dtype for t in types}) != 1:
        raise Diagnostic(f"einsum: operands must have one dtype, got {', '.join(map(str, types))}")
    if types[0].dtype == "bool":
        raise Diagnostic("einsum is not defined on bool")
    sizes = einsum_sizes(inputs, types)
    return TensorType(result_dtype(types[0].dtype, attrs.get("acc"), "einsum"),
                      tuple(sizes[ch] for ch in out))


def _einsum_ref(xs, attrs):
    inputs, _ = parse_einsum(attrs["spec"], [x.ndim for x in xs])
    summed = einsum_sizes(inputs, tuple(TensorType("f32", x.shape) for x in xs))
    return _product_ref(lambda *ys: np.einsum(attrs["spec"], *ys), *xs,
                        terms=prod(summed.values()))


def _einsum_flops(types, result, attrs):
    inputs, _ = parse_einsum(attrs["spec"], [t.rank for t in types])
    sizes = einsum_sizes(inputs, types)
    return 2 * prod(sizes.values()) if len(types) == 2 else types[0].numel


_DECOMPOSED = "decomposed into primitives by compiler/passes/decompose.py"
_register(OpDef("conv2d", "contraction", _conv2d_infer, _conv2d_ref,
                attrs=("strides", "pads", "dilation", "groups"), arity=2, primitive=False,
                flop_rule=_conv2d_flops,
                frontend=Frontend("conv2d", "special", "x w stride padding dilation groups"),
                kernel="one implicit-GEMM kernel at -O1/-O2 where that lowering claims it "
                "(compiler/backend/conv.py); else " + _DECOMPOSED + " (im2col)",
                fuzz=Fuzz(step="conv"), doc="2-D convolution, x NCHW, w OIHW"))
for _kind, _doc in (("maxpool2d", "the maximum over each window (padding never wins)"),
                    ("avgpool2d", "the mean over each window (padding not counted)")):
    _register(OpDef(_kind, "reduce", _pool_infer(_kind), _pool_ref(_kind),
                    attrs=("kernel", "strides", "pads"), primitive=False, flop_rule=_pool_flops,
                    frontend=Frontend(_kind, "special", "x kernel stride padding"),
                    kernel="one kernel at -O1/-O2 where that lowering claims it "
                    "(compiler/backend/pool.py; an average pool unpadded); else "
                    + _DECOMPOSED + " (pad, a strided slice per tap)",
                    fuzz=Fuzz(step="pool"), doc=_doc))
_register(OpDef("einsum", "contraction", _einsum_infer, _einsum_ref, attrs=("spec",),
                optional_attrs=("acc",), arity=None, primitive=False,
                flop_rule=_einsum_flops,
                frontend=Frontend("einsum", "special", "spec *operands acc"),
                kernel=_DECOMPOSED + " (transposes, reshapes and a matmul)",
                fuzz=Fuzz(step="einsum"), doc="numpy's einsum (letters only)"))

def _gather_infer(types: Types, attrs: dict) -> TensorType:
    data, indices = types
    if data.rank < 1:
        raise Diagnostic(f"gather: data must have rank >= 1, got {data}")
    if not is_int(indices.dtype):
        raise Diagnostic(f"gather: indices must be integers, got {indices}")
    if not is_float(data.dtype):
        raise Diagnostic(f"gather: data must be floating-point, got {data} (gather "
                         "multiplies by a one-hot matrix)")
    axis = _norm_axis(attrs["axis"], data.rank, data)
    return TensorType(data.dtype, data.shape[:axis] + indices.shape + data.shape[axis + 1:])


def _gather_ref(xs, attrs):
    data, indices = xs
    axis = attrs["axis"] % data.ndim
    size = data.shape[axis]
    indices = indices.astype(np.int64)
    indices = np.where(indices < 0, indices + size, indices)
    valid = (indices >= 0) & (indices < size)
    taken = np.take(data, np.where(valid, indices, 0), axis=axis)
    mask = valid.reshape((1,) * axis + indices.shape + (1,) * (data.ndim - axis - 1))
    return np.where(mask, taken, np.zeros((), data.dtype))


def _gather_flops(types, result, attrs):
    data = types[0]
    return 2 * result.numel * data.shape[attrs["axis"] % data.rank]


# gather(data, indices, axis): numpy's take; a negative index counts from the end and an
# index out of range gives zeros. `decompose` writes it as a one-hot matrix times the data.
_register(OpDef("gather", "contraction", _gather_infer, _gather_ref, attrs=("axis",), arity=2,
                primitive=False, flop_rule=_gather_flops,
                frontend=Frontend("gather", "special", "x indices axis"),
                kernel=_DECOMPOSED + " (a one-hot matrix times the data)",
                fuzz=Fuzz(step="gather"),
                doc="numpy's take (negative indices count from the end, out of range gives 0)"))

PRIMITIVES: tuple[str, ...] = tuple(name for name, op in OPS.items() if op.primitive)


def promote_types(*dtypes: str) -> str:
    """Promotion over several dtypes (JAX lattice)."""
    out = dtypes[0]
    for dtype in dtypes[1:]:
        out = promote(out, dtype)
    return out
