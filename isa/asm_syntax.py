"""The M890 assembly syntax: lines to items, by hand (no parser generator).

Assembly is line oriented, so a line is read by a small lexer and a recursive-descent reader
that turns it into one item: a label, a directive or an instruction, each with its operands
as written (`Arg`) and their source spans. What the operands *mean* (a register, a tile, a
label...) is decided later, in isa/asm.py, by the operand kinds of the instruction.

The syntax, one item per line (`#` or `;` starts a comment, except that `#` followed by a
number where an operand may start is a float immediate):

    line        := [label | directive | instruction]
    label       := WORD ':'
    directive   := DOTWORD [args]
    instruction := ['@' ['!'] WORD] WORD [args] field*
    args        := arg (',' arg)*
    field       := DOTWORD [arg]
    arg         := WORD | WORD ('+'|'-') INT | WORD ':' INT | ['-'] INT | FLOAT
                 | WORD '[' args ']' | '[' [args] ']'

Lines are split at LF only, after `normalize_newlines` (CRLF and CR become LF), which is how
every diagnostic counts them (`isa.errors.source_lines`), so a caret is always under the line
that was read; a form feed is whitespace. Brackets nest at most MAX_NESTING deep: a
pathological file gets a diagnostic, never a RecursionError.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property
from typing import NamedTuple

from zhenwu.isa.errors import AssemblyError, SourceSpan, source_lines

MAX_INT_DIGITS = 40
MAX_NESTING = 8    # brackets: valid assembly nests two deep (`d0[r1, 2]`, `[[..]]`)

_TOKEN = re.compile(
    r"(?P<ws>[ \t\x0b\x0c\r]+)"
    r"|(?P<FLOAT>#[-+]?(?:inf|nan|[0-9]+\.?[0-9]*(?:[eE][-+]?[0-9]+)?|\.[0-9]+(?:[eE][-+]?[0-9]+)?)"
    r"(?![A-Za-z0-9_.]))"
    r"|(?P<COMMENT>[#;].*)"
    r"|(?P<WORD>[A-Za-z_][A-Za-z0-9_.]*)"
    r"|(?P<DOTWORD>\.[A-Za-z_][A-Za-z0-9_]*)"
    r"|(?P<INT>0[xX][0-9a-fA-F]+|[0-9]+)"
    r"|(?P<PUNCT>[:,\[\]+\-@!])"
)
_TERMINAL_TEXT = {"WORD": "a name", "DOTWORD": "an option (.name)", "INT": "an integer",
                  "FLOAT": "a float immediate", "END": "end of line"}


class Token(NamedTuple):
    kind: str   # WORD DOTWORD INT FLOAT PUNCT COMMENT BAD END
    text: str
    col: int    # 1-based
    line: int

    @property
    def end_col(self) -> int:
        return self.col + max(len(self.text), 1)


class Source(NamedTuple):
    """Where items were read from: what a span needs besides its line and columns."""

    file: str
    text: str


@dataclass(eq=False)
class Arg:
    """An operand as written, before it is classified. Its span is built when asked for
    (most operands never are: only errors need one)."""

    kind: str  # word word_offset word_count int float indexed list
    source: Source
    line: int
    col: int
    end_col: int
    name: str = ""
    value: int | float = 0
    items: tuple[Arg, ...] = ()

    @cached_property
    def span(self) -> SourceSpan:
        return SourceSpan(self.source.file, self.line, self.col, self.line, self.end_col,
                          self.source.text)

    @property
    def text(self) -> str:
        line = self.span.source_line() or ""
        if self.span.end_line in (None, self.span.line) and self.span.end_col is not None:
            return line[self.span.col - 1:self.span.end_col - 1]
        return line[self.span.col - 1:].rstrip()


@dataclass(frozen=True)
class Label:
    name: str
    span: SourceSpan


@dataclass(frozen=True)
class Directive:
    name: str           # without the dot
    span: SourceSpan
    args: tuple[Arg, ...]


@dataclass(frozen=True)
class Field:
    name: str           # without the dot
    span: SourceSpan
    value: Arg | None


@dataclass(frozen=True)
class InstrItem:
    predicate: tuple[bool, Token] | None   # (negated, register word)
    word: Token
    span: SourceSpan
    args: tuple[Arg, ...]
    fields: tuple[Field, ...]


Item = Label | Directive | InstrItem


def read_items(text: str, filename: str) -> list[Item]:
    """Every item of an assembly text, in order; AssemblyError at the first bad line."""
    items = []
    source = Source(filename, text)
    for number, line in enumerate(source_lines(text), start=1):
        if not line or line.isspace():
            continue
        item = _LineReader(line, number, source).item()
        if item is not None:
            items.append(item)
    return items


class _LineReader:
    def __init__(self, line: str, number: int, source: Source):
        self.source = source
        self.filename, self.text = source
        self.number = number
        self.tokens = self._lex(line)
        self.pos = 0

    # ---- tokens ---------------------------------------------------------------------
    def _lex(self, line: str) -> list[Token]:
        tokens = []
        pos = 0
        number = self.number
        for match in _TOKEN.finditer(line):
            if match.start() != pos:
                break
            pos = match.end()
            kind = match.lastgroup
            if kind != "ws":
                tokens.append(Token(kind, match.group(), match.start() + 1, number))
                if kind == "COMMENT":
                    pos = len(line)
                    break
        if pos < len(line):
            # an error only if the reader gets here: a float-looking '#2' before it may
            # turn out to start a comment
            tokens.append(Token("BAD", line[pos], pos + 1, number))
        tokens.append(Token("END", "", len(line) + 1, number))
        return tokens

    def _span_at(self, col: int, end_col: int) -> SourceSpan:
        return SourceSpan(self.filename, self.number, col, self.number, end_col, self.text)

    def span(self, first: Token, last: Token | None = None) -> SourceSpan:
        last = last or first
        return self._span_at(first.col, last.end_col)

    def new_arg(self, kind: str, first: Token, last: Token | None = None, **fields) -> Arg:
        last = last or first
        return Arg(kind, self.source, self.number, first.col, last.end_col, **fields)

    def peek(self, operand_may_start: bool = False) -> Token:
        """The next token. `#1.5` is a float only where an operand may start; elsewhere
        it starts a comment, like `#` and `;` always do, and the line ends there."""
        token = self.tokens[self.pos]
        if token.kind == "COMMENT" or (token.kind == "FLOAT" and not operand_may_start):
            end = self.tokens[-1]
            del self.tokens[self.pos:-1]
            return end
        if token.kind == "BAD":
            raise AssemblyError(f"unexpected character {token.text!r}", self.span(token))
        return token

    def take(self, operand_may_start: bool = False) -> Token:
        token = self.peek(operand_may_start)
        if token.kind != "END":
            self.pos += 1
        return token

    def at(self, text: str) -> bool:
        token = self.peek()
        return token.kind == "PUNCT" and token.text == text

    def unexpected(self, token: Token, expected: list[str]) -> AssemblyError:
        what = "end of line" if token.kind == "END" else f"'{token.text}'"
        choices = ", ".join(expected[:-1]) + " or " + expected[-1] if len(expected) > 1 \
            else expected[0]
        return AssemblyError(f"unexpected {what}; expected {choices}", self.span(token))

    def expect(self, text: str) -> Token:
        token = self.peek()
        if token.kind != "PUNCT" or token.text != text:
            raise self.unexpected(token, [f"'{text}'"])
        return self.take()

    # ---- items ----------------------------------------------------------------------
    def item(self) -> Item | None:
        first = self.peek()
        if first.kind == "END":
            return None
        if first.kind == "DOTWORD":
            self.take()
            args = self.args_if_any()
            self.end()
            return Directive(first.text[1:], self.span(first), args)
        if first.kind == "WORD" and self.tokens[self.pos + 1].kind == "PUNCT" \
                and self.tokens[self.pos + 1].text == ":":
            self.take()
            self.take()
            self.end()
            return Label(first.text, self.span(first))
        predicate = None
        if first.kind == "PUNCT" and first.text == "@":
            self.take()
            negated = self.at("!")
            if negated:
                self.take()
            register = self.take()
            if register.kind != "WORD":
                raise self.unexpected(register, ["a register rN"])
            predicate = (negated, register)
        word = self.take()
        if word.kind != "WORD":
            raise self.unexpected(word, ["an instruction", "a label", "a directive"])
        args = self.args_if_any()
        fields = []
        while self.peek().kind == "DOTWORD":
            dot = self.take()
            value = self.arg(0) if self._arg_starts() else None
            fields.append(Field(dot.text[1:], self.span(dot), value))
        self.end()
        return InstrItem(predicate, word, self.span(word), args, tuple(fields))

    def end(self) -> None:
        token = self.peek()
        if token.kind != "END":
            expected = ["','", "an option (.name)"] if self.pos > 1 else []
            raise self.unexpected(token, expected + ["end of line"])

    def _arg_starts(self) -> bool:
        token = self.peek(operand_may_start=True)
        return token.kind in ("WORD", "INT", "FLOAT") or (
            token.kind == "PUNCT" and token.text in ("-", "["))

    def args_if_any(self, depth: int = 0) -> tuple[Arg, ...]:
        if not self._arg_starts():
            return ()
        return self.args(depth)

    def args(self, depth: int) -> tuple[Arg, ...]:
        items = [self.arg(depth)]
        while self.at(","):
            self.take()
            items.append(self.arg(depth))
        return tuple(items)

    def nest(self, bracket: Token, depth: int) -> int:
        if depth >= MAX_NESTING:
            raise AssemblyError(f"brackets nested more than {MAX_NESTING} deep",
                                self.span(bracket))
        return depth + 1

    def arg(self, depth: int) -> Arg:
        token = self.take(operand_may_start=True)
        if token.kind == "FLOAT":
            return self.new_arg("float", token, value=float(token.text[1:]))
        if token.kind == "INT":
            return self.new_arg("int", token, value=self.int_value(token))
        if token.kind == "PUNCT" and token.text == "-":
            number = self.take()
            if number.kind != "INT":
                raise self.unexpected(number, ["an integer"])
            return self.new_arg("int", token, number, value=-self.int_value(number))
        if token.kind == "PUNCT" and token.text == "[":
            inner = self.nest(token, depth)
            items = () if self.at("]") else self.args(inner)
            close = self.expect("]")
            return self.new_arg("list", token, close, items=items)
        if token.kind != "WORD":
            raise self.unexpected(token, ["an operand"])
        follow = self.peek()
        if follow.kind == "PUNCT" and follow.text in ("+", "-"):
            self.take()
            number = self.take()
            if number.kind != "INT":
                raise self.unexpected(number, ["an integer"])
            sign = -1 if follow.text == "-" else 1
            return self.new_arg("word_offset", token, number, name=token.text,
                       value=sign * self.int_value(number))
        if follow.kind == "PUNCT" and follow.text == ":":
            self.take()
            number = self.take()
            if number.kind != "INT":
                raise self.unexpected(number, ["an integer"])
            return self.new_arg("word_count", token, number, name=token.text,
                       value=self.int_value(number))
        if follow.kind == "PUNCT" and follow.text == "[":
            inner = self.nest(follow, depth)
            self.take()
            items = self.args(inner)
            close = self.expect("]")
            return self.new_arg("indexed", token, close, name=token.text, items=items)
        return self.new_arg("word", token, name=token.text)

    def int_value(self, token: Token) -> int:
        text = token.text
        if len(text) > MAX_INT_DIGITS:
            raise AssemblyError(f"integer '{text[:20]}...' is too large", self.span(token))
        return int(text, 16) if text[:2] in ("0x", "0X") else int(text, 10)
