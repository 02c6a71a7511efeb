"""The `.zt` frontend: source text -> AST -> checked Graph IR (docs/internals.md section 2)."""

from __future__ import annotations

import sys
from contextlib import contextmanager
from pathlib import Path

from compiler.frontend.checker import check_module
from compiler.frontend.parser import parse_source
from compiler.graph.ir import Function
from isa.errors import Diagnostic, InputError, SourceSpan

# Parsing and checking recurse once per nesting level of an expression.
_RECURSION_LIMIT = 12000


@contextmanager
def _deep_recursion(path: str):
    """Allow deeply nested expressions; beyond the limit, a diagnostic (not a traceback)."""
    old = sys.getrecursionlimit()
    sys.setrecursionlimit(max(old, _RECURSION_LIMIT))
    try:
        yield
    except RecursionError:
        raise Diagnostic("expressions are nested too deeply (or a chain of operators is too "
                         "long) for the checker", SourceSpan(path, 1, 1)) from None
    finally:
        sys.setrecursionlimit(old)


def read_source(path: str) -> str:
    """The text of a program file; an unreadable file is an InputError."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise InputError(f"{path}: is a directory") from None
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"{path}: cannot read the program ({err})") from None


def load_program(path: str, *, text: str | None = None, entry: str | None = None,
                 shapes: dict[str, int] | None = None,
                 input_shapes: dict[str, tuple[int, ...]] | None = None) -> Function:
    """Parse and check a `.zt` program and return the Graph IR of its entry function.

    `text` overrides reading `path` (which then only names the file in diagnostics).
    Symbolic dims of the entry are bound from `shapes` (`--shape B=64`) and from
    `input_shapes` (parameter name -> the shape of the array given for it). Every dim of the
    result is concrete. User mistakes raise `Diagnostic` / `InputError`.
    """
    if text is None:
        text = read_source(path)
    from compiler.shard.annotations import extract_mesh, extract_shardings

    with _deep_recursion(path):
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
