"""Merging consecutive kernels into one (after lowering, before HBM planning).

Every kernel pays a launch (the machine file's `kernel_launch_seconds`) before its first
instruction; a kernel of several nests pays it once, with a chip-wide barrier (`BAR.CHIP`,
`barrier_cycles` after the last core arrives) between its nests. Two merges use this:

- *Horizontal fusion* (always at `-O1`/`-O2`): consecutive kernels with no data dependence
  between them, none reading or writing a tensor another one writes, become one kernel of
  their nests in order (XLA's horizontal fusion, for the same reason: small independent
  kernels cost more in launches than in work). Qwen3's q-norm + rope, k-norm + rope and the
  copy of v after the q/k/v projection are three such kernels: one launch instead of three.
- *Persistent kernels* (`CompileOptions(persistent=True)`, `--persistent`): every kernel of the
  program becomes one nest sequence of a single kernel, the phases separated by chip-wide
  barriers, as a persistent "megakernel" runs a model layer on a GPU. Off by default: it
  models a runtime that keeps every core resident for the whole program, which the default
  launch model (one launch per kernel) does not assume.

Both keep every nest and its order; each nest already drains its engines and returns its
events at its end (codegen), so a barrier between two nests orders them as two kernels do.
"""

from __future__ import annotations

from zhenwu.compiler.backend.kernel_ir import Kernel, Load, Store


def _accesses(kernel: Kernel) -> tuple[set[str], set[str]]:
    """(tensors the kernel reads, tensors it writes)."""
    reads: set[str] = set()
    writes: set[str] = set()
    for nest in kernel.nests:
        for stmt in nest.statements():
            if isinstance(stmt, Load):
                reads.add(stmt.view.tensor)
            elif isinstance(stmt, Store):
                writes.add(stmt.view.tensor)
    return reads, writes


def _merged(group: list[Kernel]) -> Kernel:
    if len(group) == 1:
        return group[0]
    name = "_".join(k.name.rsplit("_", 1)[0] for k in group) + "_" + group[0].name.rsplit(
        "_", 1)[-1]
    return Kernel(name, tuple(i for k in group for i in k.op_ids),
                  tuple(n for k in group for n in k.nests))


def merge_independent(kernels: list[Kernel]) -> list[Kernel]:
    """Horizontal fusion: runs of consecutive kernels none of which reads or writes a tensor
    another of the run writes, each as one kernel."""
    out: list[Kernel] = []
    group: list[Kernel] = []
    reads: set[str] = set()
    writes: set[str] = set()
    for kernel in kernels:
        r, w = _accesses(kernel)
        if group and not (r & writes or w & writes or w & reads):
            group.append(kernel)
        else:
            if group:
                out.append(_merged(group))
            group, reads, writes = [kernel], set(), set()
        reads |= r
        writes |= w
    if group:
        out.append(_merged(group))
    return out


def merge_all(kernels: list[Kernel]) -> list[Kernel]:
    """A persistent kernel: every kernel's nests in order, as one kernel."""
    if len(kernels) <= 1:
        return list(kernels)
    return [Kernel(f"persistent_{kernels[0].name}", tuple(i for k in kernels for i in k.op_ids),
                   tuple(n for k in kernels for n in k.nests))]
