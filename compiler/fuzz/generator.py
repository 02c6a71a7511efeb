"""Random valid `.zt` programs for differential fuzzing (docs/design.md section 10).

A program is grown one statement at a time: each step picks an op kind, finds operands whose
shapes and dtypes the op accepts (creating new parameters where an operand of the right shape
is missing, e.g. a weight for `@`), and records the result's shape and dtype with the same
rules the checker applies (numpy broadcasting, JAX promotion). The result is `.zt` text, so a
failure is a file a person can read and rerun.

Values stay finite: inputs are drawn from a standard normal, and operations that can overflow
or leave their domain are wrapped (`exp(tanh(x))`, `log(abs(x) + 1.0)`, `x / (abs(y) + 1.0)`).

Choices come from a `Chooser`, so the same generator serves hypothesis (which shrinks the
choices to a minimal failing program) and the `zhenwu fuzz` campaign (a seeded `random`).
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

T = TypeVar("T")

# Dims drawn for new tensors: 1, primes, and sizes around the 16-wide MX granule.
DIMS = (1, 2, 3, 5, 7, 13, 16, 17, 31, 33)
FLOAT_DTYPES = ("f32", "bf16", "f16")

# Elementwise ops come from the op table (compiler/graph/ops.py): every op whose entry has a
# fuzz template is drawn by the unary (`{x}`) or binary (`{a}`, `{b}`) step, wrapped to stay
# in its domain and bounded. These composites of the prelude are drawn with them.
COMPOSITE_UNARY = {
    "silu": "silu({x})",
    "square": "{x} * {x}",
    "clip": "clip({x}, -1.0, 1.0)",
}


def _table_forms(operand: str) -> dict[str, str]:
    from zhenwu.compiler.graph.ops import OPS

    return {name: op.fuzz.template for name, op in OPS.items()
            if op.fusion == "elementwise" and op.fuzz is not None and op.fuzz.template
            and "{" + operand + "}" in op.fuzz.template}


def reduce_forms() -> dict[str, str]:
    """Builtin -> operand wrapper of every reduction the reduce step draws (the table's, in
    its order, then `mean`, a composite of the prelude)."""
    from zhenwu.compiler.graph.ops import OPS

    forms = {op.frontend.name: op.fuzz.operand for op in OPS.values()
             if op.fuzz is not None and op.fuzz.step == "reduce"}
    return {**forms, "mean": "{x}"}


def unary_forms() -> dict[str, str]:
    """Name -> template of every unary form the generator draws (the table's at call time,
    so an op registered later is drawn too)."""
    return {**_table_forms("x"), **COMPOSITE_UNARY}


def binary_forms() -> dict[str, str]:
    """Name -> template of every binary form the generator draws."""
    return _table_forms("a")


def discontinuous() -> tuple[str, ...]:
    """Ops drawn on parameters only (their entry's `Fuzz.inputs_only`)."""
    from zhenwu.compiler.graph.ops import OPS

    return tuple(name for name, op in OPS.items() if op.fuzz is not None and op.fuzz.inputs_only)




class Chooser(Protocol):
    """Where the generator's decisions come from."""

    def integer(self, lo: int, hi: int) -> int: ...  # inclusive bounds

    def choice(self, options: Sequence[T]) -> T: ...


@dataclass
class RandomChooser:
    """Decisions from a seeded `random.Random` (the `zhenwu fuzz` campaign)."""

    rng: random.Random

    def integer(self, lo: int, hi: int) -> int:
        return self.rng.randint(lo, hi)

    def choice(self, options: Sequence[T]) -> T:
        return options[self.rng.randrange(len(options))]


@dataclass
class RecordingChooser:
    """Decisions from a seeded `random.Random`, recorded as a list of integers.

    Replaying a (possibly shortened or lowered) record with `ReplayChooser` regenerates a
    program; shrinking a failure is shrinking this list, as hypothesis does internally.
    """

    rng: random.Random
    record: list[int] = field(default_factory=list)
    marks: list[int] = field(default_factory=list)  # where each step's choices start

    def mark(self) -> None:
        self.marks.append(len(self.record))

    def integer(self, lo: int, hi: int) -> int:
        value = self.rng.randint(lo, hi)
        self.record.append(value - lo)
        return value

    def choice(self, options: Sequence[T]) -> T:
        index = self.rng.randrange(len(options))
        self.record.append(index)
        return options[index]


@dataclass
class ReplayChooser:
    """Replays a record; past its end, or where a value is out of range, takes the smallest."""

    record: Sequence[int]
    position: int = 0

    def _next(self, count: int) -> int:
        value = self.record[self.position] if self.position < len(self.record) else 0
        self.position += 1
        return value if 0 <= value < count else 0

    def integer(self, lo: int, hi: int) -> int:
        return lo + self._next(hi - lo + 1)

    def choice(self, options: Sequence[T]) -> T:
        return options[self._next(len(options))]


@dataclass
class HypothesisChooser:
    """Decisions drawn from hypothesis' `data` object, so failures shrink."""

    data: object

    def integer(self, lo: int, hi: int) -> int:
        from hypothesis import strategies as st

        return self.data.draw(st.integers(lo, hi))

    def choice(self, options: Sequence[T]) -> T:
        from hypothesis import strategies as st

        return self.data.draw(st.sampled_from(list(options)))


@dataclass(frozen=True)
class Tensor:
    name: str
    dtype: str
    shape: tuple[int, ...]

    @property
    def rank(self) -> int:
        return len(self.shape)

    def type_text(self) -> str:
        return f"{self.dtype}[{', '.join(map(str, self.shape))}]"


def promote(a: str, b: str) -> str:
    """The language's promotion (JAX's): fp8 with bf16 is bf16, bf16 with f16 is f32. The
    generator asked "f32" of every mixed pair, so a step adding an attention's fp8 input to a
    bf16 value declared a result the checker refuses."""
    from zhenwu.compiler.graph.dtypes import promote as language_promote

    return language_promote(a, b)


def broadcast(a: tuple[int, ...], b: tuple[int, ...]) -> tuple[int, ...]:
    out = []
    for i in range(1, max(len(a), len(b)) + 1):
        da = a[-i] if i <= len(a) else 1
        db = b[-i] if i <= len(b) else 1
        assert da == db or da == 1 or db == 1
        out.append(max(da, db) if 1 in (da, db) else da)
    return tuple(reversed(out))


@dataclass
class ProgramBuilder:
    """Grows a program; `text()` prints it as `.zt`."""

    chooser: Chooser
    max_rank: int = 4
    params: list[Tensor] = field(default_factory=list)
    values: list[Tensor] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)
    counter: int = 0
    # results that are always outputs and never operands of later steps: integer products
    # (compared exactly) and reductions of NaN-bearing values
    checked: list[Tensor] = field(default_factory=list)
    # parameters that are only operands of their own step (gather's indices, an attention's
    # boolean mask): never picked by another step
    reserved: list[Tensor] = field(default_factory=list)

    # -- naming and parameters -------------------------------------------------------------
    def fresh(self, prefix: str) -> str:
        self.counter += 1
        return f"{prefix}{self.counter}"

    def new_param(self, shape: tuple[int, ...], dtype: str | None = None) -> Tensor:
        dtype = dtype or self.chooser.choice(("f32", "f32", "bf16"))
        tensor = Tensor(self.fresh("p"), dtype, shape)
        self.params.append(tensor)
        self.values.append(tensor)
        return tensor

    def new_shape(self, rank: int | None = None) -> tuple[int, ...]:
        rank = self.chooser.integer(0, self.max_rank) if rank is None else rank
        return tuple(self.chooser.choice(DIMS) for _ in range(rank))

    def bind(self, expr: str, dtype: str, shape: tuple[int, ...]) -> Tensor:
        tensor = Tensor(self.fresh("v"), dtype, tuple(shape))
        self.lines.append(f"    {tensor.name} = {expr}")
        self.values.append(tensor)
        return tensor

    def pick(self, min_rank: int = 0, inputs_only: bool = False) -> Tensor:
        """An existing value of rank >= min_rank (or a new parameter). `inputs_only` keeps to
        parameters: discontinuous ops (argmax, floor, casts to int) on computed values would
        turn a rounding difference within tolerance into a different answer."""
        pool = self.params if inputs_only else self.values
        candidates = [v for v in pool if v.rank >= min_rank and v not in self.reserved]
        if not candidates:
            return self.new_param(self.new_shape(self.chooser.integer(min_rank, self.max_rank)))
        return self.chooser.choice(candidates)

    # -- steps -----------------------------------------------------------------------------
    def step(self) -> None:
        kind = self.chooser.choice(
            ("unary", "binary", "binary", "reduce", "matmul", "transpose", "reshape", "slice",
             "concat", "softmax", "norm", "cast", "broadcast", "pad", "expand", "argmax",
             "conv", "pool", "einsum", "linear", "attention", "creation", "integer",
             "int_matmul", "nan_reduce", "weak_math", "attention_form", "gather",
             "linear_combination", "rotary", "thin_linear", "norm_linear", "map_linear")
        )
        getattr(self, f"step_{kind}")()

    def step_unary(self) -> None:
        forms = unary_forms()
        op = self.chooser.choice(sorted(forms))
        x = self.pick(inputs_only=op in discontinuous())
        self.bind(forms[op].format(x=x.name), x.dtype, x.shape)

    def compatible_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        """A shape that broadcasts against `shape` without changing it."""
        drop = self.chooser.integer(0, len(shape))
        tail = shape[drop:]
        return tuple(1 if self.chooser.integer(0, 3) == 0 else d for d in tail)

    def step_binary(self) -> None:
        a = self.pick()
        same = [v for v in self.values if v is not a and self._broadcasts(v.shape, a.shape)]
        if same and self.chooser.integer(0, 1):
            b = self.chooser.choice(same)
        else:
            b = self.new_param(self.compatible_shape(a.shape))
        if self.chooser.integer(0, 1):
            a, b = b, a
        forms = binary_forms()
        op = self.chooser.choice(sorted(forms))
        dtype = promote(a.dtype, b.dtype)
        self.bind(forms[op].format(a=a.name, b=b.name), dtype, broadcast(a.shape, b.shape))

    @staticmethod
    def _broadcasts(small: tuple[int, ...], big: tuple[int, ...]) -> bool:
        if len(small) > len(big):
            return False
        return all(s in (1, b) for s, b in zip(reversed(small), reversed(big)))

    def step_reduce(self) -> None:
        x = self.pick(min_rank=1)
        forms = reduce_forms()
        op = self.chooser.choice(tuple(forms))
        keepdims = bool(self.chooser.integer(0, 1))
        axes = sorted({self.chooser.integer(0, x.rank - 1) for _ in range(self.chooser.integer(1, 2))})
        if self.chooser.integer(0, 1):
            axes_text = ", ".join(str(a - x.rank) for a in axes)  # negative axes too
        else:
            axes_text = ", ".join(map(str, axes))
        axis_arg = f"({axes_text})" if len(axes) > 1 else axes_text
        shape = tuple(
            (1 if keepdims else None) if i in axes else d for i, d in enumerate(x.shape)
        )
        shape = tuple(d for d in shape if d is not None)
        kd = ", keepdims=true" if keepdims else ""
        operand = forms[op].format(x=x.name)
        self.bind(f"{op}({operand}, axis={axis_arg}{kd})", x.dtype, shape)

    def step_matmul(self) -> None:
        x = self.pick(min_rank=1)
        n = self.chooser.choice(DIMS)
        if x.rank == 1:
            w = self.new_param((x.shape[0], n), x.dtype if x.dtype != "f16" else "f16")
            out = (n,)
        else:
            w_batch = () if self.chooser.integer(0, 2) else x.shape[:-2][-1:]
            w = self.new_param(w_batch + (x.shape[-1], n), x.dtype)
            out = broadcast(x.shape[:-2], w_batch) + (x.shape[-2], n)
        self.bind(f"{x.name} @ {w.name}", promote(x.dtype, w.dtype), out)

    def step_einsum(self) -> None:
        x = self.pick(min_rank=2)
        if x.rank > 3:
            return self.step_unary()
        letters = "abc"[: x.rank]
        n = self.chooser.choice(DIMS)
        w = self.new_param((x.shape[-1], n), x.dtype)
        spec = f"{letters},{letters[-1]}z->{letters[:-1]}z"
        self.bind(f'einsum("{spec}", {x.name}, {w.name})', x.dtype, x.shape[:-1] + (n,))

    def step_transpose(self) -> None:
        x = self.pick(min_rank=2)
        perm = list(range(x.rank))
        for i in range(x.rank - 1, 0, -1):
            j = self.chooser.integer(0, i)
            perm[i], perm[j] = perm[j], perm[i]
        if self.chooser.integer(0, 3) == 0:
            self.bind(f"transpose({x.name})", x.dtype, tuple(reversed(x.shape)))
        else:
            self.bind(f"transpose({x.name}, {perm})", x.dtype, tuple(x.shape[p] for p in perm))

    def step_reshape(self) -> None:
        x = self.pick(min_rank=1)
        size = math.prod(x.shape)
        factors = [f for f in range(1, size + 1) if size % f == 0]
        first = self.chooser.choice(factors)
        shape = [first, size // first]
        if self.chooser.integer(0, 1):
            text = f"[{first}, -1]"
        else:
            text = f"[{first}, {size // first}]"
        self.bind(f"reshape({x.name}, {text})", x.dtype, tuple(shape))

    def step_slice(self) -> None:
        x = self.pick(min_rank=1)
        parts, shape = [], []
        for d in x.shape:
            mode = self.chooser.integer(0, 4)
            if mode == 0:
                parts.append(":")
                shape.append(d)
            elif mode == 1 and d > 1:
                start = self.chooser.integer(0, d - 1)
                stop = self.chooser.integer(start + 1, d)
                step = self.chooser.integer(1, 3)
                parts.append(f"{start}:{stop}:{step}" if step > 1 else f"{start}:{stop}")
                shape.append(len(range(start, stop, step)))
            elif mode == 2:
                index = self.chooser.integer(-d, d - 1)
                parts.append(str(index))
            elif mode == 3 and d > 1:
                start = self.chooser.integer(1, d - 1)
                parts.append(f"-{start}:")
                shape.append(start)
            else:
                parts.append(":")
                shape.append(d)
        self.bind(f"{x.name}[{', '.join(parts)}]", x.dtype, tuple(shape))

    def step_concat(self) -> None:
        x = self.pick(min_rank=1)
        axis = self.chooser.integer(0, x.rank - 1)
        extra = self.chooser.choice(DIMS)
        other_shape = x.shape[:axis] + (extra,) + x.shape[axis + 1:]
        y = self.new_param(other_shape, x.dtype)
        shape = x.shape[:axis] + (x.shape[axis] + extra,) + x.shape[axis + 1:]
        self.bind(f"concat([{x.name}, {y.name}], axis={axis})", x.dtype, shape)

    def step_softmax(self) -> None:
        x = self.pick(min_rank=1)
        axis = self.chooser.integer(-x.rank, x.rank - 1)
        op = self.chooser.choice(("softmax", "log_softmax"))
        self.bind(f"{op}({x.name}, axis={axis})", x.dtype, x.shape)

    def step_norm(self) -> None:
        # A norm over a row of 1-3 values divides by the row's own size: rows of computed
        # values near 0 turn a rounding difference into any answer (x / sqrt(x² + eps)).
        x = self.pick(min_rank=1)
        if x.shape[-1] < 4:
            x = self.new_param(x.shape[:-1] + (self.chooser.choice((4, 7, 16, 33)),))
        g = self.new_param((x.shape[-1],), "f32")
        if self.chooser.integer(0, 1):
            b = self.new_param((x.shape[-1],), "f32")
            self.bind(f"layernorm({x.name}, {g.name}, {b.name})", promote(x.dtype, "f32"), x.shape)
        else:
            self.bind(f"rmsnorm({x.name}, {g.name})", promote(x.dtype, "f32"), x.shape)

    def step_cast(self) -> None:
        x = self.pick()
        dtype = self.chooser.choice(FLOAT_DTYPES)
        self.bind(f"cast({x.name}, {dtype})", dtype, x.shape)

    def step_broadcast(self) -> None:
        x = self.pick()
        shape = tuple(self.chooser.choice(DIMS) if d == 1 else d for d in x.shape)
        if x.rank < self.max_rank and self.chooser.integer(0, 1):
            shape = (self.chooser.choice(DIMS),) + shape
        self.bind(f"broadcast_to({x.name}, {list(shape)})", x.dtype, shape)

    def step_pad(self) -> None:
        x = self.pick(min_rank=1)
        pads = [[self.chooser.integer(0, 2), self.chooser.integer(0, 2)] for _ in x.shape]
        shape = tuple(d + lo + hi for d, (lo, hi) in zip(x.shape, pads))
        self.bind(f"pad({x.name}, {pads})", x.dtype, shape)

    def step_expand(self) -> None:
        x = self.pick()
        if x.rank < self.max_rank and (x.rank == 0 or self.chooser.integer(0, 1)):
            axis = self.chooser.integer(0, x.rank)
            self.bind(f"expand_dims({x.name}, {axis})", x.dtype, x.shape[:axis] + (1,) + x.shape[axis:])
        else:
            ones = [i for i, d in enumerate(x.shape) if d == 1]
            if not ones:
                return self.step_unary()
            axis = self.chooser.choice(ones)
            self.bind(f"squeeze({x.name}, {axis})", x.dtype, x.shape[:axis] + x.shape[axis + 1:])

    def step_argmax(self) -> None:
        x = self.pick(min_rank=1, inputs_only=True)
        axis = self.chooser.integer(0, x.rank - 1)
        idx = self.bind(f"argmax({x.name}, axis={axis})", "i32",
                        x.shape[:axis] + x.shape[axis + 1:])
        # Bring the index back into float land so later steps can use it.
        self.values.remove(idx)
        self.bind(f"cast({idx.name}, f32)", "f32", idx.shape)

    def step_conv(self) -> None:
        # 64 channels: several channel steps (the halo tiling of a unit-stride conv)
        n, c, h, w = (self.chooser.choice((1, 2)), self.chooser.choice((1, 3, 4, 64)),
                      self.chooser.choice((5, 7, 8)), self.chooser.choice((5, 6, 9)))
        o, k = self.chooser.choice((2, 4, 16)), self.chooser.choice((1, 3))
        stride, padding = self.chooser.integer(1, 2), self.chooser.integer(0, k // 2 + 1)
        # forms the implicit GEMM claims whole, and two it refuses, which `decompose` writes
        # as im2col (lowering by legality): weights that are a view, 8x8 = 64 taps
        form = self.chooser.choice(("whole", "whole", "whole", "weights_view", "taps"))
        if form == "taps":
            k, padding = 8, self.chooser.integer(2, 4)   # h, w >= 5: an output pixel
        x = self.new_param((n, c, h, w))
        if form == "weights_view":
            wt = self.new_param((c, o, k, k), x.dtype)
            weights = f"transpose({wt.name}, [1, 0, 2, 3])"
        else:
            weights = self.new_param((o, c, k, k), x.dtype).name
        oh = (h + 2 * padding - k) // stride + 1
        ow = (w + 2 * padding - k) // stride + 1
        source = x.name
        if form == "whole" and self.chooser.integer(0, 3) == 0:
            # the padding as an explicit zero pad, as ONNX exports often write it, maybe
            # uneven (canonicalize folds it into the conv's own padding)
            pads = [[self.chooser.integer(0, 2), self.chooser.integer(0, 2)] for _ in range(2)]
            source = f"pad({x.name}, [[0, 0], [0, 0], {pads[0]}, {pads[1]}])"
            padding = 0
            oh = (h + sum(pads[0]) - k) // stride + 1
            ow = (w + sum(pads[1]) - k) // stride + 1
        self.bind(f"conv2d({source}, {weights}, stride={stride}, padding={padding})",
                  x.dtype, (n, o, oh, ow))

    def step_pool(self) -> None:
        candidates = [v for v in self.values if v.rank == 4 and min(v.shape[2:]) >= 2]
        if not candidates:
            return self.step_conv()
        x = self.chooser.choice(candidates)
        kernel = self.chooser.integer(2, min(3, *x.shape[2:]))
        stride = self.chooser.integer(1, kernel)
        padding = self.chooser.integer(0, kernel // 2)
        if self.chooser.integer(0, 2) == 0:
            # an input the one-kernel pools claim whole (lowering by legality): a fresh
            # tensor whose height the stride divides, unpadded (drawn values are often views
            # or odd heights, which they refuse)
            height = x.shape[2] + (-x.shape[2]) % stride
            x, padding = self.new_param((x.shape[0], x.shape[1], height, x.shape[3])), 0
        op = self.chooser.choice(("maxpool2d", "avgpool2d"))
        oh = (x.shape[2] + 2 * padding - kernel) // stride + 1
        ow = (x.shape[3] + 2 * padding - kernel) // stride + 1
        source = x.name
        if op == "maxpool2d" and padding and x.dtype in FLOAT_DTYPES and self.chooser.integer(0, 1):
            # the padding as an explicit -inf pad (canonicalize folds it into the pool's)
            source = f"pad({x.name}, [[0, 0], [0, 0], [{padding}, {padding}], " \
                     f"[{padding}, {padding}]], -inf)"
            padding = 0
        self.bind(f"{op}({source}, {kernel}, stride={stride}, padding={padding})", x.dtype,
                  x.shape[:2] + (oh, ow))

    def step_linear(self) -> None:
        """`act(x @ w + b)` (+ a residual): the contraction-with-epilogue fusion pattern."""
        x = self.pick(min_rank=2)
        n = self.chooser.choice(DIMS + (x.shape[-1],))
        w = self.new_param((x.shape[-1], n), x.dtype)
        b = self.new_param((n,), "f32")
        act = self.chooser.choice(("relu", "gelu", "silu", "tanh", ""))
        expr = f"{x.name} @ {w.name} + {b.name}"
        expr = f"{act}({expr})" if act else expr
        dtype = promote(x.dtype, "f32")
        if n == x.shape[-1] and self.chooser.integer(0, 1):
            expr = f"{x.name} + {expr}"
        if self.chooser.integer(0, 1):
            dtype = x.dtype
            expr = f"cast({expr}, {dtype})"
        self.bind(expr, dtype, x.shape[:-1] + (n,))

    def step_attention(self) -> None:
        """`softmax(q @ kᵀ · s [+ causal mask]) @ v`, the flash-attention fusion pattern."""
        # 40 heads: more query tiles than cores, so a core runs several (buffers reused
        # across tiles, which only a functional run's race check sees)
        heads = self.chooser.choice((1, 2, 3, 40))
        seq_q = self.chooser.choice((1, 5, 16, 17, 33))
        causal = bool(self.chooser.integer(0, 1))
        seq_k = seq_q if causal else self.chooser.choice((1, 7, 16, 31))
        dim = self.chooser.choice((4, 8, 16))
        dtype = self.chooser.choice(("f32", "bf16"))
        q = self.new_param((heads, seq_q, dim), dtype)
        k = self.new_param((heads, seq_k, dim), dtype)
        v = self.new_param((heads, seq_k, dim), dtype)
        scale = 1.0 / math.sqrt(dim)
        if self.chooser.integer(0, 1):
            scores = f'einsum("hqd,hkd->hqk", {q.name}, {k.name}) * {scale!r}'
        else:
            scores = f"{q.name} @ transpose({k.name}, [0, 2, 1]) * {scale!r}"
        if causal:
            mask = f"arange({seq_q})[:, None] >= arange({seq_k})[None, :]"
            scores = f"where({mask}, {scores}, -inf)"
        probs = f"softmax({scores}, axis=-1)"
        self.bind(f"{probs} @ {v.name}", dtype, (heads, seq_q, dim))

    def step_attention_form(self) -> None:
        """Attention in one of the spellings compiler/fuzz/attention_forms.py draws."""
        from zhenwu.compiler.fuzz.attention_forms import draw_attention

        draw_attention(self)

    def step_creation(self) -> None:
        x = self.pick(min_rank=1)
        n = x.shape[-1]
        kind = self.chooser.choice(("arange", "zeros", "ones", "full"))
        if kind == "arange":
            made = f"cast(arange({n}), {x.dtype})"
        elif kind == "full":
            made = f"full([{n}], 0.5, {x.dtype})"
        else:
            made = f"{kind}([{n}], {x.dtype})"
        self.bind(f"{x.name} * {made}", x.dtype, x.shape)

    def step_integer(self) -> None:
        """Through i32 (or i8) and bool and back: integer arithmetic, comparisons, where."""
        x = self.pick(inputs_only=True)
        dtype = self.chooser.choice(("i32", "i32", "i8"))
        i = self.bind(f"cast({x.name} * 4.0, {dtype})", dtype, x.shape)
        self.values.remove(i)
        op = self.chooser.choice(("+", "*", "//", "-"))
        rhs = self.chooser.choice(("2", "3", "-1", i.name))
        if op == "//" and rhs in ("-1", i.name):
            rhs = "3"
        j = self.bind(f"{i.name} {op} {rhs}", dtype, x.shape)
        self.values.remove(j)
        cond = self.bind(f"({j.name} > 0) != ({i.name} == 1)", "bool", x.shape)
        self.values.remove(cond)
        self.bind(f"where({cond.name}, cast({j.name}, f32), {x.name})", promote("f32", x.dtype),
                  x.shape)

    def int_operand(self, shape: tuple[int, ...], dtype: str) -> str:
        """An integer operand made from a float parameter: i8 over its whole range (with
        saturation), i32 times a large odd factor so that products wrap around 2^32."""
        x = self.new_param(shape, "f32")
        if dtype == "i8":
            return f"cast({x.name} * 60.0, i8)"
        return f"(cast({x.name} * 300.0, i32) * 7654321)"

    def step_int_matmul(self) -> None:
        """An integer product, checked exactly: i8 or i32 operands, `acc=`, einsum, casts of
        floats (truncated before the product) and of i8 values (one MX product)."""
        m, k, n = (self.chooser.choice(DIMS + (48, 64)) for _ in range(3))
        batch = () if self.chooser.integer(0, 2) else (self.chooser.choice((2, 3)),)
        form = self.chooser.choice(("i8", "i8_acc", "i32", "einsum", "widened", "truncated"))
        if form == "truncated":  # issue 11 item 0f: float -> int casts as operands
            x, w = self.new_param(batch + (m, k), "f32"), self.new_param((k, n), "f32")
            expr = f"cast({x.name} * 50.0, i32) @ cast({w.name} * 50.0, i32)"
            dtype = "i32"
        elif form == "widened":  # i8 values as i32: one i8 product, wide result
            a, b = self.int_operand(batch + (m, k), "i8"), self.int_operand((k, n), "i8")
            expr, dtype = f"cast({a}, i32) @ cast({b}, i32)", "i32"
        elif form == "einsum":
            a, b = self.int_operand(batch + (m, k), "i8"), self.int_operand((k, n), "i8")
            spec = "bmk,kn->bmn" if batch else "mk,kn->mn"
            expr, dtype = f'einsum("{spec}", {a}, {b}, acc=i32)', "i32"
        else:
            dtype = "i32" if form == "i32" else "i8"
            a, b = self.int_operand(batch + (m, k), dtype), self.int_operand((k, n), dtype)
            if form == "i8_acc":
                expr, dtype = f"matmul({a}, {b}, acc=i32)", "i32"
            else:
                expr = f"{a} @ {b}"
        product = self.bind(expr, dtype, batch + (m, n))
        self.values.remove(product)
        self.checked.append(product)

    def step_nan_reduce(self) -> None:
        """max/min/argmax/argmin/softmax of values with NaN in some rows (numpy semantics:
        NaN propagates through max/min, argmax and argmin give the first NaN)."""
        x = self.pick(min_rank=1, inputs_only=True)
        nan = self.chooser.choice(("sqrt({x} - 10.0)", "{x} * (inf - inf)"))
        y = self.bind(f"where({x.name} > 1.0, {nan.format(x=x.name)}, {x.name})", x.dtype,
                      x.shape)
        self.values.remove(y)
        op = self.chooser.choice(("max", "min", "argmax", "argmin", "softmax"))
        axis = self.chooser.integer(0, x.rank - 1)
        if op == "softmax":
            result = self.bind(f"softmax({y.name}, axis={axis})", x.dtype, x.shape)
        else:
            dtype = "i32" if op.startswith("arg") else x.dtype
            result = self.bind(f"{op}({y.name}, axis={axis})", dtype,
                               x.shape[:axis] + x.shape[axis + 1:])
        self.values.remove(result)
        self.checked.append(result)

    def step_weak_math(self) -> None:
        """Math on Python numbers stays weakly typed: the tensor keeps its dtype."""
        x = self.pick()
        number = self.chooser.choice(("rsqrt(128.0)", "1.0 / sqrt(7)", "exp(0.5)",
                                      "maximum(2, 0.5)", "abs(-3)", "clip(9.0, 0.0, 6.0)",
                                      "tanh(1) * 2", "pow(2, -3)"))
        op = self.chooser.choice(("*", "+", "-"))
        self.bind(f"{x.name} {op} {number}", x.dtype, x.shape)

    def step_gather(self) -> None:
        """gather along a random axis with i32 indices from a parameter (random ones are in
        -4..4: negative indices and, on short axes, out-of-range ones that give zeros)."""
        x = self.pick(min_rank=1)
        axis = self.chooser.integer(0, x.rank - 1)
        rank = self.chooser.integer(0, min(2, self.max_rank - x.rank + 1))
        indices = self.new_param(self.new_shape(rank), "i32")
        self.values.remove(indices)
        self.reserved.append(indices)
        shape = x.shape[:axis] + indices.shape + x.shape[axis + 1:]
        self.bind(f"gather({x.name}, {indices.name}, axis={axis})", x.dtype, shape)

    def step_linear_combination(self) -> None:
        """`x0 * c0 + x1 * c1 + ...` over 2-6 tensors of one shape (some bf16, some
        broadcast): the map kernel with N operands that `fuse` merges its terms into."""
        x = self.pick()
        terms = []
        for index in range(self.chooser.integer(2, 6)):
            if index == 0:
                term = x
            elif self.chooser.integer(0, 2) == 0:
                term = self.new_param(self.compatible_shape(x.shape))
            else:
                term = self.new_param(x.shape)
            coefficient = self.chooser.choice(("0.5", "1.5", "-2.0", "0.1", "3.0"))
            terms.append((term, coefficient))
        dtype = terms[0][0].dtype
        for term, _ in terms[1:]:
            dtype = promote(dtype, term.dtype)
        sign = self.chooser.choice((" + ", " - "))
        expr = sign.join(f"{t.name} * {c}" for t, c in terms).lstrip(" +")
        self.bind(expr, dtype, x.shape)

    def step_thin_linear(self) -> None:
        """A decode-shaped product: a few rows, a long K, few columns (`x @ w`, maybe with
        a bias, an activation and a cast). On the M890 K = 4096 splits across the cores
        (compiler/backend/split_k.py); 2048 and 4112 (not a multiple of 32) do not."""
        rows = self.chooser.choice((1, 5, 16))
        depth = self.chooser.choice((4096, 4096, 2048, 4112))
        cols = self.chooser.choice((16, 33, 64))
        dtype = self.chooser.choice(("bf16", "bf16", "f32"))
        x = self.new_param((rows, depth), dtype)
        w = self.new_param((depth, cols), dtype)
        expr, out = f"{x.name} @ {w.name}", dtype
        if self.chooser.integer(0, 1):
            b = self.new_param((cols,), "f32")
            expr, out = f"{expr} + {b.name}", "f32"
        act = self.chooser.choice(("relu", "gelu", ""))
        expr = f"{act}({expr})" if act else expr
        if out != dtype and self.chooser.integer(0, 1):
            expr, out = f"cast({expr}, {dtype})", dtype
        self.bind(expr, out, (rows, cols))

    def step_rotary(self) -> None:
        """Rotary embedding's `x * cos + concat([-x2, x1], axis=-1) * sin`, a concat of
        three column ranges, or a form the map kernel must refuse (a concat along another
        axis, a constant piece), each feeding an elementwise consumer."""
        x = self.pick(min_rank=1)
        if x.shape[-1] < 2:
            x = self.new_param(x.shape[:-1] + (self.chooser.choice((4, 16, 34)),))
        width = x.shape[-1]
        lead = ", ".join(":" for _ in x.shape[:-1])
        lead = lead + ", " if lead else ""
        cut = self.chooser.integer(1, width - 1)
        first, second = f"{x.name}[{lead}{cut}:]", f"{x.name}[{lead}:{cut}]"
        form = self.chooser.choice(("rope", "rope", "three", "other_axis", "constant"))
        if form == "rope":
            cos = self.new_param(x.shape[-min(x.rank, 2):], x.dtype)
            sin = self.new_param(cos.shape, x.dtype)
            rotated = f"concat([-{first}, {second}], axis=-1)"
            self.bind(f"{x.name} * {cos.name} + {rotated} * {sin.name}", x.dtype, x.shape)
        elif form == "three" and width >= 3:
            mid = self.chooser.integer(cut, width - 1)
            parts = [f"{x.name}[{lead}{mid}:]", f"-{x.name}[{lead}:{cut}]",
                     f"{x.name}[{lead}{cut}:{mid}]"]
            pieces = ", ".join(p for p, n in zip(parts, (width - mid, cut, mid - cut)) if n)
            self.bind(f"exp(tanh(concat([{pieces}], axis=-1))) * 2.0", x.dtype, x.shape)
        elif form == "constant":
            extra = self.chooser.choice((1, 3))
            shape = x.shape[:-1] + (width + extra,)
            zeros = f"zeros([{', '.join(map(str, x.shape[:-1] + (extra,)))}], {x.dtype})"
            self.bind(f"concat([-{x.name}, {zeros}], axis=-1) + 1.0", x.dtype, shape)
        else:
            y = self.new_param((self.chooser.choice((1, 2)),) + x.shape[1:], x.dtype)
            shape = (x.shape[0] + y.shape[0],) + x.shape[1:]
            self.bind(f"concat([{x.name}, -{y.name}], axis=0) * 0.5", x.dtype, shape)

    def step_norm_linear(self) -> None:
        """An RMSNorm of a few rows feeding a product through a cast (decode's normalised
        projections: the RMSNorm-prologue matmul, compiler/passes/norm_gemm_match.py), or a
        form that kernel refuses: many rows, a norm computed in bf16, the normalised value
        used again."""
        rows = self.chooser.choice((1, 1, 2, 3, 40))
        k = self.chooser.choice((16, 48, 64))
        n = self.chooser.choice((16, 40, 96))
        x = self.new_param((rows, k), self.chooser.choice(("f32", "bf16")))
        g = self.new_param((k,), "f32")
        w = self.new_param((n, k), "bf16")
        form = self.chooser.choice(("widened", "widened", "narrow", "reused"))
        source = f"cast({x.name}, f32)" if form != "narrow" else x.name
        operand = f"cast(rmsnorm({source}, {g.name}), bf16)"
        if form == "reused":
            a = self.bind(operand, "bf16", (rows, k))
            operand = a.name
            self.bind(f"{a.name} * 2.0", "bf16", (rows, k))
        self.bind(f"{operand} @ transpose({w.name})", "bf16", (rows, n))

    def step_map_linear(self) -> None:
        """A map of few-row operands feeding a product (SwiGLU's gate times up before the
        down projection: the map-prologue matmul, compiler/passes/prologue_gemm_match.py) in
        its spellings, on a fused gate/up product's halves or on two operands, or a form
        that kernel refuses: many rows, a broadcast bias row, the map used again."""
        rows = self.chooser.choice((1, 1, 2, 5, 80))
        k = self.chooser.choice((16, 48, 64, 96))
        n = self.chooser.choice((16, 40, 96))
        if self.chooser.choice((True, False)):   # a fused gate/up weight, its two halves
            dtype = "bf16"
            x = self.new_param((rows, 32), dtype)
            w = self.new_param((2 * k, 32), dtype)
            gu = f"({x.name} @ transpose({w.name}))"   # one product after cse
            g, u = f"{gu}[:, :{k}]", f"{gu}[:, {k}:]"
        else:
            dtype = self.chooser.choice(("bf16", "f32"))
            g, u = (self.new_param((rows, k), dtype).name for _ in range(2))
        form = self.chooser.choice(("silu", "swapped", "sigmoid", "bias", "reused"))
        if form == "bias":
            b = self.new_param((k,), dtype)
            mapped = f"silu({g} + {b.name}) * {u}"
        elif form == "swapped":
            mapped = f"{u} * silu({g})"
        elif form == "sigmoid":
            mapped = f"{g} * sigmoid({g}) * {u}"
        else:
            mapped = f"silu({g}) * {u}"
        if form == "reused":
            mapped = self.bind(mapped, dtype, (rows, k)).name
        wd = self.new_param((n, k), dtype)
        self.bind(f"({mapped}) @ transpose({wd.name})", dtype, (rows, n))

    # -- the program -----------------------------------------------------------------------
    def text(self, outputs: list[Tensor]) -> str:
        params = ", ".join(f"{p.name}: {p.type_text()}" for p in self.params)
        if len(outputs) == 1:
            ret_type = outputs[0].type_text()
        else:
            ret_type = "(" + ", ".join(o.type_text() for o in outputs) + ")"
        body = "\n".join(self.lines)
        ret = ", ".join(o.name for o in outputs)
        return f"fn main({params}) -> {ret_type} {{\n{body}\n    return {ret}\n}}\n"


def generate_program(chooser: Chooser, max_steps: int = 6, max_rank: int = 4) -> str:
    """A random valid `.zt` program: 1 to `max_steps` statements, 1 to 3 outputs."""
    builder = ProgramBuilder(chooser, max_rank=max_rank)
    builder.new_param(builder.new_shape())
    for index in range(max_steps):
        # "Go on?" before each step (0 stops, so a shrunk record ends the program), and a mark
        # at each step so that the shrinker can delete one step's choices as a block.
        if index > 0 and chooser.integer(0, 3) == 0:
            break
        getattr(chooser, "mark", lambda: None)()
        builder.step()
    getattr(chooser, "mark", lambda: None)()
    computed = [v for v in builder.values if v not in builder.params] or builder.values
    outputs = [computed[-1]]
    for _ in range(chooser.integer(0, 2)):
        extra = chooser.choice(computed)
        if extra not in outputs:
            outputs.append(extra)
    outputs += builder.checked
    return builder.text(outputs)


def random_program(seed: int, max_steps: int = 6) -> str:
    """The program a seed gives (the campaign's unit of work)."""
    return generate_program(RandomChooser(random.Random(seed)), max_steps=max_steps)


def recorded_program(seed: int, max_steps: int = 6) -> tuple[str, list[int], list[int]]:
    """The program a seed gives, the record of choices that regenerates it, and where each
    step's choices start in the record."""
    chooser = RecordingChooser(random.Random(seed))
    return generate_program(chooser, max_steps=max_steps), chooser.record, chooser.marks


def replay_program(record: Sequence[int], max_steps: int = 6) -> str:
    return generate_program(ReplayChooser(record), max_steps=max_steps)


def add_shardings(text: str, chooser: Chooser, axes: dict[str, int]) -> str:
    """`text` with random dims of the entry's parameters and results split over mesh axes
    (`F@tp`): a dim gets an axis whose size divides it, each axis at most once per type.
    Many-chip fuzzing runs the result on the mesh `axes` and compares it with the one-chip
    reference (split results exercise the backward sharding hints)."""
    import re

    def annotate(dims_text: str) -> str:
        dims = [d.strip() for d in dims_text.split(",") if d.strip()]
        used: set[str] = set()
        annotated = []
        for dim in dims:
            options = [a for a, size in axes.items() if a not in used and dim.isdigit()
                       and int(dim) % size == 0]
            if options and chooser.integer(0, 1):
                axis = chooser.choice(options)
                used.add(axis)
                dim = f"{dim}@{axis}"
            annotated.append(dim)
        return ", ".join(annotated)

    head, _, rest = text.partition(") ->")
    params = []
    for match in re.finditer(r"(\w+): (\w+)\[([^\]]*)\]", head):
        name, dtype, dims_text = match.groups()
        params.append((match.span(), f"{name}: {dtype}[{annotate(dims_text)}]"))
    for (start, end), replacement in reversed(params):
        head = head[:start] + replacement + head[end:]
    if not rest:
        return head
    results, brace, body = rest.partition("{")
    results = re.sub(r"(\w+)\[([^\]]*)\]", lambda m: f"{m[1]}[{annotate(m[2])}]", results)
    return head + ") ->" + results + brace + body


# row-wise epilogues after a row-parallel product (the overlap rewrite chunks them with the
# all-reduce) and forms it must leave whole (a reduction over the rows, the rows as a
# product's right operand)
_ROW_EPILOGUES = (
    "{y} + b",
    "softmax({y} + b, axis=-1)",
    "{y} * rsqrt(mean({y} * {y}, axis=-1, keepdims=true) + 1e-6) * b",
    "tanh({y}) @ wo",
    "sum({y}, axis=0, keepdims=true) + {y}",
    "transpose({y}, [1, 0]) @ {y}",
)


def overlap_program(chooser: Chooser, tp: int) -> tuple[str, int]:
    """A Megatron-style program for the overlap rewrite (compiler/shard/overlap.py): a
    column-parallel product with a random activation, a row-parallel product (an all-reduce
    over `tp`) and a random epilogue, some row-wise, some not; and a chunk count to force.
    Returns (program text, chunks)."""
    rows = chooser.choice((4, 8, 16, 32))
    d = chooser.choice((8, 16))
    f = chooser.choice((8, 16)) * tp
    act = chooser.choice(("relu", "gelu", "silu", ""))
    epilogue = chooser.choice(_ROW_EPILOGUES).format(y="y")
    if "transpose" in epilogue:
        rows = d  # the rows of y are also its columns here
    head = (f"fn main(x: f32[{rows}, {d}], w1: f32[{d}, {f}@tp], w2: f32[{f}@tp, {d}], "
            f"b: f32[{d}], wo: f32[{d}, {d}]) -> f32[{d if 'transpose' in epilogue else rows}"
            f", {d}] {{\n")
    body = f"    h = {act}(x @ w1)\n" if act else "    h = x @ w1\n"
    text = head + body + f"    y = h @ w2\n    return {epilogue}\n}}\n"
    chunks = chooser.choice([c for c in (2, 4, 8) if rows % c == 0] or [1])
    return text, chunks
