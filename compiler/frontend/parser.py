"""Parsing `.zt` source text into the AST (compiler/frontend/ast.py).

The grammar (grammar.lark) is LALR; a small post-lexer drops newlines inside ( ) and [ ] as
Python does. Syntax errors become Diagnostics saying what was found and what was expected.
The parser is `_zt_lalr.py`, lark's stand-alone parser generated from the grammar
(`python -m zhenwu.compiler.frontend.regen_parser` after editing it): a compile imports no
lark and builds no tables.
"""

from __future__ import annotations

from functools import cache

from zhenwu.compiler.frontend import _zt_lalr as lalr
from zhenwu.compiler.frontend import ast
from zhenwu.isa.errors import Diagnostic, SourceSpan, normalize_newlines, source_lines

Token, Transformer, v_args = lalr.Token, lalr.Transformer, lalr.v_args

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
def _lark() -> lalr.Lark:
    return lalr.Lark_StandAlone(postlex=_NewlinesInBrackets())


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


def _syntax_error(err: lalr.UnexpectedInput, file: str, text: str) -> Diagnostic:
    line, col = max(err.line, 1), max(err.column, 1)
    if isinstance(err, lalr.UnexpectedCharacters):
        char = text[err.pos_in_stream] if err.pos_in_stream < len(text) else "?"
        message = f"unexpected character {char!r}"
        if char == "'":
            message += "; strings use double quotes"
        return Diagnostic(message, SourceSpan(file, line, col, line, col + 1, text))
    if isinstance(err, lalr.UnexpectedToken):
        token = err.token
        if token.type == "$END":
            lines = source_lines(text)
            line, col = len(lines), len(lines[-1]) + 1
            width = 1
        else:
            width = max(len(str(token.value).split("\n")[0]), 1)
        message = f"unexpected {_token_text(token)}; expected {_describe_expected(err.expected)}"
        notes = []
        where = len(text) if token.type == "$END" else token.start_pos
        opened = unclosed_brackets(text, where or 0)
        if opened and opened[-1][0] in "([" and {"RPAR", "RSQB"} & set(err.expected):
            char, pos = opened[-1]
            at = position(text, pos)
            span = SourceSpan(file, at[0], at[1], at[0], at[1] + 1, text)
            notes.append(f"{span}: the '{char}' opened here is not closed\n{span.caret()}")
        return Diagnostic(message, SourceSpan(file, line, col, line, col + width, text),
                          notes=notes)
    return Diagnostic("syntax error", SourceSpan(file, line, col, None, None, text))


# Past 400 digits an integer exceeds even f32/f64 (and Python's int() refuses 4300).
_MAX_INT_DIGITS = 400

_CLOSING = {"(": ")", "[": "]", "{": "}"}


def unclosed_brackets(text: str, end: int) -> list[tuple[str, int]]:
    """The brackets open at offset `end` of `text`, outermost first, as (char, offset);
    strings and comments are skipped."""
    stack: list[tuple[str, int]] = []
    i = 0
    while i < end:
        ch = text[i]
        if ch == "#":
            newline = text.find("\n", i)
            i = end if newline < 0 else newline
            continue
        if ch == '"':
            close = text.find('"', i + 1)
            i = end if close < 0 else close + 1
            continue
        if ch in _CLOSING:
            stack.append((ch, i))
        elif ch in ")]}" and stack and _CLOSING[stack[-1][0]] == ch:
            stack.pop()
        i += 1
    return stack


def deepest_expression(text: str) -> tuple[int, int]:
    """(offset, depth): where the most deeply bracketed expression of `text` starts (the
    outermost bracket around its deepest point, and the name called there, if any: `relu(`),
    and how deep its brackets go."""
    depth, best, start, outer = 0, 0, 0, 0
    for i, ch in enumerate(text):
        if ch in "([":
            if depth == 0:
                outer = i
            depth += 1
            if depth > best:
                best, start = depth, outer
        elif ch in ")]" and depth:
            depth -= 1
        elif ch == "\n" and depth == 0:
            outer = i
    while start > 0 and (text[start - 1].isalnum() or text[start - 1] == "_"):
        start -= 1
    return start, best


def position(text: str, offset: int) -> tuple[int, int]:
    """1-based (line, column) of a character offset."""
    line = text.count("\n", 0, offset) + 1
    return line, offset - (text.rfind("\n", 0, offset) + 1) + 1


# Words a program cannot bind (as a parameter, a variable, a const or a function): the
# grammar's keywords and the global constants (compiler/frontend/checker.py).
RESERVED = frozenset({"fn", "return", "const", "true", "false", "None", "inf", "pi"})


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

    def _binding(self, token: Token, what: str) -> str:
        """The name of something the program binds; a reserved word is a Diagnostic there."""
        name = str(token)
        if name in RESERVED:
            raise Diagnostic(f"'{name}' is a reserved word and cannot name a {what}",
                             self._tok(token))
        return name

    # ---- items
    @v_args(meta=True)
    def start(self, meta, items):
        return [item for item in items if item is not None]

    @v_args(meta=True)
    def const_def(self, meta, children):
        name, value = children
        return ast.ConstDef(self._span(meta), self._binding(name, "const"), value)

    @v_args(meta=True)
    def mesh_def(self, meta, children):
        return ast.MeshDef(self._span(meta), list(children))

    def mesh_axis(self, children):
        name, size = children
        return str(name), size

    @v_args(meta=True)
    def fn_def(self, meta, children):
        name, params, returns, body = children
        return ast.FnDef(self._span(meta), self._binding(name, "function"), self._tok(name),
                         params or [], returns, body)

    def params(self, children):
        return [c for c in children if c is not None]

    @v_args(meta=True)
    def param(self, meta, children):
        name, type_, default = children
        return ast.Param(self._span(meta), self._binding(name, "parameter"), type_, default)

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
        targets = [ast.Target(self._tok(n), self._binding(n, "variable")) for n in names]
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
        text = str(children[0])
        if len(text.lstrip("0")) > _MAX_INT_DIGITS:
            raise Diagnostic(f"integer literal of {len(text)} digits is too large (it exceeds "
                             "every dtype, floats included)", self._span(meta))
        return ast.Num(self._span(meta), int(text))

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
    """Parse `.zt` text into an ast.Module; syntax errors raise Diagnostic.

    Line endings may be LF, CRLF or CR; lines are counted as diagnostics count them."""
    text = normalize_newlines(text)
    try:
        tree = _lark().parse(text)
    except lalr.UnexpectedInput as err:
        raise _syntax_error(err, file, text) from None
    except lalr.VisitError as err:  # pragma: no cover - transformer bug
        raise err.orig_exc from None
    try:
        items = _ToAst(file, text).transform(tree)
    except lalr.VisitError as err:
        if isinstance(err.orig_exc, Diagnostic):
            raise err.orig_exc from None
        raise
    return ast.Module(file, text, items)
