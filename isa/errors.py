"""The zhenwu error family.

Every error a user can cause is a `ZhenwuError`. Each carries where it happened: a source
span (in a `.zt` program, an assembly file, a machine file or an input file) or an
instruction address (in a running program). The CLI turns any of them into a message and an
exit status (docs/design.md section 9): `exit_status` is 1 for user errors and 3 for chip traps.

This module is on the ground floor: it imports nothing of ours, so isa/, compiler/ and
runtime/ can all raise these.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_LINE_BREAK = re.compile(r"\r\n|\r|\n")


def normalize_newlines(text: str) -> str:
    """`text` with every line ending (CRLF, CR or LF) written as LF.

    The parsers read normalised text and count lines by LF only, as `source_lines` does; a
    form feed or U+2028 is not a line break anywhere (it is whitespace or an unexpected
    character), so a diagnostic's line number and its caret line always agree.
    """
    return _LINE_BREAK.sub("\n", text)


def source_lines(text: str) -> list[str]:
    """The lines of a source text as the parsers and diagnostics count them: split at CRLF,
    CR or LF only (not at the form feeds and Unicode separators `str.splitlines` takes)."""
    return _LINE_BREAK.split(text)


@dataclass(frozen=True)
class SourceSpan:
    """A range in a source text, 1-based lines and columns; `end_col` is exclusive.

    `text` is the whole source the span points into (so that a diagnostic can print the line
    with a caret without rereading the file); it may be None when unavailable.
    """

    file: str
    line: int
    col: int
    end_line: int | None = None
    end_col: int | None = None
    text: str | None = None

    def __repr__(self) -> str:  # keep IR dumps and test failures short
        return f"SourceSpan({self.file}:{self.line}:{self.col})"

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}"

    def source_line(self) -> str | None:
        """The text of the span's first line, or None when the source is unknown."""
        if self.text is None:
            return None
        lines = source_lines(self.text)
        if 1 <= self.line <= len(lines):
            return lines[self.line - 1]
        return None

    def caret(self) -> str | None:
        """The span's first line followed by a caret line under the span."""
        line = self.source_line()
        if line is None:
            return None
        start = max(self.col - 1, 0)
        if self.end_line in (None, self.line) and self.end_col is not None:
            width = max(self.end_col - self.col, 1)
        else:
            width = max(len(line.rstrip()) - start, 1)
        # Tabs before the span keep their width so that the caret lines up.
        pad = "".join("\t" if ch == "\t" else " " for ch in line[:start])
        return f"{line}\n{pad}{'^' * width}"


class ZhenwuError(Exception):
    """Base of every error zhenwu reports to a user (never a traceback)."""

    exit_status = 1
    kind = "error"

    def __init__(
        self,
        message: str,
        span: SourceSpan | None = None,
        *,
        address: int | None = None,
        notes: tuple[str, ...] | list[str] = (),
    ):
        super().__init__(message)
        self.message = message
        self.span = span
        self.address = address
        self.notes = tuple(notes)

    def format(self) -> str:
        """The message as the CLI prints it: `FILE:LINE:COL: error: MESSAGE`, source, caret."""
        head = f"{self.kind}: {self.message}"
        if self.span is not None:
            head = f"{self.span}: {head}"
        elif self.address is not None:
            head = f"@{self.address}: {head}"
        parts = [head]
        if self.span is not None and (caret := self.span.caret()) is not None:
            parts.append(caret)
        parts.extend(f"note: {note}" for note in self.notes)
        return "\n".join(parts)

    def __str__(self) -> str:
        return self.format()


class Diagnostic(ZhenwuError):
    """A mistake in a `.zt` program or its inputs: syntax, names, shapes, dtypes, sizes."""


class InputError(Diagnostic):
    """A bad input file or input option (`-i`, `--inputs`, `--shape`)."""


class AssemblyError(ZhenwuError):
    """A mistake in M890 assembly text."""


class EncodingError(ZhenwuError):
    """A binary that cannot be decoded, or an instruction that cannot be encoded."""


class MachineError(ZhenwuError):
    """A machine description file that is missing, malformed or inconsistent."""


class CompileError(ZhenwuError):
    """A program the compiler accepts in the language but cannot fit on the machine."""


class ChipTrap(ZhenwuError):
    """The simulated chip stopped: race, deadlock, out-of-bounds, leftover event, runaway.

    Carries the instruction address and text, the core, and the engines involved.
    """

    exit_status = 3
    kind = "trap"

    def __init__(
        self,
        message: str,
        *,
        address: int | None = None,
        instruction: str | None = None,
        core: int | None = None,
        chip: int | None = None,
        engines: tuple[str, ...] = (),
        notes: tuple[str, ...] | list[str] = (),
    ):
        super().__init__(message, None, address=address, notes=notes)
        self.instruction = instruction
        self.core = core
        self.chip = chip
        self.engines = tuple(engines)

    def format(self) -> str:
        where = []
        if self.chip is not None:
            where.append(f"chip {self.chip}")
        if self.core is not None:
            where.append(f"core {self.core}")
        if self.engines:
            where.append("engines " + ", ".join(self.engines))
        head = f"trap: {self.message}"
        if where:
            head += f" ({'; '.join(where)})"
        parts = [head]
        if self.address is not None or self.instruction is not None:
            addr = f"@{self.address}" if self.address is not None else "@?"
            parts.append(f"  at {addr}: {self.instruction or ''}".rstrip())
        parts.extend(f"note: {note}" for note in self.notes)
        return "\n".join(parts)


class UsageError(ZhenwuError):
    """A bad command line (exit status 2)."""

    exit_status = 2
