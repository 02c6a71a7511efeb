"""zhenwu: a tensor compiler and cycle-approximate simulator for the virtual M890 AI chip.

The Python API (the `zhenwu` command is a thin layer over it)::

    import numpy as np
    import zhenwu

    prog = zhenwu.compile("samples/mlp.zt", shapes={"B": 8})      # or the program's text
    x = np.random.default_rng(0).standard_normal((8, 784), dtype=np.float32)
    ...
    outputs, report = prog.run(x=x, w1=w1, b1=b1, w2=w2, b2=b2)   # numpy in, numpy out
    want = zhenwu.reference("samples/mlp.zt", x=x, w1=w1, b1=b1, w2=w2, b2=b2)
    print(report.cycles, report.efficiency, prog.kernel_count)
    print(prog.asm)                                                # also .kernels, .graph

Every user error raises an exception of the `ZhenwuError` family with the message the
command line prints (`str(err)`: `file:line:col: error: ...` with the source line and a caret).
"""

from __future__ import annotations

from zhenwu.api import Program, compile, load_machine, reference
from zhenwu.isa.errors import (
    AssemblyError,
    ChipTrap,
    CompileError,
    Diagnostic,
    EncodingError,
    InputError,
    MachineError,
    UsageError,
    ZhenwuError,
)


def __getattr__(name: str):
    # `zhenwu.__version__` reads the installed metadata on first use: importlib.metadata
    # costs a fresh `zhenwu compile` more than the compile of a small program
    if name != "__version__":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from importlib.metadata import PackageNotFoundError, version

    try:
        value = version("zhenwu")
    except PackageNotFoundError:  # running from a checkout that is not installed
        value = "0+unknown"
    globals()["__version__"] = value
    return value

__all__ = [
    "AssemblyError", "ChipTrap", "CompileError", "Diagnostic", "EncodingError", "InputError",
    "MachineError", "Program", "UsageError", "ZhenwuError", "__version__", "compile",
    "load_machine", "reference",
]
