"""Scalar registers and counting events, handed out by name and given back by scope.

A core has `NUM_REGS` scalar registers and `NUM_EVENTS` counting events (isa/program.py, the
ISA's definition; docs/isa.md). Codegen never writes a register or event number: it asks a
`RegisterFile` or `EventFile` for one, saying what it is for, and gives it back when its
value is dead:

    regs = RegisterFile()
    core = regs.take("core id")               # program-wide: never given back
    with regs.scope("nest matmul_0"):         # everything taken inside is freed at the end
        tile = regs.take("tile index")
        with regs.scope("tile decomposition"):
            scratch = regs.take("scratch")    # freed here
    regs.free(core)                           # or one by one

`take` hands out the lowest free number, so a program's numbering is deterministic (every
chip of a many-chip program takes its events in the same order, so a cross-chip event
names the same number on both sides). `take_optional` gives None instead of failing (code
that has a cheaper variant when registers are short). When none is left, `take` raises
`ResourceError` (a `CompileError`: a diagnostic, exit status 1) naming what was asked for
and what holds every number, e.g.

    out of scalar registers (r0..r31): no register for 'coordinate of axis 9'; live: r0 core
    id, r1 core count, r2 tiles of this core, ...

Events are the same with one more rule: `ASYNC_EVENTS`, the top events of every core, belong
to the asynchronous collectives (compiler/collective_codegen.py), which run on a core's NET
queue while later compute kernels use the other engines; an `EventFile(reserve_async=True)`
(what compute kernels use) never hands them out. An event is given back only when its count
is 0 again on every engine (the code that frees it has drained the queues or waited for
every signal), since the next owner starts counting from 0.

The costs of the simulated chip do not depend on which numbers are used (an instruction's
cost reads its operands' values, never their register or event numbers), so a different
allocation gives the same cycles.
"""

from __future__ import annotations

from contextlib import contextmanager

from zhenwu.isa.errors import CompileError
from zhenwu.isa.program import NUM_EVENTS, NUM_REGS

__all__ = ["ASYNC_EVENTS", "EventFile", "RegisterFile", "ResourceError"]

# ready, arrive, gathered, sent: the events of an asynchronous all-reduce (the top of the
# event file, so compute kernels, which take the lowest free numbers, never meet them)
ASYNC_EVENTS = tuple(range(NUM_EVENTS - 4, NUM_EVENTS))


class ResourceError(CompileError):
    """A program needs more scalar registers or events at once than a core has."""

    op_ids: tuple[int, ...] = ()   # the graph ops of the kernel that ran out (codegen sets)


class _NumberFile:
    """Numbers 0..count-1 of one kind, taken by purpose and freed singly or by scope."""

    kind = "number"
    prefix = ""

    def __init__(self, count: int, reserved: tuple[int, ...] = (), advice: str = ""):
        self.count = count
        self.reserved = frozenset(reserved)
        self.advice = advice    # a note for the error when none is left: what needs fewer
        self.live: dict[int, str] = {}        # number -> what it holds
        self._scopes: list[tuple[str, list[int]]] = []

    def take(self, purpose: str) -> int:
        """The lowest free number, now holding `purpose`; ResourceError when none is free."""
        number = self.take_optional(purpose)
        if number is None:
            held = ", ".join(f"{self.prefix}{n} {what}" for n, what in sorted(self.live.items()))
            scope = f" in {self._scopes[-1][0]}" if self._scopes else ""
            raise ResourceError(
                f"out of {self.kind}s ({self.prefix}0..{self.prefix}{self.count - 1}"
                f"{self._reserved_text()}): no {self.kind} for '{purpose}'{scope}; live: "
                f"{held}", notes=(self.advice,) if self.advice else ())
        return number

    def take_optional(self, purpose: str) -> int | None:
        """The lowest free number for `purpose`, or None when every one is taken."""
        for number in range(self.count):
            if number not in self.live and number not in self.reserved:
                self.live[number] = purpose
                if self._scopes:
                    self._scopes[-1][1].append(number)
                return number
        return None

    def take_many(self, count: int, purpose: str) -> list[int]:
        """`count` numbers for `purpose` (`purpose 0`, `purpose 1`, ...)."""
        return [self.take(f"{purpose} {index}") for index in range(count)]

    def free(self, *numbers: int | None) -> None:
        """Give numbers back (None is ignored: an optional one that was not taken)."""
        for number in numbers:
            if number is None:
                continue
            if number not in self.live:
                raise ValueError(f"{self.prefix}{number} is not taken")
            del self.live[number]
            for _, taken in self._scopes:
                if number in taken:
                    taken.remove(number)

    @contextmanager
    def scope(self, name: str):
        """Every number taken inside the `with` block (and not freed) is freed at its end."""
        self._scopes.append((name, []))
        try:
            yield self
        finally:
            _, taken = self._scopes.pop()
            for number in taken:
                self.live.pop(number, None)

    def free_count(self) -> int:
        return self.count - len(self.reserved) - len(self.live)

    def _reserved_text(self) -> str:
        if not self.reserved:
            return ""
        numbers = sorted(self.reserved)
        return f"; {self.prefix}{numbers[0]}..{self.prefix}{numbers[-1]} reserved"


class RegisterFile(_NumberFile):
    """The scalar registers r0..r{NUM_REGS - 1} of one core's program."""

    kind = "scalar register"
    prefix = "r"

    def __init__(self, count: int = NUM_REGS, advice: str = ""):
        super().__init__(count, (), advice)


class EventFile(_NumberFile):
    """The counting events E0..E{NUM_EVENTS - 1} of one core; with `reserve_async`, without
    the `ASYNC_EVENTS` that asynchronous collectives hold across compute kernels."""

    kind = "event"
    prefix = "E"

    def __init__(self, count: int = NUM_EVENTS, reserve_async: bool = False,
                 advice: str = ""):
        super().__init__(count, ASYNC_EVENTS if reserve_async else (), advice)
