"""The program model: what the assembler produces, the encoder packs and the interpreter runs.

A `Program` is a machine name (or None), the GM tensors it reads and writes (`TensorDecl`),
a flat tuple of `Instruction`s, and the markers (labels and kernel starts) that sit between
them. Control flow is resolved when the program is built: `program.targets[i]` is where
instruction i may jump (a branch's label, the instruction after a LOOP's ENDLOOP, an
ENDLOOP's LOOP), so that the interpreter jumps by index; `program.loop_exits[i]` is how many
LOOPs a taken branch leaves (a branch may leave loops, never enter one).

Operands are small frozen dataclasses whose `str()` is their assembly text; equality is
structural everywhere (source spans are ignored), so round-trip tests compare programs with
`==`.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass, field

from zhenwu.isa.errors import AssemblyError, SourceSpan

NUM_REGS = 32
NUM_DESCS = 32
NUM_EVENTS = 32
MAX_EVENT_COUNT = 64  # a `.wait`/`.sig` count is 1..64 (6 bits in the binary)
MAX_RANK = 5
TENSOR_ROLES = ("in", "out", "inout", "temp", "const")
SPACES = ("L1", "ACC")
ENGINES = ("S", "LD", "MX", "VX", "ST", "NET")  # NET: reserved for DMA.PUT and COLL.*


# ---- operands -----------------------------------------------------------------------


@dataclass(frozen=True)
class Reg:
    """A scalar register `rN` (64-bit integer)."""

    index: int

    def __str__(self) -> str:
        return f"r{self.index}"


@dataclass(frozen=True)
class DReg:
    """A descriptor register `dN`."""

    index: int

    def __str__(self) -> str:
        return f"d{self.index}"


@dataclass(frozen=True)
class Imm:
    """An integer immediate (printed in decimal)."""

    value: int

    def __str__(self) -> str:
        return str(self.value)


@dataclass(frozen=True, eq=False)
class FImm:
    """A float immediate `#1.5`, `#-inf`. Equal when the bits are equal (NaN == NaN)."""

    value: float

    def __str__(self) -> str:
        return "#" + format_float(self.value)

    def _bits(self) -> bytes:
        return struct.pack("<d", self.value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, FImm) and self._bits() == other._bits()

    def __hash__(self) -> int:
        return hash(self._bits())


def format_float(value: float) -> str:
    """The canonical text of a float: Python's shortest repr (`1.5`, `1e-05`, `inf`, `nan`)."""
    if math.isnan(value):
        return "nan"
    return repr(float(value))


@dataclass(frozen=True)
class Event:
    """An event `Ek` with a count (`E3:2`; the count defaults to 1 and prints only when != 1)."""

    index: int
    count: int = 1

    def __str__(self) -> str:
        return f"E{self.index}" if self.count == 1 else f"E{self.index}:{self.count}"


@dataclass(frozen=True)
class Addr:
    """An address or coordinate: `imm`, `rN`, or `rN+imm` / `rN-imm`."""

    reg: int | None
    offset: int = 0

    def __str__(self) -> str:
        if self.reg is None:
            return str(self.offset)
        if self.offset == 0:
            return f"r{self.reg}"
        sign = "+" if self.offset > 0 else "-"
        return f"r{self.reg}{sign}{abs(self.offset)}"


@dataclass(frozen=True)
class Tile:
    """A 2-D tile in a per-core space: `L1[base]`, `L1[base, rs]`, `ACC[base, rs, cs]`.

    `base` is in bytes; `row_stride`/`col_stride` in elements, None when not written (then
    rs = cols and cs = 1 of the shape the instruction gives the operand).
    """

    space: str
    base: Addr
    row_stride: int | None = None
    col_stride: int | None = None

    def __str__(self) -> str:
        parts = [str(self.base)]
        if self.row_stride is not None:
            parts.append(str(self.row_stride))
        if self.col_stride is not None:
            parts.append(str(self.col_stride))
        return f"{self.space}[{', '.join(parts)}]"


@dataclass(frozen=True)
class DescRef:
    """A descriptor with a box position: `d2[r1, 0, r3+16]` (element coordinates)."""

    index: int
    coords: tuple[Addr, ...]

    def __str__(self) -> str:
        return f"d{self.index}[{', '.join(map(str, self.coords))}]"


@dataclass(frozen=True)
class LabelRef:
    """A branch target by label name."""

    name: str

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True)
class Keyword:
    """A word from a fixed set: GETID's `core|chip|cores|chips`, DESC's dtype."""

    name: str

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True)
class Symbol:
    """A GM tensor by name with a byte offset: `x`, `x+64` (DESC's base)."""

    name: str
    offset: int = 0

    def __str__(self) -> str:
        if self.offset == 0:
            return self.name
        return f"{self.name}{'+' if self.offset > 0 else '-'}{abs(self.offset)}"


@dataclass(frozen=True)
class IntList:
    """A list of integers `[64, 784]` (DESC's dims, strides and box)."""

    values: tuple[int, ...]

    def __str__(self) -> str:
        return f"[{', '.join(map(str, self.values))}]"


Operand = Reg | DReg | Imm | FImm | Event | Addr | Tile | DescRef | LabelRef | Keyword | Symbol | IntList


@dataclass(frozen=True)
class Option:
    """A modifier after the operands: `.T`, `.pad #-inf`, `.acc`."""

    name: str
    value: FImm | None = None

    def __str__(self) -> str:
        return f".{self.name}" if self.value is None else f".{self.name} {self.value}"


@dataclass(frozen=True)
class Predicate:
    """`@rN` (run when rN != 0) or `@!rN` (run when rN == 0)."""

    reg: int
    negate: bool = False

    def __str__(self) -> str:
        return f"@{'!' if self.negate else ''}r{self.reg}"


# ---- instructions and programs ------------------------------------------------------


@dataclass(frozen=True)
class Instruction:
    """One instruction. `mnemonic` is the base name (`MMA`, `DMA.LD`, `VADD`); `suffixes` the
    dot-suffixes after it in order (`("bf16", "f32")`); `options` in the order the
    instruction's definition lists them; `waits`/`sigs` the `.wait`/`.sig` fields.
    """

    mnemonic: str
    suffixes: tuple[str, ...] = ()
    operands: tuple[Operand, ...] = ()
    options: tuple[Option, ...] = ()
    waits: tuple[Event, ...] = ()
    sigs: tuple[Event, ...] = ()
    predicate: Predicate | None = None
    span: SourceSpan | None = field(default=None, compare=False, repr=False)

    @property
    def name(self) -> str:
        """The full mnemonic with its suffixes: `MMA.bf16.f32`."""
        return ".".join((self.mnemonic, *self.suffixes))

    def option(self, name: str) -> Option | None:
        for opt in self.options:
            if opt.name == name:
                return opt
        return None

    def has(self, name: str) -> bool:
        """Whether option `.name` is present."""
        return self.option(name) is not None

    def reads_regs(self) -> tuple[int, ...]:
        """The scalar registers this instruction's operands and predicate read (sorted).

        An engine instruction's register operands are read when it is dispatched, so the
        interpreter snapshots these (and `reads_descs`) at dispatch.
        """
        regs: set[int] = set()
        if self.predicate is not None:
            regs.add(self.predicate.reg)
        for op in self.operands:
            regs.update(_operand_regs(op))
        return tuple(sorted(regs))

    def reads_descs(self) -> tuple[int, ...]:
        """The descriptor registers this instruction reads (DMA.LD/DMA.ST)."""
        return tuple(sorted({op.index for op in self.operands if isinstance(op, DescRef)}))

    def __str__(self) -> str:
        from zhenwu.isa.asm_print import print_instruction

        return print_instruction(self)


def _operand_regs(op: Operand) -> set[int]:
    if isinstance(op, Reg):
        return {op.index}
    if isinstance(op, Addr):
        return set() if op.reg is None else {op.reg}
    if isinstance(op, Tile):
        return _operand_regs(op.base)
    if isinstance(op, DescRef):
        return {c.reg for c in op.coords if c.reg is not None}
    return set()


@dataclass(frozen=True)
class TensorDecl:
    """A GM tensor: `.tensor name, dtype, [dims], address, role`."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    address: int
    role: str
    span: SourceSpan | None = field(default=None, compare=False, repr=False)

    @property
    def nbytes(self) -> int:
        from zhenwu.isa.dtypes import itemsize

        return math.prod(self.shape) * itemsize(self.dtype)


@dataclass(frozen=True)
class Marker:
    """A label (`kind == "label"`) or a kernel start (`"kernel"`) before instruction `index`
    (`index == len(instructions)` for one after the last instruction)."""

    index: int
    kind: str
    name: str
    span: SourceSpan | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class Descriptor:
    """The value of a descriptor register: a GM tensor view (TMA-like).

    `address` in bytes; `dims`, `strides` (elements; 0 broadcasts) and `box` of one rank.
    """

    address: int
    dtype: str
    dims: tuple[int, ...]
    strides: tuple[int, ...]
    box: tuple[int, ...]


def _check_overlaps(tensors) -> None:
    """Tensors the caller sees (every role but `temp`) must not share GM bytes with each
    other: writing one would silently change the other. A temporary may share addresses with
    any tensor (the compiler reuses the space of dead values, and a many-chip program reduces
    a partial sum in place into the result it becomes)."""
    # only pairs of non-temporaries can conflict: leaving the temporaries out keeps the
    # scan linear when many of them share addresses
    placed = sorted((t for t in tensors if t.role != "temp" and t.nbytes),
                    key=lambda t: t.address)
    for index, tensor in enumerate(placed):
        for other in placed[index + 1:]:
            if other.address >= tensor.address + tensor.nbytes:
                break
            if tensor.role != "temp" and other.role != "temp":
                raise AssemblyError(
                    f"tensor '{other.name}' [{other.address:#x}, "
                    f"{other.address + other.nbytes:#x}) overlaps tensor '{tensor.name}' "
                    f"[{tensor.address:#x}, {tensor.address + tensor.nbytes:#x})", other.span)


@dataclass(frozen=True)
class Program:
    """A whole assembly program. Build one with `Program.build(...)` (checks labels and loop
    nesting and fills `labels`, `targets`, `loop_exits`); `==` compares machine, tensors, instructions and
    markers."""

    machine: str | None
    tensors: tuple[TensorDecl, ...]
    instructions: tuple[Instruction, ...]
    markers: tuple[Marker, ...] = ()
    labels: dict[str, int] = field(default_factory=dict, compare=False, repr=False)
    targets: tuple[int | None, ...] = field(default=(), compare=False, repr=False)
    loop_exits: tuple[int, ...] = field(default=(), compare=False, repr=False)

    @staticmethod
    def build(
        machine: str | None,
        tensors: list[TensorDecl] | tuple[TensorDecl, ...],
        instructions: list[Instruction] | tuple[Instruction, ...],
        markers: list[Marker] | tuple[Marker, ...] = (),
    ) -> Program:
        """A resolved program; AssemblyError for duplicate or unknown labels, duplicate
        tensors, or unbalanced LOOP/ENDLOOP (with the offending instruction's span)."""
        instructions = tuple(instructions)
        labels: dict[str, int] = {}
        for marker in markers:
            if not 0 <= marker.index <= len(instructions):
                raise AssemblyError(f"{marker.kind} '{marker.name}' at instruction "
                                    f"{marker.index} of {len(instructions)}", marker.span)
            if marker.kind == "label":
                if marker.name in labels:
                    raise AssemblyError(f"label '{marker.name}' defined twice", marker.span)
                labels[marker.name] = marker.index
        names: set[str] = set()
        for tensor in tensors:
            if tensor.name in names:
                raise AssemblyError(f"tensor '{tensor.name}' declared twice", tensor.span)
            names.add(tensor.name)
        _check_overlaps(tensors)
        targets: list[int | None] = [None] * len(instructions)
        open_loops: list[int] = []
        for index, instr in enumerate(instructions):
            if instr.mnemonic == "LOOP":
                open_loops.append(index)
            elif instr.mnemonic == "ENDLOOP":
                if not open_loops:
                    raise AssemblyError("ENDLOOP without a matching LOOP", instr.span)
                start = open_loops.pop()
                targets[start] = index + 1
                targets[index] = start
            for op in instr.operands:
                if isinstance(op, LabelRef):
                    if op.name not in labels:
                        close = _nearest(op.name, labels)
                        raise AssemblyError(
                            f"unknown label '{op.name}'"
                            + (f"; did you mean '{close}'?" if close else ""),
                            instr.span,
                        )
                    targets[index] = labels[op.name]
                if isinstance(op, Symbol) and op.name not in names:
                    close = _nearest(op.name, names)
                    raise AssemblyError(
                        f"unknown tensor '{op.name}'"
                        + (f"; did you mean '{close}'?" if close else ""),
                        instr.span,
                    )
        if open_loops:
            raise AssemblyError("LOOP without a matching ENDLOOP", instructions[open_loops[-1]].span)
        # the LOOPs around each position (the instruction about to run): a branch may leave
        # loops (it pops their trip counts) but never enter one
        around: list[tuple[int, ...]] = []
        stack: list[int] = []
        for index in range(len(instructions) + 1):
            around.append(tuple(stack))
            if index < len(instructions):
                if instructions[index].mnemonic == "LOOP":
                    stack.append(index)
                elif instructions[index].mnemonic == "ENDLOOP":
                    stack.pop()
        exits = [0] * len(instructions)
        for index, instr in enumerate(instructions):
            if any(isinstance(op, LabelRef) for op in instr.operands):
                here, there = around[index], around[targets[index]]
                if here[:len(there)] != there:
                    raise AssemblyError(
                        f"{instr.mnemonic} jumps into a LOOP body from outside it", instr.span)
                exits[index] = len(here) - len(there)
        return Program(machine, tuple(tensors), instructions, tuple(markers), labels,
                       tuple(targets), tuple(exits))

    def tensor(self, name: str) -> TensorDecl:
        for tensor in self.tensors:
            if tensor.name == name:
                return tensor
        raise KeyError(name)

    @property
    def inputs(self) -> tuple[TensorDecl, ...]:
        """Tensors written before the run (`in`, `inout`), in directive order."""
        return tuple(t for t in self.tensors if t.role in ("in", "inout"))

    @property
    def outputs(self) -> tuple[TensorDecl, ...]:
        """Tensors read after the run (`out`, `inout`), in directive order (out0, out1, ...)."""
        return tuple(t for t in self.tensors if t.role in ("out", "inout"))

    @property
    def kernels(self) -> tuple[tuple[str, int], ...]:
        """(kernel name, index of its first instruction), in program order."""
        return tuple((m.name, m.index) for m in self.markers if m.kind == "kernel")

    def kernel_at(self, index: int) -> str | None:
        """The name of the kernel instruction `index` belongs to (None before the first)."""
        current = None
        for name, start in self.kernels:
            if start <= index:
                current = name
        return current


def _nearest(name: str, candidates) -> str | None:
    import difflib

    close = difflib.get_close_matches(name, list(candidates), n=1)
    return close[0] if close else None
