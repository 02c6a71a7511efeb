"""The Emitter: codegen builds `isa.program` instructions directly, no assembly text.

Codegen calls `emit.op(name, *operands, waits=..., sigs=...)` with typed operands (the
classes of isa/program.py: `Reg`, `Tile`, `DescRef`, `Event`, ...; a Python `int` is an
integer immediate, or an address where the instruction wants one; a `float` is a float
immediate), and the Emitter appends an `Instruction` equal to the one the assembler would
read from the same instruction's text. `emit.kernel(name)`, `emit.label(name)` and
`emit.tensor(decl)` place the rest, and `emit.program()` resolves labels and loops
(`Program.build`). Text is only printed from the built program (`isa.asm.print_program`),
for `--emit asm` and `zhenwu compile -o x.s`.

The text form is still accepted, so that an emitter not yet converted keeps working:
`emit("DIV r5, r4, 3", waits=[(0, 1)])` reads one instruction with `read_instruction`, a
small table-driven reader (the operand kinds of the instruction's `InstrDef` decide what a
word is, as in the assembler) with a cache, since generated code repeats its lines; it
falls back to the full assembler for anything it does not read, so a malformed line gets
the assembler's diagnostic. `emit(instr)` appends an `Instruction` built elsewhere (what
`codegen.NestContext.instruction` returns) with the given events. The collective kernels
and many-chip programs (compiler/collective_codegen.py, compiler/shard/spmd.py) are built
with `op`/`append` too: nothing in the compiler writes assembly text to read it back.

Every instruction is checked against its definition (`isa.instructions.validate`) as it
is appended, as the assembler checks what it reads.
"""

from __future__ import annotations

import math
import re
from dataclasses import replace

from zhenwu.isa.errors import AssemblyError, SourceSpan
from zhenwu.isa.instructions import INSTRUCTIONS, InstrError, validate
from zhenwu.isa.program import (
    Addr,
    Event,
    FImm,
    Imm,
    Instruction,
    Marker,
    Option,
    Predicate,
    Program,
    TensorDecl,
)

__all__ = ["Emitter", "fimm", "instruction", "read_instruction"]


class Emitter:
    """Collects the instructions, markers and tensors of one program as it is built."""

    def __init__(self, machine: str | None = None):
        self.machine = machine
        self.tensors: list[TensorDecl] = []
        self.instructions: list[Instruction] = []
        self.markers: list[Marker] = []

    # ---- instructions ---------------------------------------------------------------
    def op(self, name: str, *operands, options=(), waits=(), sigs=(),
           predicate: int | Predicate | None = None) -> None:
        """Append instruction `name` (`MMA.bf16.f32`, `DIV`) with typed operands."""
        self.append(instruction(name, *operands, options=options, predicate=predicate),
                    waits, sigs)

    def __call__(self, text: str | Instruction, waits=(), sigs=()) -> None:
        """Append one instruction given as text (`"DIV r5, r4, 3"`) or as an `Instruction`,
        with `.wait`/`.sig` events `(index, count)` after any the text carries."""
        instr = text if isinstance(text, Instruction) else read_instruction(text)
        self.append(instr, waits, sigs)

    def append(self, instr: Instruction, waits=(), sigs=()) -> None:
        if waits or sigs:
            instr = replace(instr, waits=instr.waits + _events(waits),
                            sigs=instr.sigs + _events(sigs))
        try:
            check(instr)
        except InstrError as err:
            raise AssemblyError(f"codegen built an invalid instruction '{instr}': "
                                f"{err.message}", address=len(self.instructions)) from None
        self.instructions.append(instr)

    # ---- everything else ------------------------------------------------------------
    def kernel(self, name: str) -> None:
        """A `.kernel name` marker before the next instruction."""
        self.markers.append(Marker(len(self.instructions), "kernel", name))

    def label(self, name: str) -> None:
        """A `name:` label before the next instruction."""
        self.markers.append(Marker(len(self.instructions), "label", name))

    def tensor(self, decl: TensorDecl) -> None:
        self.tensors.append(decl)

    def raw(self, text: str) -> None:
        """A line that is not an instruction: `.kernel NAME`, `.machine NAME`, `.tensor
        ...`, `label:` or a comment (dropped), read as the assembler reads it."""
        _place_line(self, text)

    def program(self) -> Program:
        """The resolved program (labels, loops: `Program.build`)."""
        return Program.build(self.machine, self.tensors, self.instructions, self.markers)

    @property
    def lines(self) -> _Lines:
        """The program so far as assembly lines, as the text Emitter collected them: its
        length grows with every line (`len(emit.lines)` makes unique label names), a line
        appended is placed as `emit.raw` or `emit(...)` would place it, and reading one
        prints the program so far (labels need not be resolved yet)."""
        return _Lines(self)


class _Lines:
    """`Emitter.lines`: the lines of the program so far, printed when read."""

    def __init__(self, emit: Emitter):
        self._emit = emit

    def __len__(self) -> int:
        emit = self._emit
        return (emit.machine is not None) + len(emit.tensors) + len(emit.markers) \
            + len(emit.instructions)

    def _text(self) -> list[str]:
        from zhenwu.isa.asm_print import print_instruction, print_tensor

        emit = self._emit
        lines = [f".machine {emit.machine}"] if emit.machine is not None else []
        lines += [print_tensor(t) for t in emit.tensors]
        markers = sorted(enumerate(emit.markers), key=lambda m: (m[1].index, m[0]))
        position = 0
        for index, instr in enumerate(emit.instructions + [None]):
            while position < len(markers) and markers[position][1].index == index:
                marker = markers[position][1]
                lines.append(f"{marker.name}:" if marker.kind == "label"
                             else f".kernel {marker.name}")
                position += 1
            if instr is not None:
                lines.append("    " + print_instruction(instr))
        return lines

    def __iter__(self):
        return iter(self._text())

    def __getitem__(self, index):
        return self._text()[index]

    def append(self, line: str) -> None:
        if not _place_line(self._emit, line):
            self._emit(line)

    def extend(self, lines) -> None:
        for line in lines:
            self.append(line)


# ---- building one instruction ---------------------------------------------------------

_NAMES: dict[str, tuple] = {}


def _split_name(name: str) -> tuple:
    """`MMA.bf16.f32` -> (its InstrDef, ("bf16", "f32")), as the assembler splits it."""
    found = _NAMES.get(name)
    if found is None:
        parts = name.split(".")
        for cut in range(len(parts), 0, -1):
            defn = INSTRUCTIONS.get(".".join(parts[:cut]))
            if defn is not None:
                found = _NAMES[name] = (defn, tuple(parts[cut:]))
                break
        else:
            raise ValueError(f"unknown mnemonic '{name}'")
    return found


def instruction(name: str, *operands, options=(),
                predicate: int | Predicate | None = None) -> Instruction:
    """An `Instruction` from its full mnemonic and typed operands (not yet checked: the
    Emitter checks what it appends). An `int` operand is an integer immediate, or an
    address (`Addr`) where the operand takes no immediate; a `float` a float immediate; a
    `str` is read as the assembler reads that operand. `options` are names (`"acc"`) or
    `Option`s (`Option("pad", FImm(-inf))`), put in the definition's order."""
    defn, suffixes = _split_name(name)
    specs = defn.operands
    if len(operands) != len(specs):
        raise ValueError(f"{name} takes {len(specs)} operands, got {len(operands)}")
    typed = tuple(_operand(op, spec.kinds, name) for op, spec in zip(operands, specs))
    opts = tuple(Option(o) if isinstance(o, str) else o for o in options)
    if len(opts) > 1:
        order = [o.name for o in defn.options]
        opts = tuple(sorted(opts, key=lambda o: order.index(o.name) if o.name in order
                            else len(order)))
    if isinstance(predicate, int):
        predicate = Predicate(predicate)
    return Instruction(defn.mnemonic, suffixes, typed, opts, (), (), predicate)


def _operand(op, kinds: tuple[str, ...], name: str):
    kind = type(op)    # (a bool is no int here: it stays as it is, and validate refuses it)
    if kind is int:
        return Imm(op) if "imm" in kinds or "addr" not in kinds else Addr(None, op)
    if kind is float:
        return fimm(op)
    if kind is str:
        return read_operand(op, kinds)
    return op


def fimm(value: float) -> FImm:
    """A float immediate as the assembler reads its printed text: any NaN is the one NaN
    (`#nan`), so that the binary does not depend on how a NaN was computed."""
    value = float(value)
    return FImm(float("nan") if math.isnan(value) else value)


def _events(events) -> tuple[Event, ...]:
    return tuple(e if isinstance(e, Event) else Event(e[0], e[1]) for e in events)


_CHECKED: set[Instruction] = set()


def check(instr: Instruction) -> None:
    """InstrError unless `instr` is well formed (`isa.instructions.validate`; once per
    distinct instruction: generated code repeats its instructions)."""
    if instr in _CHECKED:
        return
    validate(INSTRUCTIONS[instr.mnemonic], instr)
    if len(_CHECKED) > 100_000:
        _CHECKED.clear()
    _CHECKED.add(instr)


# ---- reading generated text -----------------------------------------------------------
#
# The text is the compiler's own, in the canonical form the printer writes; the reader
# splits it with string operations and classifies each operand by the assembler's own rule
# (`isa.asm.operand_of_kind`), so a word means here exactly what it means there.

_SOURCE_NAME = "<codegen>"
_FIELD = re.compile(r"\s\.(?=[A-Za-z_])")
_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_INT = re.compile(r"-?(?:0[xX][0-9a-fA-F]+|[0-9]+)")
_FLOAT = re.compile(r"#[-+]?(?:inf|nan|[0-9]+\.?[0-9]*(?:[eE][-+]?[0-9]+)?"
                    r"|\.[0-9]+(?:[eE][-+]?[0-9]+)?)")
_WORD_OFFSET = re.compile(r"([A-Za-z_][A-Za-z0-9_.]*)([+-])(0[xX][0-9a-fA-F]+|[0-9]+)")
_WORD_COUNT = re.compile(r"([A-Za-z_][A-Za-z0-9_.]*):(0[xX][0-9a-fA-F]+|[0-9]+)")
_INSTRUCTIONS: dict[str, Instruction] = {}


class _Unread(Exception):
    """The fast reader does not read this text: the full assembler will."""


def read_instruction(text: str) -> Instruction:
    """One instruction from its text (`VADD.f32 L1[r15], L1[64], #1.0, 4, 16 .wait E0`),
    equal to what the assembler reads (`isa.asm.read_one_instruction`); AssemblyError for a
    bad line."""
    found = _INSTRUCTIONS.get(text)
    if found is None:
        try:
            found = _read(text.strip())
        except _Unread:
            from zhenwu.isa.asm import read_one_instruction

            found = read_one_instruction(text, _SOURCE_NAME)
        if len(_INSTRUCTIONS) > 100_000:
            _INSTRUCTIONS.clear()
        _INSTRUCTIONS[text] = found
    return found


def read_operand(text: str, kinds: tuple[str, ...]):
    """One operand's text as the first of `kinds` it is (as the assembler classifies)."""
    arg = _arg(text.strip())
    for kind in kinds:
        operand = _as_kind(arg, kind)
        if operand is not None:
            return operand
    raise ValueError(f"'{text}' is not " + " or ".join(kinds))


def _read(text: str) -> Instruction:
    predicate = None
    if text.startswith("@"):
        head, _, text = text.partition(" ")
        negate = head.startswith("@!")
        reg = head[2:] if negate else head[1:]
        if not (reg[:1] == "r" and reg[1:].isdigit()):
            raise _Unread
        predicate = Predicate(int(reg[1:]), negate)
        text = text.lstrip()
    if ";" in text:   # a comment: the assembler reads it
        raise _Unread
    word, _, rest = text.partition(" ")
    try:
        defn, suffixes = _split_name(word)
    except ValueError:
        raise _Unread from None
    parts = _FIELD.split(" " + rest.strip())
    operand_text = parts[0].strip()
    args = _split_top(operand_text) if operand_text else []
    if len(args) != len(defn.operands):
        raise _Unread
    operands = []
    for spec, arg_text in zip(defn.operands, args):
        arg = _arg(arg_text)
        for kind in spec.kinds:
            operand = _as_kind(arg, kind)
            if operand is not None:
                operands.append(operand)
                break
        else:
            raise _Unread
    options: dict[str, Option] = {}
    waits, sigs = [], []
    known = [opt.name for opt in defn.options]
    for field in parts[1:]:
        name, _, value = field.strip().partition(" ")
        value = value.strip()
        if name in ("wait", "sig"):
            event = _as_kind(_arg(value), "event") if value else None
            if event is None:
                raise _Unread
            (waits if name == "wait" else sigs).append(event)
        elif name in known and name not in options:
            if defn.options[known.index(name)].takes_value:
                if not _FLOAT.fullmatch(value):
                    raise _Unread
                options[name] = Option(name, FImm(float(value[1:])))
            elif value:
                raise _Unread
            else:
                options[name] = Option(name)
        else:
            raise _Unread
    instr = Instruction(defn.mnemonic, suffixes, tuple(operands),
                        tuple(options[k] for k in known if k in options), tuple(waits),
                        tuple(sigs), predicate)
    try:
        validate(defn, instr)
    except InstrError:
        raise _Unread from None
    return instr


def _split_top(text: str) -> list[str]:
    """`a, L1[r1, 2], b` -> ["a", "L1[r1, 2]", "b"] (commas outside brackets)."""
    if "[" not in text:
        return [part.strip() for part in text.split(",")]
    parts, depth, start = [], 0, 0
    for index, char in enumerate(text):
        if char == "[":
            depth += 1
        elif char == "]":
            depth -= 1
        elif char == "," and depth == 0:
            parts.append(text[start:index].strip())
            start = index + 1
    parts.append(text[start:].strip())
    return parts


class _Arg:
    """What isa/asm_syntax.py's `Arg` holds, for the assembler's `as_kind`."""

    __slots__ = ("items", "kind", "name", "value")

    def __init__(self, kind: str, name: str = "", value=0, items=()):
        self.kind, self.name, self.value, self.items = kind, name, value, items

    @property
    def span(self) -> SourceSpan:   # only asked for by an error: the full reader reports it
        raise _Unread


def _int(text: str) -> int:
    negative = text.startswith("-")
    digits = text[1:] if negative else text
    value = int(digits, 16) if digits[:2] in ("0x", "0X") else int(digits, 10)
    return -value if negative else value


def _arg(text: str) -> _Arg:
    if _INT.fullmatch(text):
        return _Arg("int", value=_int(text))
    if text.startswith("#"):
        if not _FLOAT.fullmatch(text):
            raise _Unread
        return _Arg("float", value=float(text[1:]))
    if _WORD.fullmatch(text):
        return _Arg("word", name=text)
    if text.endswith("]"):
        head, bracket, inner = text[:-1].partition("[")
        if not bracket:
            raise _Unread
        items = tuple(_arg(item) for item in _split_top(inner)) if inner.strip() else ()
        if not head:
            return _Arg("list", items=items)
        if _WORD.fullmatch(head) and items:
            return _Arg("indexed", name=head, items=items)
        raise _Unread
    if m := _WORD_OFFSET.fullmatch(text):
        value = _int(m[3])
        return _Arg("word_offset", name=m[1], value=-value if m[2] == "-" else value)
    if m := _WORD_COUNT.fullmatch(text):
        return _Arg("word_count", name=m[1], value=_int(m[2]))
    raise _Unread


def _as_kind(arg: _Arg, kind: str):
    from zhenwu.isa.asm import operand_of_kind

    try:
        return operand_of_kind(arg, kind)
    except AssemblyError:
        raise _Unread from None


# ---- lines that are not instructions ---------------------------------------------------


def _place_line(emit: Emitter, line: str) -> bool:
    """Place a non-instruction line; False when `line` is an instruction."""
    text = line.strip()
    if not text or text.startswith(("#", ";")):
        return True
    if text.startswith(".kernel ") and _NAME.fullmatch(name := text[8:].strip()):
        emit.kernel(name)
        return True
    if text.endswith(":") and _NAME.fullmatch(text[:-1]):
        emit.label(text[:-1])
        return True
    if text.startswith("."):
        from zhenwu.isa.asm import parse_assembly

        program = parse_assembly(text + "\n", _SOURCE_NAME)
        emit.tensors.extend(program.tensors)
        if program.machine is not None:
            emit.machine = program.machine
        for marker in program.markers:
            emit.markers.append(replace(marker, index=len(emit.instructions)))
        return True
    return False

