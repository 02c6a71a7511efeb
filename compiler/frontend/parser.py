"""Parsing `.zt` source text into the AST (compiler/frontend/ast.py).

The grammar (grammar.lark) is LALR; a small post-lexer drops newlines inside ( ) and [ ] as
Python does. Syntax errors become Diagnostics saying what was found and what was expected.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import lark
from lark import Token, Transformer, v_args

from compiler.frontend import ast
from isa.errors import Diagnostic, SourceSpan

_GRAMMAR = Path(__file__).with_name("grammar.lark")

# How expected terminals are named in syntax errors.
_FRIENDLY = {"NAME": "a name", "INT": "an integer", "FLOAT": "a number", "STRING": "a string",
             "DTYPE": "a dtype", "_NL": "a newline", "$END": "end of file"}


# A line ending in one of these continues on the next line.
_CONTINUES = {",", "=", "+", "-", "*", "/", "//", "@", "**", "<", "<=", ">", ">=", "==", "!=",
              "->"}


class _NewlinesInBrackets:
    """Post-lexer: inside ( ) and [ ], and after a comma or an operator, a newline is
    whitespace."""

    always_accept = ("_NL",)

    def process(self, stream):
        depth = 0
        previous = None
        for token in stream:
            if token.type in ("LPAR", "LSQB"):
                depth += 1
            elif token.type in ("RPAR", "RSQB"):
                depth = max(depth - 1, 0)
            elif token.type == "_NL" and (depth or (previous is not None and
                                                    previous.value in _CONTINUES)):
                continue
            previous = token
            yield token


@cache
def _lark() -> lark.Lark:
    return lark.Lark(_GRAMMAR.read_text(), parser="lalr", propagate_positions=True,
                     maybe_placeholders=True, postlex=_NewlinesInBrackets())


@cache
def _terminal_names() -> dict[str, str]:
    names = dict(_FRIENDLY)
    for term in _lark().terminals:
        if term.name not in names and term.pattern.type == "str":
            names[term.name] = f"'{term.pattern.value}'"
    return names


def _describe_expected(expected) -> str:
    names = _terminal_names()
    expected = set(expected)
    if expected & {"RPAR", "RSQB"} or {"NAME", "INT"} <= expected:
        expected.discard("_NL")  # inside brackets, or mid-expression: a newline is no option
    items = []
    if {"NAME", "INT", "FLOAT"} <= expected:
        # the tokens an expression can start with read better as one word
        starters = {"'('", "'['", "'-'", "'+'", "'true'", "'false'", "'None'", "'...'"}
        expected = {t for t in expected
                    if t not in ("NAME", "INT", "FLOAT", "STRING", "DTYPE")
                    and names.get(t, t) not in starters}
        items.append("an expression")
    items += sorted({names.get(t, t) for t in expected})
    if len(items) == 1:
        return items[0]
    return ", ".join(items[:-1]) + " or " + items[-1]


def _token_text(token: Token) -> str:
    if token.type == "$END":
        return "end of file"
    if token.type == "_NL":
        return "end of line"
    return f"'{token.value}'"


def _syntax_error(err: lark.exceptions.UnexpectedInput, file: str, text: str) -> Diagnostic:
    line, col = max(err.line, 1), max(err.column, 1)
    if isinstance(err, lark.exceptions.UnexpectedCharacters):
        char = text[err.pos_in_stream] if err.pos_in_stream < len(text) else "?"
        message = f"unexpected character {char!r}"
        if char == "'":
            message += "; strings use double quotes"
        return Diagnostic(message, SourceSpan(file, line, col, line, col + 1, text))
    if isinstance(err, lark.exceptions.UnexpectedToken):
        token = err.token
        if token.type == "$END":
            lines = text.splitlines() or [""]
            line, col = len(lines), len(lines[-1]) + 1
            width = 1
        else:
            width = max(len(str(token.value).split("\n")[0]), 1)
        message = f"unexpected {_token_text(token)}; expected {_describe_expected(err.expected)}"
        return Diagnostic(message, SourceSpan(file, line, col, line, col + width, text))
    return Diagnostic("syntax error", SourceSpan(file, line, col, None, None, text))


class _ToAst(Transformer):
    """Lark tree -> ast nodes, with spans from lark's position metadata."""

    def __init__(self, file: str, text: str):
        super().__init__()
        self.file, self.text = file, text

    def _span(self, meta) -> SourceSpan:
        return SourceSpan(self.file, meta.line, meta.column, meta.end_line, meta.end_column,
                          self.text)

    def _tok(self, token: Token) -> SourceSpan:
        return SourceSpan(self.file, token.line, token.column, token.end_line,
                          token.end_column, self.text)

    # ---- items
    @v_args(meta=True)
    def start(self, meta, items):
        return [item for item in items if item is not None]

    @v_args(meta=True)
    def const_def(self, meta, children):
        name, value = children
        return ast.ConstDef(self._span(meta), str(name), value)

    @v_args(meta=True)
    def mesh_def(self, meta, children):
        return ast.MeshDef(self._span(meta), list(children))

    def mesh_axis(self, children):
        name, size = children
        return str(name), size

    @v_args(meta=True)
    def fn_def(self, meta, children):
        name, params, returns, body = children
        return ast.FnDef(self._span(meta), str(name), self._tok(name), params or [], returns,
                         body)

    def params(self, children):
        return [c for c in children if c is not None]

    @v_args(meta=True)
    def param(self, meta, children):
        name, type_, default = children
        return ast.Param(self._span(meta), str(name), type_, default)

    def ret_types(self, children):
        return [c for c in children if c is not None]

    @v_args(meta=True)
    def type(self, meta, children):
        dtype, *dims = children
        return ast.TypeExpr(self._span(meta), str(dtype), [d for d in dims if d is not None])

    def block(self, children):
        return [c for c in children if c is not None]

    # ---- statements
    @v_args(meta=True)
    def assign(self, meta, children):
        *names, value = children
        targets = [ast.Target(self._tok(n), str(n)) for n in names]
        return ast.Assign(self._span(meta), targets, value)

    @v_args(meta=True)
    def return_stmt(self, meta, children):
        return ast.Return(self._span(meta), list(children))

    # ---- expressions
    def _binop(op):
        @v_args(meta=True)
        def rule(self, meta, children):
            left, right = children
            return ast.BinOp(self._span(meta), op, left, right)

        return rule

    lt, le, gt, ge = _binop("<"), _binop("<="), _binop(">"), _binop(">=")
    eq, ne = _binop("=="), _binop("!=")
    add, sub, mul, div = _binop("+"), _binop("-"), _binop("*"), _binop("/")
    floordiv, matmul, pow = _binop("//"), _binop("@"), _binop("**")

    @v_args(meta=True)
    def neg(self, meta, children):
        return ast.Unary(self._span(meta), "-", children[0])

    @v_args(meta=True)
    def pos(self, meta, children):
        return ast.Unary(self._span(meta), "+", children[0])

    @v_args(meta=True)
    def call(self, meta, children):
        name, args = children
        positional, keywords = [], []
        for arg in args or []:
            if isinstance(arg, ast.Keyword):
                keywords.append(arg)
            elif arg is not None:
                if keywords:
                    raise Diagnostic("positional argument after a keyword argument", arg.span)
                positional.append(arg)
        return ast.Call(self._span(meta), str(name), self._tok(name), positional, keywords)

    def args(self, children):
        return list(children)

    @v_args(meta=True)
    def kwarg(self, meta, children):
        name, value = children
        return ast.Keyword(self._span(meta), str(name), value)

    @v_args(meta=True)
    def index(self, meta, children):
        base, *subs = children
        return ast.Index(self._span(meta), base, [s for s in subs if s is not None])

    @v_args(meta=True)
    def slice(self, meta, children):
        start, stop, step = (list(children) + [None, None, None])[:3]
        if getattr(meta, "empty", False):
            span = None
        else:
            span = self._span(meta)
        return ast.Slice(span, start, stop, step)

    @v_args(meta=True)
    def int_lit(self, meta, children):
        return ast.Num(self._span(meta), int(children[0]))

    @v_args(meta=True)
    def float_lit(self, meta, children):
        return ast.Num(self._span(meta), float(children[0]))

    @v_args(meta=True)
    def str_lit(self, meta, children):
        return ast.Str(self._span(meta), str(children[0])[1:-1])

    @v_args(meta=True)
    def true_lit(self, meta, children):
        return ast.Bool(self._span(meta), True)

    @v_args(meta=True)
    def false_lit(self, meta, children):
        return ast.Bool(self._span(meta), False)

    @v_args(meta=True)
    def none_lit(self, meta, children):
        return ast.NoneLit(self._span(meta))

    @v_args(meta=True)
    def ellipsis_lit(self, meta, children):
        return ast.EllipsisLit(self._span(meta))

    @v_args(meta=True)
    def dtype_lit(self, meta, children):
        return ast.DTypeLit(self._span(meta), str(children[0]))

    @v_args(meta=True)
    def name(self, meta, children):
        return ast.Name(self._span(meta), str(children[0]))

    @v_args(meta=True)
    def tuple_lit(self, meta, children):
        return ast.TupleLit(self._span(meta), [c for c in children if c is not None])

    @v_args(meta=True)
    def list_lit(self, meta, children):
        return ast.ListLit(self._span(meta), [c for c in children if c is not None])


def parse_source(text: str, file: str = "<input>") -> ast.Module:
    """Parse `.zt` text into an ast.Module; syntax errors raise Diagnostic."""
    try:
        tree = _lark().parse(text)
    except lark.exceptions.UnexpectedInput as err:
        raise _syntax_error(err, file, text) from None
    except lark.exceptions.VisitError as err:  # pragma: no cover - transformer bug
        raise err.orig_exc from None
    try:
        items = _ToAst(file, text).transform(tree)
    except lark.exceptions.VisitError as err:
        if isinstance(err.orig_exc, Diagnostic):
            raise err.orig_exc from None
        raise
    return ast.Module(file, text, items)
