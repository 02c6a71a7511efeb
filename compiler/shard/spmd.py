"""Compile an SPMD function for N chips and run it on the simulated cluster.

    compiled = compile_spmd(spmd, machine, options)     # spmd: compiler.shard.propagate
    outputs, report = run_spmd(compiled, inputs, timing_only=False)

The SPMD function (local shapes, collectives as ops) is cut at its collectives into
segments: each segment is an ordinary Graph IR function, compiled once by the one-chip
pipeline (compiler/backend/pipeline.py) and shared by every chip. Each chip's program is
then the segments' code in order with, between them, that chip's collective kernels
(compiler/collective_codegen.py: DMA.PUT and RSIG to the peers of its group along the
collective's mesh axis, algorithm chosen by the alpha-beta cost). A chip's program is built
as instructions (an `Emitter`): each segment's compiled instructions are copied with their
GM tensor names renamed, the collective kernels are appended by collective_codegen; its
text is only printed from the program (`SpmdProgram.asm`).

GM layout, per chip: the values that cross a segment boundary ("boundary" tensors, named
`v<id>`, parameters by their name) get addresses of their own, never reused; a collective's
buffer aliases them where the collective works in place (an all-reduce on its operand; an
all-gather's operand is the chip's piece of the gathered buffer, at an address that depends
on the chip's rank: the one difference between the chips' tensor tables; a reduce-scatter's
or shard_slice's result is the chip's piece of its operand). Each segment's own temporaries
follow, all segments sharing that region (they run one after another, each kernel ending
with a chip barrier); then one scratch buffer for the collectives that need one (a oneshot
all-reduce copies its contribution there), as large as the largest of them.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
from zhenwu.compiler.backend.emitter import Emitter
from zhenwu.compiler.collective_codegen import (
    CollectiveSpec,
    Region,
    emit_async_allreduce_done,
    emit_async_allreduce_start,
    emit_collective,
)
from zhenwu.compiler.collectives import collective_cost
from zhenwu.compiler.graph.ir import Function, Op, Value
from zhenwu.compiler.shard.overlap import ALIAS_KINDS, ROW_CHUNK, ROW_JOIN, overlap_function
from zhenwu.compiler.shard.propagate import COLLECTIVE_KINDS, SpmdFunction, join_output, split_input
from zhenwu.isa.errors import CompileError, Diagnostic
from zhenwu.isa.program import Instruction, Marker, Symbol, TensorDecl

ALIGN = 4096  # bytes: boundary tensors start on their own page
SCRATCH = "coll_scratch"  # the collectives' scratch buffer (after the temporaries)
_COLLECTIVE_OF = {"all_reduce": "allreduce", "all_gather": "allgather",
                  "reduce_scatter": "reducescatter", "all_to_all": "alltoall"}


@dataclass
class Segment:
    """A run of compute ops between collectives, compiled as one function."""

    fn: Function
    compiled: object  # compiler.backend.pipeline.CompiledProgram
    names: dict[int, str]  # value id -> its tensor name in the merged program


@dataclass
class SpmdProgram:
    """What `compile_spmd` returns: the per-chip programs and how they were made."""

    spmd: SpmdFunction
    programs: list
    segments: list[Segment]
    collectives: list[tuple[Op, str, int]]  # (op, algorithm, bytes)
    bytes_per_chip: int
    chips: int
    kernel_count: int = 0
    notes: list[str] = field(default_factory=list)
    fn: Function | None = None  # the function compiled: spmd.fn with overlap's chunks
    overlap: list = field(default_factory=list)  # compiler.shard.overlap.Region per region

    @property
    def asm(self) -> list[str]:
        """Each chip's program as assembly text (printed from it)."""
        from zhenwu.isa.asm import print_program

        return [print_program(program) for program in self.programs]


def _tensor_name(value: Value) -> str:
    return value.name if value.name else f"v{value.id}"


def _segments(fn: Function) -> list[list[Op] | Op]:
    """The ops in order, compute runs grouped, each collective on its own."""
    steps: list[list[Op] | Op] = []
    for op in fn.ops:
        if op.kind in COLLECTIVE_KINDS or op.kind in ALIAS_KINDS:
            steps.append(op)
        elif steps and isinstance(steps[-1], list):
            steps[-1].append(op)
        else:
            steps.append([op])
    return steps


def _segment_function(ops: list[Op], index: int, live_after: set[int],
                      fn: Function) -> tuple[Function, dict[int, Value]]:
    """A Function of `ops`: parameters are the values they read from outside, outputs the
    values they define that later steps (or the results) read."""
    defined = {op.result.id for op in ops}
    inputs: dict[int, Value] = {}
    for op in ops:
        for value in op.inputs:
            if value.id not in defined and value.id not in inputs:
                inputs[value.id] = Value(value.id, value.type, _tensor_name(value), value.span)
    mapping = dict(inputs)
    new_ops = []
    for op in ops:
        result = Value(op.result.id, op.result.type, None, op.result.span)
        mapping[op.id] = result
        new_ops.append(Op(op.id, op.kind, tuple(mapping[v.id] for v in op.inputs),
                          dict(op.attrs), result, op.span, op.origin))
    outputs = [mapping[op.id] for op in ops if op.id in live_after]
    return Function(f"{fn.name}_s{index}", list(inputs.values()), new_ops, outputs), mapping


def _live_after(steps, fn: Function) -> list[set[int]]:
    """Per step, the value ids read by later steps or returned."""
    later: set[int] = {v.id for v in fn.outputs}
    out = []
    for step in reversed(steps):
        out.append(set(later))
        ops = step if isinstance(step, list) else [step]
        for op in ops:
            later.update(v.id for v in op.inputs)
    return list(reversed(out))


def compile_spmd(spmd: SpmdFunction, machine, options, chips: int, measure=None,
                 overlap_chunks: int | None = None) -> SpmdProgram:
    """The per-chip programs of `spmd` on `chips` chips of `machine` (`measure`: the timing
    model `options.tune` searches with, as for `compile_function`). All-reduces are
    overlapped with the compute around them in row chunks (compiler/shard/overlap.py): as
    many as its cost model prefers, or `overlap_chunks` (1: no overlap)."""
    from zhenwu.compiler.backend.pipeline import compile_function

    mesh = spmd.mesh
    _check_fits(spmd, machine)
    fn, regions = overlap_function(spmd.fn, mesh, machine, chips, chunks=overlap_chunks)
    steps = _segments(fn)
    live = _live_after(steps, fn)
    params = {v.id for v in fn.params}
    segments: list[Segment | Op] = []
    kernel_count = 0
    for index, (step, after) in enumerate(zip(steps, live)):
        if isinstance(step, Op):
            segments.append(step)
            continue
        seg_fn, _ = _segment_function(step, index, after, fn)
        if not seg_fn.outputs:
            continue  # nothing it computes is used (dead code the passes would drop)
        compiled = compile_function(seg_fn, machine, options, measure=measure)
        if len(compiled.program.outputs) != len(seg_fn.outputs):
            raise CompileError(f"segment {index}: {len(seg_fn.outputs)} outputs but "
                               f"{len(compiled.program.outputs)} output tensors")
        names = {v.id: f"v{v.id}" for v in seg_fn.outputs}
        names.update({v.id: _tensor_name(v) for v in seg_fn.params})
        kernel_count += compiled.kernel_count
        segments.append(Segment(seg_fn, compiled, names))

    # boundary tensors: every segment parameter and output, the results, the params
    values: dict[int, Value] = {v.id: v for v in fn.params}
    for op in fn.ops:
        values[op.id] = op.result
    boundary: dict[int, str] = {v.id: _tensor_name(v) for v in fn.params}
    for item in segments:
        if isinstance(item, Segment):
            boundary.update(item.names)
        else:
            for source in item.inputs:
                boundary[source.id] = _tensor_name(source) if source.id in params \
                    else f"v{source.id}"
            boundary[item.id] = f"v{item.id}"
    for v in fn.outputs:
        boundary.setdefault(v.id, _tensor_name(v) if v.id in params else f"v{v.id}")
    # aliases: child value id -> (parent value id, where in it): "rank" (the child's size
    # times the chip's rank along the op's axis) or a byte offset
    alias: dict[int, tuple[int, str | int]] = {}
    for item in segments:
        if isinstance(item, Op):
            source = item.inputs[0]
            if item.kind == "all_reduce":
                alias[item.id] = (source.id, 0)
            elif item.kind in ("reduce_scatter", "shard_slice"):
                alias[item.id] = (source.id, "rank")
            elif item.kind == ROW_CHUNK:
                alias[item.id] = (source.id, item.attrs["index"] * item.result.type.nbytes)

    def root(vid: int) -> int:
        while vid in alias:
            vid = alias[vid][0]
        return vid

    # a row_join's chunks are computed in place: each chunk's buffer (its alias root) sits
    # at its rows of the joined value; chunks that already are the row chunks of one buffer
    # (all-reduced in place on the row_chunks of an operand from outside the region) make
    # the joined value that buffer
    for item in segments:
        if isinstance(item, Op) and item.kind == ROW_JOIN:
            parts = [root(part.id) for part in item.inputs]
            if len(set(parts)) == 1:
                alias[item.id] = (parts[0], 0)
                continue
            offset = 0
            for part, part_root in zip(item.inputs, parts):
                alias[part_root] = (item.id, offset)
                offset += part.type.nbytes

    roots = sorted({root(v) for v in boundary}, key=lambda v: list(boundary).index(v)
                   if v in boundary else 0)
    address: dict[int, int] = {}
    cursor = 0
    for vid in roots:
        address[vid] = cursor
        cursor += -(-max(values[vid].type.nbytes, 1) // ALIGN) * ALIGN
    temp_base = cursor
    temp_extent = 0
    for item in segments:
        if isinstance(item, Segment):
            for t in item.compiled.program.tensors:
                if t.role == "temp":
                    temp_extent = max(temp_extent, t.address + t.nbytes)
    total = temp_base + temp_extent
    # one scratch buffer, shared by the collectives that copy their contribution away
    # (oneshot all-reduce), after everything else
    scratch_base = -(-total // ALIGN) * ALIGN
    scratch_bytes = max([_scratch_bytes(item, mesh, machine, chips) for item in segments
                         if isinstance(item, Op)] + [0])
    total = scratch_base + scratch_bytes
    if total > machine.hbm_bytes:
        biggest = max(spmd.global_fn.params, key=lambda v: v.type.nbytes, default=None)
        raise Diagnostic(
            f"each chip needs {total / 1e9:.3g} GB of HBM ({len(fn.params)} parameter shards, "
            f"results and temporaries) but {machine.name} has {machine.hbm_bytes / 1e9:.3g} "
            f"GB: split more dims or use more chips", biggest.span if biggest else None)

    code = {index: _segment_code(item, index, temp_base) for index, item in enumerate(segments)
            if isinstance(item, Segment)}
    collectives: list[tuple[Op, str, int]] = []
    programs = []
    for chip in range(chips):
        def where(vid: int, chip: int = chip) -> int:
            if vid not in alias:
                return address[vid]
            parent, at = alias[vid]
            base = where(parent, chip)
            if at != "rank":
                return base + at
            op = next(o for o in fn.ops if o.id in (vid, parent) and o.kind in COLLECTIVE_KINDS)
            return base + mesh.rank(chip, op.attrs["axis"]) * values[vid].type.nbytes

        emit = Emitter(machine.name)
        out_ids = {v.id for v in fn.outputs}
        for vid, name in boundary.items():
            t = values[vid].type
            role = ("inout" if vid in out_ids else "in") if vid in params else \
                ("out" if vid in out_ids else "temp")
            emit.tensor(TensorDecl(name, t.dtype, tuple(t.shape) or (1,), where(vid), role))
        if scratch_bytes:
            emit.tensor(TensorDecl(SCRATCH, "i8", (scratch_bytes,), scratch_base, "temp"))
        pending = _Pending(machine)
        for index, item in enumerate(segments):
            if isinstance(item, Segment):
                pending.done_for(emit, {v.id for v in item.fn.params}, index)
                _append_segment(emit, code[index])
            elif item.kind == ROW_JOIN:
                pending.done_for(emit, {v.id for v in item.inputs}, index)
            elif item.kind == "all_reduce" and "chunks" in item.attrs and \
                    len(mesh.group(chip, item.attrs["axis"])) > 1:
                algorithm, nbytes = pending.start(emit, item, index, chip, mesh, boundary)
                if chip == 0:
                    collectives.append((item, algorithm, nbytes))
            elif item.kind not in ("shard_slice", ROW_CHUNK):
                pending.done_for(emit, None, index)  # a synchronous collective: all done
                algorithm, nbytes = _collective(emit, item, index, chip, mesh, machine, chips,
                                                boundary)
                if chip == 0:
                    collectives.append((item, algorithm, nbytes))
        pending.done_for(emit, None, len(segments))
        emit.op("HALT")
        programs.append(emit.program())
    return SpmdProgram(spmd, programs, [s for s in segments if isinstance(s, Segment)],
                       collectives, total, chips, kernel_count, fn=fn, overlap=regions)


def _check_fits(spmd: SpmdFunction, machine) -> None:
    """Each chip holds its shard of every parameter and result at least: a diagnostic at
    the largest parameter when that alone is more than the chip's HBM."""
    shards = list(zip(spmd.fn.params, spmd.global_fn.params))
    needed = sum(local.type.nbytes for local, _ in shards) + sum(
        v.type.nbytes for v in spmd.fn.outputs)
    if needed <= machine.hbm_bytes:
        return
    local, param = max(shards, key=lambda pair: pair[0].type.nbytes)
    raise Diagnostic(
        f"each chip needs {needed / 1e9:.4g} GB for its shards of the parameters and results "
        f"but {machine.name} has {machine.hbm_bytes / 1e9:.4g} GB (the largest: '{param.name}' "
        f"{param.type}, {local.type.nbytes / 1e9:.4g} GB per chip as {local.type}); split it "
        f"over more chips", param.span)


_HALT = Instruction("HALT")


@dataclass(frozen=True)
class _SegmentCode:
    """A segment's code as every chip's program holds it: its temporaries' declarations,
    its instructions (all but its HALT) with the GM tensors renamed, and its markers, at
    instruction indices from the segment's start."""

    tensors: tuple[TensorDecl, ...]
    instructions: tuple[Instruction, ...]
    markers: tuple[Marker, ...]


def _segment_code(segment: Segment, index: int, temp_base: int) -> _SegmentCode:
    """The segment's code with its GM tensors renamed (boundary names, or `s<i>_name` for
    its temporaries, declared at the shared temporary region) and its kernels named
    `s<i>_name`."""
    program = segment.compiled.program
    rename = {}
    temps = []
    outputs = iter(segment.fn.outputs)
    for t in program.tensors:
        if t.role == "in":
            param = next(p for p in segment.fn.params if p.name == t.name)
            rename[t.name] = segment.names[param.id]
        elif t.role in ("out", "inout"):
            rename[t.name] = segment.names[next(outputs).id]
        else:
            rename[t.name] = f"s{index}_{t.name}"
            temps.append(TensorDecl(rename[t.name], t.dtype, tuple(t.shape) or (1,),
                                    temp_base + t.address, "temp"))
    placed = []  # where each of the segment's instructions lands (markers move with them)
    instructions: list[Instruction] = []
    for instr in program.instructions:
        placed.append(len(instructions))
        if instr.mnemonic == "HALT" and instr == _HALT:
            continue
        if any(isinstance(op, Symbol) for op in instr.operands):
            instr = replace(instr, operands=tuple(
                Symbol(rename.get(op.name, op.name), op.offset) if isinstance(op, Symbol)
                else op for op in instr.operands))
        instructions.append(instr)
    placed.append(len(instructions))
    markers = tuple(Marker(placed[m.index], m.kind,
                           f"s{index}_{m.name}" if m.kind == "kernel" else m.name)
                    for m in program.markers)
    return _SegmentCode(tuple(temps), tuple(instructions), markers)


def _append_segment(emit: Emitter, code: _SegmentCode) -> None:
    """Append a segment's code to a chip's program. Its instructions were checked when the
    segment's program was built (renaming a tensor keeps them valid): they go straight into
    the list."""
    start = len(emit.instructions)
    emit.tensors.extend(code.tensors)
    emit.instructions.extend(code.instructions)
    emit.markers.extend(replace(marker, index=start + marker.index) for marker in code.markers)


def _scratch_bytes(op: Op, mesh, machine, chips: int) -> int:
    """The scratch a collective op needs (its buffer, for a oneshot all-reduce)."""
    if op.kind != "all_reduce":
        return 0
    nbytes = op.inputs[0].type.nbytes
    groups = {mesh.group(chip, op.attrs["axis"]) for chip in range(chips)}
    for group in groups:
        cost = collective_cost("allreduce", nbytes, chips, machine, group=group,
                               lowered_only=True)
        if cost.algorithm == "oneshot":
            return nbytes
    return 0


def _collective(emit: Emitter, op: Op, index: int, chip: int, mesh, machine, chips: int,
                boundary: dict[int, str]) -> tuple[str, int]:
    """Append the kernel of collective `op` on `chip`; its algorithm and bytes."""
    axis = op.attrs["axis"]
    group = mesh.group(chip, axis)
    kind = _COLLECTIVE_OF[op.kind]
    source = op.inputs[0]
    dtype = source.type.dtype
    buffer = Region(boundary[source.id], 0, source.type.nbytes, dtype)
    # out of place: an all-gather's operand is this chip's piece, all-to-all's its send buffer
    dst = Region(boundary[op.id], 0, op.result.type.nbytes, dtype) \
        if op.kind in ("all_gather", "all_to_all") else None
    nbytes = dst.nbytes if op.kind == "all_gather" else buffer.nbytes
    cost = collective_cost(kind, nbytes, chips, machine, group=group, lowered_only=True)
    scratch = Region(SCRATCH, 0, buffer.nbytes, dtype) if cost.algorithm == "oneshot" \
        else None
    spec = CollectiveSpec(kind, cost.algorithm if len(group) > 1 else "direct", group, buffer,
                          dst, machine.chips_per_node, label=f"{op.kind}_{index}",
                          scratch=scratch, chunks=cost.chunks, pipeline=cost.pipeline)
    emit_collective(emit, spec, chip)
    return cost.algorithm, nbytes


def chip_inputs(compiled: SpmdProgram, inputs: dict[str, np.ndarray]) -> list[dict]:
    """Each chip's parameter shards from the global inputs."""
    spmd = compiled.spmd
    out = []
    for chip in range(compiled.chips):
        mine = {}
        for param, spec in zip(spmd.global_fn.params, spmd.param_specs):
            if param.name in inputs:
                value = np.asarray(inputs[param.name])
                part = split_input(value, spec, spmd.mesh, chip)
                mine[param.name] = part.reshape(part.shape or (1,))
        out.append(mine)
    return out


def run_spmd(compiled: SpmdProgram, machine, inputs: dict[str, np.ndarray], *,
             timing_only: bool = False, trace: bool = False, max_instructions=None):
    """Run the per-chip programs; return (global outputs, the cluster result)."""
    from zhenwu.runtime.cluster import run_cluster

    per_chip = [{} for _ in range(compiled.chips)] if timing_only else \
        chip_inputs(compiled, inputs)
    result = run_cluster(compiled.programs, machine, per_chip, timing_only=timing_only,
                         trace=trace, max_instructions=max_instructions)
    if timing_only:
        return [], result
    spmd = compiled.spmd
    fn = compiled.fn if compiled.fn is not None else spmd.fn
    names = [_tensor_name(v) if v in fn.params else f"v{v.id}" for v in fn.outputs]
    outputs = []
    for name, value, spec in zip(names, spmd.global_fn.outputs, spmd.result_specs):
        local = fn.outputs[names.index(name)].type.shape
        parts = [np.reshape(result.outputs[chip][name], local)
                 for chip in range(compiled.chips)]
        outputs.append(np.reshape(join_output(parts, spec, spmd.mesh), value.type.shape))
    return outputs, result


class _Pending:
    """The asynchronous all-reduces of one chip's program that have started and not yet
    been waited for: each on a core of its own (the last cores first), ended by a `done`
    region just before the first segment that reads its result."""

    def __init__(self, machine):
        self.machine = machine
        self.started: dict[int, tuple[int, int]] = {}  # all-reduce id -> (core, group size)
        self.next_core = 0

    def start(self, emit: Emitter, op: Op, index: int, chip: int, mesh,
              boundary: dict[int, str]) -> tuple[str, int]:
        """Append the start of all-reduce `op`; its algorithm ("async") and bytes."""
        cores = self.machine.cores
        core = cores - 1 - self.next_core % cores
        self.next_core += 1
        busy = [vid for vid, (c, _) in self.started.items() if c == core]
        if busy:  # more chunks in flight than cores: the core's previous one ends first
            self._done(emit, busy, index)
        source = op.inputs[0]
        buffer = Region(boundary[source.id], 0, source.type.nbytes, source.type.dtype)
        group = mesh.group(chip, op.attrs["axis"])
        emit_async_allreduce_start(emit, group, chip, buffer, core,
                                   label=f"all_reduce_{index}_start")
        self.started[op.id] = (core, len(group))
        return "async", source.type.nbytes

    def done_for(self, emit: Emitter, reads: set[int] | None, index: int) -> None:
        """Append the done region for the started all-reduces among `reads` (None: all)."""
        ready = [vid for vid in self.started if reads is None or vid in reads]
        if ready:
            self._done(emit, ready, index)

    def _done(self, emit: Emitter, ids: list[int], index: int) -> None:
        emit_async_allreduce_done(emit, [self.started.pop(vid) for vid in ids],
                                  label=f"all_reduce_{index}_done")
