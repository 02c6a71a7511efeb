"""The numpy reference evaluator of the Graph IR: the oracle for every test.

Each op runs its registry reference (`OPS[kind].reference`) on operands converted to their
compute dtype (f32 for bf16/f16/fp8, so that matrix products accumulate in f32), and the
result is rounded once to the op's result dtype (through ml_dtypes for the narrow floats).
"""

from __future__ import annotations

import os

import numpy as np
from zhenwu.compiler.graph.dtypes import compute_dtype, from_np_dtype, np_dtype
from zhenwu.compiler.graph.ir import Function
from zhenwu.compiler.graph.ops import OPS
from zhenwu.isa.errors import Diagnostic, InputError


def host_memory_bytes() -> int:
    """This host's physical memory (2**40 where the system does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return 1 << 40


def _check_size(op, limit: int) -> None:
    """An op whose operands or result hold more bytes than the host has (numpy would
    allocate them, or walk a broadcast view of them for hours) is a diagnostic at the op."""
    values = [*op.inputs, op.result]
    nbytes = max(v.type.numel * np.dtype(compute_dtype(v.type.dtype)).itemsize for v in values)
    if nbytes > limit:
        raise Diagnostic(f"{op.kind} works on {nbytes:,} bytes, more than this host's memory "
                         f"({limit:,} bytes) for the reference evaluator; use smaller tensors",
                         op.span)


def _as_param(name: str, array, expected) -> np.ndarray:
    array = np.asarray(array)
    if array.shape != expected.shape:
        raise InputError(f"input '{name}' has shape {list(array.shape)}, but the parameter is "
                         f"{expected}")
    got = from_np_dtype(array.dtype)
    if got != expected.dtype and not (got == "f32" or array.dtype == np.float64):
        raise InputError(f"input '{name}' has dtype {got or array.dtype}, but the parameter is "
                         f"{expected}")
    return array.astype(np_dtype(expected.dtype))


def evaluate(fn: Function, inputs: dict[str, np.ndarray], *, widen: bool = False
             ) -> list[np.ndarray]:
    """Run `fn` on `inputs` (keyed by parameter name) and return its outputs, each an array
    of the output's dtype (bf16/fp8 as ml_dtypes arrays).

    `widen`: the narrow floats (bf16, f16, fp8) are not rounded after each op; every value
    of those dtypes stays f32 (the inputs keep the values given, rounded to their parameter
    dtype). This is the program as it would compute without narrow rounding, which
    `--check` uses to tell an ill-conditioned program from a wrong one (compiler/check.py).

    Inputs given as f32 (or f64) arrays are cast to the parameter dtype; any other dtype or
    shape mismatch, a missing or an unknown input raises InputError.
    """
    names = [p.name for p in fn.params]
    missing = [n for n in names if n not in inputs]
    if missing:
        raise InputError(f"missing input{'s' if len(missing) > 1 else ''}: "
                         f"{', '.join(repr(n) for n in missing)}")
    extra = [n for n in inputs if n not in names]
    if extra:
        raise InputError(f"unknown input '{extra[0]}'; the parameters are {', '.join(names)}")
    env: dict[int, np.ndarray] = {}
    for param in fn.params:
        env[param.id] = _as_param(param.name, inputs[param.name], param.type)
    # Free each intermediate after its last use, so that peak memory follows liveness.
    last_use = {v.id: index for index, op in enumerate(fn.ops) for v in op.inputs}
    keep = {v.id for v in fn.outputs}
    limit = host_memory_bytes()
    with np.errstate(all="ignore"):
        for index, op in enumerate(fn.ops):
            _check_size(op, limit)
            operands = [env[v.id].astype(compute_dtype(v.type.dtype), copy=False)
                        for v in op.inputs]
            try:
                result = np.asarray(OPS[op.kind].reference(operands, op.attrs))
            except MemoryError:
                raise Diagnostic(f"{op.kind}: this host has not the memory for the reference "
                                 "evaluator; use smaller tensors", op.span) from None
            target = (compute_dtype(op.result.type.dtype) if widen
                      else np_dtype(op.result.type.dtype))
            if result.dtype != target:
                result = result.astype(target)
            if result.shape != op.result.type.shape:  # a rule/reference disagreement is a bug
                raise AssertionError(f"%{op.id} = {op.kind}: reference gave shape "
                                     f"{result.shape}, expected {op.result.type}")
            env[op.id] = result
            for value in set(op.inputs):
                if last_use[value.id] == index and value.id not in keep:
                    del env[value.id]
    return [env[v.id] for v in fn.outputs]
