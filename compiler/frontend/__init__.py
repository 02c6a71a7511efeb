"""The `.zt` frontend: source text -> AST -> checked Graph IR (docs/internals.md section 2)."""

from __future__ import annotations

import sys
from contextlib import contextmanager
from pathlib import Path

from zhenwu.compiler.frontend.checker import check_module
from zhenwu.compiler.frontend.parser import parse_source
from zhenwu.compiler.graph.ir import Function
from zhenwu.isa.errors import Diagnostic, InputError, SourceSpan

# Parsing and checking recurse once per nesting level of an expression.
_RECURSION_LIMIT = 12000
# brackets nested at least this deep are what a RecursionError is blamed on
_DEEP_BRACKETS = 32


@contextmanager
def _deep_recursion(path: str, text: str):
    """Allow deeply nested expressions; beyond the limit, a diagnostic at the most deeply
    nested expression, or at the longest line for a long chain of operators (not a
    traceback)."""
    old = sys.getrecursionlimit()
    sys.setrecursionlimit(max(old, _RECURSION_LIMIT))
    try:
        yield
    except RecursionError:
        raise Diagnostic("expressions are nested too deeply (or a chain of operators is too "
                         "long) for the checker", _deepest_span(path, text)) from None
    finally:
        sys.setrecursionlimit(old)


def _deepest_span(path: str, text: str) -> SourceSpan:
    from zhenwu.compiler.frontend.parser import deepest_expression, position

    start, depth = deepest_expression(text)
    if depth < _DEEP_BRACKETS:  # not deep in brackets: a long chain, on the longest line
        lines = text.split("\n")
        index = max(range(len(lines)), key=lambda i: len(lines[i]))
        col = len(lines[index]) - len(lines[index].lstrip()) + 1
        return SourceSpan(path, index + 1, col, None, None, text)
    line, col = position(text, start)
    return SourceSpan(path, line, col, None, None, text)


def read_source(path: str) -> str:
    """The text of a program file; an unreadable file is an InputError, bytes that are not
    UTF-8 a Diagnostic at their line and column."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise InputError(f"{path}: is a directory") from None
    except OSError as err:
        raise InputError(f"{path}: cannot read the program ({err})") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise _not_utf8(path, data, err) from None
    # as read_text does: universal newlines
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _not_utf8(path: str, data: bytes, err: UnicodeDecodeError) -> Diagnostic:
    """A Diagnostic at the first byte that is not UTF-8 (line and column in characters)."""
    before = data[:err.start].decode("utf-8")
    line = before.count("\n") + 1
    col = len(before) - (before.rfind("\n") + 1) + 1
    shown = data.decode("utf-8", errors="replace")
    return Diagnostic(f"byte 0x{data[err.start]:02x} is not UTF-8 text (a .zt program is UTF-8)",
                      SourceSpan(path, line, col, line, col + 1, shown))


def load_program(path: str, *, text: str | None = None, entry: str | None = None,
                 shapes: dict[str, int] | None = None,
                 input_shapes: dict[str, tuple[int, ...]] | None = None) -> Function:
    """Parse and check a `.zt` program and return the Graph IR of its entry function.

    `text` overrides reading `path` (which then only names the file in diagnostics). An
    `.onnx` path is imported first (compiler/importers/onnx.py).
    Symbolic dims of the entry are bound from `shapes` (`--shape B=64`) and from
    `input_shapes` (parameter name -> the shape of the array given for it). Every dim of the
    result is concrete. User mistakes raise `Diagnostic` / `InputError`.
    """
    if text is None and Path(path).suffix == ".onnx":
        from zhenwu.compiler.importers.onnx import import_file

        text, _ = import_file(path)  # its weights come with the inputs (compiler/inputs.py)
    if text is None:
        text = read_source(path)
    from zhenwu.compiler.shard.annotations import extract_mesh, extract_shardings

    with _deep_recursion(path, text):
        module = parse_source(text, path)
        # `F@tp` in a type: a many-chip sharding, recorded in fn.attrs["shardings"] (a
        # one-chip compile ignores it)
        shardings = extract_shardings(module)
        mesh = extract_mesh(module)
        fn = check_module(module, entry=entry, shapes=shapes, input_shapes=input_shapes)
        if fn.name in shardings:
            fn.attrs["shardings"] = shardings[fn.name]
        if mesh is not None:
            fn.attrs["mesh"] = mesh
        return fn


__all__ = ["load_program", "parse_source", "read_source"]
