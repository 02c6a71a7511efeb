"""Optimisation remarks: where each source op went and why a fusion did not happen.

`zhenwu explain prog.zt` (and `--remarks` on `compile` and `run`) prints what this module
computes from a compiled program (zhenwu/api.py's `Program`) and, when it ran, its report:

- per op of the Graph IR (with its file:line:col), the kernel it went into;
- `passed` and `missed` remarks of the `fuse` pass: its logged decisions (compiler/passes/
  fuse.py), each at the source location of the op it decided on;
- `missed` remarks of the attention matcher: for every `softmax(...) @ v` that did not become
  one flash-attention kernel, the condition that failed (compiler/passes/attention_match.py's
  `Refusal`);
- `analysis` remarks per kernel after a run: the HBM bytes it moved against its compulsory
  bytes (every element its loads and stores touch, once), and which load re-reads what;
- `warning` remarks, performance lints: a matrix product in f32 because a bf16 value met an
  f32 one (its rate from the machine file's MX rates), and loads that read a tensor with no
  contiguous dim (a transpose read through a strided view: one burst per element).

Like LLVM's -Rpass/-Rpass-missed/-Rpass-analysis, each remark is one line,
`file:line:col: KIND [PASS]: message`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from math import prod

from zhenwu.compiler.graph.dtypes import itemsize

KINDS = ("passed", "missed", "analysis", "warning")
# a kernel whose HBM bytes exceed its compulsory bytes by more than this gets a remark
EXCESS_BYTES_RATIO = 1.25
# ... and when moving the excess at the HBM bandwidth takes at least this share of its cycles
EXCESS_TIME_SHARE = 0.01
_OP_REF = re.compile(r"%(\d+)")


@dataclass(frozen=True)
class Remark:
    """One remark: `kind` (passed, missed, analysis, warning), the pass or analysis that
    made it (`fuse`, `attention`, `memory`, `lint`), the message, the source location and,
    when known, the Graph IR op and the kernel (index in execution order)."""

    kind: str
    source: str
    message: str
    span: object = None
    op_id: int | None = None
    kernel: int | None = None

    def location(self) -> str:
        if self.span is None:
            return "<program>"
        return f"{self.span.file}:{self.span.line}:{self.span.col}"

    def format(self) -> str:
        return f"{self.location()}: {self.kind} [{self.source}]: {self.message}"

    def to_json(self) -> dict:
        return {"kind": self.kind, "pass": self.source, "message": self.message,
                "location": None if self.span is None else self.location(),
                "op": self.op_id, "kernel": self.kernel}


@dataclass(frozen=True)
class OpPlacement:
    """Where one Graph IR op went: kernel index and name, or None with `note` (a view the
    DMAs read through, a constant that became an immediate)."""

    op_id: int
    kind: str
    span: object
    origin: str | None
    kernel: int | None
    kernel_name: str | None
    note: str = ""


@dataclass(frozen=True)
class KernelSummary:
    """One kernel: its ops and, after a run, its cycles and HBM bytes against its
    compulsory bytes."""

    index: int
    name: str
    op_ids: tuple[int, ...]
    compulsory_bytes: int
    cycles: int | None = None
    hbm_bytes: int | None = None


@dataclass(frozen=True)
class Explanation:
    """Everything `zhenwu explain` prints."""

    program: str
    machine: str
    opt_level: int
    ops: tuple[OpPlacement, ...]
    kernels: tuple[KernelSummary, ...]
    remarks: tuple[Remark, ...] = field(default=())
    cycles: int | None = None

    def to_json(self) -> dict:
        return {
            "program": self.program, "machine": self.machine, "opt_level": self.opt_level,
            "cycles": self.cycles,
            "kernels": [{"index": k.index, "name": k.name, "ops": list(k.op_ids),
                         "cycles": k.cycles, "hbm_bytes": k.hbm_bytes,
                         "compulsory_bytes": k.compulsory_bytes} for k in self.kernels],
            "ops": [{"op": p.op_id, "kind": p.kind, "origin": p.origin,
                     "location": _location(p.span), "kernel": p.kernel,
                     "kernel_name": p.kernel_name, "note": p.note or None} for p in self.ops],
            "remarks": [r.to_json() for r in self.remarks],
        }

    def format(self, remarks_only: bool = False) -> str:
        lines = []
        if not remarks_only:
            ran = f", {self.cycles:,} cycles (timing-only)" if self.cycles is not None else ""
            count = f"{len(self.kernels)} kernel{'s' if len(self.kernels) != 1 else ''}"
            lines.append(f"{self.program}: {count} at -O{self.opt_level} "
                         f"on {self.machine}{ran}")
            lines.append("kernels:")
            for k in self.kernels:
                ran = ""
                if k.hbm_bytes is not None:
                    ratio = k.hbm_bytes / k.compulsory_bytes if k.compulsory_bytes else 0.0
                    ran = (f": {k.cycles:,} cycles, HBM {k.hbm_bytes:,} B ({ratio:.2f}x its "
                           f"compulsory {k.compulsory_bytes:,} B)")
                ops = " ".join(f"%{i}" for i in k.op_ids)
                lines.append(f"  kernel {k.index} {k.name} [{ops}]{ran}")
            lines.append("ops:")
            for p in self.ops:
                where = (f"kernel {p.kernel} ({p.kernel_name})" if p.kernel is not None
                         else p.note)
                origin = f" ({p.origin})" if p.origin else ""
                lines.append(f"  {_location(p.span) or '<program>'}: %{p.op_id} {p.kind}"
                             f"{origin} -> {where}")
            lines.append("remarks:" if self.remarks else "remarks: none")
        lines += [("  " if not remarks_only else "") + r.format() for r in self.remarks]
        return "\n".join(lines)


def _location(span) -> str | None:
    return None if span is None else f"{span.file}:{span.line}:{span.col}"


# -- the analysis ----------------------------------------------------------------------------


def explain(prog, report=None) -> Explanation:
    """The `Explanation` of a compiled `zhenwu.Program`; `report` (a run's
    `runtime.Report`) adds the per-kernel cycles, bytes and memory remarks."""
    from zhenwu.compiler.passes.fuse import fuse_function

    compiled = prog.compiled
    fused = compiled.graph
    plan = None
    if prog.options.opt_level >= 1 and "fuse" not in prog.options.disabled_passes:
        fused, plan = fuse_function(compiled.graph)
    ops = {op.id: op for op in fused.ops}
    kernels = compiled.kernels.kernels
    kernel_of = {i: index for index, k in enumerate(kernels) for i in k.op_ids}
    placements = []
    for op in fused.ops:
        index = kernel_of.get(op.id)
        note = ""
        if index is None:
            note = {"constant": "an immediate or a constant in GM",
                    "iota": "computed where it is read"}.get(
                op.kind, "a view: the DMAs read through it, no kernel")
        placements.append(OpPlacement(op.id, op.kind, op.span, op.origin, index,
                                      kernels[index].name if index is not None else None,
                                      note))
    times = {}
    if report is not None:
        times = {k.name: k for k in report.kernels}
    summaries = []
    for index, kernel in enumerate(kernels):
        ran = times.get(kernel.name)
        summaries.append(KernelSummary(
            index, kernel.name, tuple(kernel.op_ids),
            kernel_compulsory_bytes(kernel, compiled.kernels),
            ran.cycles if ran else None,
            ran.hbm_read_bytes + ran.hbm_write_bytes if ran else None))
    remarks: list[Remark] = []
    if plan is not None:
        remarks += fusion_remarks(plan, ops, kernel_of)
        remarks += attention_remarks(fused, kernel_of)
    remarks += lint_remarks(fused, prog.machine, kernel_of)
    remarks += strided_load_remarks(compiled.kernels, ops, prog.machine)
    if report is not None:
        remarks += memory_remarks(compiled.kernels, summaries, ops, prog.machine)
    remarks = list(dict.fromkeys(remarks))  # one line per remark (an op may read a value twice)
    # by source line; on one line, in the order the passes decided
    remarks.sort(key=lambda r: (r.span is None, r.span.line if r.span else 0))
    return Explanation(prog.name, prog.machine.name, prog.options.opt_level,
                       tuple(placements), tuple(summaries), tuple(remarks),
                       report.cycles if report is not None else None)


def fusion_remarks(plan, ops: dict, kernel_of: dict) -> list[Remark]:
    """The fuse pass's decisions as remarks at the op each names first: `fuse`/`fold` are
    passed, `no-fuse` missed (with the kernel the op went into instead)."""
    out = []
    for decision in plan.decisions:
        found = _OP_REF.search(decision)
        op = ops.get(int(found.group(1))) if found else None
        if decision.startswith("no-fuse"):
            kind, text = "missed", decision[len("no-fuse "):]
            where = kernel_of.get(op.id) if op is not None else None
            text = f"not fused: {text}"
            if where is not None:
                text += f" (it is in kernel {where})"
        else:
            kind, text = "passed", decision
        out.append(Remark(kind, "fuse", text, op.span if op else None,
                          op.id if op else None,
                          kernel_of.get(op.id) if op is not None else None))
    return out


def attention_remarks(fn, kernel_of: dict) -> list[Remark]:
    """For every matrix product fed by a softmax that is not in a flash-attention kernel,
    why: the matcher's `Refusal`, or the intermediate value used outside the chain."""
    from zhenwu.compiler.passes.attention_match import match_attention, match_chain

    producers, users = fn.producers(), fn.users()
    outputs = {v.id for v in fn.outputs}
    matched = {i for ids, _ in match_attention(fn, users, producers, outputs) for i in ids}
    out = []
    for op in fn.ops:
        if op.kind != "matmul" or op.id in matched:
            continue
        why: list = []
        found = match_chain(op, producers, why)
        if found is None:
            if not why or not why[-1].softmax:
                continue
            reason = why[-1].reason
        else:
            reason = _outside_use(found, users, outputs)
        out.append(Remark("missed", "attention",
                          f"softmax not fused into attention: {reason}", op.span, op.id,
                          kernel_of.get(op.id)))
    return out


def _outside_use(found, users, outputs) -> str:
    """Why a chain `match_chain` accepts was still left out (`match_attention`'s checks)."""
    ops, chain, _ = found
    members = [v for name, v in ops.items() if name != "scales"] + chain
    members += ops.get("scales", [])
    ids = {op.id for op in members}
    for op in members:
        if op is ops["m2"]:
            continue
        if op.id in outputs:
            return f"%{op.id} {op.kind} of the chain is an output of the program"
        if any(u.id not in ids for u in users[op.id]):
            return f"%{op.id} {op.kind} of the chain is also used outside it"
    return "its first product is already in another attention kernel"


# -- lints -----------------------------------------------------------------------------------


def source_name(value, producers) -> str:
    """What the user calls `value`: a parameter's name, the variable a statement assigns
    (`h = ...`), or the source text of the expression; `%id` when there is none."""
    if value.name:
        return value.name
    op = producers.get(value.id)
    span = getattr(op, "span", None)
    if span is None or span.text is None:
        return f"%{value.id}"
    lines = span.text.splitlines()
    if span.line > len(lines):
        return f"%{value.id}"
    line = lines[span.line - 1]
    assigned = re.search(r"(\w+)\s*=\s*$", line[:span.col - 1])
    if assigned:
        return assigned.group(1)
    if span.end_line == span.line and span.end_col:
        return line[span.col - 1:span.end_col - 1]
    return f"%{value.id}"


def _promotion(value, producers, depth: int = 8):
    """(the f32 operand, the narrower one) of the elementwise op that made `value` f32 by
    mixing a bf16/f16 value (widened by a cast) with an f32 one, else None."""
    todo, seen = [value], set()
    while todo and depth > 0:
        depth -= 1
        v = todo.pop(0)
        op = producers.get(v.id)
        if op is None or v.id in seen:
            continue
        seen.add(v.id)
        widened = [u for u in op.inputs if _widened_from(u, producers)]
        wide = [u for u in op.inputs if u.type.dtype == "f32" and u.type.numel > 1
                and not _widened_from(u, producers) and producers.get(u.id) is None]
        if widened and wide and op.kind not in ("matmul", "cast"):
            return wide[0], widened[0]
        if op.kind not in ("matmul",):
            todo += [u for u in op.inputs if u.type.dtype == "f32"]
    return None


def _widened_from(value, producers) -> str | None:
    """The narrow float dtype `value` was cast from to f32 (bf16 or f16), else None."""
    op = producers.get(value.id)
    if op is not None and op.kind == "cast" and value.type.dtype == "f32":
        source = op.inputs[0].type.dtype
        return source if source in ("bf16", "f16") else None
    return None


def lint_remarks(fn, machine, kernel_of: dict) -> list[Remark]:
    """Performance warnings on the Graph IR: f32 products whose inputs became f32 by
    promotion from a bf16 tensor and an f32 one."""
    slow, fast = machine.mx_rate("f32"), machine.mx_rate("bf16")
    if not slow or not fast or fast <= slow:
        return []
    ratio = fast / slow
    producers = fn.producers()
    out = []
    for op in fn.ops:
        if op.kind != "matmul" or op.inputs[0].type.dtype != "f32":
            continue
        a, b = op.inputs
        narrow = [v for v in (a, b) if _widened_from(v, producers)]
        if not narrow:
            continue
        other = b if narrow[0] is a else a
        if other.type.dtype != "f32" or _widened_from(other, producers):
            continue
        cause = _promotion(other, producers)
        name = source_name(other, producers)
        product = source_name(op.result, producers)
        source = producers[narrow[0].id].inputs[0]
        because = (f"because {source_name(cause[0], producers)} is f32" if cause else
                   f"while {source_name(source, producers)} is {source.type.dtype}")
        out.append(Remark(
            "warning", "lint",
            f"{name} is f32 {because}, so {product} runs at the f32 rate (1/{ratio:g} of "
            f"{source.type.dtype}): cast({name}, {source.type.dtype}) would be {ratio:g}x "
            "faster",
            op.span, op.id, kernel_of.get(op.id)))
    return out


def strided_load_remarks(kernels, ops: dict, machine) -> list[Remark]:
    """A load of a tensor through a view with no contiguous dim (a strided slice or conv, a
    transpose of one, read element by element): every element is its own DMA burst."""
    burst_bytes = machine.dma_burst_bytes
    out = []
    for index, kernel in enumerate(kernels.kernels):
        seen = set()
        for nest in kernel.nests:
            for stmt in nest.statements():
                view = getattr(stmt, "view", None)
                if view is None or not hasattr(stmt, "dst") or view.tensor in seen:
                    continue
                moving = [(s, d) for s, d in zip(view.strides, view.dims) if s and d > 1]
                if not moving or any(abs(s) == 1 for s, _ in moving):
                    continue
                seen.add(view.tensor)
                op = ops.get(kernel.op_ids[0])
                out.append(Remark(
                    "warning", "lint",
                    f"kernel {index} ({kernel.name}) reads {view.tensor} with no contiguous "
                    f"dim (element strides {list(view.strides)}): every element costs a "
                    f"DMA burst of {burst_bytes} B", op.span if op else None,
                    op.id if op else None, index))
    return out


# -- bytes -----------------------------------------------------------------------------------


def _footprint(view) -> int:
    """Distinct elements a view covers (a broadcast dim, stride 0, adds none)."""
    return prod(d for d, s in zip(view.dims, view.strides) if s != 0)


def _tensor_footprints(kernel, program, statement_type) -> dict[str, int]:
    """Per GM tensor the kernel loads (or stores): the bytes of the distinct views it uses,
    at most the tensor's size."""
    views: dict[str, set] = {}
    for nest in kernel.nests:
        for stmt in nest.statements():
            if isinstance(stmt, statement_type):
                v = stmt.view
                views.setdefault(v.tensor, set()).add((v.offset, v.dims, v.strides))
    out = {}
    for name, distinct in views.items():
        tensor = program.tensor(name)
        elements = sum(prod(d for d, s in zip(dims, strides) if s != 0)
                       for _, dims, strides in distinct)
        out[name] = min(elements, prod(tensor.shape)) * itemsize(tensor.dtype)
    return out


def kernel_compulsory_bytes(kernel, program) -> int:
    """The bytes a kernel must move: every element of its inputs it reads once, every
    element it writes once (from its loads' and stores' views)."""
    from zhenwu.compiler.backend.kernel_ir import Load, Store

    return (sum(_tensor_footprints(kernel, program, Load).values())
            + sum(_tensor_footprints(kernel, program, Store).values()))


def load_bytes(kernel, program) -> dict[str, int]:
    """Per GM tensor, the bytes the kernel's loads move (tile boxes in bounds, times the
    tiles that run each load)."""
    from zhenwu.compiler.backend.kernel_ir import Load

    out: dict[str, int] = {}
    for nest in kernel.nests:
        runs = {"setup": 1, "init": nest.parallel_tiles, "final": nest.parallel_tiles,
                "step": nest.parallel_tiles * nest.reduction_steps}
        for part, count in runs.items():
            for stmt in getattr(nest, part):
                if not isinstance(stmt, Load):
                    continue
                view = stmt.view
                box = stmt.box or tuple(nest.tile[a] for a in view.axes)
                elements = prod(min(b, d) if s != 0 else 1
                                for b, d, s in zip(box, view.dims, view.strides))
                tensor = program.tensor(view.tensor)
                out[view.tensor] = out.get(view.tensor, 0) + count * elements * itemsize(
                    tensor.dtype)
    return out


def memory_remarks(program, summaries, ops: dict, machine) -> list[Remark]:
    """Per kernel that moved more than `EXCESS_BYTES_RATIO` times its compulsory HBM bytes,
    with the excess worth at least `EXCESS_TIME_SHARE` of its cycles at the HBM bandwidth:
    how much more and, from its loads, the tensor its tiling re-reads the most."""
    from zhenwu.compiler.backend.kernel_ir import Load

    out = []
    for summary, kernel in zip(summaries, program.kernels):
        if summary.hbm_bytes is None or not summary.compulsory_bytes:
            continue
        ratio = summary.hbm_bytes / summary.compulsory_bytes
        excess_cycles = (summary.hbm_bytes - summary.compulsory_bytes) / \
            machine.hbm_bytes_per_cycle
        if ratio <= EXCESS_BYTES_RATIO or excess_cycles < EXCESS_TIME_SHARE * summary.cycles:
            continue
        footprint = _tensor_footprints(kernel, program, Load)
        loaded = load_bytes(kernel, program)
        rereads = {name: loaded[name] / footprint[name] for name in loaded
                   if footprint.get(name)}
        message = (f"kernel {summary.index} ({kernel.name}) moves {ratio:.1f}x its compulsory "
                   f"bytes ({summary.hbm_bytes:,} of {summary.compulsory_bytes:,} B)")
        reread = sorted((name for name in rereads if rereads[name] > 1.01),
                        key=lambda name: -rereads[name])
        if reread:
            nest = kernel.nests[0]
            tile = "x".join(str(t) for t, k in zip(nest.tile, nest.kinds) if k == "p")
            message += f": tile {tile} re-reads " + " and ".join(
                f"{name} {rereads[name]:.1f}x" for name in reread)
        op = ops.get(kernel.op_ids[0])
        out.append(Remark("analysis", "memory", message, op.span if op else None,
                          op.id if op else None, summary.index))
    return out
