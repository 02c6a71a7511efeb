"""`fuse`: group graph ops into kernels (docs/design.md section 5).

The pass leaves the ops as they are (but for a whole op no lowering claims any more, see
`fuse_function`) and attaches a `FusionPlan` to the function
(`fn.attrs["fusion"]`): the kernels in execution order, each with the ids of the source ops
it holds, and every fuse or no-fuse decision with its reason. The backend lowers each group
as one kernel (`compiler/backend/fusion.py`).

Groups (TVM's op patterns, on the primitives the `decompose` pass leaves and the ops it kept
whole because a backend lowering claimed them, `fn.attrs["claims"]`: lowering by legality):
- `elementwise`: a chain of elementwise ops with one iteration space (the result shape);
  operands from outside the group are read through broadcasting views, splat constants
  become immediates, and only values used outside the group are written to HBM;
- `matmul`: a matrix product with an elementwise epilogue applied on the accumulator before
  the store (bias, activation, residual add, scale, a final cast);
- `conv`: a conv2d lowered as an implicit GEMM (compiler/backend/conv.py) with the same
  epilogue as a matmul; a conv2d the implicit GEMM refuses reaches this pass as the im2col
  `decompose` wrote (pad, strided slices, concat, a batched matmul), fused as such;
- `pool`: a maxpool2d as one kernel (compiler/backend/pool.py), likewise kept whole;
- any other kind of a claimed op: the group the claiming lowering names
  (compiler/backend/groups.py, `WHOLE_OP_LOWERINGS`);
- `view`: shape ops that the backend turns into DMA views (no kernel);
- `single`: an op lowered on its own (reductions, a concat along another axis, pad, ...).

Decisions are greedy in program order: an elementwise op joins the group of an operand's
producer when the shapes agree and joining creates no cycle between kernels, and the other
elementwise groups over the same iteration space computing its operands merge into it (a
sum of N scaled tensors is one kernel). A concat along the last axis starts an elementwise
group whose tiles span whole rows, absorbing the `neg` and column slice of each piece
(rotary embeddings' rotate-half).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from zhenwu.compiler.graph.dtypes import is_float, value_preserving
from zhenwu.compiler.graph.ir import Function
from zhenwu.compiler.graph.ops import OPS
from zhenwu.compiler.passes.attention_match import match_attention
from zhenwu.compiler.passes.norm_gemm_match import match_norm_gemm
from zhenwu.compiler.passes.pass_base import GraphPass, register_pass
from zhenwu.compiler.passes.prologue_gemm_match import match_map_gemm
from zhenwu.isa.program import NUM_DESCS

# The op table (compiler/graph/ops.py) says which ops a fused kernel computes: the
# elementwise ones with vector instructions, and the reductions a row kernel computes.
ELEMENTWISE = frozenset(name for name, op in OPS.items()
                        if op.fusion == "elementwise" and op.vector is not None)
VIEW_OPS = frozenset(("reshape", "transpose", "slice", "broadcast_to"))
# GM tensors one fused kernel may read and write: a nest has NUM_DESCS DMA descriptors (an
# ISA limit); 8 are kept for the views a lowering adds (split tiles, epilogue operands)
DESCS_KEPT_FOR_LOWERING = 8
MAX_KERNEL_TENSORS = NUM_DESCS - DESCS_KEPT_FOR_LOWERING


@dataclass(frozen=True)
class FusionGroup:
    """One kernel: `kind` (elementwise, matmul, conv, attention, view, single, constant)
    and its source ops in program order (for `matmul` and `conv`, the product first, then
    its epilogue)."""

    kind: str
    op_ids: tuple[int, ...]


@dataclass(frozen=True)
class FusionPlan:
    """Groups in execution order and the log of decisions (one line each)."""

    groups: tuple[FusionGroup, ...]
    decisions: tuple[str, ...] = field(default=())

    def format(self, fn: Function) -> str:
        """The kernels and the source ops each holds, then the decisions."""
        ops = {op.id: op for op in fn.ops}
        lines = []
        number = 0
        for group in self.groups:
            if group.kind in ("view", "constant"):
                continue
            kinds = " ".join(f"%{i}:{ops[i].kind}" for i in group.op_ids)
            lines.append(f"// kernel {number} {group.kind}: {kinds}")
            number += 1
        lines += [f"// fuse: {d}" for d in self.decisions]
        return "\n".join(lines) + "\n"


def fusable_elementwise(op) -> bool:
    """An elementwise op the fused lowering handles (one whose vector steps rewrite an
    operand in place, integer div/pow, runs on its own)."""
    definition = OPS[op.kind]
    if definition.fusion != "elementwise" or definition.vector is None:
        return False
    integer = not is_float(op.inputs[-1].type.dtype)
    return not OPS[op.kind].vector.writes_operand(op.attrs, integer)


ROW_REDUCTIONS = tuple(name for name, op in OPS.items() if op.row_kernel)


def _row_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(shape[:-1]) + (1,) if shape and shape[-1] != 1 else ("no row shape",)


def row_reduction(op) -> bool:
    """A reduction of the last axis with keepdims (the row statistics of a row kernel)."""
    if not OPS[op.kind].row_kernel or not op.attrs.get("keepdims"):
        return False
    shape = op.inputs[0].type.shape
    return (len(shape) >= 1 and shape[-1] > 1 and tuple(op.attrs["axes"]) == (len(shape) - 1,)
            and op.inputs[0].type.dtype != "bool")


def concat_refusal(op, producers) -> str | None:
    """Why a concat cannot be a member of a map kernel (None: it can). A concat along the
    last axis is one buffer per tile whose pieces the DMA loads into their column ranges,
    so the tile spans whole rows; a piece must be in GM (a splat constant is not)."""
    if op.result.type.rank < 1 or op.attrs["axis"] != op.result.type.rank - 1:
        return "not along the last axis"
    if any(v.type.shape[-1] == 0 for v in op.inputs):
        return "a piece is empty"
    for v in op.inputs:
        source = producers.get(v.id)
        if source is not None and source.kind == "constant":
            return "a piece is a constant, not a tensor the DMA can read"
    return None


def column_slice(op) -> bool:
    """A slice of the last axis only, step 1: a concat piece taken from a column range of a
    tile of whole rows."""
    if op.kind != "slice" or op.inputs[0].type.rank < 1:
        return False
    shape = op.inputs[0].type.shape
    starts, stops, steps = op.attrs["starts"], op.attrs["stops"], op.attrs["steps"]
    leading = all(starts[i] == 0 and stops[i] == shape[i] and steps[i] == 1
                  for i in range(len(shape) - 1))
    return leading and steps[-1] == 1 and stops[-1] > starts[-1]


def negated_piece(value, concat, producers, users, outputs) -> bool:
    """Whether concat piece `value` is `neg` of a float tensor read only by this concat
    (rotary embeddings' `concat([-x2, x1])`): the map kernel loads the tensor and negates
    its columns, multiplying by a row of -1 and 1 (exact in every float dtype)."""
    op = producers.get(value.id)
    return (op is not None and op.kind == "neg" and is_float(value.type.dtype)
            and value.id not in outputs and all(u is concat for u in users[value.id]))


def epilogue_ok(op) -> bool:
    """An elementwise op that can run on a float accumulator tile in place."""
    if not fusable_elementwise(op) or not is_float(op.result.type.dtype):
        return False  # a comparison's result is a mask
    if OPS[op.kind].vector.reads_operand_after_result(op.attrs, False):
        return False  # gelu's erf form reads its input after writing its result
    return all(is_float(v.type.dtype) for v in op.inputs)  # where's condition is a mask


def conv_operand_ok(value, shape) -> bool:
    """An epilogue operand of a conv kernel: along the output's pixels (its last two dims)
    it is either whole or one value (its tile is rows of pixels, or a column per channel)."""
    dims = (1,) * (len(shape) - value.type.rank) + tuple(value.type.shape)
    return tuple(dims[-2:]) in (tuple(shape[-2:]), (1, 1))


# Dtypes every machine's MX multiplies as they are (fp8 is not: a machine without fp8
# multiplies it as bf16), so that a DMA converting to one of them does just what a cast to it
# does (docs/isa.md: DMA.LD converts as VCVT and the `cast` op do).
MX_NATIVE = ("bf16", "f16", "f32", "i8")


def operand_cast_refusal(cast) -> str | None:
    """Why a cast feeding a matmul operand may not be done by the operand's DMA, or None.

    The DMA converts the cast's source straight to the MX input dtype. That gives the cast's
    values only when the cast keeps every value of its source (a widening: the MX then sees
    the source's values, converted once), or when the cast's dtype is the MX input dtype (the
    DMA does the cast itself). Otherwise the cast's rounding, truncation or wrapping would be
    lost: `cast(x, i32) @ cast(w, i32)` of floats must multiply trunc(x), not x."""
    source, target = cast.inputs[0].type.dtype, cast.attrs["dtype"]
    if value_preserving(source, target) or target in MX_NATIVE:
        return None
    return (f"the cast {source} -> {target} changes values and {target} is not an MX input "
            "dtype on every machine")


# Kernels matched whole before the greedy grouping below: kind -> (matcher, what the kernel
# is called in decisions, why it is one kernel). `matcher(fn, users, producers, outputs)`
# yields (op ids in program order, a description) for every set of ops one kernel of its
# kind computes; the backend lowers the group with the function registered for the kind
# (compiler/backend/groups.py). Adding one: docs/internals.md, "How to add a fused kernel".
KERNEL_MATCHERS: dict[str, tuple] = {
    "attention": (match_attention, "flash-attention", "the score matrix never leaves the core"),
    # kind "matmul": the greedy pass below then adds the product's epilogue as usual
    "matmul": (match_norm_gemm, "RMSNorm-prologue matmul",
               ("each core computes the scale of its A rows once and loads them scaled "
                "at every k step (compiler/passes/norm_gemm_match.py)")),
    # also kind "matmul" (a key of its own; the group's kind is the part before "@")
    "matmul@map": (match_map_gemm, "map-prologue matmul",
                   ("each core computes the map of the few A rows itself and the products "
                    "read it from L1: the map's result is never stored "
                    "(compiler/passes/prologue_gemm_match.py)")),
}


def plan_fusion(fn: Function, decisions: list[str] | None = None) -> FusionPlan:
    """Group the ops of `fn` (primitives, and the ops `decompose` kept whole for the
    lowering that claimed them) into kernels; see the module docstring. `decisions` starts
    the log."""
    claims = fn.attrs.get("claims", {})
    producers = fn.producers()
    users = fn.users()
    outputs = {v.id for v in fn.outputs}
    group_of: dict[int, int] = {}          # op id -> group number
    members: dict[int, list[int]] = {}     # group number -> op ids
    kinds: dict[int, str] = {}
    decisions = list(decisions or [])
    for key, (matcher, name, why) in KERNEL_MATCHERS.items():
        kind = key.partition("@")[0]
        for ids, what in matcher(fn, users, producers, outputs):
            if any(i in group_of for i in ids):
                continue  # an earlier matcher's kernel holds some of them
            number = max(members, default=-1) + 1
            members[number] = list(ids)
            kinds[number] = kind
            for i in ids:
                group_of[i] = number
            decisions.append(f"fuse %{ids[0]}..%{ids[-1]} as one {name} kernel ({what}): {why}")
    closed: set[int] = set()

    def group_preds(group: int) -> set[int]:
        out = set()
        for op_id in members[group]:
            for v in producers[op_id].inputs:
                g = group_of.get(v.id)
                if g is not None and g != group:
                    out.add(g)
        return out

    def reaches(start: set[int], target: int) -> bool:
        """Whether `target` is among `start` or their transitive producers' groups."""
        seen, todo = set(), list(start)
        while todo:
            g = todo.pop()
            if g == target:
                return True
            if g not in seen:
                seen.add(g)
                todo.extend(group_preds(g))
        return False

    space: dict[int, tuple[int, ...]] = {}  # elementwise/row group -> its full shape

    def new_group(op, kind: str) -> None:
        number = max(members, default=-1) + 1  # groups may be deleted (absorbed casts)
        members[number] = [op.id]
        kinds[number] = kind
        group_of[op.id] = number
        if kind == "elementwise":
            space[number] = tuple(op.result.type.shape)

    def external_groups(op, group: int) -> set[int]:
        return {group_of[v.id] for v in op.inputs
                if v.id in group_of and group_of[v.id] != group}

    def too_many_tensors(ids: set[int]) -> bool:
        """Whether a kernel of the ops `ids` would read and write more GM tensors than one
        nest has DMA descriptors for (splat constants are immediates)."""
        inputs = set()
        for i in ids:
            for v in producers[i].inputs:
                source = producers.get(v.id)
                if v.id not in ids and (source is None or source.kind != "constant"):
                    # each column slice a concat absorbed is a view of its own
                    inputs.add((v.id, i) if producers[i].kind == "slice" else v.id)
        stored = sum(1 for i in ids if i in outputs or any(u.id not in ids for u in users[i]))
        return len(inputs) + stored > MAX_KERNEL_TENSORS

    def merge_side_groups(op) -> int | None:
        """Join `op` to the matmul group whose accumulator chain ends at one of its inputs,
        with the elementwise groups computing its other inputs when nothing else uses their
        values (SwiGLU's silu(x @ w_gate) * (x @ w_up): the silu runs on the up product's
        tiles instead of in a kernel of its own). Returns the matmul group, or None."""
        if not epilogue_ok(op):
            return None
        shape = tuple(op.result.type.shape)
        for v in op.inputs:
            m = group_of.get(v.id)
            if m is None or kinds[m] != "matmul" or members[m][-1] != v.id:
                continue
            if v.id in closed or len(users[v.id]) != 1 or v.id in outputs \
                    or tuple(v.type.shape) != shape:
                return None
            sides = [group_of[u.id] for u in op.inputs if u.id != v.id and u.id in group_of
                     and kinds[group_of[u.id]] == "elementwise"]
            sides = list(dict.fromkeys(sides))
            if not sides:
                return None
            merged = {m, *sides}
            for g in sides:
                if space[g] != shape:
                    return None
                ids = set(members[g])
                for i in members[g]:
                    o = producers[i]
                    if i in outputs or not epilogue_ok(o) or any(
                            w.id not in ids and w is not op for w in users[i]):
                        return None
            if too_many_tensors({i for g in merged for i in members[g]} | {op.id}):
                return None
            # no cycle: nothing outside the merged groups that they read depends on them
            outside = set().union(*(group_preds(g) for g in merged)) | external_groups(op, m)
            outside -= merged
            if any(reaches({e}, g) for e in outside for g in merged):
                return None
            side_ids = [i for g in sides for i in members[g]]
            for g in sides:
                for i in members[g]:
                    group_of[i] = m
                members[m].extend(members[g])
                del members[g], kinds[g], space[g]
            decisions.append(
                f"fuse %{op.id} {op.kind} into the matmul kernel of %{members[m][0]} with "
                f"{' '.join(f'%{i}' for i in side_ids)}: values only this epilogue reads, "
                "computed on its tiles")
            return m
        return None

    position = {op.id: index for index, op in enumerate(fn.ops)}

    def merge_siblings(op) -> None:
        """Merge into the elementwise group of `op` the other elementwise groups over the
        same iteration space that compute its operands (at most one of the two a row
        kernel): a linear combination of N tensors, each term scaled in a group of its own,
        is one kernel, and so is rotary embedding's `x * cos + rotated * sin`."""
        group = group_of[op.id]
        if kinds[group] != "elementwise":
            return

        def rows(g: int) -> bool:
            return any(producers[i].kind in ROW_REDUCTIONS for i in members[g])

        for v in op.inputs:
            other = group_of.get(v.id)
            if other is None or other == group or kinds[other] != "elementwise":
                continue
            where = (f"the elementwise kernel of %{members[other][0]} into that of "
                     f"%{members[group][0]} (operands of %{op.id} {op.kind})")
            if space[other] != space[group]:
                decisions.append(f"no-fuse {where}: not the same iteration space")
                continue
            if rows(other) and rows(group):
                decisions.append(f"no-fuse {where}: both are row kernels")
                continue
            if (any(reaches({g}, group) for g in group_preds(other) - {group})
                    or any(reaches({g}, other) for g in group_preds(group) - {other})):
                decisions.append(f"no-fuse {where}: it would make a cycle")
                continue
            if too_many_tensors(set(members[group]) | set(members[other])):
                decisions.append(f"no-fuse {where}: the kernel would move more than "
                                 f"{MAX_KERNEL_TENSORS} tensors")
                continue
            for i in members[other]:
                group_of[i] = group
            members[group] = sorted(members[group] + members[other], key=position.__getitem__)
            del members[other], kinds[other], space[other]
            decisions.append(f"fuse {where}: same iteration space")

    def start_concat_group(op) -> bool:
        """A map kernel for a concat along the last axis (its consumers join it), with the
        `neg` of a piece read only by it; False when the kernel would move too many
        tensors."""
        if too_many_tensors({op.id}):
            return False
        new_group(op, "elementwise")
        group = group_of[op.id]
        def absorb(value, kind: str, readers: set[int]) -> bool:
            """Move the op computing `value`, alone in a group of `kind` and read only by
            `readers`, into the concat's group."""
            g = group_of.get(value.id)
            if (g is None or members[g] != [value.id] or kinds[g] != kind
                    or value.id in outputs or any(u.id not in readers for u in users[value.id])):
                return False
            del members[g], kinds[g]
            space.pop(g, None)
            members[group].append(value.id)
            group_of[value.id] = group
            return True

        for v in dict.fromkeys(op.inputs):
            readers = {op.id}
            if negated_piece(v, op, producers, users, outputs) and absorb(v, "elementwise",
                                                                         readers):
                decisions.append(f"fuse %{v.id} neg into concat %{op.id}: the map kernel "
                                 "negates its columns")
                readers, v = {v.id}, producers[v.id].inputs[0]
            source = producers.get(v.id)
            if source is not None and column_slice(source) and absorb(v, "view", readers):
                decisions.append(f"fuse %{v.id} slice into concat %{op.id}: a column range "
                                 "of its source's tile (or of its load)")
        members[group].sort(key=position.__getitem__)
        decisions.append(f"fuse %{op.id} concat into a map kernel: its pieces are loaded "
                         "into their column ranges of a tile of whole rows")
        return True

    for op in fn.ops:
        shape = op.result.type.shape
        joined = None
        if op.id in group_of:
            continue  # in a kernel a matcher claimed (attention)
        if op.kind in VIEW_OPS:
            new_group(op, "view")
        elif op.kind == "constant":
            new_group(op, "constant")
        elif fusable_elementwise(op) and (joined := merge_side_groups(op)) is not None:
            members[joined].append(op.id)
            group_of[op.id] = joined
            if op.kind == "cast" and op.attrs["dtype"] != "f32":
                closed.add(op.id)
        elif fusable_elementwise(op):
            for v in op.inputs:
                producer = producers.get(v.id)
                if producer is None or producer.id not in group_of:
                    continue
                group = group_of[producer.id]
                kind = kinds[group]
                if kind not in ("elementwise", "matmul", "conv"):
                    continue
                where = f"%{op.id} {op.kind} into the {kind} kernel of %{members[group][0]}"
                if kind in ("matmul", "conv") and (
                        producers[members[group][-1]].result.type.shape != shape):
                    decisions.append(f"no-fuse {where}: shapes differ")
                    continue
                if kind == "elementwise" and shape not in (space[group],
                                                           _row_shape(space[group])):
                    decisions.append(f"no-fuse {where}: shapes differ")
                    continue
                if kind in ("matmul", "conv"):
                    last = members[group][-1]
                    if v.id != last or not epilogue_ok(op):
                        decisions.append(f"no-fuse {where}: not an accumulator epilogue")
                        continue
                    if last in closed:
                        decisions.append(f"no-fuse {where}: the epilogue ends with a cast")
                        continue
                    if len(users[last]) != 1 or last in outputs:
                        decisions.append(f"no-fuse {where}: %{last} is also used elsewhere")
                        continue
                    other = [u for u in op.inputs if u.id != last]
                    if kind == "conv" and not all(conv_operand_ok(u, shape) for u in other):
                        decisions.append(f"no-fuse {where}: an operand broadcasts along "
                                         "one pixel axis only")
                        continue
                    if kind == "matmul" and any(u.type.shape != shape
                                                and u.type.numel != shape[-1]
                                                and u.type.numel != 1 for u in other):
                        decisions.append(f"no-fuse {where}: an operand broadcasts along rows")
                        continue
                if reaches(external_groups(op, group), group):
                    decisions.append(f"no-fuse {where}: it would make a cycle")
                    continue
                if too_many_tensors(set(members[group]) | {op.id}):
                    decisions.append(f"no-fuse {where}: the kernel would move more than "
                                     f"{MAX_KERNEL_TENSORS} tensors")
                    continue
                joined = group
                why = ("same iteration space" if kind != "elementwise" or shape == space[group]
                       else "a per-row value of the row kernel")
                decisions.append(f"fuse {where}: {why}")
                break
            if joined is None:
                new_group(op, "elementwise")
            else:
                members[joined].append(op.id)
                group_of[op.id] = joined
                if (kinds[joined] in ("matmul", "conv") and op.kind == "cast"
                        and op.attrs["dtype"] != "f32"):
                    closed.add(op.id)  # the store casts; nothing may follow
            merge_siblings(op)
        elif row_reduction(op):
            # a reduction along the last axis joins the kernel producing its input (a row
            # kernel: whole rows per tile, the per-row values as rows x 1 tiles)
            v = op.inputs[0]
            group = group_of.get(v.id)
            where = f"%{op.id} {op.kind}"
            if (group is not None and kinds[group] == "elementwise"
                    and space[group] == tuple(v.type.shape)
                    and not reaches(external_groups(op, group), group)
                    and not too_many_tensors(set(members[group]) | {op.id})):
                members[group].append(op.id)
                group_of[op.id] = group
                decisions.append(f"fuse {where} into the row kernel of %{members[group][0]}: "
                                 "reduces its rows")
            else:
                new_group(op, "elementwise")
                space[group_of[op.id]] = tuple(v.type.shape)
                decisions.append(f"fuse {where}: starts a row kernel over "
                                 f"{list(v.type.shape)}")
        elif op.id in claims:
            new_group(op, claims[op.id])  # kept whole for the lowering that claimed it
        elif op.kind == "matmul":
            new_group(op, "matmul")
            # a cast feeding only this product is done by the operand's DMA (it converts)
            for v in dict.fromkeys(op.inputs):
                producer = producers.get(v.id)
                if producer is None or producer.kind != "cast" or v.id in outputs:
                    continue
                g = group_of.get(producer.id)
                if g is None or members[g] != [producer.id] or any(
                        u is not op for u in users[v.id]):
                    continue
                refusal = operand_cast_refusal(producer)
                if refusal is not None:
                    decisions.append(f"no-fuse %{producer.id} cast into the operand loads of "
                                     f"matmul %{op.id}: {refusal}")
                    continue
                del members[g], kinds[g]
                group = group_of[op.id]
                members[group].insert(0, producer.id)
                group_of[producer.id] = group
                decisions.append(f"fuse %{producer.id} cast into the operand loads of "
                                 f"matmul %{op.id}: the DMA converts")
        elif (op.kind == "concat" and concat_refusal(op, producers) is None
              and start_concat_group(op)):
            pass
        else:
            new_group(op, "single")
            why = concat_refusal(op, producers) if op.kind == "concat" else None
            decisions.append(f"no-fuse %{op.id} {op.kind}: {why or 'no fused rule'}, its own "
                             "kernel")

    order = _group_order(fn, members, group_of)
    groups = tuple(FusionGroup(kinds[g], tuple(members[g])) for g in order)
    return FusionPlan(groups, tuple(decisions))


def _group_order(fn: Function, members, group_of) -> list[int]:
    """Groups in a topological order of the kernel graph, earliest first op first."""
    import heapq

    first = {g: min(fn.ops.index(op) for op in fn.ops if group_of[op.id] == g)
             for g in members}
    preds: dict[int, set[int]] = {g: set() for g in members}
    for op in fn.ops:
        g = group_of[op.id]
        for v in op.inputs:
            if v.id in group_of and group_of[v.id] != g:
                preds[g].add(group_of[v.id])
    succs: dict[int, set[int]] = {g: set() for g in members}
    for g, ps in preds.items():
        for p in ps:
            succs[p].add(g)
    waiting = {g: len(ps) for g, ps in preds.items()}
    ready = [(first[g], g) for g, n in waiting.items() if n == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        _, g = heapq.heappop(ready)
        order.append(g)
        for s in succs[g]:
            waiting[s] -= 1
            if waiting[s] == 0:
                heapq.heappush(ready, (first[s], s))
    if len(order) != len(members):  # pragma: no cover - merges are checked for cycles
        raise AssertionError("fusion made a cycle between kernels")
    return order


@register_pass
@dataclass(frozen=True)
class Fuse(GraphPass):
    """Attach a `FusionPlan` (`fn.attrs["fusion"]`); the ops are unchanged but for a whole
    op no lowering claims any more, decomposed (`fuse_function`)."""

    name = "fuse"

    def apply(self, fn: Function) -> Function:
        fn, plan = fuse_function(fn)
        attrs = dict(fn.attrs)
        attrs["fusion"] = plan
        return Function(fn.name, list(fn.params), list(fn.ops), list(fn.outputs), attrs)


def fuse_function(fn: Function) -> tuple[Function, FusionPlan]:
    """The function and its fusion plan. The ops `decompose` kept whole are asked of its
    target again (`fn.attrs["target"]`, lowering by legality): one a lowering still claims
    is a group of that lowering's kind; one none claims any more (a later graph pass
    changed an operand) is decomposed here, as `decompose` would have. The log starts with
    these decisions."""
    decisions = list(fn.attrs.get("legality", ()))
    fn, claims = legalize_whole_ops(fn, decisions)
    attrs = dict(fn.attrs)
    attrs["claims"] = claims
    fn = Function(fn.name, list(fn.params), list(fn.ops), list(fn.outputs), attrs)
    return fn, plan_fusion(fn, decisions)


def legalize_whole_ops(fn: Function, decisions: list[str]) -> tuple[Function, dict[int, str]]:
    """(the function, op id -> group kind of every whole op a lowering claims), the ops
    none claims decomposed; appends a decision line per whole op to `decisions`."""
    from zhenwu.compiler.passes.decompose import DECOMPOSITIONS, decompose_op
    from zhenwu.compiler.passes.rewrite import rewrite

    target = fn.attrs.get("target")
    whole = [op for op in fn.ops if op.kind in DECOMPOSITIONS]
    if target is None or not whole:
        return fn, {}
    claims: dict[int, str] = {}
    refused: set[int] = set()
    producers = fn.producers()
    for op in whole:
        group, decision = target.legalize(op, producers)
        if group is not None:
            claims[op.id] = group
        else:
            refused.add(op.id)
        if decision is not None:
            decisions.append(decision if group is not None else
                             f"{decision} (after the graph passes)")
    if not refused:
        return fn, claims
    counts: dict[str, int] = {}
    for op in fn.ops:  # number the late decompositions after the origins there are
        kind, _, number = (op.origin or "").partition("#")
        if number.isdigit():
            counts[kind] = max(counts.get(kind, 0), int(number))

    def late(op, rw):
        return decompose_op(op, rw, counts) if op.id in refused else None

    return rewrite(fn, [late]), claims
