"""A device mesh: named axes over the chips of a run (`--mesh dp=2,tp=4`).

Chips are numbered row-major over the axes in their declared order (the last axis varies
fastest), so the chips of one group of the last axis are consecutive and, on a machine with
nodes of 8 chips, in one node: put the axis with the most traffic (tensor parallelism) last.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from zhenwu.isa.errors import UsageError


@dataclass(frozen=True)
class Mesh:
    """Axes (name, size) in order; `chips` is their product."""

    axes: tuple[tuple[str, int], ...]

    @property
    def chips(self) -> int:
        return math.prod(size for _, size in self.axes)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.axes)

    def size(self, axis: str) -> int:
        return dict(self.axes)[axis]

    def coords(self, chip: int) -> dict[str, int]:
        """The chip's coordinate along every axis."""
        out = {}
        for name, size in reversed(self.axes):
            chip, out[name] = divmod(chip, size)
        return out

    def chip_at(self, coords: dict[str, int]) -> int:
        chip = 0
        for name, size in self.axes:
            chip = chip * size + coords[name]
        return chip

    def group(self, chip: int, axis: str) -> tuple[int, ...]:
        """The chips that differ from `chip` only along `axis`, in axis order."""
        coords = self.coords(chip)
        return tuple(self.chip_at({**coords, axis: i}) for i in range(self.size(axis)))

    def rank(self, chip: int, axis: str) -> int:
        return self.coords(chip)[axis]

    def __str__(self) -> str:
        return ",".join(f"{name}={size}" for name, size in self.axes)


def parse_mesh(text: str) -> Mesh:
    """`tp=8` or `dp=2,tp=4` (UsageError when malformed)."""
    axes = []
    for part in text.split(","):
        match = re.fullmatch(r"\s*([A-Za-z_][A-Za-z0-9_]*)\s*=\s*([0-9]+)\s*", part)
        if match is None:
            raise UsageError(f"--mesh {text}: expected AXIS=SIZE[,AXIS=SIZE...], e.g. tp=8 or "
                             "dp=2,tp=4")
        name, size = match[1], int(match[2])
        if size < 1:
            raise UsageError(f"--mesh {text}: axis '{name}' must have at least 1 chip")
        if name in (n for n, _ in axes):
            raise UsageError(f"--mesh {text}: axis '{name}' is given twice")
        axes.append((name, size))
    return Mesh(tuple(axes))
