"""Roofline bounds of a program on a machine (docs/design.md section 11).

The bound is the larger of two times: the matrix products' flops over the MX peak of their
input dtype, and the compulsory HBM bytes (every input read once, every output written once)
over the HBM bandwidth. Both come from the loaded machine description.

The flops are the useful ones: the two products of a causally masked attention
(`compiler.passes.fuse.match_attention`) count only the scores the mask keeps (key <= query,
about half), as FlashAttention's papers count them; a kernel that skips the masked blocks
then stays below 1.0 of its bound instead of passing it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

CONTRACTIONS = ("matmul", "conv2d")   # a conv2d a backend lowering kept whole is a product


@dataclass(frozen=True)
class Roofline:
    flops: int                # all flops of the matrix products
    compulsory_bytes: int     # inputs read once + outputs written once
    compute_cycles: float
    memory_cycles: float

    @property
    def cycles(self) -> float:
        return max(self.compute_cycles, self.memory_cycles)


def _matmul_dims(op) -> tuple[int, int, int, int]:
    """(batch, M, N, K) of a numpy-semantics matmul op, or of a conv2d as the batched
    product its im2col is (batch N x groups, M the output channels of a group, N the
    output pixels, K a group's input channels x taps)."""
    if op.kind == "conv2d":
        n, o, oh, ow = op.result.type.shape
        _, cg, kh, kw = op.inputs[1].type.shape
        groups = op.attrs["groups"]
        return n * groups, o // groups, oh * ow, cg * kh * kw
    a, b = (v.type.shape for v in op.inputs)
    out = op.result.type.shape
    k = a[-1]
    m = a[-2] if len(a) >= 2 else 1
    n = b[-1] if len(b) >= 2 else 1
    batch = math.prod(out) // (m * n) if m * n else 0
    return batch, m, n, k


def compulsory_bytes(fn) -> int:
    params = sum(p.type.nbytes for p in fn.params)
    outputs = sum(o.type.nbytes for o in fn.outputs)
    return params + outputs


def roofline(fn, machine) -> Roofline:
    """The roofline bound of `fn` (a Graph IR function, after decomposition or not)."""
    flops = 0
    compute_cycles = 0.0
    kept = causal_fractions(fn)
    for op in fn.ops:
        if op.kind in CONTRACTIONS:
            batch, m, n, k = _matmul_dims(op)
            op_flops = round(2 * batch * m * n * k * kept.get(op.id, 1.0))
            flops += op_flops
            dtype = op.inputs[0].type.dtype
            if not machine.supports_mx(dtype):  # the compiler widens it (fp8 -> bf16)
                dtype = "bf16" if machine.supports_mx("bf16") else "f32"
            compute_cycles += op_flops / machine.peak_flops_per_cycle(dtype)
    memory = compulsory_bytes(fn)
    return Roofline(flops, memory, compute_cycles, memory / machine.hbm_bytes_per_cycle)


def causal_fractions(fn) -> dict[int, float]:
    """Matmul op id -> the share of its products a causal mask keeps, for the two products
    of every causally masked attention chain of `fn` (mask key <= query)."""
    from zhenwu.compiler.passes.fuse import match_attention

    out: dict[int, float] = {}
    outputs = {v.id for v in fn.outputs}
    for ids, what in match_attention(fn, fn.users(), fn.producers(), outputs):
        if not what.startswith("causal"):
            continue
        products = [op for op in fn.ops if op.id in ids and op.kind in CONTRACTIONS]
        # the mask's query and key dims (a grouped product merges heads into its rows)
        where = next(op for op in fn.ops if op.id in ids and op.kind == "where")
        sq, sk = where.result.type.shape[-2:]
        if sq <= sk:
            kept = sq * (sq + 1) // 2
        else:
            kept = sk * (sk + 1) // 2 + (sq - sk) * sk
        out.update({op.id: kept / (sq * sk) for op in products})
    return out


def io_lower_bound_bytes(fn, machine) -> float | None:
    """Σ over matrix products of 2·M·N·K/√S − 2·S words (Smith, Lowery, Langou, van de Geijn).

    S is the number of words of on-chip memory one core's tile loop can use (its L1 in the
    input dtype's words). None when the program has no matrix product, or when the bound is
    not positive at these sizes.
    """
    total_words = 0.0
    word_bytes = None
    for op in fn.ops:
        if op.kind not in CONTRACTIONS:
            continue
        batch, m, n, k = _matmul_dims(op)
        word_bytes = op.inputs[0].type.nbytes // max(op.inputs[0].type.numel, 1)
        s_words = machine.l1_bytes / word_bytes
        total_words += max(batch * (2 * m * n * k / math.sqrt(s_words) - 2 * s_words), 0.0)
    if word_bytes is None or total_words <= 0:
        return None
    return total_words * word_bytes


@dataclass(frozen=True)
class KernelLatency:
    """The latencies no schedule of one kernel hides: its launch, the round trip of its
    first load (nothing computes before the first data lands) and the latency of its last
    store (the kernel ends when it is written)."""

    name: str
    launch_cycles: int
    first_load_cycles: int
    last_store_cycles: int

    @property
    def cycles(self) -> int:
        return self.launch_cycles + self.first_load_cycles + self.last_store_cycles


def kernel_latencies(kernels, machine) -> list[KernelLatency]:
    """Per kernel of a Kernel IR program, the latencies of `KernelLatency`, from the machine
    file: the launch (`kernel_launch_seconds`), a load's round trip (`hbm_cycles`; `l2_cycles`
    when the L2 may already hold a tensor the kernel reads: one an earlier kernel touched)
    and a store's (`hbm_cycles`: stores write through to HBM)."""
    from zhenwu.compiler.backend.kernel_ir import Load, Store

    touched: set[str] = set()
    out = []
    for kernel in kernels.kernels:
        statements = [s for nest in kernel.nests for s in nest.statements()]
        loaded = {s.view.tensor for s in statements if isinstance(s, Load)}
        stored = {s.view.tensor for s in statements if isinstance(s, Store)}
        if not loaded:
            first_load = 0
        elif machine.l2_bytes and loaded & touched:
            first_load = machine.l2_latency
        else:
            first_load = machine.hbm_latency
        last_store = machine.hbm_latency if stored else 0
        out.append(KernelLatency(kernel.name, machine.kernel_launch_cycles, first_load,
                                 last_store))
        touched |= loaded | stored
    return out


def latency_bound_cycles(fn, kernels, machine) -> float:
    """The latency-aware bound: the roofline of `fn` plus every kernel's latencies
    (`kernel_latencies`). A kernel takes at least its latencies plus its own compute or
    traffic at peak, and the kernels' compute and traffic sum to at least the program's
    roofline, so this is a lower bound too, and the fair one for small programs."""
    return roofline(fn, machine).cycles + sum(k.cycles for k in kernel_latencies(kernels,
                                                                                  machine))


def sustained_bound_cycles(fn, kernels, machine) -> float:
    """The latency-aware bound with the compulsory HBM traffic at the HBM's sustained rate
    (`hbm_streaming_efficiency` of the peak: what long streams of whole DRAM rows reach)
    instead of its peak: what a streaming kernel can reach on this machine, so the distance
    to it is the schedule's. An extra column of `zhenwu bench`: the latency-aware bound (at
    peak) stays the one efficiency is judged by."""
    bound = roofline(fn, machine)
    memory = bound.memory_cycles / machine.hbm_streaming_efficiency
    return max(bound.compute_cycles, memory) + sum(
        k.cycles for k in kernel_latencies(kernels, machine))

