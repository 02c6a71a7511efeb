"""The M890 instruction set: every instruction defined once (see `InstrDef`).

    from zhenwu.isa.instructions import INSTRUCTIONS, BY_OPCODE, Cost, InstrDef

`INSTRUCTIONS` maps the base mnemonic (`MMA`, `DMA.LD`, `VADD`, `WAIT`) to its definition;
`BY_OPCODE` maps the 8-bit opcode to it. `RESERVED_OPCODES` keeps room for collective
instructions on NET (collectives are built from DMA.PUT and RSIG by the compiler instead).

Opcode map: 0x01-0x1F scalar and control, 0x20-0x2F DESC and DMA, 0x30-0x3F matrix,
0x40-0x6F vector, 0x70-0x7F special functions, 0x80-0x8F reductions, 0x90-0x9F sync,
0xA0-0xAF cluster (engine NET).
"""

from __future__ import annotations

from zhenwu.isa.instructions import dma, matrix, net, scalar, sync, vector
from zhenwu.isa.instructions.base import (
    Cost,
    InstrDef,
    InstrError,
    OperandSpec,
    OptionSpec,
    SuffixSlot,
    validate,
)

_ALL: list[InstrDef] = [*scalar.DEFS, *dma.DEFS, *matrix.DEFS, *vector.DEFS, *sync.DEFS,
                       *net.DEFS]

INSTRUCTIONS: dict[str, InstrDef] = {d.mnemonic: d for d in _ALL}
BY_OPCODE: dict[int, InstrDef] = {d.opcode: d for d in _ALL}

# opcodes kept free for collective instructions on NET (not defined: the compiler builds
# collectives from DMA.PUT and RSIG)
RESERVED_OPCODES: dict[int, str] = {
    0xA8: "COLL.ALLREDUCE",
    0xA9: "COLL.ALLGATHER",
    0xAA: "COLL.REDUCESCATTER",
    0xAB: "COLL.ALLTOALL",
    0xAC: "COLL.BCAST",
}

# the groups of docs/isa.md, in order
GROUPS = ("scalar and control", "descriptors and DMA", "matrix", "vector", "special functions",
          "reductions", "sync", "cluster")

assert len(INSTRUCTIONS) == len(_ALL), "duplicate mnemonic"
assert len(BY_OPCODE) == len(_ALL), "duplicate opcode"
assert all(0 < d.opcode < 256 and d.opcode not in RESERVED_OPCODES for d in _ALL)

__all__ = [
    "BY_OPCODE",
    "GROUPS",
    "INSTRUCTIONS",
    "RESERVED_OPCODES",
    "Cost",
    "InstrDef",
    "InstrError",
    "OperandSpec",
    "OptionSpec",
    "SuffixSlot",
    "validate",
]
