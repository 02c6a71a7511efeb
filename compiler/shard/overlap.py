"""Overlap all-reduces with compute: row-chunked pipelining of the SPMD function.

    fn, regions = overlap_function(spmd_fn, mesh, machine, chips)    # chunks priced
    fn, regions = overlap_function(spmd_fn, mesh, machine, chips, chunks=4)   # forced

This is XLA's "collective matmul" / async tensor parallelism and Megatron's communication
overlap: the rows (tokens) of a row-wise computation are independent, so the computation
around an all-reduce is split into `c` chunks of rows; chunk i's all-reduce runs on the links
while chunk i+1 computes. Here it is a Graph IR rewrite of the per-chip function:

- **Region.** From each `all_reduce` of a value with rows (rank >= 2, dim 0 of size M) the
  region grows over the ops that are *row-wise* in dim 0: elementwise ops whose row operands
  have the same rank and M rows (other operands broadcast whole), reductions that keep dim 0,
  a `matmul` of a 2-D row operand by a 2-D operand used whole (a weight), a `reshape` that
  keeps dim 0, and further all-reduces. Upward an op joins when every use of its result is in
  the region; downward when its other operands do not depend on the region (the region stays
  convex: nothing outside lies on a path between two of its ops). Ops with no operands
  (constants, iota) never join: their values are sliced like any input.
- **Chunks.** Every region op is cloned per chunk on M/c rows; an operand with rows from
  outside becomes `row_chunk {index, chunks}` (chunk `index` of dim 0: an alias, no copy), an
  operand without rows is used whole, and every region value used outside is rebuilt by
  `row_join {chunks}` (the chunks placed back to back: also an alias). compiler/shard/spmd.py
  gives these no code: a chunk is its parent's rows at an offset.
- **Order.** A region op's stage is the number of all-reduces before it on its longest
  path; ops are ordered by (chunk + stage, stage): at step t chunk t's first stage, then chunk
  t-1's second, and so on, so between an all-reduce's start and the first use of its result
  there is a step's worth of other chunks' compute.
- **All-reduces** of the chunks carry `{chunk, chunks}`: spmd.py lowers them asynchronously
  (compiler/collective_codegen.py `async_allreduce`): started on one core's NET queue right
  after the chunk's kernels, waited for just before the first kernel that reads the result.
- **Price.** `chunk_count` picks c by the two-resource pipeline estimate
  c * max(a, b) + min(a, b), a = one chunk's compute (the roofline of its matrix products and
  bytes, plus a kernel launch per product: machine file) and b = one chunk's all-reduces
  (the alpha-beta cost of compiler/collectives.py); c = 1 (no rewrite) when nothing is gained.
"""

from __future__ import annotations

from dataclasses import dataclass

from zhenwu.compiler.collectives import collective_cost
from zhenwu.compiler.graph.ir import Function, Op, TensorType, Value
from zhenwu.compiler.graph.ops import OPS

ROW_CHUNK, ROW_JOIN = "row_chunk", "row_join"
ALIAS_KINDS = (ROW_CHUNK, ROW_JOIN)


@dataclass
class Region:
    """One chunked region: its ops (in the original function), row count and chunk count."""

    ops: list[Op]
    rows: int
    chunks: int
    all_reduces: int


# ---- which ops are row-wise ---------------------------------------------------------------


def _has_rows(value: Value, rank: int, rows: int) -> bool:
    return value.type.rank == rank and value.type.rank >= 1 and value.type.shape[0] == rows


def row_inputs(op: Op, rows: int) -> list[int] | None:
    """The operand positions of `op` that carry its rows (dim 0, M = `rows`) when `op` is
    row-wise in dim 0, else None (see the module docstring)."""
    out = op.result.type
    if out.rank < 1 or out.shape[0] != rows or not op.inputs:
        return None
    if op.kind == "all_reduce":
        return [0] if _has_rows(op.inputs[0], out.rank, rows) else None
    if op.kind == "matmul":
        a, b = op.inputs
        if a.type.rank != 2 or b.type.rank != 2 or a.type.shape[0] != rows:
            return None
        return [0]
    if op.kind == "reshape":
        source = op.inputs[0]
        if source.type.rank >= 1 and source.type.shape[0] == rows and \
                next(iter(op.attrs["shape"])) == rows:
            return [0]
        return None
    fusion = OPS[op.kind].fusion if op.kind in OPS else None
    if fusion == "reduce" and "axes" in op.attrs and len(op.inputs) == 1:
        source = op.inputs[0]
        axes = op.attrs["axes"]
        axes = tuple(axes) if isinstance(axes, (list, tuple)) else (axes,)
        rank = source.type.rank
        if rank >= 2 and source.type.shape[0] == rows and \
                all(a % rank != 0 for a in axes if a is not None) and None not in axes:
            return [0]
        return None
    if fusion == "elementwise":
        positions = [i for i, v in enumerate(op.inputs) if _has_rows(v, out.rank, rows)]
        for v in op.inputs:
            if v.type.rank > out.rank:
                return None
        return positions or None
    return None


# ---- finding regions ----------------------------------------------------------------------


def _descendants(fn: Function, region: set[int]) -> set[int]:
    """Ids of the ops outside `region` reachable from it."""
    reached: set[int] = set()
    for op in fn.ops:
        if op.id in region:
            continue
        if any(v.id in region or v.id in reached for v in op.inputs):
            reached.add(op.id)
    return reached


def find_region(fn: Function, seed: Op) -> list[Op] | None:
    """The row-wise region grown from all-reduce `seed`, or None if it has no rows."""
    if seed.inputs[0].type.rank < 2 or seed.inputs[0].type.shape[0] < 2:
        return None
    rows = seed.inputs[0].type.shape[0]
    producers = {op.id: op for op in fn.ops}
    users: dict[int, list[Op]] = {}
    for op in fn.ops:
        for v in op.inputs:
            users.setdefault(v.id, []).append(op)
    outputs = {v.id for v in fn.outputs}
    region = {seed.id}
    changed = True
    while changed:
        changed = False
        # upward: producers of row operands whose every use is in the region
        for op in [producers[i] for i in region]:
            for pos in row_inputs(op, rows) or []:
                value = op.inputs[pos]
                producer = producers.get(value.id)
                if producer is None or producer.id in region or value.id in outputs:
                    continue
                if row_inputs(producer, rows) is None:
                    continue
                if all(user.id in region for user in users.get(value.id, [])):
                    region.add(producer.id)
                    if _convex(fn, region, producers):
                        changed = True
                    else:
                        region.discard(producer.id)
        # downward: consumers whose region operands are row operands
        for op in fn.ops:
            if op.id in region:
                continue
            uses = [i for i, v in enumerate(op.inputs) if v.id in region]
            if not uses:
                continue
            positions = row_inputs(op, rows)
            if positions is None or any(i not in positions for i in uses):
                continue
            region.add(op.id)
            if _convex(fn, region, producers):
                changed = True
            else:
                region.discard(op.id)
    return [op for op in fn.ops if op.id in region]


def _convex(fn: Function, region: set[int], producers: dict[int, Op]) -> bool:
    """No op outside `region` depends on it while an op inside depends on that op."""
    outside = _descendants(fn, region)
    return not any(v.id in outside for i in region for v in producers[i].inputs)


# ---- pricing ------------------------------------------------------------------------------


def _stages(ops: list[Op]) -> dict[int, int]:
    """Op id -> its stage: the number of all-reduces on its longest path inside the region
    (as soon as possible), then moved as late as its users allow (an op other than an
    all-reduce runs in the earliest stage of its users: a cast of an input joins the kernels
    that read it instead of running one stage early)."""
    reduces = {op.id for op in ops if op.kind == "all_reduce"}
    stage: dict[int, int] = {}
    for op in ops:
        stage[op.id] = max((stage[v.id] + (1 if v.id in reduces else 0)
                            for v in op.inputs if v.id in stage), default=0)
    users: dict[int, list[int]] = {}
    for op in ops:
        for v in op.inputs:
            if v.id in stage:
                users.setdefault(v.id, []).append(op.id)
    for op in reversed(ops):
        if op.kind != "all_reduce" and op.id in users:
            stage[op.id] = max(stage[op.id], min(stage[u] for u in users[op.id]))
    return stage


def _compute_cycles(ops: list[Op], rows: int, chunks: int, machine) -> float:
    """One chunk's compute estimate (of `chunks`): the larger of its matrix flops over the MX
    peak and its HBM bytes over the bandwidth (values with rows: a chunk's share; operands
    used whole, the weights: all of them, every chunk reads them again), plus a kernel
    launch per matrix product and one for the rest."""
    inside = {op.id for op in ops}
    flop_cycles = 0.0
    row_bytes = 0
    whole: dict[int, int] = {}
    products = 0
    for op in ops:
        if op.kind == "all_reduce":
            continue
        if op.kind == "matmul":
            a, b = op.inputs
            m, k = a.type.shape
            n = b.type.shape[1]
            dtype = a.type.dtype if machine.supports_mx(a.type.dtype) else "bf16"
            flop_cycles += 2 * m * n * k / machine.peak_flops_per_cycle(dtype)
            products += 1
        row_bytes += op.result.type.nbytes
        positions = row_inputs(op, rows) or []
        for pos, value in enumerate(op.inputs):
            if value.id in inside:
                continue
            if pos in positions:
                row_bytes += value.type.nbytes
            else:
                whole[value.id] = value.type.nbytes
    memory_cycles = (row_bytes / chunks + sum(whole.values())) / machine.hbm_bytes_per_cycle
    launch = machine.kernel_launch_seconds * machine.clock_hz
    return max(flop_cycles / chunks, memory_cycles) + (products + 1) * launch


def chunk_count(ops: list[Op], rows: int, group: tuple[int, ...], chips: int, machine,
                ) -> int:
    """The chunk count the pipeline estimate prefers (1: do not chunk): with a = one chunk's
    compute and b = its all-reduces (alpha-beta, direct), c chunks take about
    c * max(a, b) + min(a, b) (c = 1: a + b, nothing overlapped)."""
    reduces = [op for op in ops if op.kind == "all_reduce"]

    def estimate(c: int) -> float:
        a = _compute_cycles(ops, rows, c, machine)
        b = sum(collective_cost("allreduce", max(1, op.inputs[0].type.nbytes // c), chips,
                                machine, algorithm="direct", group=group).seconds
                for op in reduces) * machine.clock_hz
        return c * max(a, b) + min(a, b)

    best, best_cycles = 1, estimate(1)
    most = min(rows // max(1, machine.mx_m), machine.cores // max(1, len(reduces)))
    for c in range(2, most + 1):
        if rows % c == 0 and estimate(c) < best_cycles:
            best, best_cycles = c, estimate(c)
    return best


# ---- the rewrite --------------------------------------------------------------------------


def _is_constant(op: Op | None) -> bool:
    return op is not None and op.kind == "constant" and not op.inputs


def _clone_type(op: Op, inputs: list[Value], attrs: dict) -> TensorType:
    if op.kind == "all_reduce":
        return inputs[0].type
    return OPS[op.kind].infer(tuple(v.type for v in inputs), attrs)


def chunk_region(fn: Function, ops: list[Op], rows: int, chunks: int) -> Function:
    """`fn` with region `ops` computed in `chunks` row chunks (see the module docstring)."""
    region = {op.id for op in ops}
    outside_after = _descendants(fn, region)
    next_id = fn.next_id()

    def fresh(type_: TensorType) -> Value:
        nonlocal next_id
        value = Value(next_id, type_)
        next_id += 1
        return value

    def emit(kind: str, inputs, attrs: dict, type_: TensorType, span, origin=None) -> Op:
        result = fresh(type_)
        return Op(result.id, kind, tuple(inputs), attrs, result, span, origin)

    piece = rows // chunks
    slices: list[Op] = []
    sliced: dict[int, list[Value]] = {}  # outside value id -> its chunks
    for op in ops:
        for pos in row_inputs(op, rows) or []:
            value = op.inputs[pos]
            if value.id in region or value.id in sliced:
                continue
            shape = (piece,) + value.type.shape[1:]
            parts = []
            for index in range(chunks):
                cut = emit(ROW_CHUNK, [value], {"index": index, "chunks": chunks},
                           TensorType(value.type.dtype, shape), op.span)
                slices.append(cut)
                parts.append(cut.result)
            sliced[value.id] = parts
    stage = _stages(ops)
    producers = {op.id: op for op in fn.ops}
    clones: list[tuple[tuple[int, int, float], Op]] = []
    mapped: list[dict[int, Value]] = [{} for _ in range(chunks)]
    for order, op in enumerate(ops):
        positions = set(row_inputs(op, rows) or [])
        for index in range(chunks):
            inputs = []
            for pos, value in enumerate(op.inputs):
                if value.id in region:
                    inputs.append(mapped[index][value.id])
                elif pos in positions:
                    inputs.append(sliced[value.id][index])
                elif _is_constant(producers.get(value.id)):
                    # an immediate: copied next to each use, so the use's kernels keep it an
                    # immediate (from another segment it would be a tensor loaded per tile)
                    source = producers[value.id]
                    copy = emit(source.kind, [], dict(source.attrs), value.type,
                                source.span, source.origin)
                    clones.append(((index + stage[op.id], stage[op.id], order - 0.5), copy))
                    inputs.append(copy.result)
                else:
                    inputs.append(value)
            attrs = dict(op.attrs)
            if op.kind == "reshape":
                attrs["shape"] = (piece,) + tuple(attrs["shape"])[1:]
            if op.kind == "all_reduce":
                attrs.update({"chunk": index, "chunks": chunks})
            clone = emit(op.kind, inputs, attrs, _clone_type(op, inputs, attrs), op.span,
                         op.origin)
            mapped[index][op.id] = clone.result
            clones.append(((index + stage[op.id], stage[op.id], order), clone))
    clones.sort(key=lambda item: item[0])
    # region values used outside (or returned) are joined back
    used_after = {v.id for op in fn.ops if op.id not in region for v in op.inputs}
    used_after |= {v.id for v in fn.outputs}
    joins: list[Op] = []
    joined: dict[int, Value] = {}
    for op in ops:
        if op.id in used_after:
            join = emit(ROW_JOIN, [mapped[i][op.id] for i in range(chunks)],
                        {"chunks": chunks}, op.result.type, op.span)
            joins.append(join)
            joined[op.id] = join.result

    def remap(value: Value) -> Value:
        return joined.get(value.id, value)

    before = [op for op in fn.ops if op.id not in region and op.id not in outside_after]
    after = [Op(op.id, op.kind, tuple(remap(v) for v in op.inputs), op.attrs, op.result,
                op.span, op.origin) for op in fn.ops if op.id in outside_after]
    new_ops = before + slices + [clone for _, clone in clones] + joins + after
    return Function(fn.name, fn.params, new_ops, [remap(v) for v in fn.outputs],
                    dict(fn.attrs))


def overlap_function(fn: Function, mesh, machine, chips: int, chunks: int | None = None
                     ) -> tuple[Function, list[Region]]:
    """`fn` with every all-reduce region chunked (by `chunk_count`, or `chunks` when given
    and it divides the region's rows), and the regions."""
    regions: list[Region] = []
    done: set[int] = set()
    while True:
        seed = next((op for op in fn.ops if op.kind == "all_reduce" and op.id not in done
                     and "chunks" not in op.attrs), None)
        if seed is None:
            return fn, regions
        done.add(seed.id)
        group = mesh.group(0, seed.attrs["axis"])
        if len(group) < 2 or len({chip // machine.chips_per_node for chip in group}) > 1:
            continue  # one chip, or across nodes (lowered synchronously, hierarchical)
        ops = find_region(fn, seed)
        if ops is None:
            continue
        rows = seed.inputs[0].type.shape[0]
        done.update(op.id for op in ops if op.kind == "all_reduce")
        if chunks is not None:
            count = chunks if chunks > 1 and rows % chunks == 0 else 1
        else:
            count = chunk_count(ops, rows, group, chips, machine)
        if count < 2:
            continue
        regions.append(Region(ops, rows, count, sum(op.kind == "all_reduce" for op in ops)))
        fn = chunk_region(fn, ops, rows, count)
