"""The shape of an instruction definition, and the checks every instruction goes through.

An `InstrDef` is everything about one instruction: mnemonic, opcode, engine, operand kinds,
dot-suffixes, options, whether it takes `.wait`/`.sig`, its cost formula (a function of the
machine description) and its reference semantics (numpy, through an `ExecContext`). The
assembler, the encoder, the decoder, the docs generator, the interpreter and the compiler
backend all read these; nothing about an instruction is written anywhere else.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from zhenwu.isa.context import ExecContext
from zhenwu.isa.dtypes import compute_dtype, convert
from zhenwu.isa.errors import ChipTrap
from zhenwu.isa.lazy import numpy as np
from zhenwu.isa.machine import Machine
from zhenwu.isa.program import (
    MAX_EVENT_COUNT,
    MAX_RANK,
    NUM_DESCS,
    NUM_EVENTS,
    NUM_REGS,
    Addr,
    DescRef,
    DReg,
    Event,
    FImm,
    Imm,
    Instruction,
    IntList,
    Keyword,
    LabelRef,
    Reg,
    Symbol,
    Tile,
)

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1

# operand kind -> its class; the kind names appear in OperandSpec.kinds and the docs
KIND_CLASSES: dict[str, type] = {
    "reg": Reg, "dreg": DReg, "imm": Imm, "fimm": FImm, "event": Event, "addr": Addr,
    "tile": Tile, "descref": DescRef, "label": LabelRef, "keyword": Keyword,
    "symbol": Symbol, "list": IntList,
}
KIND_TEXT = {
    "reg": "a register rN", "dreg": "a descriptor register dN", "imm": "an integer",
    "fimm": "a float immediate (#1.5)", "event": "an event Ek[:n]",
    "addr": "an address (imm, rN or rN+imm)", "tile": "a tile (L1[...] or ACC[...])",
    "descref": "a descriptor reference dK[coords]", "label": "a label",
    "keyword": "a keyword", "symbol": "a tensor name", "list": "a list [a, b, ...]",
}


@dataclass(frozen=True)
class OperandSpec:
    """One operand position: its name (for docs and errors), the kinds it accepts (tried in
    order by the assembler), and constraints."""

    name: str
    kinds: tuple[str, ...]
    doc: str = ""
    spaces: tuple[str, ...] = ("L1", "ACC")  # for tiles
    positive: bool = False  # an imm must be >= 1
    keywords: tuple[str, ...] = ()  # for keywords


@dataclass(frozen=True)
class SuffixSlot:
    """A dot-suffix position after the mnemonic (`MMA.<in>.<acc>`)."""

    name: str
    values: tuple[str, ...]
    optional: bool = False


@dataclass(frozen=True)
class OptionSpec:
    """A modifier after the operands: `.T`, `.pad #v`."""

    name: str
    takes_value: bool = False
    doc: str = ""


@dataclass(frozen=True)
class GMBox:
    """The GM bytes a DMA touches: `shape` elements of `itemsize` bytes from `address`, with
    byte `strides` (the in-bounds part of its box). The runtime's L2 model reads it."""

    address: int
    shape: tuple[int, ...]
    strides: tuple[int, ...]
    itemsize: int


@dataclass(frozen=True)
class NetTransfer:
    """What a cluster instruction (engine NET) sends to another chip: `nbytes` from this
    chip's GM to chip `peer` (0 for a bare signal), added there element-wise when `reduce`,
    and the events `(index, count)` it signals on the peer (on the core of the same index)
    when it has landed. The interpreter passes it through the network's bandwidth servers
    (isa/topology.py) and the peer's HBM."""

    peer: int
    nbytes: int
    events: tuple[tuple[int, int], ...]
    reduce: bool = False


@dataclass(frozen=True)
class Cost:
    """What one instruction costs (cycles and bytes; see docs/internals.md section 3).

    The engine is busy `occupancy` cycles; the results are visible (and `.sig`s fire)
    `latency` cycles after that. `hbm_read`/`hbm_write` bytes are GM traffic: they draw on the
    chip-wide HBM bandwidth server, or, where the runtime models the L2 and `gm` says which
    bytes they are, on the L2 for the bytes it holds (with `l2_latency` for a read the L2
    serves whole). `flops` counts arithmetic for reports (a MAC is 2). `net` is the
    chip-to-chip part of a cluster instruction (None for every other instruction).
    """

    occupancy: int
    latency: int = 0
    hbm_read: int = 0
    hbm_write: int = 0
    flops: int = 0
    gm: GMBox | None = None
    net: NetTransfer | None = None


CostFn = Callable[[Instruction, Machine, ExecContext], Cost]
ExecFn = Callable[[Instruction, ExecContext], None]
CheckFn = Callable[[Instruction], "str | None"]


@dataclass(frozen=True, eq=False)
class InstrDef:
    """The one definition of an instruction."""

    mnemonic: str
    opcode: int
    engine: str  # S LD MX VX ST NET, or "<suffix>" when a suffix names it (WAIT.<eng>)
    group: str  # the section of docs/isa.md it is listed in
    summary: str  # the semantics in words (the docs print it)
    operands: tuple[OperandSpec, ...]
    cost: CostFn
    execute: ExecFn
    cost_doc: str
    suffixes: tuple[SuffixSlot, ...] = ()
    options: tuple[OptionSpec, ...] = ()
    exclusive: tuple[tuple[str, ...], ...] = ()  # at most one option of each group
    required: tuple[tuple[str, ...], ...] = ()  # exactly one option of each group
    sync: bool = False  # takes `.wait`/`.sig` fields
    predicable: bool = True
    unit: str = ""  # "SFU" for the special-function unit of VX
    check: CheckFn | None = None  # more static rules: an error message or None
    # what `execute` checks (operand ranges, ChipTrap/OutOfBounds) without touching data:
    # a timing-only run calls it instead when `execute` would move data for nothing
    bounds: ExecFn | None = None
    # a timing-only shortcut for an instruction whose cost is the same wherever its GM box
    # lies: (a key of everything else its cost and `bounds` depend on, the box's GM
    # address), or None where that does not hold (a box the tensor's edge clips). Operands
    # with the key of one already bound cost what it cost, with the box moved.
    moves: Callable[[Instruction, ExecContext], tuple | None] | None = None

    def engine_of(self, instr: Instruction) -> str:
        """The engine queue that runs `instr` (WAIT.<eng> names its engine in a suffix)."""
        if self.engine == "<suffix>":
            return instr.suffixes[0]
        return self.engine

    def syntax(self) -> str:
        """The assembly form, e.g. `MMA.<in>.<acc> c, a, b, m, n, k [.init|.acc] ...`."""
        head = self.mnemonic
        for slot in self.suffixes:
            part = f".<{slot.name}>"
            head += f"[{part}]" if slot.optional else part
        parts = [head]
        if self.operands:
            parts.append(", ".join(op.name for op in self.operands))
        grouped: set[str] = set()
        for group in self.required:
            parts.append("|".join(f".{name}" for name in group) if len(group) > 1
                         else f".{group[0]}")
            grouped.update(group)
        for group in self.exclusive:
            parts.append("[" + "|".join(f".{name}" for name in group) + "]")
            grouped.update(group)
        for opt in self.options:
            if opt.name not in grouped:
                parts.append(f"[.{opt.name} #v]" if opt.takes_value else f"[.{opt.name}]")
        if self.sync:
            parts.append("[.wait Ek[:n]]* [.sig Ek[:n]]*")
        return " ".join(parts)


class InstrError(Exception):
    """A static rule an instruction breaks (internal: the assembler turns it into an
    AssemblyError at the operand's position, the encoder into an EncodingError).
    `operand` is the index of the offending operand, or None for the whole instruction."""

    def __init__(self, message: str, operand: int | None = None):
        super().__init__(message)
        self.message = message
        self.operand = operand


# ---- static checks ------------------------------------------------------------------


def validate(defn: InstrDef, instr: Instruction) -> None:
    """Raise InstrError unless `instr` is a well-formed instance of `defn`."""
    name = defn.mnemonic
    required_slots = sum(1 for s in defn.suffixes if not s.optional)
    if not required_slots <= len(instr.suffixes) <= len(defn.suffixes):
        raise InstrError(f"{name} takes the form {defn.syntax().split()[0]}")
    for slot, value in zip(defn.suffixes, instr.suffixes):
        if value not in slot.values:
            raise InstrError(
                f"bad {slot.name} suffix '.{value}' for {name}; expected one of: "
                + ", ".join(slot.values)
            )
    if len(instr.operands) != len(defn.operands):
        raise InstrError(
            f"{instr.name} takes {len(defn.operands)} operand"
            f"{'' if len(defn.operands) == 1 else 's'} "
            f"({', '.join(op.name for op in defn.operands) or 'none'}), got {len(instr.operands)}"
        )
    for index, (spec, op) in enumerate(zip(defn.operands, instr.operands)):
        message = check_operand(spec, op)
        if message is not None:
            raise InstrError(f"operand '{spec.name}' of {instr.name}: {message}", index)
    known = [opt.name for opt in defn.options]
    seen: list[int] = []
    for opt in instr.options:
        if opt.name not in known:
            hint = f"; {name} takes " + " ".join(f".{k}" for k in known) if known else \
                f"; {name} takes no options"
            raise InstrError(f"unknown option '.{opt.name}' for {name}{hint}")
        position = known.index(opt.name)
        if position in seen:
            raise InstrError(f"option '.{opt.name}' given twice")
        if seen and position < seen[-1]:
            raise InstrError(f"options of {name} must be in the order " + " ".join(
                f".{k}" for k in known))
        seen.append(position)
        spec = defn.options[position]
        if spec.takes_value and not isinstance(opt.value, FImm):
            raise InstrError(f"option '.{opt.name}' needs a float immediate (.{opt.name} #0.0)")
        if not spec.takes_value and opt.value is not None:
            raise InstrError(f"option '.{opt.name}' takes no value")
    present = {opt.name for opt in instr.options}
    for group in defn.exclusive:
        if len(present & set(group)) > 1:
            raise InstrError(f"{name}: at most one of " + ", ".join(f".{g}" for g in group))
    for group in defn.required:
        if len(present & set(group)) != 1:
            raise InstrError(f"{name} needs exactly one of " + ", ".join(f".{g}" for g in group))
    if (instr.waits or instr.sigs) and not defn.sync:
        raise InstrError(f"{instr.name} runs on the scalar unit and takes no .wait/.sig")
    for what, events in (("wait", instr.waits), ("sig", instr.sigs)):
        if len(events) > 2:
            raise InstrError(f"at most two .{what} fields, got {len(events)}")
        for event in events:
            message = _check_event(event)
            if message:
                raise InstrError(f".{what}: {message}")
    if instr.predicate is not None:
        if not defn.predicable:
            raise InstrError(f"{name} cannot be predicated")
        if not 0 <= instr.predicate.reg < NUM_REGS:
            raise InstrError(f"predicate register r{instr.predicate.reg} out of range r0..r31")
    if defn.check is not None:
        message = defn.check(instr)
        if message is not None:
            raise InstrError(message)


def _check_event(event: Event) -> str | None:
    if not 0 <= event.index < NUM_EVENTS:
        return f"event E{event.index} out of range E0..E{NUM_EVENTS - 1}"
    if not 1 <= event.count <= MAX_EVENT_COUNT:
        return f"event count {event.count} out of range 1..{MAX_EVENT_COUNT}"
    return None


def _check_int(value: int) -> str | None:
    if not INT64_MIN <= value <= INT64_MAX:
        return f"{value} does not fit in 64 bits"
    return None


def _check_addr(addr: Addr) -> str | None:
    if addr.reg is not None and not 0 <= addr.reg < NUM_REGS:
        return f"register r{addr.reg} out of range r0..r{NUM_REGS - 1}"
    return _check_int(addr.offset)


def check_operand(spec: OperandSpec, op) -> str | None:
    """Why `op` does not fit `spec`, or None."""
    kinds = [k for k, cls in KIND_CLASSES.items() if isinstance(op, cls)]
    if not kinds or kinds[0] not in spec.kinds:
        return "expected " + " or ".join(KIND_TEXT[k] for k in spec.kinds) + f", got '{op}'"
    if isinstance(op, Reg) and not 0 <= op.index < NUM_REGS:
        return f"register r{op.index} out of range r0..r{NUM_REGS - 1}"
    if isinstance(op, DReg | DescRef) and not 0 <= op.index < NUM_DESCS:
        return f"descriptor d{op.index} out of range d0..d{NUM_DESCS - 1}"
    if isinstance(op, Event):
        return _check_event(op)
    if isinstance(op, Imm):
        if spec.positive and op.value < 1:
            return f"must be positive, got {op.value}"
        return _check_int(op.value)
    if isinstance(op, Addr):
        return _check_addr(op)
    if isinstance(op, Tile):
        if op.space not in spec.spaces:
            return f"must be in {' or '.join(spec.spaces)}, got {op.space}"
        for stride in (op.row_stride, op.col_stride):
            if stride is not None and not 0 <= stride <= INT64_MAX:
                return f"strides must be non-negative, got {stride}"
        if op.col_stride is not None and op.row_stride is None:
            return "a column stride needs a row stride before it"
        return _check_addr(op.base)
    if isinstance(op, DescRef):
        if not 1 <= len(op.coords) <= MAX_RANK:
            return f"1 to {MAX_RANK} coordinates, got {len(op.coords)}"
        for coord in op.coords:
            if (message := _check_addr(coord)) is not None:
                return message
    if isinstance(op, Keyword) and op.name not in spec.keywords:
        return f"expected one of {', '.join(spec.keywords)}, got '{op.name}'"
    if isinstance(op, IntList):
        if not 1 <= len(op.values) <= MAX_RANK:
            return f"a list of 1 to {MAX_RANK} integers, got {len(op.values)}"
        for value in op.values:
            if (message := _check_int(value)) is not None:
                return message
    if isinstance(op, Symbol):
        return _check_int(op.offset)
    if isinstance(op, LabelRef | Symbol) and not op.name:
        return "empty name"
    return None


# ---- helpers for semantics and costs --------------------------------------------------


def wrap64(value: int) -> int:
    """Wrap a Python int to a signed 64-bit integer (two's complement)."""
    return ((value + 2**63) % 2**64) - 2**63


def scalar_value(op, ctx: ExecContext) -> int:
    """The integer an Imm, Reg or Addr operand stands for (registers read through ctx)."""
    if isinstance(op, Imm):
        return op.value
    if isinstance(op, Reg):
        return ctx.read_reg(op.index)
    if isinstance(op, Addr):
        base = 0 if op.reg is None else ctx.read_reg(op.reg)
        return wrap64(base + op.offset)
    raise TypeError(f"not a scalar operand: {op!r}")


def positive_value(op, ctx: ExecContext, what: str) -> int:
    """A size operand's value; ChipTrap when it is not positive."""
    value = scalar_value(op, ctx)
    if value < 1:
        raise ChipTrap(f"{what} must be positive, got {value}")
    return value


def check_elements(machine: Machine, count: int, what: str) -> None:
    """ChipTrap when one operand would hold more elements than the largest per-core memory has
    bytes (such a tile cannot exist; this also keeps a broadcast view from exhausting the
    host)."""
    limit = max(machine.l1_bytes, machine.acc_bytes)
    if count > limit:
        raise ChipTrap(f"{what} of {count} elements is larger than any per-core memory "
                       f"({limit} bytes)")


def tile_view(ctx: ExecContext, tile: Tile, rows: int, cols: int, dtype: str) -> np.ndarray:
    """The (rows, cols) view of a tile operand (default strides: rs = cols, cs = 1)."""
    row_stride = cols if tile.row_stride is None else tile.row_stride
    col_stride = 1 if tile.col_stride is None else tile.col_stride
    return ctx.tile(tile.space, scalar_value(tile.base, ctx), rows, cols, dtype, row_stride,
                    col_stride)


def read_source(ctx: ExecContext, op, rows: int, cols: int, dtype: str) -> np.ndarray:
    """A source operand (tile, float immediate, integer or register) as a (rows, cols) array
    in the compute dtype (f32 for floats, int64 for integers and bool); always a copy."""
    compute = compute_dtype(dtype)
    if isinstance(op, Tile):
        return np.array(tile_view(ctx, op, rows, cols, dtype), dtype=compute)
    if isinstance(op, FImm):
        value = convert(np.array([op.value], dtype=np.float64), dtype).astype(compute)[0]
    else:
        value = convert(np.array([scalar_value(op, ctx)], dtype=np.int64), dtype).astype(
            compute)[0]
    return np.full((rows, cols), value, dtype=compute)


def write_tile(ctx: ExecContext, tile: Tile, dtype: str, values: np.ndarray) -> None:
    """Store `values` (any dtype, shape (rows, cols)) into a tile, converted to `dtype`."""
    rows, cols = values.shape
    view = tile_view(ctx, tile, rows, cols, dtype)
    view[...] = convert(values, dtype)


def ceil_div(a: int, b: float) -> int:
    return math.ceil(a / b)
