"""Reading the Graph IR text form back (the inverse of compiler/graph/printer.py).

Every op is re-checked by its registry rule, and the type written after `:` must equal the
inferred one, so a parsed function is as well-formed as a built one.
"""

from __future__ import annotations

import json
import re

from zhenwu.compiler.graph.builder import GraphBuilder
from zhenwu.compiler.graph.dtypes import DTYPES
from zhenwu.compiler.graph.ir import Function, TensorType, Value
from zhenwu.isa.errors import Diagnostic, SourceSpan

_TOKEN = re.compile(r"""
    (?P<ws>[ \t\r\n]+)
  | (?P<comment>//[^\n]*)
  | (?P<str>"(?:[^"\\\n]|\\.)*")
  | (?P<value>%[A-Za-z0-9_]+)
  | (?P<func>@[A-Za-z_][A-Za-z0-9_]*)
  | (?P<num>-?(?:\d+\.\d*(?:[eE][-+]?\d+)?|\d+[eE][-+]?\d+|\d+|inf\b|nan\b))
  | (?P<name>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<arrow>->)
  | (?P<punct>[(){}\[\],:=])
""", re.VERBOSE)


class _Tokens:
    def __init__(self, text: str, file: str):
        self.text, self.file = text, file
        self.items: list[tuple[str, str, int]] = []
        pos = 0
        while pos < len(text):
            match = _TOKEN.match(text, pos)
            if match is None:
                raise Diagnostic(f"unexpected character {text[pos]!r} in Graph IR",
                                 self.span_at(pos))
            if match.lastgroup not in ("ws", "comment"):
                self.items.append((match.lastgroup, match.group(), pos))
            pos = match.end()
        self.index = 0

    def span_at(self, pos: int, length: int = 1) -> SourceSpan:
        line = self.text.count("\n", 0, pos) + 1
        col = pos - (self.text.rfind("\n", 0, pos) + 1) + 1
        return SourceSpan(self.file, line, col, line, col + length, self.text)

    def peek(self) -> tuple[str, str, int]:
        if self.index < len(self.items):
            return self.items[self.index]
        return ("eof", "", len(self.text))

    def next(self) -> tuple[str, str, int]:
        token = self.peek()
        self.index += 1
        return token

    def error(self, expected: str) -> Diagnostic:
        kind, text, pos = self.peek()
        found = "end of input" if kind == "eof" else repr(text)
        return Diagnostic(f"expected {expected} in Graph IR, found {found}",
                          self.span_at(pos, max(len(text), 1)))

    def expect(self, text: str) -> None:
        if self.peek()[1] != text or self.peek()[0] in ("str", "eof"):
            raise self.error(f"'{text}'")
        self.index += 1

    def accept(self, text: str) -> bool:
        if self.peek()[1] == text and self.peek()[0] != "str":
            self.index += 1
            return True
        return False

    def expect_kind(self, kind: str, what: str) -> str:
        if self.peek()[0] != kind:
            raise self.error(what)
        return self.next()[1]


def _number(text: str):
    if any(ch in text for ch in ".eEn") or text.lstrip("-") == "inf":
        return float(text)
    return int(text)


def _parse_int(tokens: _Tokens) -> int:
    value = _number(tokens.expect_kind("num", "an integer"))
    if not isinstance(value, int):
        raise tokens.error("an integer")
    return value


def _parse_type(tokens: _Tokens) -> TensorType:
    dtype = tokens.expect_kind("name", "a dtype")
    if dtype not in DTYPES:
        tokens.index -= 1
        raise tokens.error(f"a dtype ({', '.join(DTYPES)})")
    tokens.expect("[")
    dims = []
    if not tokens.accept("]"):
        dims.append(_parse_int(tokens))
        while tokens.accept(","):
            dims.append(_parse_int(tokens))
        tokens.expect("]")
    return TensorType(dtype, tuple(dims))


def _parse_attr(tokens: _Tokens):
    kind, text, _ = tokens.peek()
    if kind == "num":
        tokens.next()
        return _number(text)
    if kind == "str":
        tokens.next()
        return json.loads(text)
    if kind == "name" and text in ("true", "false", "none"):
        tokens.next()
        return {"true": True, "false": False, "none": None}[text]
    if tokens.accept("["):
        items = []
        if not tokens.accept("]"):
            items.append(_parse_attr(tokens))
            while tokens.accept(","):
                items.append(_parse_attr(tokens))
            tokens.expect("]")
        return tuple(items)
    raise tokens.error("an attribute value")


def _parse_span(tokens: _Tokens) -> SourceSpan:
    tokens.expect("(")
    file = json.loads(tokens.expect_kind("str", "a file name"))
    tokens.expect(":")
    line = _parse_int(tokens)
    tokens.expect(":")
    col = _parse_int(tokens)
    end_line = end_col = None
    if tokens.peek()[0] == "num" and tokens.peek()[1].startswith("-"):
        end_line = -_parse_int(tokens)
        tokens.expect(":")
        end_col = _parse_int(tokens)
    tokens.expect(")")
    return SourceSpan(file, line, col, end_line, end_col)


def parse_function(text: str, file: str = "<ir>") -> Function:
    """Parse one function in the Graph IR text form (raises Diagnostic on bad text)."""
    tokens = _Tokens(text, file)
    tokens.expect("func")
    name = tokens.expect_kind("func", "@name")[1:]
    builder = GraphBuilder(name)
    values: dict[str, Value] = {}

    def define(ref: str, pos: int) -> str:
        key = ref[1:]
        if key in values:
            raise Diagnostic(f"value {ref} is defined twice", tokens.span_at(pos, len(ref)))
        return key

    tokens.expect("(")
    if not tokens.accept(")"):
        while True:
            _, ref, pos = tokens.peek()
            tokens.expect_kind("value", "a parameter %name")
            key = define(ref, pos)
            tokens.expect(":")
            type_ = _parse_type(tokens)
            if key.isdigit():
                values[key] = builder.param(None, type_, int(key))
            else:
                values[key] = builder.param(key, type_)
            if tokens.accept(")"):
                break
            tokens.expect(",")
    tokens.expect("->")
    tokens.expect("(")
    result_types = []
    if not tokens.accept(")"):
        result_types.append(_parse_type(tokens))
        while tokens.accept(","):
            result_types.append(_parse_type(tokens))
        tokens.expect(")")
    tokens.expect("{")

    def use() -> Value:
        _, ref, pos = tokens.peek()
        tokens.expect_kind("value", "a value %N")
        if ref[1:] not in values:
            raise Diagnostic(f"use of undefined value {ref}", tokens.span_at(pos, len(ref)))
        return values[ref[1:]]

    while tokens.peek()[1] != "return":
        _, ref, pos = tokens.peek()
        tokens.expect_kind("value", "an op '%N = kind ...' or 'return'")
        key = define(ref, pos)
        if not key.isdigit():
            raise Diagnostic(f"op results are numbered (%3), got {ref}",
                             tokens.span_at(pos, len(ref)))
        tokens.expect("=")
        kind_pos = tokens.peek()[2]
        kind = tokens.expect_kind("name", "an op kind")
        inputs = []
        if tokens.peek()[0] == "value":
            inputs.append(use())
            while tokens.accept(","):
                inputs.append(use())
        attrs = {}
        if tokens.accept("{") and not tokens.accept("}"):
            while True:
                attr = tokens.expect_kind("name", "an attribute name")
                tokens.expect("=")
                attrs[attr] = _parse_attr(tokens)
                if tokens.accept("}"):
                    break
                tokens.expect(",")
        tokens.expect(":")
        type_pos = tokens.peek()[2]
        declared = _parse_type(tokens)
        origin = span = None
        if tokens.accept("origin"):
            tokens.expect("(")
            origin = json.loads(tokens.expect_kind("str", "an origin string"))
            tokens.expect(")")
        if tokens.accept("loc"):
            span = _parse_span(tokens)
        here = tokens.span_at(kind_pos, len(kind))
        value = builder.emit(kind, inputs, attrs, span=here, result_id=int(key))
        builder.ops[-1].span, builder.ops[-1].origin = span, origin
        if value.type != declared:
            raise Diagnostic(f"{ref}: declared type {declared} but {kind} gives {value.type}",
                             tokens.span_at(type_pos))
        values[key] = value
    tokens.expect("return")
    outputs = [use()]
    while tokens.accept(","):
        outputs.append(use())
    tokens.expect("}")
    if tokens.peek()[0] != "eof":
        raise tokens.error("end of input")
    got = [v.type for v in outputs]
    if got != result_types:
        raise Diagnostic(f"function @{name} declares results ({', '.join(map(str, result_types))})"
                         f" but returns ({', '.join(map(str, got))})", tokens.span_at(0, 4))
    return builder.finish(outputs)
