"""The interpreter's pre-decoded instruction form.

A program is decoded once (runtime/decode.py) into a list of `Op`, one per instruction
address, so that the run loop does no parsing, no dict lookups by mnemonic and no operand
interpretation: it switches on `kind` and calls the closures the decoder prepared, which call
isa's one definition of each instruction.

Kinds:
- `SCALAR`: runs on the scalar engine in one cycle (`step(core) -> next pc`): ALU, LI, DESC,
  loops and branches, NOP.
- `ENGINE`: dispatched to the in-order queue of `engine`; `bind(core)` snapshots its operands
  (registers, descriptors) at dispatch and returns a `Bound` with its cost and its semantics.
- `WAIT_S`, `SIG_S`, `BAR_CORE`, `BAR_CHIP`, `HALT`: the scalar's synchronisation.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

SCALAR, ENGINE, WAIT_S, SIG_S, BAR_CORE, BAR_CHIP, HALT = range(7)
KIND_NAMES = ("scalar", "engine", "wait.s", "sig.s", "bar.core", "bar.chip", "halt")


@dataclass(slots=True)
class Bound:
    """An engine instruction bound at dispatch: its cost and (unless timing-only) semantics.

    `execute()` runs the instruction's reference semantics against the operands captured at
    dispatch; it is called when the instruction starts. `accesses` lists the per-core memory
    ranges it touches, (space, lo, hi, is_write), for race detection and bounds checks in
    timing-only runs (functional runs check bounds while executing). `gm_lines` (a
    runtime.l2.Lines) are the GM lines a DMA touches when the L2 is modelled. `net` is what a
    cluster instruction (DMA.PUT, RSIG) sends to another chip (runtime/cluster.py times it).
    """

    occupancy: int
    latency: int
    hbm_read: int = 0
    hbm_write: int = 0
    flops: int = 0
    execute: Callable[[], None] | None = None
    accesses: tuple = ()
    gm_lines: object = None
    net: object = None  # a cluster instruction's isa.instructions.base.NetTransfer


@dataclass(slots=True)
class Op:
    """One decoded instruction at `address` (see the module docstring for `kind`)."""

    address: int
    kind: int
    text: str
    mnemonic: str
    engine: int = 0
    waits: tuple[tuple[int, int], ...] = ()
    sigs: tuple[tuple[int, int], ...] = ()
    pred: tuple[int, bool] | None = None  # (register, negated)
    step: Callable | None = None  # SCALAR: step(core) -> next pc
    bind: Callable | None = None  # ENGINE: bind(core) -> Bound
    kernel: int | None = None  # a `.kernel` region (its index) starts at this address
    cycles: int = 1  # scalar-unit issue cycles (from the instruction's cost formula)
    # the MX input dtype of a matrix instruction (its flops count against that dtype's peak)
    flop_dtype: str | None = None
    # a `.async` cluster instruction: barriers do not wait for it, HALT does (isa net.py)
    detached: bool = False
