"""Will a functional run fit in this host's memory? Checked before anything is allocated.

A functional run holds every tensor of the program in the simulated chip's memory (GM is
paged in as it is written, and a run writes all of its tensors), plus a host copy of each
input as it is converted and of each output as it is read back. When that is more than the
host has available, the run would die in numpy's allocator; `check_functional_run` says so
first, with the size, and points to `--timing-only` (the cycles without the math, which
allocates no tensor data).
"""

from __future__ import annotations

import os

from zhenwu.isa.errors import Diagnostic


def available_bytes() -> int | None:
    """The memory available to a new allocation of this process, or None when the host does
    not say: the host's (Linux MemAvailable, else the free physical pages), and no more than
    the address space an rlimit (`ulimit -v`) leaves."""
    host = _host_available()
    limit = _address_space_left()
    if host is None:
        return limit
    return host if limit is None else min(host, limit)


def _address_space_left() -> int | None:
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    except (ImportError, OSError, ValueError):
        return None
    if soft == resource.RLIM_INFINITY:
        return None
    try:
        with open("/proc/self/statm", encoding="ascii") as handle:
            used = int(handle.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        used = 0
    return max(soft - used, 0)


def _host_available() -> int | None:
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, OSError, ValueError):
        return None


def functional_run_bytes(program) -> int:
    """The host bytes a functional run of `program` (an isa Program) needs, about: every
    tensor in GM, plus a host copy of every input and output."""
    gm = sum(t.nbytes for t in program.tensors)
    copies = sum(t.nbytes for t in program.inputs) + sum(t.nbytes for t in program.outputs)
    return gm + copies


def _gib(nbytes: float) -> str:
    return f"{nbytes / 2**30:.1f} GiB"


def check_functional_run(program, where: str, held: int = 0) -> None:
    """Raise a Diagnostic when a functional run of `program` needs more host memory than is
    available. `where` names the program (its file) in the message; `held` is the bytes of
    input arrays the caller already holds (they count as the inputs' host copies, and are
    no longer available)."""
    needed = max(functional_run_bytes(program) - held, 0)
    available = available_bytes()
    if available is None or needed <= available:
        return
    raise Diagnostic(
        f"{where}: a functional run needs about {_gib(needed)} of host memory (the chip's "
        f"tensors plus host copies of the inputs and outputs), more than the "
        f"{_gib(available)} available",
        notes=[("--timing-only simulates the cycles without the math and allocates no tensor "
               "data (in Python: prog.run(timing_only=True))")])


def reference_bytes(fn) -> int:
    """A lower bound on the host bytes the reference evaluator needs for `fn` (a Graph IR
    function): its inputs and outputs. An intermediate too large for the host is refused by
    the evaluator itself, at the op that makes it (compiler/reference.py), so that the
    diagnostic points at the source."""
    params = sum(p.type.nbytes for p in fn.params)
    outputs = sum(v.type.nbytes for v in fn.outputs)
    return params + outputs


def check_reference(fn, where: str, held: int = 0) -> None:
    """Raise a Diagnostic when the reference evaluator surely needs more host memory than is
    available (`held`: bytes of input arrays the caller already holds)."""
    needed = max(reference_bytes(fn) - held, 0)
    available = available_bytes()
    if available is None or needed <= available:
        return
    raise Diagnostic(f"{where}: the reference evaluator needs at least {_gib(needed)} of host "
                     f"memory, more than the {_gib(available)} available; use smaller shapes")


def out_of_memory(where: str) -> Diagnostic:
    """The diagnostic for a MemoryError that the estimate above did not foresee."""
    return Diagnostic(f"{where}: this host ran out of memory during the functional run",
                      notes=[("--timing-only simulates the cycles without the math and "
                             "allocates no tensor data")])
