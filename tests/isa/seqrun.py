"""A minimal functional executor for tests of the instruction semantics (not the interpreter).

It implements `isa.context.ExecContext` and runs each core's stream in program order, every
engine instruction at its dispatch (events ignored: a race-free program whose producers come
before their consumers in program order computes the same values). Cores run one after the
other, so it cannot run programs whose cores talk to each other through GM.
"""

from __future__ import annotations

import math

import numpy as np
from zhenwu.isa.context import strided_view
from zhenwu.isa.dtypes import convert, itemsize, np_dtype
from zhenwu.isa.errors import ChipTrap
from zhenwu.isa.instructions import INSTRUCTIONS
from zhenwu.isa.machine import Machine
from zhenwu.isa.program import Descriptor, Program


class SeqContext:
    def __init__(self, program: Program, machine: Machine, gm: np.ndarray, core: int,
                 cores: int):
        self.program = program
        self.machine = machine
        self.gm = gm
        self.core = core
        self.cores = cores
        self.regs = [0] * 32
        self.descs: dict[int, Descriptor] = {}
        self.l1 = np.zeros(machine.l1_bytes, dtype=np.uint8)
        self.acc = np.zeros(machine.acc_bytes, dtype=np.uint8)
        self.loops: list[int] = []
        self.pc = 0
        self.next_pc = 0

    def read_reg(self, index: int) -> int:
        return self.regs[index]

    def write_reg(self, index: int, value: int) -> None:
        self.regs[index] = value

    def read_desc(self, index: int) -> Descriptor:
        if index not in self.descs:
            raise ChipTrap(f"d{index} read before DESC")
        return self.descs[index]

    def write_desc(self, index: int, desc: Descriptor) -> None:
        self.descs[index] = desc

    def jump(self, index: int) -> None:
        self.next_pc = index

    def get_id(self, which: str) -> int:
        return {"core": self.core, "chip": 0, "cores": self.cores, "chips": 1}[which]

    def push_loop(self, trip_count: int) -> None:
        self.loops.append(trip_count)

    def pop_loop(self) -> None:
        self.loops.pop()

    def loop_trip_count(self) -> int:
        if not self.loops:
            raise ChipTrap("ENDLOOP with no active LOOP")
        return self.loops[-1]

    def _space(self, space: str) -> np.ndarray:
        return self.l1 if space == "L1" else self.acc

    def tile(self, space, address, rows, cols, dtype, row_stride, col_stride):
        return strided_view(self._space(space), space, address, dtype, (rows, cols),
                            (row_stride, col_stride))

    def gm_read(self, address, dtype, shape, strides):
        return np.array(strided_view(self.gm, "GM", address, dtype, shape, strides))

    def gm_write(self, address, dtype, shape, strides, values):
        strided_view(self.gm, "GM", address, dtype, shape, strides)[...] = values

    def copy_local(self, dst_space, dst_address, src_space, src_address, nbytes):
        src = np.array(strided_view(self._space(src_space), src_space, src_address, "i8",
                                    (nbytes,), (1,)))
        strided_view(self._space(dst_space), dst_space, dst_address, "i8", (nbytes,),
                     (1,))[...] = src


def run(program: Program, machine: Machine, inputs: dict[str, np.ndarray],
        cores: int | None = None, max_steps: int = 10_000_000) -> dict[str, np.ndarray]:
    """Run every core in turn; returns the out/inout tensors by name."""
    end = max((t.address + t.nbytes for t in program.tensors), default=0)
    gm = np.zeros(end + 64, dtype=np.uint8)
    for tensor in program.tensors:
        if tensor.name in inputs:
            data = convert(np.asarray(inputs[tensor.name]), tensor.dtype).reshape(tensor.shape)
            gm[tensor.address:tensor.address + tensor.nbytes] = np.frombuffer(
                np.ascontiguousarray(data).tobytes(), dtype=np.uint8)
    cores = machine.cores if cores is None else cores
    for core in range(cores):
        execute(SeqContext(program, machine, gm, core, cores), max_steps)
    outputs = {}
    for tensor in program.outputs:
        raw = gm[tensor.address:tensor.address + tensor.nbytes].tobytes()
        outputs[tensor.name] = np.frombuffer(raw, dtype=np_dtype(tensor.dtype)).reshape(
            tensor.shape).copy()
    return outputs


def execute(ctx: SeqContext, max_steps: int = 10_000_000) -> SeqContext:
    """Run one core's stream to HALT or the end, every instruction at once, in order."""
    program = ctx.program
    steps = 0
    while ctx.pc < len(program.instructions):
        instr = program.instructions[ctx.pc]
        ctx.next_pc = ctx.pc + 1
        if instr.mnemonic == "HALT":
            break
        run_it = True
        if instr.predicate is not None:
            run_it = (ctx.regs[instr.predicate.reg] != 0) != instr.predicate.negate
        if run_it:
            INSTRUCTIONS[instr.mnemonic].execute(instr, ctx)
        ctx.pc = ctx.next_pc
        steps += 1
        if steps > max_steps:
            raise ChipTrap("runaway")
    return ctx


def write_gm(gm: np.ndarray, address: int, values: np.ndarray) -> None:
    data = np.ascontiguousarray(values).tobytes()
    gm[address:address + len(data)] = np.frombuffer(data, dtype=np.uint8)


def read_gm(gm: np.ndarray, address: int, dtype: str, shape: tuple[int, ...]) -> np.ndarray:
    size = math.prod(shape) * itemsize(dtype)
    return np.frombuffer(gm[address:address + size].tobytes(), dtype=np_dtype(dtype)).reshape(
        shape).copy()
