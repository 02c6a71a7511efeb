"""Graph passes: the base class, the registry, and the pipeline runner (xDSL style).

A pass is a frozen dataclass with a kebab-case `name` and its options as fields; `apply`
returns a new (or the same) Function. The pipeline runs passes in order, verifies the IR after
each, and calls a callback between passes, which is how `--print-ir-after-all` and
`--time-passes` work without any pass knowing about printing or timing.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

from zhenwu.compiler.graph.ir import Function
from zhenwu.compiler.graph.verify import verify_function
from zhenwu.isa.errors import UsageError


@dataclass(frozen=True)
class GraphPass:
    """Base of every graph pass."""

    name: ClassVar[str] = ""

    def apply(self, fn: Function) -> Function:  # pragma: no cover - abstract
        raise NotImplementedError


PASSES: dict[str, type[GraphPass]] = {}


def register_pass(cls: type[GraphPass]) -> type[GraphPass]:
    """Class decorator: make a pass available by its name."""
    PASSES[cls.name] = cls
    return cls


def get_pass(name: str, options: dict[str, str] | None = None) -> GraphPass:
    """A pass instance by name, with options given as text (`{"kinds": "conv2d,einsum"}`)
    converted to the types of the pass's fields. Unknown names are UsageErrors."""
    import difflib

    from zhenwu.compiler.passes import load_all

    load_all()
    if name not in PASSES:
        close = difflib.get_close_matches(name, list(PASSES), n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise UsageError(f"unknown pass '{name}'{hint} (passes: {', '.join(sorted(PASSES))})")
    cls = PASSES[name]
    fields = {f.name: f for f in dataclasses.fields(cls)}
    values = {}
    for key, text in (options or {}).items():
        if key not in fields:
            known = ", ".join(fields) or "none"
            raise UsageError(f"pass '{name}' has no option '{key}' (options: {known})")
        values[key] = _option_value(name, key, text, fields[key].default)
    return cls(**values)


def _option_value(name: str, key: str, text: str, default):
    """Option text converted to the type of the field's default."""
    try:
        if isinstance(default, bool):
            if text not in ("true", "false"):
                raise ValueError(text)
            return text == "true"
        if isinstance(default, int):
            return int(text)
        if isinstance(default, float):
            return float(text)
        if isinstance(default, tuple):
            return tuple(part.strip() for part in text.split(",") if part.strip())
        return text
    except ValueError:
        raise UsageError(f"pass '{name}': bad value '{text}' for option '{key}'") from None


def _split_top_level(text: str) -> list[str]:
    """Split at commas that are not inside `{...}`."""
    parts, depth, start = [], 0, 0
    for index, char in enumerate(text):
        depth += {"{": 1, "}": -1}.get(char, 0)
        if char == "," and depth == 0:
            parts.append(text[start:index])
            start = index + 1
    parts.append(text[start:])
    return [part.strip() for part in parts if part.strip()]


def parse_pipeline(text: str) -> list[GraphPass]:
    """Pass instances from pipeline text, xDSL style: `canonicalize,cse,dce`, with options
    `decompose{kinds=conv2d,einsum}` (`{key=value key2=value}`); `default` stands for the
    default graph pipeline (`default,fuse` appends a pass to it)."""
    from zhenwu.compiler.passes import default_graph_pipeline

    passes: list[GraphPass] = []
    for item in _split_top_level(text):
        name, brace, rest = item.partition("{")
        name = name.strip()
        options = {}
        if brace:
            if not rest.endswith("}"):
                raise UsageError(f"pass options of '{name}' must end with '}}'")
            for setting in rest[:-1].split():
                key, eq, value = setting.partition("=")
                if not eq:
                    raise UsageError(f"pass option '{setting}' of '{name}' must be key=value")
                options[key] = value
        if name == "default" and not options:
            passes.extend(default_graph_pipeline())
        else:
            passes.append(get_pass(name, options))
    return passes


PassCallback = Callable[[GraphPass, Function, float], None]


def run_pipeline(fn: Function, passes: list[GraphPass], *,
                 callback: PassCallback | None = None, verify: bool = True,
                 disabled: tuple[str, ...] | list[str] = ()) -> Function:
    """Run `passes` in order on `fn`; after each, verify the IR and call
    `callback(pass, fn_after, seconds)`. Passes named in `disabled` are skipped."""
    for unknown in set(disabled) - {p.name for p in passes}:
        get_pass(unknown)  # an unknown name is a usage error
    if verify:
        verify_function(fn, after="the frontend")
    for graph_pass in passes:
        if graph_pass.name in disabled:
            continue
        start = time.perf_counter()
        fn = graph_pass.apply(fn)
        seconds = time.perf_counter() - start
        if verify:
            verify_function(fn, after=graph_pass.name)
        if callback is not None:
            callback(graph_pass, fn, seconds)
    return fn
