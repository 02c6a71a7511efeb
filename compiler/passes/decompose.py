"""`decompose`: rewrite the non-primitive op kinds into primitives, one rule per kind.

After this pass a function holds only the primitives of docs/internals.md section 2
(`compiler.graph.ops.PRIMITIVES`), but for the ops its `target` keeps whole. The new ops keep
the span of the op they replace, and their origin is the replaced op's origin or `kind#n`
(`conv2d#1`, which remarks print).

Lowering by legality: with a `target` (the backend's: `compiler.backend.groups.FusedTarget`
at -O1/-O2), an op that a backend lowering claims for its shapes, dtypes, attributes and
operands stays whole, and only the others are decomposed. `target.legalize(op, producers)`
returns (the fused-kernel kind that lowers it, or None; a decision line, or None). The pass
leaves the target in `fn.attrs["target"]`, where `fuse` asks it again which lowering takes
each whole op (the graph passes after this one may have changed an operand), and the lines
of the ops it decomposed in `fn.attrs["legality"]`, which start the fusion log. Without a
target every rule applies (-O0, `zhenwu ir`): the target-independent primitives.

- `conv2d` (NCHW/OIHW, stride, padding, dilation, groups): im2col. Pad, one strided slice
  per kernel tap, concat of the taps, reshape to [N, G, Cg*KH*KW, OH*OW], and one batched
  matmul with the weights reshaped to [G, O/G, Cg*KH*KW].
- `maxpool2d`: pad with the lowest value, one strided slice per tap, a `maximum` chain.
- `avgpool2d`: pad with 0, a sum of the taps, divided by the number of non-padding elements
  under each window (the same taps over a padded ones tensor; a constant without padding);
  bf16/f16/fp8 are summed in f32 and rounded once.
- `einsum` (one or two operands): sum out letters used by one operand only, transpose each
  operand to [batch, free, contracted], reshape to 3-D, one batched matmul, reshape and
  transpose to the output order.
- `gather` (take along an axis): a one-hot matrix of the indices (iota == index) times the
  data with that axis moved to the front, reshaped and transposed back.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import prod

from zhenwu.compiler.graph.dtypes import is_float, limits
from zhenwu.compiler.graph.ir import Function, Op, Value
from zhenwu.compiler.graph.ops import parse_einsum
from zhenwu.compiler.passes.pass_base import GraphPass, register_pass
from zhenwu.compiler.passes.rewrite import Rewriter, rewrite
from zhenwu.isa.errors import UsageError


def _reshape(rw: Rewriter, x: Value, shape) -> Value:
    shape = tuple(shape)
    return x if x.type.shape == shape else rw.emit("reshape", [x], {"shape": shape})


def _transpose(rw: Rewriter, x: Value, perm) -> Value:
    perm = tuple(perm)
    return x if perm == tuple(range(len(perm))) else rw.emit("transpose", [x], {"perm": perm})


def _pad_spatial(rw: Rewriter, x: Value, pads, value) -> Value:
    if all(p == (0, 0) for p in pads):
        return x
    return rw.emit("pad", [x], {"pads": ((0, 0), (0, 0)) + tuple(pads), "value": value})


def _taps(rw: Rewriter, x: Value, kernel, strides, dilation, out_hw):
    """One strided slice of x (N, C, H, W) per kernel tap, each [N, C, OH, OW]."""
    n, c = x.type.shape[:2]
    for i in range(kernel[0]):
        for j in range(kernel[1]):
            hs, ws = i * dilation[0], j * dilation[1]
            stops = (n, c, hs + strides[0] * (out_hw[0] - 1) + 1,
                     ws + strides[1] * (out_hw[1] - 1) + 1)
            yield rw.emit("slice", [x], {"starts": (0, 0, hs, ws), "stops": stops,
                                         "steps": (1, 1) + tuple(strides)})


def _conv2d(op: Op, rw: Rewriter) -> Value:
    x, w = op.inputs
    n = x.type.shape[0]
    o, cg, kh, kw = w.type.shape
    oh, ow = op.result.type.shape[2:]
    groups = op.attrs["groups"]
    padded = _pad_spatial(rw, x, op.attrs["pads"], 0.0 if is_float(x.type.dtype) else 0)
    taps = [_reshape(rw, t, (n, groups, cg, 1, oh * ow))
            for t in _taps(rw, padded, (kh, kw), op.attrs["strides"], op.attrs["dilation"],
                           (oh, ow))]
    patches = taps[0] if len(taps) == 1 else rw.emit("concat", taps, {"axis": 3})
    patches = _reshape(rw, patches, (n, groups, cg * kh * kw, oh * ow))
    weights = _reshape(rw, w, (groups, o // groups, cg * kh * kw))
    out = rw.emit("matmul", [weights, patches])  # [N, G, O/G, OH*OW]
    return _reshape(rw, out, (n, o, oh, ow))


def _pool(op: Op, rw: Rewriter) -> Value:
    (x,) = op.inputs
    dtype = x.type.dtype
    kernel, strides, pads = op.attrs["kernel"], op.attrs["strides"], op.attrs["pads"]
    out_hw = op.result.type.shape[2:]
    if op.kind == "maxpool2d":
        lowest = limits(dtype)[0]
        padded = _pad_spatial(rw, x, pads, lowest)
        result = None
        for tap in _taps(rw, padded, kernel, strides, (1, 1), out_hw):
            result = tap if result is None else rw.emit("maximum", [result, tap])
        return result
    # Sum narrow floats in f32 and round once, as the registry's reference does.
    narrow = dtype in ("bf16", "f16", "fp8")
    if narrow:
        x = rw.emit("cast", [x], {"dtype": "f32"})
        dtype = "f32"
    padded = _pad_spatial(rw, x, pads, 0.0)
    total = None
    for tap in _taps(rw, padded, kernel, strides, (1, 1), out_hw):
        total = tap if total is None else rw.emit("add", [total, tap])
    if all(p == (0, 0) for p in pads):
        count = rw.emit("constant", [], {"value": float(kernel[0] * kernel[1]), "dtype": dtype,
                                         "shape": ()})
    else:
        ones = rw.emit("constant", [], {"value": 1.0, "dtype": dtype,
                                        "shape": (1, 1) + x.type.shape[2:]})
        ones = _pad_spatial(rw, ones, pads, 0.0)
        count = None
        for tap in _taps(rw, ones, kernel, strides, (1, 1), out_hw):
            count = tap if count is None else rw.emit("add", [count, tap])
    mean = rw.emit("div", [total, count])
    return rw.emit("cast", [mean], {"dtype": op.result.type.dtype}) if narrow else mean


def _einsum(op: Op, rw: Rewriter) -> Value:
    operands = list(op.inputs)
    inputs, output = parse_einsum(op.attrs["spec"], [v.type.rank for v in operands])
    sizes = {}
    for letters, value in zip(inputs, operands):
        sizes.update(zip(letters, value.type.shape))
    # Sum out the letters only one operand uses and the output drops (narrow floats in f32,
    # rounded once at the end, as the reference computes einsum; with `acc`, in the
    # accumulation dtype's family: f32 or wrapping i32).
    dtype = op.result.type.dtype
    in_dtype = operands[0].type.dtype
    acc = op.attrs.get("acc")
    summed = any(ch not in "".join(inputs[:i] + inputs[i + 1:]) + output
                 for i, letters in enumerate(inputs) for ch in letters)
    widen = summed and (len(operands) == 2 and dtype in ("bf16", "f16", "fp8")
                        or acc is not None)
    if widen:
        wide = "f32" if is_float(in_dtype) else "i32"
        operands = [rw.emit("cast", [v], {"dtype": wide}) for v in operands]
        acc = None
    result = _einsum_lowered(rw, operands, inputs, output, sizes, acc)
    if result.type.dtype == dtype:
        return result
    return rw.emit("cast", [result], {"dtype": dtype})  # rounds once (or widens a transpose)


def _einsum_lowered(rw: Rewriter, operands, inputs, output, sizes, acc=None) -> Value:
    """Reduce, transpose, reshape, one batched matmul (accumulating in `acc`), reshape and
    transpose back."""
    for index, letters in enumerate(inputs):
        others = set("".join(inputs[:index] + inputs[index + 1:])) | set(output)
        axes = tuple(i for i, ch in enumerate(letters) if ch not in others)
        if axes:
            operands[index] = rw.emit("reduce_sum", [operands[index]],
                                      {"axes": axes, "keepdims": False})
            inputs[index] = "".join(ch for ch in letters if ch in others)
    if len(operands) == 1:
        (letters,) = inputs
        return _transpose(rw, operands[0], [letters.index(ch) for ch in output])
    a_letters, b_letters = inputs
    batch = [ch for ch in output if ch in a_letters and ch in b_letters]
    contract = [ch for ch in a_letters if ch in b_letters and ch not in output]
    a_free = [ch for ch in a_letters if ch not in b_letters]
    b_free = [ch for ch in b_letters if ch not in a_letters]
    # when the output is [batch, a's free, b's free] in some order of the free letters, take
    # the output's order: the operands are transposed (views) and the product is the result
    # as it is, with nothing to transpose after it (`skgd,tkd->kgst` scores stay rows of
    # [k, g, s] for the softmax and its attention kernel)
    in_output_order = ([ch for ch in output if ch in a_free], [ch for ch in output if ch in b_free])
    if output == "".join(batch + in_output_order[0] + in_output_order[1]):
        a_free, b_free = in_output_order

    def size(letters):
        return prod(sizes[ch] for ch in letters)

    a = _transpose(rw, operands[0], [a_letters.index(ch) for ch in batch + a_free + contract])
    a = _reshape(rw, a, (size(batch), size(a_free), size(contract)))
    b = _transpose(rw, operands[1], [b_letters.index(ch) for ch in batch + contract + b_free])
    b = _reshape(rw, b, (size(batch), size(contract), size(b_free)))
    product = rw.emit("matmul", [a, b], {"acc": acc} if acc else None)
    letters = batch + a_free + b_free
    product = _reshape(rw, product, [sizes[ch] for ch in letters])
    return _transpose(rw, product, [letters.index(ch) for ch in output])


def _gather(op: Op, rw: Rewriter) -> Value:
    """data.take(indices, axis) as one-hot(indices) @ data, with the gathered axis moved to
    the front and the other axes flattened; exactly one product per output element is
    non-zero, so the result is exact (an index out of range selects nothing: zeros)."""
    data, indices = op.inputs
    axis = op.attrs["axis"] % data.type.rank
    size = data.type.shape[axis]
    others = [d for i, d in enumerate(data.type.shape) if i != axis]
    count = prod(indices.type.shape)
    index = indices if indices.type.dtype == "i32" else rw.emit("cast", [indices],
                                                                 {"dtype": "i32"})
    index = _reshape(rw, index, (count, 1))
    zero = rw.emit("constant", [], {"value": 0, "dtype": "i32", "shape": ()})
    wrapped = rw.emit("add", [index, rw.emit("constant", [], {"value": size, "dtype": "i32",
                                                             "shape": ()})])
    index = rw.emit("where", [rw.emit("lt", [index, zero]), wrapped, index])
    iota = _reshape(rw, rw.emit("iota", [], {"n": size, "dtype": "i32"}), (1, size))
    onehot = rw.emit("cast", [rw.emit("eq", [index, iota])], {"dtype": data.type.dtype})
    rows = _transpose(rw, data, [axis] + [i for i in range(data.type.rank) if i != axis])
    rows = _reshape(rw, rows, (size, prod(others)))
    taken = rw.emit("matmul", [onehot, rows])  # [count, prod(others)]
    taken = _reshape(rw, taken, tuple(indices.type.shape) + tuple(others))
    k = indices.type.rank
    perm = ([k + i for i in range(axis)] + list(range(k))
            + [k + i for i in range(axis, len(others))])
    return _transpose(rw, taken, perm)


DECOMPOSITIONS = {"conv2d": _conv2d, "maxpool2d": _pool, "avgpool2d": _pool,
                  "einsum": _einsum, "gather": _gather}


@register_pass
@dataclass(frozen=True)
class Decompose(GraphPass):
    """Rewrite conv2d, pools, einsum and gather into primitive ops.

    `kinds` names the op kinds to rewrite (all by default): `decompose{kinds=einsum}` keeps
    the others whole. `target` (set by the backend, not in pipeline text) keeps whole the
    ops a backend lowering claims (see the module docstring).
    """

    name = "decompose"
    kinds: tuple[str, ...] = tuple(DECOMPOSITIONS)
    target: object = None

    def apply(self, fn: Function) -> Function:
        counts: dict[str, int] = {}
        unknown = set(self.kinds) - set(DECOMPOSITIONS)
        if unknown:
            raise UsageError(f"decompose: no rule for {', '.join(sorted(unknown))} "
                             f"(rules: {', '.join(DECOMPOSITIONS)})")
        if isinstance(self.target, str):
            raise UsageError("decompose: the target is the backend's (-O1/-O2 set it), not "
                             "an option of pipeline text")
        decisions = list(fn.attrs.get("legality", ()))

        def lower(op: Op, rw: Rewriter) -> Value | None:
            rule = DECOMPOSITIONS.get(op.kind) if op.kind in self.kinds else None
            if rule is None:
                return None
            if self.target is not None:
                group, decision = self.target.legalize(op, rw.producers)
                if group is not None:
                    return None  # a backend lowering takes it whole
                if decision is not None:
                    decisions.append(decision)
            return decompose_op(op, rw, counts)

        out = rewrite(fn, [lower])
        if self.target is not None:
            out.attrs["target"] = self.target
            out.attrs["legality"] = tuple(decisions)
        return out


def decompose_op(op: Op, rw: Rewriter, counts: dict[str, int]) -> Value:
    """`op` written as primitives by its rule; an op without an origin gets `kind#n`
    (`counts` numbers them)."""
    if op.origin is None:
        counts[op.kind] = counts.get(op.kind, 0) + 1
        op.origin = f"{op.kind}#{counts[op.kind]}"
    return DECOMPOSITIONS[op.kind](op, rw)
