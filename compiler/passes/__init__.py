"""Graph passes (docs/design.md section 4), one module each, registered by kebab-case name.

```python
from zhenwu.compiler.passes import default_graph_pipeline, run_pipeline
fn = run_pipeline(fn, default_graph_pipeline(), callback=lambda p, fn, seconds: ...)
```
After `default_graph_pipeline()` a function holds only primitive op kinds.
"""

from __future__ import annotations

import dataclasses

from zhenwu.compiler.passes.pass_base import (
    PASSES,
    GraphPass,
    get_pass,
    parse_pipeline,
    register_pass,
    run_pipeline,
)

_LOADED: list[bool] = []


def load_all() -> None:
    """Import every module of this package so that each pass registers itself (a new pass
    is a new module here with a `@register_pass` class; nothing else to edit). Once per
    process: listing the package's folder is most of a small compile's pass time."""
    if _LOADED:
        return
    import importlib
    import pkgutil

    for module in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{module.name}")
    from zhenwu.compiler.passes import fuse  # noqa: F401
    _LOADED.append(True)


def default_graph_pipeline(target=None) -> list[GraphPass]:
    """The graph passes of a normal compile, in order; the result is primitives only, but
    for the ops a backend lowering of `target` claims whole (`decompose`'s target: lowering
    by legality, compiler/passes/decompose.py)."""
    load_all()
    names = ["canonicalize", "constant-fold", "decompose", "split-int-matmul", "canonicalize",
             "hoist-scales",
             "constant-fold", "cse", "dce"]
    passes = [get_pass(name) for name in names]
    if target is not None:
        passes = [dataclasses.replace(p, target=target) if p.name == "decompose" else p
                  for p in passes]
    return passes


load_all()

__all__ = ["PASSES", "GraphPass", "default_graph_pipeline", "get_pass", "load_all",
           "parse_pipeline", "register_pass", "run_pipeline"]
