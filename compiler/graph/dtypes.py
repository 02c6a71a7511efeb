"""Element types of the Graph IR: names, numpy dtypes, promotion and tolerances.

Dtypes are the strings `f32 bf16 f16 fp8 i32 i8 bool` (docs/internals.md section 2).
Promotion follows JAX's lattice restricted to these types: bool < ints < floats, a wider int
wins, and two floats of different families (bf16, f16) meet at f32; fp8 (e4m3fn) sits below
both 16-bit floats.
"""

from __future__ import annotations

import math
import struct
from functools import cache

from zhenwu.isa.dtypes import DTYPES, FLOAT_DTYPES, INT_DTYPES
from zhenwu.isa.dtypes import itemsize as isa_itemsize
from zhenwu.isa.dtypes import np_dtype as isa_np_dtype
from zhenwu.isa.lazy import numpy as np


# The dtype table is isa's (the ground floor); the compiler adds promotion, tolerances and
# limits on top of it. (Built at first use: numpy is imported lazily, isa/lazy.py.)
@cache
def _from_numpy() -> dict:
    return {isa_np_dtype(name): name for name in DTYPES}


# Relative tolerance of a result against the reference, relative to the output's scale.
_TOLERANCE = {"f32": 1e-4, "f16": 1e-2, "bf16": 2e-2, "fp8": 1.5e-1}


def np_dtype(name: str) -> np.dtype:
    """The numpy dtype of a Graph IR dtype name (`fp8` is float8_e4m3fn, `bf16` bfloat16)."""
    return isa_np_dtype(name)


def from_np_dtype(dtype) -> str | None:
    """The Graph IR name of a numpy dtype, or None when zhenwu has no such type."""
    return _from_numpy().get(np.dtype(dtype))


def itemsize(name: str) -> int:
    """Bytes per element."""
    return isa_itemsize(name)


def is_float(name: str) -> bool:
    """f32, bf16, f16 or fp8."""
    return name in FLOAT_DTYPES


def is_int(name: str) -> bool:
    """i32 or i8."""
    return name in INT_DTYPES


def compute_dtype(name: str) -> np.dtype:
    """The numpy dtype arithmetic is done in: f32 for the narrow floats, i32 for i8."""
    if name in ("bf16", "f16", "fp8"):
        return np.dtype(np.float32)
    return isa_np_dtype(name)


def promote(a: str, b: str) -> str:
    """The dtype of a binary operation between tensors of dtypes a and b (JAX promotion)."""
    if a == b:
        return a
    if a == "bool":
        return b
    if b == "bool":
        return a
    if is_int(a) and is_int(b):
        return "i32"
    if is_int(a):
        return b
    if is_int(b):
        return a
    if "f32" in (a, b):
        return "f32"
    if "fp8" in (a, b):
        return b if a == "fp8" else a
    return "f32"  # bf16 with f16


def tolerance(dtype: str) -> float:
    """Largest acceptable relative error (to the output's scale) for results of this dtype.

    Integer and bool results must match exactly (0.0).
    """
    return _TOLERANCE.get(dtype, 0.0)


def limits(name: str) -> tuple[float, float]:
    """The lowest and highest value of a dtype (-inf/inf for floats)."""
    if is_float(name):
        return float("-inf"), float("inf")
    if name == "bool":
        return 0, 1
    info = np.iinfo(isa_np_dtype(name))
    return int(info.min), int(info.max)


# Which dtypes hold every value of which (besides themselves): bool is 0/1; an i8 is exact
# in bf16/f16 (8 and 11 significand bits) but not in fp8 (e4m3 has 4); fp8 is exact in the
# 16-bit floats; an i32 only in itself.
_HOLDS = {
    "bool": ("i8", "i32", "fp8", "bf16", "f16", "f32"),
    "i8": ("i32", "bf16", "f16", "f32"),
    "fp8": ("bf16", "f16", "f32"),
    "bf16": ("f32",),
    "f16": ("f32",),
}


def value_preserving(source: str, target: str) -> bool:
    """Whether casting `source` to `target` keeps every value (no truncation, rounding,
    wrapping or saturation), so that the cast may be skipped or merged with a later one."""
    return source == target or target in _HOLDS.get(source, ())


def round_float(value: float, dtype: str) -> float:
    """`value` as float dtype `dtype` stores it, exactly as numpy's `astype` rounds it (the
    nearest, ties to even; bf16 through f32, as ml_dtypes does). f32, f16 and bf16 are
    rounded here without numpy, so that compiling a program with constants does not import
    it; fp8 and values that overflow to inf take numpy's path."""
    try:
        if dtype == "f32":
            return struct.unpack("<f", struct.pack("<f", value))[0]
        if dtype == "f16":
            return struct.unpack("<e", struct.pack("<e", value))[0]
        if dtype == "bf16" and not math.isfinite(value):
            return value   # inf, -inf and nan are bf16 values
        if dtype == "bf16":
            # as ml_dtypes converts: to f32 first, then the nearest bf16 (ties to even),
            # which is the top half of the f32's bits
            bits = struct.unpack("<I", struct.pack("<f", value))[0]
            bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
            if bits & 0x7FFFFFFF >= 0x7F800000:
                raise OverflowError   # rounds to inf: numpy's path
            return struct.unpack("<f", struct.pack("<I", bits))[0]
    except (OverflowError, struct.error):
        pass
    return float(np.asarray(float(value)).astype(np_dtype(dtype)))

