"""HBM planning: a byte address for every GM tensor (docs/design.md section 5).

Inputs and outputs live for the whole program and get their own ranges. Every intermediate
is live from the first kernel that touches it to the last; intermediates whose live ranges
do not overlap share memory (first-fit over the free ranges, in order of first use). A
tensor that does not fit in the machine's HBM is a `CompileError` at the source span of the
op or parameter that creates it.
"""

from __future__ import annotations

from dataclasses import replace

from zhenwu.compiler.backend.kernel_ir import KernelProgram, Load, Store
from zhenwu.isa.errors import CompileError

ALIGNMENT = 256  # bytes; every tensor starts on a DMA-friendly boundary


def _aligned(nbytes: int) -> int:
    return max(-(-nbytes // ALIGNMENT) * ALIGNMENT, ALIGNMENT)


def live_ranges(program: KernelProgram) -> dict[str, tuple[int, int]]:
    """Tensor name -> (first kernel index, last kernel index) that reads or writes it."""
    ranges: dict[str, tuple[int, int]] = {}
    for index, kernel in enumerate(program.kernels):
        for nest in kernel.nests:
            for stmt in nest.statements():
                if isinstance(stmt, (Load, Store)):
                    name = stmt.view.tensor
                    lo, _ = ranges.get(name, (index, index))
                    ranges[name] = (lo, index)
    return ranges


def plan_hbm(program: KernelProgram, hbm_bytes: int, spans: dict | None = None
             ) -> KernelProgram:
    """The program with every tensor's `address` set; CompileError when HBM overflows."""
    spans = spans or {}
    ranges = live_ranges(program)
    addresses: dict[str, int] = {}
    top = 0

    def too_big(name: str, needed: int):
        tensor = program.tensor(name)
        what = {"in": f"input '{name}'", "out": "output", "temp": "result"}.get(tensor.role,
                                                                              "tensor")
        return CompileError(
            f"{what} {tensor.dtype}[{','.join(map(str, tensor.shape))}] ({tensor.nbytes:,} "
            f"bytes) does not fit in HBM: {needed:,} bytes needed, the machine has "
            f"{hbm_bytes:,}", spans.get(name))

    for tensor in program.tensors:
        if tensor.role != "temp":
            size = _aligned(tensor.nbytes)
            if top + size > hbm_bytes:
                raise too_big(tensor.name, top + size)
            addresses[tensor.name] = top
            top += size
    base = top
    # First fit over temporaries in order of first use; `busy` holds (start, end, last use).
    temps = sorted((t for t in program.tensors if t.role == "temp"),
                   key=lambda t: ranges.get(t.name, (0, 0)))
    busy: list[tuple[int, int, int]] = []
    for tensor in temps:
        first, last = ranges.get(tensor.name, (0, 0))
        busy = [b for b in busy if b[2] >= first]
        size = _aligned(tensor.nbytes)
        start = base
        for lo, hi, _ in sorted(busy):
            if start + size <= lo:
                break
            start = max(start, hi)
        if start + size > hbm_bytes:
            raise too_big(tensor.name, start + size)
        addresses[tensor.name] = start
        busy.append((start, start + size, last))
    tensors = tuple(replace(t, address=addresses[t.name]) for t in program.tensors)
    return replace(program, tensors=tensors)


def peak_bytes(program: KernelProgram) -> int:
    """The highest HBM byte the planned program uses."""
    return max((t.address + t.nbytes for t in program.tensors if t.address is not None),
               default=0)
