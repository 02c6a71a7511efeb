"""Vector instructions (engine VX) on 2-D `rows x cols` tiles, its special-function unit
(SFU), and row/column reductions.

Every tile operand is read as a `rows x cols` view with its own strides (rs = 0 repeats one
row, cs = 0 one column: broadcasts), in L1 or ACC, of the instruction's dtype. bf16/f16
arithmetic is computed in f32 and rounded once, when the result is stored; integer
arithmetic is computed in 64 bits and wraps to the destination's width. All sources are read
before the destination is written, so a destination may alias a source.
"""

from __future__ import annotations

import math
from functools import cache

from zhenwu.isa.context import ExecContext
from zhenwu.isa.dtypes import DTYPES, VECTOR_DTYPES, is_float, itemsize
from zhenwu.isa.errors import ChipTrap
from zhenwu.isa.instructions.base import (
    Cost,
    InstrDef,
    OperandSpec,
    OptionSpec,
    SuffixSlot,
    check_elements,
    positive_value,
    read_source,
    scalar_value,
    tile_view,
    write_tile,
)
from zhenwu.isa.instructions.costs import sfu_cost, vx_cost
from zhenwu.isa.lazy import numpy as np
from zhenwu.isa.lazy import numpy_function as _np
from zhenwu.isa.machine import Machine
from zhenwu.isa.program import Instruction, Tile

GROUP_VX = "vector"
GROUP_SFU = "special functions"
GROUP_RED = "reductions"

ARITH_DTYPES = ("f32", "bf16", "f16", "i32", "i8")
FLOAT_VX_DTYPES = ("f32", "bf16", "f16")

DST = OperandSpec("dst", ("tile",), "destination tile")
SRC = OperandSpec("src", ("tile",), "source tile")
A = OperandSpec("a", ("tile", "fimm"), "source tile or float immediate")
B = OperandSpec("b", ("tile", "fimm"), "source tile or float immediate")
C = OperandSpec("c", ("tile", "fimm"), "source tile or float immediate")
ROWS = OperandSpec("rows", ("imm", "reg"), "rows", positive=True)
COLS = OperandSpec("cols", ("imm", "reg"), "columns", positive=True)

VX_COST_DOC = ("occupancy ceil(rows·cols·{bytes} / `vx_bytes_per_cycle`) (at least 1), "
               "latency `vx_latency`")


def _shape(instr: Instruction, ctx: ExecContext, at: int) -> tuple[int, int]:
    """(rows, cols) from the operands at positions at, at + 1; ChipTrap unless positive and
    no larger than a per-core memory."""
    rows = positive_value(instr.operands[at], ctx, "rows")
    cols = positive_value(instr.operands[at + 1], ctx, "cols")
    check_elements(ctx.machine, rows * cols, f"a {rows} x {cols} tile")
    return rows, cols


def _vx_cost(at: int, elem_bytes, flops_per_elem: int):
    """The VX cost formula: `elem_bytes(instr)` is the widest operand element."""

    def cost(instr: Instruction, machine: Machine, ctx: ExecContext) -> Cost:
        rows, cols = _shape(instr, ctx, at)
        return vx_cost(machine, rows * cols * elem_bytes(instr), flops_per_elem * rows * cols)

    return cost


def _dt_bytes(instr: Instruction) -> int:
    return itemsize(instr.suffixes[-1])


def _dt(instr: Instruction) -> str:
    return instr.suffixes[-1]


def _vx(mnemonic, opcode, summary, operands, execute, cost, *, group=GROUP_VX,
        dtypes=ARITH_DTYPES, suffixes=None, cost_doc=None, **extra) -> InstrDef:
    return InstrDef(
        mnemonic=mnemonic, opcode=opcode, engine="VX", group=group, summary=summary,
        operands=tuple(operands), cost=cost, execute=execute,
        cost_doc=cost_doc or VX_COST_DOC.format(bytes="bytes(dt)"),
        suffixes=suffixes or (SuffixSlot("dt", dtypes),), sync=True, **extra,
    )


# ---- elementwise binary and ternary ---------------------------------------------------


def _int_floor_div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if np.any(b == 0):
        raise ChipTrap("integer division by zero in VDIV")
    return np.floor_divide(a, b)


def _binary(function_float, function_int=None):
    def execute(instr: Instruction, ctx: ExecContext) -> None:
        dst, a_op, b_op = instr.operands[:3]
        dtype = _dt(instr)
        rows, cols = _shape(instr, ctx, 3)
        a = read_source(ctx, a_op, rows, cols, dtype)
        b = read_source(ctx, b_op, rows, cols, dtype)
        function = function_float if is_float(dtype) else (function_int or function_float)
        with np.errstate(all="ignore"):
            write_tile(ctx, dst, dtype, function(a, b))

    return execute


def _binary_bounds(instr: Instruction, ctx: ExecContext) -> None:
    """What `_binary`'s semantics check, from the addresses alone (`InstrDef.bounds`): the
    shape and every tile operand's range (sources, then the destination), without the
    arithmetic, whose data a timing-only run does not have (an integer VDIV would trap on
    the zeros it is handed)."""
    dtype = _dt(instr)
    rows, cols = _shape(instr, ctx, 3)
    for op in (*instr.operands[1:3], instr.operands[0]):
        if isinstance(op, Tile):
            tile_view(ctx, op, rows, cols, dtype)


_BINARY = {
    "VADD": (0x40, "dst = a + b", _np("add"), None, ARITH_DTYPES),
    "VSUB": (0x41, "dst = a - b", _np("subtract"), None, ARITH_DTYPES),
    "VMUL": (0x42, "dst = a * b", _np("multiply"), None, ARITH_DTYPES),
    "VDIV": (0x43, ("dst = a / b (integers: floor division, a trap on a zero divisor; "
             "compiled `.zt` code selects 0 there instead, as `a // 0` is 0 in the language)"),
             _np("divide"),
             _int_floor_div, ARITH_DTYPES),
    "VMAX": (0x44, "dst = max(a, b)", _np("maximum"), None, ARITH_DTYPES),
    "VMIN": (0x45, "dst = min(a, b)", _np("minimum"), None, ARITH_DTYPES),
    "VPOW": (0x46, "dst = a ** b", _np("power"), None, FLOAT_VX_DTYPES),
}


def _fma(instr: Instruction, ctx: ExecContext) -> None:
    dst, a_op, b_op, c_op = instr.operands[:4]
    dtype = _dt(instr)
    rows, cols = _shape(instr, ctx, 4)
    a, b, c = (read_source(ctx, op, rows, cols, dtype) for op in (a_op, b_op, c_op))
    with np.errstate(all="ignore"):
        write_tile(ctx, dst, dtype, a * b + c)


_COMPARE = {"lt": _np("less"), "le": _np("less_equal"), "gt": _np("greater"),
            "ge": _np("greater_equal"), "eq": _np("equal"), "ne": _np("not_equal")}


def _cmp(instr: Instruction, ctx: ExecContext) -> None:
    dst, a_op, b_op = instr.operands[:3]
    condition, dtype = instr.suffixes
    rows, cols = _shape(instr, ctx, 3)
    a = read_source(ctx, a_op, rows, cols, dtype)
    b = read_source(ctx, b_op, rows, cols, dtype)
    write_tile(ctx, dst, "bool", _COMPARE[condition](a, b))


def _sel(instr: Instruction, ctx: ExecContext) -> None:
    dst, cond_op, a_op, b_op = instr.operands[:4]
    dtype = _dt(instr)
    rows, cols = _shape(instr, ctx, 4)
    cond = read_source(ctx, cond_op, rows, cols, "bool")
    a = read_source(ctx, a_op, rows, cols, dtype)
    b = read_source(ctx, b_op, rows, cols, dtype)
    write_tile(ctx, dst, dtype, np.where(cond != 0, a, b))


def _cvt(instr: Instruction, ctx: ExecContext) -> None:
    dst, src = instr.operands[:2]
    from_dtype, to_dtype = instr.suffixes
    rows, cols = _shape(instr, ctx, 2)
    values = np.array(tile_view(ctx, src, rows, cols, from_dtype))
    write_tile(ctx, dst, to_dtype, values)


def _dup(instr: Instruction, ctx: ExecContext) -> None:
    dst, value = instr.operands[:2]
    dtype = _dt(instr)
    rows, cols = _shape(instr, ctx, 2)
    write_tile(ctx, dst, dtype, read_source(ctx, value, rows, cols, dtype))


def _copy(instr: Instruction, ctx: ExecContext) -> None:
    dst, src = instr.operands[:2]
    dtype = _dt(instr)
    rows, cols = _shape(instr, ctx, 2)
    write_tile(ctx, dst, dtype, np.array(tile_view(ctx, src, rows, cols, dtype)))


def _iota(instr: Instruction, ctx: ExecContext) -> None:
    dst = instr.operands[0]
    dtype = _dt(instr)
    rows, cols = _shape(instr, ctx, 1)
    base = scalar_value(instr.operands[3], ctx)
    values = base + np.arange(rows * cols, dtype=np.int64).reshape(rows, cols)
    write_tile(ctx, dst, dtype, values)


def _trans(instr: Instruction, ctx: ExecContext) -> None:
    dst, src = instr.operands[:2]
    dtype = _dt(instr)
    rows, cols = _shape(instr, ctx, 2)
    values = np.array(tile_view(ctx, src, rows, cols, dtype)).T
    write_tile(ctx, dst, dtype, np.ascontiguousarray(values))


# ---- unary and special functions -------------------------------------------------------

_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)


@cache
def _erf_ufunc():
    return np.frompyfunc(math.erf, 1, 1)   # made at first use: numpy is imported lazily


def _erf(x):
    return _erf_ufunc()(x)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    # exp of -|x| only: no overflow for large |x|
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e))


def _gelu_tanh(x: np.ndarray) -> np.ndarray:
    # 0.5 x (1 + tanh(u)) computed as x sigmoid(2u), the same function: 1 + tanh(u) cancels
    # to a few ulps of 1 for u < -4 (f32 lost every digit of gelu(-5.5)), sigmoid does not
    u = np.float32(_SQRT_2_OVER_PI) * (x + np.float32(0.044715) * x**3)
    return x * _sigmoid(2 * u)


_UNARY = {
    # name: (opcode, summary, function, dtypes)
    "VNEG": (0x50, "dst = -src", _np("negative"), ARITH_DTYPES),
    "VABS": (0x51, "dst = |src|", _np("abs"), ARITH_DTYPES),
    "VRELU": (0x52, "dst = max(src, 0)", lambda x: np.maximum(x, 0), ARITH_DTYPES),
    "VFLOOR": (0x53, "dst = floor(src) (integers unchanged)", _np("floor"), ARITH_DTYPES),
    "VCEIL": (0x54, "dst = ceil(src) (integers unchanged)", _np("ceil"), ARITH_DTYPES),
    "VSIGN": (0x55, "dst = -1, 0 or 1 by the sign of src (NaN stays NaN)", _np("sign"),
              ARITH_DTYPES),
}
_SFU = {
    "VEXP": (0x70, "dst = exp(src)", _np("exp")),
    "VLOG": (0x71, "dst = log(src)", _np("log")),
    "VSQRT": (0x72, "dst = sqrt(src)", _np("sqrt")),
    "VRSQRT": (0x73, "dst = 1 / sqrt(src)", lambda x: 1 / np.sqrt(x)),
    "VRCP": (0x74, "dst = 1 / src", lambda x: 1 / x),
    "VTANH": (0x75, "dst = tanh(src)", _np("tanh")),
    "VSIGM": (0x76, "dst = 1 / (1 + exp(-src))", _sigmoid),
    "VGELU": (0x77, ("dst = 0.5·x·(1 + tanh(u)), u = √(2/π)·(x + 0.044715·x³) (the tanh "
                     "form), evaluated as x·sigmoid(2u): no cancellation for negative x"),
              _gelu_tanh),
    "VERF": (0x78, "dst = erf(src)",
             lambda x: _erf(x.astype(np.float64)).astype(np.float64).astype(np.float32)),
    "VSIN": (0x79, "dst = sin(src)", _np("sin")),
    "VCOS": (0x7A, "dst = cos(src)", _np("cos")),
}
_TRIG = ("VSIN", "VCOS")


def _unary(function):
    def execute(instr: Instruction, ctx: ExecContext) -> None:
        dst, src = instr.operands[:2]
        dtype = _dt(instr)
        rows, cols = _shape(instr, ctx, 2)
        values = read_source(ctx, src, rows, cols, dtype)
        with np.errstate(all="ignore"):
            write_tile(ctx, dst, dtype, function(values))

    return execute


def _sfu_cost(trig: bool):
    def cost(instr: Instruction, machine: Machine, ctx: ExecContext) -> Cost:
        rows, cols = _shape(instr, ctx, 2)
        return sfu_cost(machine, rows * cols, trig)

    return cost


# ---- reductions -----------------------------------------------------------------------

_REDUCE = {
    # name: (opcode, word, reduce, combine)
    "VRSUM": (0x80, "sum", _np("sum"), _np("add")),
    "VRMAX": (0x81, "maximum", _np("max"), _np("maximum")),
    "VRMIN": (0x82, "minimum", _np("min"), _np("minimum")),
    "VRPROD": (0x83, "product", _np("prod"), _np("multiply")),
}


def _reduce(reduce, combine):
    def execute(instr: Instruction, ctx: ExecContext) -> None:
        dst, src = instr.operands[:2]
        dtype = _dt(instr)
        rows, cols = _shape(instr, ctx, 2)
        values = read_source(ctx, src, rows, cols, dtype)
        axis = 1 if instr.has("row") else 0
        with np.errstate(all="ignore"):
            result = reduce(values, axis=axis, keepdims=True)
            if instr.has("acc"):
                out_rows, out_cols = result.shape
                result = combine(read_source(ctx, dst, out_rows, out_cols, dtype), result)
        write_tile(ctx, dst, dtype, result)

    return execute


def _argmax(instr: Instruction, ctx: ExecContext) -> None:
    dval, didx, src = instr.operands[:3]
    dtype = _dt(instr)
    rows, cols = _shape(instr, ctx, 3)
    base = scalar_value(instr.operands[5], ctx)
    values = read_source(ctx, src, rows, cols, dtype)
    position = np.argmax(values, axis=1)
    best = values[np.arange(rows), position].reshape(rows, 1)
    index = (base + position.astype(np.int64)).reshape(rows, 1)
    if instr.has("acc"):
        old_best = read_source(ctx, dval, rows, 1, dtype)
        old_index = read_source(ctx, didx, rows, 1, "i32")
        # ties keep the earlier (first) maximum; NaN is the largest (numpy's argmax): a
        # first NaN is taken over any number and kept against everything after it
        take = (best > old_best) | (np.isnan(best) & ~np.isnan(old_best))
        best = np.where(take, best, old_best)
        index = np.where(take, index, old_index)
    write_tile(ctx, dval, dtype, best)
    write_tile(ctx, didx, "i32", index)


def _reduce_defs() -> list[InstrDef]:
    defs = []
    for name, (opcode, word, reduce, combine) in _REDUCE.items():
        defs.append(_vx(
            name, opcode,
            f"the {word} of src (rows x cols) along each row (`.row`: dst is rows x 1) or each "
            f"column (`.col`: dst is 1 x cols); `.acc` combines it with dst's {word}",
            [DST, SRC, ROWS, COLS], _reduce(reduce, combine), _vx_cost(2, _dt_bytes, 1),
            group=GROUP_RED,
            options=(OptionSpec("row", doc="reduce along rows"),
                     OptionSpec("col", doc="reduce along columns"),
                     OptionSpec("acc", doc="combine with dst")),
            required=(("row", "col"),),
        ))
    defs.append(_vx(
        "VRARGMAX", 0x84,
        "per row of src (rows x cols): dval = the maximum, didx (i32) = base + the column of "
        "its first occurrence (dval, didx rows x 1); NaN counts as larger than every number, "
        "so the first NaN wins, as in numpy's argmax; `.acc` replaces dval/didx only where "
        "the new maximum is strictly greater or a NaN over a number (the first maximum "
        "across calls wins)",
        [OperandSpec("dval", ("tile",), "maxima"),
         OperandSpec("didx", ("tile",), "indices (i32)"), SRC, ROWS, COLS,
         OperandSpec("base", ("imm", "reg"), "index of column 0")],
        _argmax, _vx_cost(3, lambda instr: max(_dt_bytes(instr), 4), 1), group=GROUP_RED,
        options=(OptionSpec("row", doc="along rows (the only form)"),
                 OptionSpec("acc", doc="combine with dval/didx")),
        required=(("row",),),
        cost_doc=VX_COST_DOC.format(bytes="max(bytes(dt), 4)"),
    ))
    return defs


DEFS: list[InstrDef] = [
    *[
        _vx(name, opcode, summary, [DST, A, B, ROWS, COLS], _binary(f_float, f_int),
            _vx_cost(3, _dt_bytes, 1), dtypes=dtypes, bounds=_binary_bounds)
        for name, (opcode, summary, f_float, f_int, dtypes) in _BINARY.items()
    ],
    _vx("VFMA", 0x47, "dst = a * b + c (computed in f32 or 64-bit integers, not fused)",
        [DST, A, B, C, ROWS, COLS], _fma, _vx_cost(4, _dt_bytes, 2)),
    _vx("VCMP", 0x48, "dst (bool) = a <cond> b, cond one of lt le gt ge eq ne",
        [OperandSpec("dst", ("tile",), "destination tile (bool)"), A, B, ROWS, COLS],
        _cmp, _vx_cost(3, _dt_bytes, 1),
        suffixes=(SuffixSlot("cond", tuple(_COMPARE)), SuffixSlot("dt", ARITH_DTYPES))),
    _vx("VSEL", 0x49, "dst = a where cond else b (cond a bool tile)",
        [DST, OperandSpec("cond", ("tile",), "condition tile (bool)"), A, B, ROWS, COLS],
        _sel, _vx_cost(4, _dt_bytes, 0), dtypes=VECTOR_DTYPES),
    _vx("VCVT", 0x4A, "dst (<to>) = src (<from>) converted: floats round to nearest even; "
        "float to integer truncates toward zero and saturates (NaN to 0); integers wrap; "
        "nonzero to bool is 1",
        [DST, SRC, ROWS, COLS], _cvt,
        _vx_cost(2, lambda instr: max(itemsize(s) for s in instr.suffixes), 0),
        suffixes=(SuffixSlot("from", DTYPES), SuffixSlot("to", DTYPES)),
        cost_doc=VX_COST_DOC.format(bytes="max(bytes(from), bytes(to))")),
    _vx("VDUP", 0x4B, "dst = the value in every element (a float immediate, an integer or "
        "a register)",
        [DST, OperandSpec("value", ("fimm", "imm", "reg"), "the value"), ROWS, COLS],
        _dup, _vx_cost(2, _dt_bytes, 0), dtypes=VECTOR_DTYPES),
    _vx("VCOPY", 0x4C, "dst = src", [DST, SRC, ROWS, COLS], _copy, _vx_cost(2, _dt_bytes, 0),
        dtypes=VECTOR_DTYPES),
    _vx("VIOTA", 0x4D, "dst[i, j] = base + i·cols + j",
        [DST, ROWS, COLS, OperandSpec("base", ("imm", "reg"), "the first value")], _iota,
        _vx_cost(1, _dt_bytes, 0)),
    _vx("VTRANS", 0x4E, "dst (cols x rows) = the transpose of src (rows x cols)",
        [DST, SRC, ROWS, COLS], _trans, _vx_cost(2, _dt_bytes, 0), dtypes=VECTOR_DTYPES),
    *[
        _vx(name, opcode, summary, [DST, SRC, ROWS, COLS], _unary(function),
            _vx_cost(2, _dt_bytes, 1), dtypes=dtypes)
        for name, (opcode, summary, function, dtypes) in _UNARY.items()
    ],
    *[
        _vx(name, opcode, summary + " (computed in f32)", [DST, SRC, ROWS, COLS],
            _unary(function), _sfu_cost(name in _TRIG), group=GROUP_SFU,
            dtypes=FLOAT_VX_DTYPES, unit="SFU",
            cost_doc="occupancy ceil(rows·cols / `"
            + ("sfu_trig_elems_per_cycle" if name in _TRIG else "sfu_elems_per_cycle")
            + "`) (at least 1), latency `sfu_latency`")
        for name, (opcode, summary, function) in _SFU.items()
    ],
    *_reduce_defs(),
]
