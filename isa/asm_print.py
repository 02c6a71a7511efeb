"""M890 assembly text from a Program: the canonical form (isa/asm.py reads it back).

`.machine`, then the `.tensor` directives, then the instructions (indented four spaces) with
their labels and `.kernel` markers. Kept apart from the reader so that printing a program
(`zhenwu compile -o x.s`) loads none of it.
"""

from __future__ import annotations

from zhenwu.isa.program import Instruction, Marker, Program, TensorDecl


def print_instruction(instr: Instruction) -> str:
    """The canonical text of one instruction."""
    parts = []
    if instr.predicate is not None:
        parts.append(str(instr.predicate))
    parts.append(instr.name)
    text = " ".join(parts)
    if instr.operands:
        text += " " + ", ".join(str(op) for op in instr.operands)
    for opt in instr.options:
        text += f" {opt}"
    for event in instr.waits:
        text += f" .wait {event}"
    for event in instr.sigs:
        text += f" .sig {event}"
    return text


def print_tensor(tensor: TensorDecl) -> str:
    dims = ", ".join(map(str, tensor.shape))
    return f".tensor {tensor.name}, {tensor.dtype}, [{dims}], {tensor.address:#x}, {tensor.role}"


def print_program(program: Program) -> str:
    """The canonical assembly text of a program (ends with a newline)."""
    lines = []
    if program.machine is not None:
        lines.append(f".machine {program.machine}")
    lines.extend(print_tensor(t) for t in program.tensors)
    by_index: dict[int, list[Marker]] = {}
    for marker in program.markers:
        by_index.setdefault(marker.index, []).append(marker)
    for index in range(len(program.instructions) + 1):
        for marker in by_index.get(index, []):
            lines.append(f"{marker.name}:" if marker.kind == "label" else f".kernel {marker.name}")
        if index < len(program.instructions):
            lines.append("    " + print_instruction(program.instructions[index]))
    return "\n".join(lines) + "\n"
