"""The fused-kernel kinds the backend lowers whole, each registered once.

`fuse` (compiler/passes/fuse.py) puts ops into groups of a kind; `FusedLowering`
(compiler/backend/fusion.py) lowers an `elementwise` group itself and every other fused
kind with the function registered here: `lowering(low, ops)` receives the `FusedLowering`
and the group's ops in order, and adds the kernel(s) with `low.kernel(...)`, recording where
each stored value lives in `low.views`. Functions are named "module:function" and imported
on first use, so that a compile that never meets a kind never imports its module.

Adding a kind of fused kernel: docs/internals.md, "How to add a fused kernel".
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from importlib import import_module

GROUP_LOWERINGS: dict[str, str | Callable] = {
    "attention": "zhenwu.compiler.backend.flash:lower_attention_group",
    "pool": "zhenwu.compiler.backend.pool:lower_pool_group",
    "conv": "zhenwu.compiler.backend.conv:lower_conv_group",
    "matmul": "zhenwu.compiler.backend.gemm:lower_matmul_group",
}


def register_group_lowering(kind: str, lowering: str | Callable) -> None:
    """Lower groups of `kind` with `lowering` ("module:function" or the function)."""
    if kind in GROUP_LOWERINGS or kind in ("elementwise", "view", "single", "constant"):
        raise ValueError(f"fused kernel kind '{kind}' is already lowered")
    GROUP_LOWERINGS[kind] = lowering


def unregister_group_lowering(kind: str) -> None:
    """Remove a kind `register_group_lowering` added (tests that define one of their own)."""
    del GROUP_LOWERINGS[kind]


def group_lowering(kind: str) -> Callable | None:
    """The function lowering a group of `kind`, or None (the fused lowering's own kinds)."""
    lowering = GROUP_LOWERINGS.get(kind)
    if isinstance(lowering, str):
        module, _, name = lowering.partition(":")
        lowering = getattr(import_module(module), name)
    return lowering


# --- lowering by legality -------------------------------------------------------------------
# A non-primitive op (conv2d, a pool, ...) stays whole through the graph passes while a
# backend lowering claims it, and `decompose` writes it as primitives only when none does
# (MLIR's dialect conversion, XLA's legal ops). Nothing decomposes an op early to match it
# back later.


@dataclass(frozen=True)
class WholeOpLowering:
    """A backend lowering that takes ops of `kind` whole: `group` is the fused-kernel kind
    (a `GROUP_LOWERINGS` key) whose lowering receives the op and its epilogue, and
    `refusal(op, producers, machine) -> str | None` ("module:function", imported on first
    use, or the function) says why the lowering cannot take this op (its dtypes, shapes,
    attributes, operands' producers, the machine), None when it can. `what` ends the
    decision line of a claim."""

    name: str
    kind: str
    group: str
    refusal: str | Callable
    what: str

    def refuses(self, op, producers, machine) -> str | None:
        """Why this lowering does not take `op` (None: it claims it)."""
        check = self.refusal
        if isinstance(check, str):
            module, _, name = check.partition(":")
            check = getattr(import_module(module), name)
        return check(op, producers, machine)


WHOLE_OP_LOWERINGS: list[WholeOpLowering] = [
    WholeOpLowering("implicit-GEMM", "conv2d", "conv",
                    "zhenwu.compiler.backend.conv:implicit_gemm_refusal",
                    "one kernel, no patches in HBM"),
    WholeOpLowering("max-pool", "maxpool2d", "pool",
                    "zhenwu.compiler.backend.pool:pool_refusal",
                    "one kernel reading its input rows once, the padding filled by the DMA"),
    WholeOpLowering("average-pool", "avgpool2d", "pool",
                    "zhenwu.compiler.backend.pool:avgpool_refusal",
                    "one kernel reading its input rows once, summing in f32"),
]


def register_whole_op_lowering(lowering: WholeOpLowering, *, first: bool = False) -> None:
    """Add a lowering that claims whole ops (asked after the others, or before them with
    `first`); its `group` must have a group lowering."""
    if any(known.name == lowering.name for known in WHOLE_OP_LOWERINGS):
        raise ValueError(f"a whole-op lowering named '{lowering.name}' exists")
    if lowering.group not in GROUP_LOWERINGS:
        raise ValueError(f"no group lowering for kind '{lowering.group}' "
                         "(register_group_lowering)")
    WHOLE_OP_LOWERINGS.insert(0 if first else len(WHOLE_OP_LOWERINGS), lowering)


def unregister_whole_op_lowering(name: str) -> None:
    """Remove the lowering `register_whole_op_lowering` added under `name`."""
    WHOLE_OP_LOWERINGS[:] = [known for known in WHOLE_OP_LOWERINGS if known.name != name]


@dataclass(frozen=True)
class FusedTarget:
    """The legality question of the fused lowering (-O1/-O2) on `machine`, which
    `decompose` asks of every non-primitive op (compiler/passes/decompose.py)."""

    machine: object

    def legalize(self, op, producers) -> tuple[str | None, str | None]:
        """(group kind, decision line): the group of the first lowering that claims `op`,
        or None with why each lowering of its kind refused it (no line when no lowering
        takes ops of its kind at all)."""
        refusals = []
        for lowering in WHOLE_OP_LOWERINGS:
            if lowering.kind != op.kind:
                continue
            why = lowering.refuses(op, producers, self.machine)
            if why is None:
                return lowering.group, (f"keep %{op.id} {op.kind} whole: the {lowering.name} "
                                        f"lowering claims it ({lowering.what})")
            refusals.append(f"the {lowering.name} lowering refuses it: {why}")
        if not refusals:
            return None, None
        return None, f"decompose %{op.id} {op.kind} into primitives: {'; '.join(refusals)}"
