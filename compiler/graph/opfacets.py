"""The facets of an op-table entry (`compiler.graph.ops.OpDef`) beyond its type rule and
reference: how the frontend spells it, how the vector engine computes it, how the fuzzer
draws it, and its line in the docs.

These are plain data so that every layer reads the same entry: the frontend registers a
builtin from `Frontend`, the backend expands `VectorLowering` into Kernel IR `Vec`
statements (each step names an `InstrDef` of `isa/instructions/` by mnemonic), `fuse`
asks it whether an op can run in a fused kernel, and the fuzz generator draws every
elementwise op with its `fuzz` template.
"""

from __future__ import annotations

from dataclasses import dataclass

# Operand names a step may use: "in0", "in1", ... (the op's operands), "out" (its result),
# or a scratch buffer named in `VectorLowering.temps`.
OUT = "out"


@dataclass(frozen=True)
class Frontend:
    """How `.zt` spells an op. `form` picks the generic rule of compiler/frontend/builtins.py:

    - `unary`: `name(x)` (with `params`/`defaults` for attributes, e.g. gelu's `approximate`);
      a number argument is computed at check time (weakly typed);
    - `binary`: `name(a, b)`, broadcasting and promoting as the operators do;
    - `operator`: only the infix `operator` (`a + b`), no builtin name;
    - `reduce`: `name(x, axis=None, keepdims=False)`;
    - `special`: a rule of its own in builtins.py (`where`, `cast`, `matmul`, ...).

    `operator` is the infix spelling when there is one (`+`, `<`, `**`)."""

    name: str | None
    form: str
    params: str = ""
    defaults: tuple[tuple[str, object], ...] = ()
    operator: str | None = None


@dataclass(frozen=True)
class Step:
    """One vector instruction of an op's expansion. `instr` is an `InstrDef` mnemonic
    (`VEXP`, `VCMP`); `cond` its condition suffix (VCMP's `lt`); `dst` and `srcs` are
    operand names (`in0`, `out`, a scratch) or float immediates; `dtype` None computes in
    the op's compute dtype, a dtype name fixes it, and "target" is the vector dtype of the
    op's `dtype` attribute (cast)."""

    instr: str
    srcs: tuple = ("in0",)
    dst: str = OUT
    cond: str | None = None
    dtype: str | None = None

    @property
    def op(self) -> str:
        """The Kernel IR `Vec.op` text: the mnemonic without its `V`, and the condition."""
        base = self.instr[1:]
        return f"{base}.{self.cond}" if self.cond else base


@dataclass(frozen=True)
class VectorLowering:
    """An elementwise op on the vector engine: `steps` in its float compute dtype,
    `int_steps` in i32 when they differ (None: the same steps), `attr_steps` the steps when
    an attribute has a given value ((attr, value, steps), first match wins), and the scratch
    buffers (name, dtype) the integer steps need. `result` is "bool" for comparisons (the
    result is a mask, the steps compute in the operands' dtype)."""

    steps: tuple[Step, ...]
    int_steps: tuple[Step, ...] | None = None
    attr_steps: tuple[tuple[str, object, tuple[Step, ...]], ...] = ()
    int_temps: tuple[tuple[str, str], ...] = ()
    result: str = "value"

    def select(self, attrs: dict, integer: bool) -> tuple[Step, ...]:
        """The steps for an op with `attrs` computing in an integer (i32) or float dtype."""
        if integer and self.int_steps is not None:
            return self.int_steps
        for attr, value, steps in self.attr_steps:
            if attrs.get(attr) == value:
                return steps
        return self.steps

    def temps(self, integer: bool) -> tuple[tuple[str, str], ...]:
        """Scratch buffers the steps need besides the operands and the result."""
        return self.int_temps if integer and self.int_steps is not None else ()

    def writes_operand(self, attrs: dict, integer: bool) -> bool:
        """Whether a step writes one of the op's operands in place (integer division
        rewrites its divisor): such an op takes no immediates and runs on its own."""
        return any(s.dst.startswith("in") for s in self.select(attrs, integer))

    def reads_operand_after_result(self, attrs: dict, integer: bool) -> bool:
        """Whether a step reads an operand after a step wrote the result (gelu's erf form):
        such an op cannot run in place on an accumulator tile."""
        written = False
        for step in self.select(attrs, integer):
            if written and any(isinstance(s, str) and s.startswith("in") for s in step.srcs):
                return True
            written = written or step.dst == OUT
        return False


@dataclass(frozen=True)
class Fuzz:
    """How the fuzz generator (compiler/fuzz/generator.py) draws an op: `template` is an
    expression for the unary (`{x}`) or binary (`{a}`, `{b}`) step, wrapped to keep values
    finite and in the op's domain; otherwise `step` names the generator step that draws it
    (`reduce`, `matmul`, ...; a method `step_<step>` of its ProgramBuilder). `inputs_only` draws the operand from the parameters only (a
    discontinuous op on a computed value would turn a rounding difference into a different
    answer)."""

    template: str | None = None
    step: str | None = None
    inputs_only: bool = False
    operand: str = "{x}"  # how `step` wraps the operand (a product of bounded factors)
    not_drawn: str = ""  # why the fuzzer does not draw the op (none but `shard`)
