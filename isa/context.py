"""What an instruction's semantics and cost need from the machine running it.

The interpreter (runtime/) implements `ExecContext`; each instruction's `execute(instr, ctx)`
and `cost(instr, machine, ctx)` in isa/instructions/ only call these methods, so that the
numpy semantics are written once, here in isa/, and the interpreter just calls them.

Register values of an engine instruction are read when it is dispatched: the interpreter
answers `read_reg`/`read_desc` for an engine instruction with the values snapshotted at its
dispatch (`Instruction.reads_regs()` and `reads_descs()` list what to snapshot).
Events (`.wait`/`.sig`, WAIT, SIG, BAR) are the interpreter's: their `execute` does nothing.
Bounds violations (a tile or a GM range outside its memory space) are raised by the context as
`ChipTrap`; semantics raise `ChipTrap` themselves for everything else that stops the chip
(integer division by zero, MMA sizes not multiples of the MX array, an unsupported dtype).

`helpers` below give the interpreter ready-made strided views with bounds checks.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from zhenwu.isa.dtypes import itemsize, np_dtype
from zhenwu.isa.errors import ChipTrap
from zhenwu.isa.lazy import numpy as np

if TYPE_CHECKING:
    from zhenwu.isa.machine import Machine
    from zhenwu.isa.program import Descriptor, Program


class ExecContext(Protocol):
    """The interface between the instruction definitions and the interpreter."""

    machine: Machine
    """The machine description the program runs on."""
    program: Program
    """The running program (for tensor addresses and `program.targets`)."""
    pc: int
    """The index of the instruction being executed."""

    def read_reg(self, index: int) -> int:
        """Scalar register rN as a Python int (the dispatch snapshot for engine instrs)."""
        ...

    def write_reg(self, index: int, value: int) -> None:
        """Set rN; `value` is already wrapped to a signed 64-bit integer."""
        ...

    def read_desc(self, index: int) -> Descriptor:
        """Descriptor register dN (the dispatch snapshot for DMAs); ChipTrap if never set."""
        ...

    def write_desc(self, index: int, desc: Descriptor) -> None:
        """Set dN."""
        ...

    def jump(self, index: int) -> None:
        """Continue the scalar stream at instruction `index` instead of pc + 1."""
        ...

    def get_id(self, which: str) -> int:
        """`core` (this core's index), `chip`, `cores` (per chip), `chips` (in the run)."""
        ...

    def push_loop(self, trip_count: int) -> None:
        """Enter a LOOP: remember its trip count (loops nest, innermost last)."""
        ...

    def pop_loop(self) -> None:
        """Leave the innermost LOOP (at its end, or when a branch jumps out of it)."""
        ...

    def loop_trip_count(self) -> int:
        """The trip count of the innermost LOOP (ChipTrap when none is active)."""
        ...

    def tile(self, space: str, address: int, rows: int, cols: int, dtype: str,
             row_stride: int, col_stride: int) -> np.ndarray:
        """A writable (rows, cols) view of dtype `dtype` at byte `address` of this core's
        `space` ("L1" or "ACC"); strides in elements, 0 repeats a row/column (broadcast).
        ChipTrap when any element lies outside the space."""
        ...

    def gm_read(self, address: int, dtype: str, shape: tuple[int, ...],
                strides: tuple[int, ...]) -> np.ndarray:
        """An array (a copy) of `shape` read from GM at byte `address`, strides in elements."""
        ...

    def gm_write(self, address: int, dtype: str, shape: tuple[int, ...],
                 strides: tuple[int, ...], values: np.ndarray) -> None:
        """Write `values` (already of `dtype` and `shape`) to GM; strides in elements."""
        ...

    def copy_local(self, dst_space: str, dst_address: int, src_space: str, src_address: int,
                   nbytes: int) -> None:
        """Copy `nbytes` bytes within this core's L1/ACC (DMA.MOV); overlapping is memmove."""
        ...

    def chip_read(self, chip: int, address: int, nbytes: int) -> np.ndarray:
        """`nbytes` bytes (a uint8 copy) of the GM of chip `chip` of the run (this chip or a
        peer) from byte `address`; ChipTrap when there is no such chip or range."""
        ...

    def chip_write(self, chip: int, address: int, data: np.ndarray) -> None:
        """Write the bytes `data` (uint8) to the GM of chip `chip` at byte `address`."""
        ...


# ---- helpers for the interpreter --------------------------------------------------------


def strided_view(buffer: np.ndarray, space: str, address: int, dtype: str,
                 shape: tuple[int, ...], strides: tuple[int, ...]) -> np.ndarray:
    """A view of `dtype` elements over a flat uint8 `buffer` (strides in elements).

    ChipTrap when the view reaches outside the buffer. A zero stride repeats elements (a
    broadcast view: write through it only when that is what is meant).
    """
    lo, hi = byte_span(address, dtype, shape, strides)
    if hi > lo and (lo < 0 or hi > buffer.size):
        raise ChipTrap(
            f"{space} access [{lo:#x}, {hi:#x}) is outside {space} ({buffer.size:#x} bytes)"
        )
    size = itemsize(dtype)
    if hi <= lo:
        return np.zeros(shape, dtype=np_dtype(dtype))
    return np.ndarray(
        shape, dtype=np_dtype(dtype), buffer=buffer.data, offset=address,
        strides=tuple(s * size for s in strides),
    )


def byte_span(address: int, dtype: str, shape: tuple[int, ...],
              strides: tuple[int, ...]) -> tuple[int, int]:
    """The byte range [lo, hi) a strided access touches ((address, address) when empty)."""
    size = itemsize(dtype)
    lo = hi = 0
    for n, stride in zip(shape, strides):
        if n <= 0:
            return address, address
        reach = (n - 1) * stride * size
        if reach < 0:
            lo += reach
        else:
            hi += reach
    return address + lo, address + hi + size
