"""numpy and ml_dtypes, imported at their first use: `from zhenwu.isa.lazy import numpy as np`.

Compiling a program does not need numpy (the compiler works on shapes and integers; numpy
runs the reference evaluator, constant folding, the inputs and the interpreter's semantics),
and importing it is about a third of a fresh `zhenwu compile`. The modules a compile imports
therefore name numpy through `LazyModule`: the first attribute read imports the module and
copies its names onto the proxy, so later reads cost what a module's do. A table that names
a numpy function at import time uses `numpy_function("exp")`, which looks the function up
when it is called.
"""

from __future__ import annotations

import importlib


class LazyModule:
    """A module imported at the first read of one of its attributes."""

    def __init__(self, name: str):
        self.__dict__["_lazy_module_name"] = name

    def __getattr__(self, attr: str):
        names = self.__dict__
        module = importlib.import_module(names["_lazy_module_name"])
        if "_lazy_loaded" not in names:
            names.update(module.__dict__)
            names["_lazy_loaded"] = True
            if attr in names:
                return names[attr]
        value = getattr(module, attr)   # a name the module makes on demand (np.random)
        names[attr] = value
        return value

    def __repr__(self) -> str:
        return f"<lazily imported module {self.__dict__['_lazy_module_name']!r}>"


numpy = LazyModule("numpy")
ml_dtypes = LazyModule("ml_dtypes")


def numpy_function(name: str):
    """A callable that calls `numpy.<name>` (looked up at the call)."""

    def call(*args, **kwargs):
        return getattr(numpy, name)(*args, **kwargs)

    call.__name__ = call.__qualname__ = name
    return call


__all__ = ["LazyModule", "ml_dtypes", "numpy", "numpy_function"]
