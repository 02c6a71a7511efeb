"""Graph passes: the base class, the registry, and the pipeline runner (xDSL style).

A pass is a frozen dataclass with a kebab-case `name` and its options as fields; `apply`
returns a new (or the same) Function. The pipeline runs passes in order, verifies the IR after
each, and calls a callback between passes, which is how `--print-ir-after-all` and
`--time-passes` work without any pass knowing about printing or timing.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

from compiler.graph.ir import Function
from compiler.graph.verify import verify_function
from isa.errors import UsageError


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


def get_pass(name: str) -> GraphPass:
    """A pass instance by name (default options); an unknown name is a UsageError."""
    import difflib

    from compiler.passes import load_all

    load_all()
    if name not in PASSES:
        close = difflib.get_close_matches(name, list(PASSES), n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise UsageError(f"unknown pass '{name}'{hint} (passes: {', '.join(sorted(PASSES))})")
    return PASSES[name]()


def parse_pipeline(text: str) -> list[GraphPass]:
    """`"canonicalize,cse,dce"` -> pass instances; `default` stands for the default graph
    pipeline (`"default,fuse"` appends a pass to it)."""
    from compiler.passes import default_graph_pipeline

    passes: list[GraphPass] = []
    for name in (part.strip() for part in text.split(",")):
        if name == "default":
            passes.extend(default_graph_pipeline())
        elif name:
            passes.append(get_pass(name))
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
