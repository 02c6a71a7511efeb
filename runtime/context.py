"""The interpreter's side of `isa.context.ExecContext`.

Two contexts answer the instruction definitions' calls:

- `ScalarContext` (one per core) runs scalar instructions against the core's live registers,
  descriptors, loop stack and program counter;
- `EngineContext` (one per dispatched engine instruction) answers from the registers and
  descriptors snapshotted at dispatch, gives tile views into the core's L1/ACC and GM reads
  and writes, and records every per-core memory range it hands out so that the race detector
  can check it (`accesses`).

Bounds are checked by the memories (`OutOfBounds`), which the engine turns into a ChipTrap
naming the instruction, core and engine.
"""

from __future__ import annotations

import numpy as np
from zhenwu.isa.context import byte_span
from zhenwu.isa.dtypes import itemsize, np_dtype
from zhenwu.isa.errors import ChipTrap
from zhenwu.runtime.memory import GlobalMemory, LocalMemory, OutOfBounds

_MASK64 = (1 << 64) - 1


def wrap64(value: int) -> int:
    """A Python int wrapped to a signed 64-bit value."""
    value &= _MASK64
    return value - (1 << 64) if value >> 63 else value


class ScalarContext:
    """The scalar engine of one core (implements isa.context.ExecContext)."""

    def __init__(self, core, machine, program, chip: int, chips: int):
        self.core = core
        self.machine = machine
        self.program = program
        self.chip = chip
        self.chips = chips
        self.pc = 0
        self.next_pc = 1

    def read_reg(self, index: int) -> int:
        return self.core.regs[index]

    def write_reg(self, index: int, value: int) -> None:
        self.core.regs[index] = value

    def read_desc(self, index: int):
        desc = self.core.descs[index]
        if desc is None:
            raise ChipTrap(f"descriptor d{index} is read before a DESC sets it")
        return desc

    def write_desc(self, index: int, desc) -> None:
        self.core.descs[index] = desc

    def jump(self, index: int) -> None:
        self.next_pc = index

    def get_id(self, which: str) -> int:
        if which == "core":
            return self.core.index
        if which == "chip":
            return self.chip
        if which == "cores":
            return self.machine.cores
        if which == "chips":
            return self.chips
        raise ChipTrap(f"GETID: unknown id '{which}'")

    def push_loop(self, trip_count: int) -> None:
        self.core.loops.append(trip_count)

    def pop_loop(self) -> None:
        self.core.loops.pop()

    def loop_trip_count(self) -> int:
        return self.core.loops[-1]

    # scalar instructions do not touch memory; these exist to satisfy the protocol
    def tile(self, *args, **kwargs):  # pragma: no cover - no scalar instruction uses tiles
        raise ChipTrap("a scalar instruction cannot access L1/ACC")

    gm_read = gm_write = copy_local = tile


class EngineContext:
    """One engine instruction bound at dispatch (implements isa.context.ExecContext).

    `regs`/`descs` are the snapshot; memory calls go to the core's memories and GM and are
    recorded in `accesses` as (space, lo, hi, is_write) for the race detector. A tile view
    is writable, so the context cannot tell a read from a write by the call: a tile at the
    (space, address) of one of the instruction's destination operands (`written_tiles`, see
    runtime/decode.py) is recorded as a write, any other as a read.
    """

    __slots__ = (
        "accesses",
        "chip",
        "chips",
        "core_index",
        "descs",
        "functional",
        "gm",
        "machine",
        "memories",
        "pc",
        "program",
        "regs",
        "written_tiles",
    )

    def __init__(self, machine, program, pc: int, regs: list[int], descs: list,
                 memories: dict[str, LocalMemory], gm: GlobalMemory | None, core_index: int,
                 chip: int, chips: int, written_tiles: frozenset, functional: bool):
        self.machine = machine
        self.program = program
        self.pc = pc
        self.regs = regs
        self.descs = descs
        self.memories = memories
        self.gm = gm
        self.accesses: list[tuple[str, int, int, bool]] = []
        self.core_index = core_index
        self.chip = chip
        self.chips = chips
        self.written_tiles = written_tiles
        self.functional = functional

    def read_reg(self, index: int) -> int:
        return self.regs[index]

    def write_reg(self, index: int, value: int) -> None:
        raise ChipTrap("an engine instruction cannot write a scalar register")

    def read_desc(self, index: int):
        desc = self.descs[index]
        if desc is None:
            raise ChipTrap(f"descriptor d{index} is read before a DESC sets it")
        return desc

    def write_desc(self, index: int, desc) -> None:
        raise ChipTrap("an engine instruction cannot write a descriptor")

    def jump(self, index: int) -> None:
        raise ChipTrap("an engine instruction cannot jump")

    def get_id(self, which: str) -> int:
        return {"core": self.core_index, "chip": self.chip, "cores": self.machine.cores,
                "chips": self.chips}[which]

    def push_loop(self, trip_count: int) -> None:  # pragma: no cover - scalar only
        raise ChipTrap("an engine instruction cannot enter a loop")

    pop_loop = loop_trip_count = push_loop

    # -- memory ----------------------------------------------------------------------------

    def tile(self, space: str, address: int, rows: int, cols: int, dtype: str,
             row_stride: int, col_stride: int) -> np.ndarray:
        memory = self._local(space)
        shape = (rows, cols)
        strides = (row_stride, col_stride)
        lo, hi = byte_span(address, dtype, shape, strides)
        if hi > lo:
            memory.check(lo, hi)
        is_write = (space, address) in self.written_tiles
        self.accesses.append((space, lo, hi, is_write))
        if not self.functional:
            return np.zeros(shape, np_dtype(dtype))
        if hi <= lo:
            return np.zeros(shape, np_dtype(dtype))
        size = itemsize(dtype)
        return np.ndarray(shape, dtype=np_dtype(dtype), buffer=memory.data.data, offset=address,
                          strides=(row_stride * size, col_stride * size))

    def gm_read(self, address: int, dtype: str, shape: tuple[int, ...],
                strides: tuple[int, ...]) -> np.ndarray:
        size = itemsize(dtype)
        if self.gm is None:
            lo, hi = byte_span(address, dtype, shape, strides)
            self._check_gm(lo, hi)
            return np.zeros(shape, np_dtype(dtype))
        return self.gm.gather(address, np_dtype(dtype), tuple(shape),
                              tuple(s * size for s in strides))

    def gm_write(self, address: int, dtype: str, shape: tuple[int, ...],
                 strides: tuple[int, ...], values: np.ndarray) -> None:
        size = itemsize(dtype)
        if self.gm is None:
            lo, hi = byte_span(address, dtype, shape, strides)
            self._check_gm(lo, hi)
            return
        values = np.asarray(values, dtype=np_dtype(dtype)).reshape(shape)
        self.gm.scatter(address, tuple(s * size for s in strides), values)

    def copy_local(self, dst_space: str, dst_address: int, src_space: str, src_address: int,
                   nbytes: int) -> None:
        src = self._local(src_space)
        dst = self._local(dst_space)
        src.check(src_address, src_address + nbytes)
        dst.check(dst_address, dst_address + nbytes)
        self.accesses.append((src_space, src_address, src_address + nbytes, False))
        self.accesses.append((dst_space, dst_address, dst_address + nbytes, True))
        if self.functional and nbytes > 0:
            data = src.data[src_address:src_address + nbytes].copy()
            dst.data[dst_address:dst_address + nbytes] = data

    def chip_read(self, chip: int, address: int, nbytes: int) -> np.ndarray:
        gm = self._chip_gm(chip, address, nbytes)
        return np.zeros(nbytes, np.uint8) if gm is None else gm.read_bytes(address, nbytes)

    def chip_write(self, chip: int, address: int, data: np.ndarray) -> None:
        gm = self._chip_gm(chip, address, data.size)
        if gm is not None:
            gm.write_bytes(address, data)

    def _chip_gm(self, chip: int, address: int, nbytes: int) -> GlobalMemory | None:
        """The GM of `chip` (None in timing-only runs, after the bounds check)."""
        if not 0 <= chip < self.chips:
            raise ChipTrap(f"chip {chip} is not in this run of {self.chips} chips")
        if self.gm is None:
            self._check_gm(address, address + nbytes)
            return None
        gm = self.gm if self.gm.peers is None else self.gm.peers[chip]
        gm.check(address, address + nbytes)
        return gm

    def _local(self, space: str) -> LocalMemory:
        memory = self.memories.get(space)
        if memory is None:
            raise ChipTrap(f"unknown memory space '{space}'")
        return memory

    def _check_gm(self, lo: int, hi: int) -> None:
        if hi > lo and (lo < 0 or hi > self.machine.hbm_bytes):
            raise OutOfBounds("GM", lo, hi, self.machine.hbm_bytes)
