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
