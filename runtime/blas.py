"""One BLAS thread while the interpreter runs.

The interpreter multiplies many small tiles (a 128 x 128 x 128 MMA is a 0.1 ms product).
OpenBLAS worker threads add wake-up and synchronisation cost to each such call, which on a
busy host made tile products 40 times slower. `single_blas_thread()` sets the OpenBLAS that
numpy loaded to one thread for the duration of a run and restores the previous count after.

Best effort and dependency-free: it looks for the loaded OpenBLAS in /proc/self/maps and calls
its `*set_num_threads*` entry point through ctypes; where that is not possible (another BLAS,
another OS) it does nothing, and the results are the same either way (only host speed moves).
"""

from __future__ import annotations

import contextlib
import ctypes
import re
from collections.abc import Iterator

_SYMBOLS = (  # (getter, setter) names of OpenBLAS builds numpy ships or links
    ("scipy_openblas_get_num_threads64_", "scipy_openblas_set_num_threads64_"),
    ("scipy_openblas_get_num_threads", "scipy_openblas_set_num_threads"),
    ("openblas_get_num_threads64_", "openblas_set_num_threads64_"),
    ("openblas_get_num_threads", "openblas_set_num_threads"),
)
_controls: list | None = None


def _find_controls() -> list:
    """(get, set) function pairs of every loaded OpenBLAS (found once per process)."""
    global _controls
    if _controls is not None:
        return _controls
    _controls = []
    try:
        import numpy  # noqa: F401 - make sure numpy's BLAS is loaded

        with open("/proc/self/maps", encoding="utf-8", errors="replace") as maps:
            paths = sorted(set(re.findall(r"(/\S*openblas\S*\.so\S*)", maps.read())))
        for path in paths:
            library = ctypes.CDLL(path)
            for get_name, set_name in _SYMBOLS:
                if hasattr(library, get_name) and hasattr(library, set_name):
                    getter = getattr(library, get_name)
                    setter = getattr(library, set_name)
                    getter.restype = ctypes.c_int
                    setter.argtypes = [ctypes.c_int]
                    _controls.append((getter, setter))
                    break
    except (OSError, AttributeError, ValueError):
        pass
    return _controls


@contextlib.contextmanager
def single_blas_thread() -> Iterator[None]:
    """Run the body with one OpenBLAS thread; restore the previous thread counts after."""
    saved = []
    for getter, setter in _find_controls():
        saved.append((setter, getter()))
        setter(1)
    try:
        yield
    finally:
        for setter, count in saved:
            setter(count)
