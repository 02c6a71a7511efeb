"""M890 assembly text: `parse_assembly` (text -> Program) and `print_program` (Program -> text).

The syntax is read by isa/asm_syntax.py (by hand, line by line). Words are classified after
reading by the operand kinds of the instruction they belong to (`r3` is a register where a register is expected, an address
`r3+16` in a tile, ...), so that every operand error names the instruction and its legal
forms. Every error is an `AssemblyError` with the line and column of the offending token.

The printer writes the canonical form: `.machine`, then the `.tensor` directives, then the
instructions (indented four spaces) with their labels and `.kernel` markers; comments are
not kept. `print_program(parse_assembly(print_program(p))) == print_program(p)`. The printer
lives in isa/asm_print.py (what prints a program needs none of the reader).
"""

from __future__ import annotations

import difflib
import re

from zhenwu.isa.asm_print import print_instruction, print_program, print_tensor
from zhenwu.isa.asm_syntax import Arg, Directive, InstrItem, Label, Token, read_items
from zhenwu.isa.dtypes import DTYPES
from zhenwu.isa.errors import AssemblyError, SourceSpan, normalize_newlines
from zhenwu.isa.instructions import INSTRUCTIONS, InstrDef, InstrError, validate
from zhenwu.isa.instructions.base import KIND_TEXT
from zhenwu.isa.program import (
    MAX_RANK,
    TENSOR_ROLES,
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
    Marker,
    Option,
    Predicate,
    Program,
    Reg,
    Symbol,
    TensorDecl,
    Tile,
)

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_REG = re.compile(r"r([0-9]+)")
_DREG = re.compile(r"d([0-9]+)")
_EVENT = re.compile(r"E([0-9]+)")
DIRECTIVES = ("machine", "tensor", "kernel")


class _Reader:
    """Turns the items read from a text into a Program (internal)."""

    def __init__(self, text: str, filename: str):
        self.text = text
        self.filename = filename

    # ---- spans and errors ---------------------------------------------------------
    def span(self, first: Token, last: Token | None = None) -> SourceSpan:
        last = last or first
        return SourceSpan(self.filename, first.line, first.col, last.line, last.end_col,
                          self.text)

    def error(self, message: str, span: SourceSpan, notes=()) -> AssemblyError:
        return AssemblyError(message, span, notes=notes)

    # ---- classification -------------------------------------------------------------
    def as_kind(self, arg: Arg, kind: str):
        """The operand `arg` as `kind`, or None when it is not of that kind."""
        if kind == "reg" and arg.kind == "word" and (m := _REG.fullmatch(arg.name)):
            return Reg(int(m[1]))
        if kind == "dreg" and arg.kind == "word" and (m := _DREG.fullmatch(arg.name)):
            return DReg(int(m[1]))
        if kind == "imm" and arg.kind == "int":
            return Imm(int(arg.value))
        if kind == "fimm" and arg.kind == "float":
            return FImm(float(arg.value))
        if kind == "event" and arg.kind in ("word", "word_count") and (
            m := _EVENT.fullmatch(arg.name)
        ):
            return Event(int(m[1]), int(arg.value) if arg.kind == "word_count" else 1)
        if kind == "addr":
            return self.as_addr(arg)
        if kind == "tile" and arg.kind == "indexed" and arg.name in ("L1", "ACC"):
            if not 1 <= len(arg.items) <= 3:
                raise self.error(f"a tile is {arg.name}[base], {arg.name}[base, rs] or "
                                 f"{arg.name}[base, rs, cs]", arg.span)
            base = self.as_addr(arg.items[0])
            if base is None:
                raise self.error("a tile base is imm, rN or rN+imm (bytes)", arg.items[0].span)
            strides = []
            for item in arg.items[1:]:
                if item.kind != "int" or int(item.value) < 0:
                    raise self.error("a tile stride is a non-negative integer (elements)",
                                     item.span)
                strides.append(int(item.value))
            strides += [None] * (2 - len(strides))
            return Tile(arg.name, base, strides[0], strides[1])
        if kind == "descref" and arg.kind == "indexed" and (m := _DREG.fullmatch(arg.name)):
            coords = []
            for item in arg.items:
                coord = self.as_addr(item)
                if coord is None:
                    raise self.error("a coordinate is imm, rN or rN+imm", item.span)
                coords.append(coord)
            return DescRef(int(m[1]), tuple(coords))
        if kind == "label" and arg.kind == "word" and _NAME.fullmatch(arg.name):
            return LabelRef(arg.name)
        if kind == "keyword" and arg.kind == "word":
            return Keyword(arg.name)
        if (kind == "symbol" and arg.kind in ("word", "word_offset")
                and _NAME.fullmatch(arg.name) and not _REG.fullmatch(arg.name)):
            return Symbol(arg.name, int(arg.value) if arg.kind == "word_offset" else 0)
        if kind == "list" and arg.kind == "list":
            values = []
            for item in arg.items:
                if item.kind != "int":
                    raise self.error("a list holds integers", item.span)
                values.append(int(item.value))
            return IntList(tuple(values))
        return None

    def as_addr(self, arg: Arg) -> Addr | None:
        if arg.kind == "int":
            return Addr(None, int(arg.value))
        if arg.kind in ("word", "word_offset") and (m := _REG.fullmatch(arg.name)):
            return Addr(int(m[1]), int(arg.value) if arg.kind == "word_offset" else 0)
        return None

    # ---- items ----------------------------------------------------------------------
    def mnemonic(self, token: Token) -> tuple[InstrDef, tuple[str, ...]]:
        parts = token.text.split(".")
        for cut in range(len(parts), 0, -1):
            defn = INSTRUCTIONS.get(".".join(parts[:cut]))
            if defn is not None:
                return defn, tuple(parts[cut:])
        word = token.text
        close = difflib.get_close_matches(word.upper(), list(INSTRUCTIONS), n=1, cutoff=0.5)
        if not close:
            close = difflib.get_close_matches(parts[0].upper(), list(INSTRUCTIONS), n=1,
                                              cutoff=0.5)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise self.error(f"unknown mnemonic '{word}'{hint}", self.span(token))

    def instruction(self, item: InstrItem) -> Instruction:
        word = item.word.text
        defn, suffixes = self.mnemonic(item.word)
        name_span = item.span
        predicate = None
        if item.predicate is not None:
            negated, reg_token = item.predicate
            m = _REG.fullmatch(reg_token.text)
            if m is None:
                raise self.error(f"a predicate is @rN or @!rN, got '{reg_token.text}'",
                                 self.span(reg_token))
            predicate = Predicate(int(m[1]), negated)
        args = list(item.args)
        if len(args) != len(defn.operands):
            where = args[len(defn.operands)].span if len(args) > len(defn.operands) else name_span
            raise self.error(
                f"{word} takes {len(defn.operands)} operand"
                f"{'' if len(defn.operands) == 1 else 's'}, got {len(args)}", where,
                notes=[f"syntax: {defn.syntax()}"],
            )
        operands = []
        for spec, arg in zip(defn.operands, args):
            operand = None
            for kind in spec.kinds:
                operand = self.as_kind(arg, kind)
                if operand is not None:
                    break
            if operand is None:
                raise self.error(
                    f"operand '{spec.name}' of {word}: expected "
                    + " or ".join(KIND_TEXT[k] for k in spec.kinds) + f", got '{arg.text}'",
                    arg.span, notes=[f"syntax: {defn.syntax()}"],
                )
            operands.append(operand)
        options: dict[str, Option] = {}
        waits: list[Event] = []
        sigs: list[Event] = []
        known = [opt.name for opt in defn.options]
        for field in item.fields:
            name, span, value = field.name, field.span, field.value
            if name in ("wait", "sig"):
                event = None if value is None else self.as_kind(value, "event")
                if event is None:
                    raise self.error(f".{name} takes an event Ek or Ek:n", span)
                (waits if name == "wait" else sigs).append(event)
                continue
            if name not in known:
                close = difflib.get_close_matches(name, known + ["wait", "sig"], n=1)
                hint = f"; did you mean '.{close[0]}'?" if close else ""
                takes = " ".join(f".{k}" for k in known) or "none"
                raise self.error(f"unknown option '.{name}' for {defn.mnemonic}{hint}", span,
                                 notes=[f"{defn.mnemonic} options: {takes}"])
            if name in options:
                raise self.error(f"option '.{name}' given twice", span)
            takes_value = defn.options[known.index(name)].takes_value
            if takes_value:
                if value is None or value.kind != "float":
                    raise self.error(f".{name} takes a float immediate (.{name} #0.0)", span)
                options[name] = Option(name, FImm(float(value.value)))
            else:
                if value is not None:
                    raise self.error(f".{name} takes no value", value.span)
                options[name] = Option(name)
        instr = Instruction(
            defn.mnemonic, suffixes, tuple(operands),
            tuple(options[k] for k in known if k in options), tuple(waits), tuple(sigs),
            predicate, span=name_span,
        )
        try:
            validate(defn, instr)
        except InstrError as err:
            where = name_span if err.operand is None else args[err.operand].span
            raise self.error(err.message, where, notes=[f"syntax: {defn.syntax()}"]) from None
        return instr

    def tensor(self, args: tuple[Arg, ...], span: SourceSpan) -> TensorDecl:
        if len(args) != 5:
            raise self.error(".tensor takes name, dtype, [dims], address, role", span)
        name, dtype, dims, address, role = args
        if name.kind != "word" or not _NAME.fullmatch(name.name):
            raise self.error("a tensor name is a word of letters, digits and '_'", name.span)
        if dtype.kind != "word" or dtype.name not in DTYPES:
            raise self.error(f"unknown dtype '{dtype.text}'; dtypes: {', '.join(DTYPES)}",
                             dtype.span)
        shape = self.as_kind(dims, "list")
        if shape is None or len(shape.values) > MAX_RANK or any(d < 1 for d in shape.values):
            raise self.error(f"tensor dims are a list of up to {MAX_RANK} positive integers",
                             dims.span)
        if address.kind != "int" or int(address.value) < 0 or int(address.value) >= 2**63:
            raise self.error("a tensor address is a non-negative byte address", address.span)
        if role.kind != "word" or role.name not in TENSOR_ROLES:
            raise self.error(f"unknown tensor role '{role.text}'; roles: "
                             + ", ".join(TENSOR_ROLES), role.span)
        return TensorDecl(name.name, dtype.name, shape.values, int(address.value), role.name,
                          span=name.span)

    def program(self, items) -> Program:
        machine = None
        tensors: list[TensorDecl] = []
        instructions: list[Instruction] = []
        operand_args: list[tuple[Arg, ...]] = []
        markers: list[Marker] = []
        for item in items:
            if isinstance(item, Label):
                if not _NAME.fullmatch(item.name):
                    raise self.error(f"a label is a word of letters, digits and '_', "
                                     f"got '{item.name}'", item.span)
                markers.append(Marker(len(instructions), "label", item.name, item.span))
            elif isinstance(item, Directive):
                name, span, args = item.name, item.span, item.args
                if name == "tensor":
                    tensors.append(self.tensor(args, span))
                elif name in ("machine", "kernel"):
                    if len(args) != 1 or args[0].kind != "word" or not re.fullmatch(
                        r"[A-Za-z0-9_\-]+" if name == "machine" else _NAME.pattern, args[0].name
                    ):
                        raise self.error(f".{name} takes one name", span)
                    if name == "machine":
                        if machine is not None:
                            raise self.error(".machine given twice", span)
                        machine = args[0].name
                    else:
                        markers.append(Marker(len(instructions), "kernel", args[0].name, span))
                else:
                    close = difflib.get_close_matches(name, DIRECTIVES, n=1)
                    hint = f"; did you mean '.{close[0]}'?" if close else ""
                    raise self.error(f"unknown directive '.{name}'{hint}", span,
                                     notes=["directives: .machine, .tensor, .kernel"])
            else:
                instructions.append(self.instruction(item))
                operand_args.append(item.args)
        self.check_names(instructions, operand_args, markers, tensors)
        return Program.build(machine, tensors, instructions, markers)

    def check_names(self, instructions, operand_args, markers, tensors) -> None:
        """Unknown labels and tensors, reported at the operand (Program.build would only
        know the instruction)."""
        labels = {m.name for m in markers if m.kind == "label"}
        names = {t.name for t in tensors}
        for instr, args in zip(instructions, operand_args):
            for op, arg in zip(instr.operands, args):
                if isinstance(op, LabelRef) and op.name not in labels:
                    what, known = "label", labels
                elif isinstance(op, Symbol) and op.name not in names:
                    what, known = "tensor", names
                else:
                    continue
                close = difflib.get_close_matches(op.name, sorted(known), n=1)
                hint = f"; did you mean '{close[0]}'?" if close else ""
                raise self.error(f"unknown {what} '{op.name}'{hint}", arg.span)


def parse_assembly(text: str, filename: str = "<asm>") -> Program:
    """Parse M890 assembly text into a resolved Program; AssemblyError on any mistake.

    Line endings may be LF, CRLF or CR (an old Mac file is not an empty program)."""
    text = normalize_newlines(text)
    return _Reader(text, filename).program(read_items(text, filename))


def parse_instruction(text: str) -> Instruction:
    """One instruction from its text (`VADD.f32 L1[0], L1[64], #1.0, 4, 16`)."""
    program = parse_assembly(text, "<instruction>")
    if len(program.instructions) != 1:
        raise AssemblyError("expected exactly one instruction",
                            SourceSpan("<instruction>", 1, 1, text=text))
    return program.instructions[0]


def read_one_instruction(text: str, filename: str = "<instruction>") -> Instruction:
    """One instruction from its text, unresolved: the labels and tensors it names are not
    looked up (so a branch, a LOOP or a DESC reads alone). AssemblyError for a bad line."""
    text = normalize_newlines(text)
    items = read_items(text, filename)
    if len(items) != 1 or not isinstance(items[0], InstrItem):
        raise AssemblyError("expected exactly one instruction",
                            SourceSpan(filename, 1, 1, text=text))
    return _Reader(text, filename).instruction(items[0])


def operand_of_kind(arg, kind: str):
    """The operand read from `arg` (an `asm_syntax.Arg`, or an object with its `kind`,
    `name`, `value` and `items`) as operand kind `kind`, or None when it is not one: the
    rule by which the assembler decides what a word means (`r3` a register, ...)."""
    return _Reader("", "<operand>").as_kind(arg, kind)


def check_machine(program: Program, machine) -> None:
    """AssemblyError for an instruction the machine cannot run at all (an fp8 MMA on z810e)."""
    for instr in program.instructions:
        if instr.mnemonic == "MMA" and not machine.supports_mx(instr.suffixes[0]):
            supported = ", ".join(dtype for dtype, _ in machine.mx_rates)
            raise AssemblyError(
                f"{instr.name}: machine '{machine.name}' has no {instr.suffixes[0]} matrix unit",
                instr.span, notes=[f"{machine.name} matrix dtypes: {supported}"],
            )


__all__ = ["check_machine", "operand_of_kind", "parse_assembly", "parse_instruction",
           "print_instruction", "print_program", "print_tensor", "read_one_instruction"]
