"""Element types of the M890 and the one conversion rule every instruction uses.

The dtype names are the strings of docs/internals.md: `f32 bf16 f16 fp8 i32 i8 bool`
(`fp8` is `ml_dtypes.float8_e4m3fn`, `bf16` is `ml_dtypes.bfloat16`). Each has a fixed
4-bit code used by the binary encoding; the order below is that code and must not change.
"""

from __future__ import annotations

from functools import cache

from zhenwu.isa.lazy import ml_dtypes
from zhenwu.isa.lazy import numpy as np

# name -> bytes per element; the position is the binary code (do not reorder)
_ITEMSIZE = {"f32": 4, "bf16": 2, "f16": 2, "fp8": 1, "i32": 4, "i8": 1, "bool": 1}


@cache
def _numpy_dtypes() -> dict:
    """name -> numpy dtype (built at first use: numpy is imported lazily, isa/lazy.py)."""
    return {
        "f32": np.dtype(np.float32),
        "bf16": np.dtype(ml_dtypes.bfloat16),
        "f16": np.dtype(np.float16),
        "fp8": np.dtype(ml_dtypes.float8_e4m3fn),
        "i32": np.dtype(np.int32),
        "i8": np.dtype(np.int8),
        "bool": np.dtype(np.bool_),
    }


DTYPES: tuple[str, ...] = tuple(_ITEMSIZE)
FLOAT_DTYPES = ("f32", "bf16", "f16", "fp8")
INT_DTYPES = ("i32", "i8")
# the element types the vector engine computes on (docs/internals.md section 3)
VECTOR_DTYPES = ("f32", "bf16", "f16", "i32", "i8", "bool")
# the input element types of the matrix engine
MX_DTYPES = ("bf16", "f16", "fp8", "f32", "i8")


def np_dtype(name: str) -> np.dtype:
    """The numpy dtype of an M890 dtype name (KeyError for an unknown name)."""
    return _numpy_dtypes()[name]


def itemsize(name: str) -> int:
    """Bytes per element of an M890 dtype (`bool` is one byte)."""
    return _ITEMSIZE[name]


def is_float(name: str) -> bool:
    return name in FLOAT_DTYPES


def compute_dtype(name: str) -> np.dtype:
    """The dtype arithmetic is carried out in: f32 for floats, int64 for ints and bool.

    bf16/f16/fp8 values are widened to f32, computed, and rounded once when stored.
    """
    return np.dtype(np.float32) if is_float(name) else np.dtype(np.int64)


def convert(values: np.ndarray, name: str) -> np.ndarray:
    """Convert an array to dtype `name` the way the chip does.

    - to a float type: round to nearest even (ml_dtypes for bf16/fp8; fp8 e4m3fn has no
      infinity, so an overflow becomes NaN, as in ml_dtypes);
    - float to an integer type: truncate toward zero and saturate to the type's range,
      NaN becomes 0;
    - integer to a narrower integer type: wrap (two's complement);
    - to bool: nonzero is true.
    """
    values = np.asarray(values)
    target = _numpy_dtypes()[name]
    if name == "bool":
        return values != 0
    narrow = _numpy_dtypes()
    source_is_float = values.dtype.kind == "f" or values.dtype in (narrow["bf16"], narrow["fp8"])
    if name in INT_DTYPES and source_is_float:
        info = np.iinfo(target)
        wide = np.nan_to_num(values.astype(np.float64), nan=0.0, posinf=info.max, neginf=info.min)
        return np.clip(np.trunc(wide), info.min, info.max).astype(target)
    if values.dtype == np.bool_:
        values = values.astype(np.int8)
    if values.dtype == target:  # nothing to round: a plain copy (a bf16 round trip is exact)
        return values.copy()
    if source_is_float and values.dtype != np.float64:
        # widen first: exact, and ml_dtypes casts between its own types through f32 anyway
        values = values.astype(np.float32)
    with np.errstate(over="ignore", invalid="ignore"):
        return values.astype(target)
