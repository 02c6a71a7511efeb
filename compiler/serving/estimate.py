"""Serving estimates: compose simulated layer programs into TTFT, TPOT, tokens/s and cost.

What is simulated and what is analytic:

- SIMULATED (compiled with the normal pipeline, run timing-only on one chip): every layer
  program of programs.py for one chip's share (heads / TP, FFN / TP, experts / EP), and the
  LM head. A program that repeats identically (the layers) is simulated once and counted
  `layers / pp` times.
- ANALYTIC (alpha-beta formulas, comm.py): the collectives between chips (all-reduce after
  the attention and after the FFN under TP; all-to-all to and from the experts and an
  all-gather under EP; sends between pipeline stages), the permutation of tokens to their
  experts and back when there is no EP (a local copy: its bytes, read and written, over the
  HBM bandwidth), and the embedding lookup (a gather of rows: its bytes over the HBM
  bandwidth plus one HBM latency).

Composition (`compose`):

- TTFT: one prompt of P tokens prefilled (batch 1): per layer the prefill programs plus that
  layer's collectives, times the layers; plus the embedding of P rows, the LM head of the
  last row, and the pipeline sends.
- TPOT: one decode step for B sequences at the mean context P + ceil(O / 2) (a step's time
  is affine in the context, so the mean step is the step at the mean context): per layer the
  decode programs and collectives, plus the embedding and LM head of B rows. With pp stages
  the batch runs as pp micro-batches of B / pp and a step takes pp stage times.
- Throughput: a batch of B requests costs B prefills plus O decode steps, and yields B x O
  output tokens: tokens/s = B O / (B TTFT + O TPOT). Per chip: divided by tp x pp.
  USD per million output tokens: chips x price per chip-hour / 3600 / tokens/s x 1e6.

Memory per chip (`memory_per_chip`): the weights of one chip's share (its layers' q/k/v/o,
norms and FFN or experts + router, plus the embedding and LM head columns of its vocabulary
share), the KV cache of B sequences at P + O tokens (2 x local KV heads x head dim x bytes
per element x layers per stage per token), and the activations (the largest program's
inputs and outputs other than weights and cache).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from zhenwu.compiler.serving import programs as gen
from zhenwu.compiler.serving.comm import collective_seconds
from zhenwu.compiler.serving.model import DTYPE_BYTES, ModelConfig
from zhenwu.isa.errors import ZhenwuError


class ServeError(ZhenwuError):
    """A serving question that cannot be answered as asked (a model that does not fit, a
    parallel plan that does not divide the model)."""


@dataclass(frozen=True)
class Plan:
    """How the model is split: tp chips share each layer (tensor parallel, inside a node),
    pp stages hold consecutive layers (pipeline parallel, across nodes), and the experts are
    spread over ep of the tp chips (expert parallel; each expert's FFN split tp / ep ways)."""

    tp: int = 1
    pp: int = 1
    ep: int = 1
    chips_per_node: int = 8

    @property
    def chips(self) -> int:
        return self.tp * self.pp


@dataclass(frozen=True)
class Request:
    """The traffic: `batch` sequences, `prompt` tokens in, `output` tokens out each."""

    batch: int = 1
    prompt: int = 1024
    output: int = 256
    weight_dtype: str = "bf16"
    kv_dtype: str = "bf16"
    # how a decode step's programs are launched: "graph", one launch per program (its
    # kernels one persistent kernel, compiler/backend/merge.py), as serving engines replay a
    # captured decode step (CUDA graphs); "kernels", one launch per kernel. Prefill always
    # launches its kernels one by one: its long kernels hide their launches.
    decode_launch: str = "graph"

    @property
    def context(self) -> int:
        return self.prompt + self.output

    @property
    def decode_context(self) -> int:
        """The mean number of positions a decode step attends to (the new one included)."""
        return self.prompt + (self.output + 1) // 2


@dataclass(frozen=True)
class ProgramUse:
    """A generated program and how many times one prefill or one decode step runs it."""

    phase: str          # "prefill" or "decode"
    spec: gen.ProgramSpec
    count: int
    persistent: bool = False   # compiled as one persistent kernel (one launch)


@dataclass(frozen=True)
class AnalyticUse:
    """An analytic piece (a collective or the embedding gather) and its count per phase."""

    phase: str
    name: str
    seconds: float
    count: int


@dataclass
class Memory:
    weights: int
    kv_cache: int
    activations: int
    kv_per_token: int      # KV bytes per token per chip (all of the chip's layers)

    @property
    def total(self) -> int:
        return self.weights + self.kv_cache + self.activations

    def max_batch(self, context: int, hbm_bytes: int) -> int:
        free = hbm_bytes - self.weights - self.activations
        return max(0, free // (self.kv_per_token * context))


def default_plan(model: ModelConfig, chips: int, chips_per_node: int = 8) -> Plan:
    """TP over the chips of a node, PP across nodes, EP over the TP chips for MoE."""
    tp = min(chips, chips_per_node)
    if chips % tp:
        raise ServeError(f"--chips {chips}: not a multiple of the {chips_per_node} chips per "
                         f"node; give --tp and --pp")
    ep = tp if model.moe is not None and model.moe.experts % tp == 0 else 1
    return Plan(tp=tp, pp=chips // tp, ep=ep, chips_per_node=chips_per_node)


def shard_of(model: ModelConfig, plan: Plan) -> gen.Shard:
    """One chip's share of a layer under `plan`, or a ServeError naming what does not divide."""
    tp, ep = plan.tp, plan.ep
    problems = []
    if model.heads % tp:
        problems.append(f"{model.heads} query heads over tp={tp}")
    if model.kv_heads % tp and tp % model.kv_heads:
        problems.append(f"{model.kv_heads} KV heads over tp={tp}")
    if model.ffn is not None and model.ffn % tp:
        problems.append(f"FFN width {model.ffn} over tp={tp}")
    if model.layers % plan.pp:
        problems.append(f"{model.layers} layers over pp={plan.pp}")
    if model.moe is None and ep != 1:
        problems.append("expert parallelism for a dense model")
    if model.moe is not None:
        if tp % ep:
            problems.append(f"ep={ep} must divide tp={tp}")
        elif model.moe.experts % ep:
            problems.append(f"{model.moe.experts} experts over ep={ep}")
        elif model.moe.expert_ffn % (tp // ep):
            problems.append(f"expert FFN {model.moe.expert_ffn} over tp/ep={tp // ep}")
    if problems:
        raise ServeError(f"the plan tp={tp} pp={plan.pp} ep={ep} does not divide "
                         f"{model.name}: {'; '.join(problems)}")
    moe = model.moe
    return gen.Shard(
        heads=model.heads // tp,
        kv_heads=max(1, model.kv_heads // tp),   # tp > KV heads: each chip keeps one, copied
        ffn=None if model.ffn is None else model.ffn // tp,
        experts=None if moe is None else moe.experts // ep,
        expert_ffn=None if moe is None else moe.expert_ffn // (tp // ep),
        vocab=math.ceil(model.vocab / tp),
    )


def memory_per_chip(model: ModelConfig, plan: Plan, request: Request,
                    activations: int = 0) -> Memory:
    """Bytes of weights and KV cache one chip holds (the arithmetic of the module doc)."""
    shard = shard_of(model, plan)
    wb, kvb = DTYPE_BYTES[request.weight_dtype], DTYPE_BYTES[request.kv_dtype]
    d, hd = model.hidden, model.head_dim
    f32 = DTYPE_BYTES["f32"]
    per_layer = (d * (shard.heads + 2 * shard.kv_heads) * hd + shard.heads * hd * d) * wb
    per_layer += 2 * d * f32 + (2 * hd * f32 if model.qk_norm else 0)
    if model.moe is None:
        per_layer += 3 * d * shard.ffn * wb
    else:
        per_layer += d * model.moe.experts * f32 + shard.experts * 3 * d * shard.expert_ffn * wb
    layers = model.layers // plan.pp
    table = d * shard.vocab * wb        # the embedding's or the LM head's vocabulary share
    ends = 2 * table + d * f32 if plan.pp == 1 else table + d * f32
    kv_per_token = 2 * shard.kv_heads * hd * kvb * layers
    return Memory(weights=layers * per_layer + ends,
                  kv_cache=request.batch * request.context * kv_per_token,
                  activations=activations, kv_per_token=kv_per_token)


def layer_programs(model: ModelConfig, plan: Plan, request: Request) -> list[ProgramUse]:
    """The distinct programs of one prefill and one decode step, with their counts."""
    shard = shard_of(model, plan)
    wdt, kvdt = request.weight_dtype, request.kv_dtype
    layers = model.layers // plan.pp
    micro = math.ceil(request.batch / plan.pp)     # decode micro-batch of one stage
    prompt = request.prompt
    uses = []
    for step, count in ((gen.prefill(prompt), model.layers),
                        (gen.decode(micro, request.decode_context), layers * plan.pp)):
        head_rows, heads = (1, 1) if step.prefill else (micro, plan.pp)
        uses += [ProgramUse(step.phase, gen.qkv(model, shard, step, wdt, kvdt), count),
                 ProgramUse(step.phase, gen.layer_attention(model, shard, step, wdt, kvdt),
                            count)]
        if model.moe is not None:
            hit, per_expert = moe_routing(model, plan, shard, step.rows)
            uses += [ProgramUse(step.phase, gen.experts(model, shard, hit, per_expert, wdt),
                                count),
                     ProgramUse(step.phase, gen.moe_combine(model, step.rows), count)]
        uses.append(ProgramUse(step.phase, gen.lm_head(model, shard, head_rows, wdt), heads))
    if request.decode_launch == "graph":
        uses = [replace(use, persistent=True) if use.phase == "decode" else use
                for use in uses]
    return uses


def moe_routing(model: ModelConfig, plan: Plan, shard: gen.Shard, tokens: int) -> tuple[int, int]:
    """(experts hit per chip, tokens per hit expert) for `tokens` tokens under the plan."""
    return gen.experts_per_chip(model, shard, tokens)


def analytic_pieces(model: ModelConfig, plan: Plan, request: Request, machine
                    ) -> list[AnalyticUse]:
    """The collectives and the embedding gather of one prefill and one decode step."""
    tp, ep, pp = plan.tp, plan.ep, plan.pp
    d = model.hidden
    act = DTYPE_BYTES["bf16"]
    wb = DTYPE_BYTES[request.weight_dtype]
    across = tp > plan.chips_per_node
    micro = math.ceil(request.batch / pp)
    pieces = []
    for phase, rows, count in (("prefill", request.prompt, model.layers),
                               ("decode", micro, model.layers)):
        def add(name, kind, nbytes, chips, n=count, nodes=across, phase=phase):
            seconds = collective_seconds(kind, nbytes, chips, machine, across_nodes=nodes)
            if seconds:
                pieces.append(AnalyticUse(phase, name, seconds, n))

        add("all-reduce after attention (tp)", "all_reduce", rows * d * act, tp)
        if model.moe is None:
            add("all-reduce after FFN (tp)", "all_reduce", rows * d * act, tp)
        else:
            sent = rows * model.moe.top_k * d * act / tp
            add("all-to-all to the experts (ep)", "all_to_all", sent, ep)
            add("all-to-all from the experts (ep)", "all_to_all", sent, ep)
            add("all-gather of the tokens (tp)", "all_gather", rows * d * act, tp)
            if ep == 1:  # the permutation to the experts and back is a local copy
                moved = 2 * 2 * rows * model.moe.top_k * d * act / tp
                pieces.append(AnalyticUse(phase, "expert permutation (local copy)",
                                          moved / machine.hbm_bandwidth, count))
        if pp > 1:
            sends = pp - 1 if phase == "prefill" else pp
            add("send to the next stage (pp)", "send", rows * d * act, 2, sends, True)
        gather = rows * d * wb / machine.hbm_bandwidth + machine.seconds(machine.hbm_latency)
        pieces.append(AnalyticUse(phase, "embedding gather", gather,
                                  1 if phase == "prefill" else pp))
        add("all-gather of the logits' argmax (tp)", "all_gather",
            (1 if phase == "prefill" else rows) * 8 * tp, tp, 1 if phase == "prefill" else pp)
    return pieces


@dataclass
class Estimate:
    """The answer for one model, machine, plan and request."""

    model: ModelConfig
    machine: object
    plan: Plan
    request: Request
    price_per_chip_hour: float
    programs: list[tuple[ProgramUse, dict]]
    analytic: list[AnalyticUse]
    memory: Memory
    ttft_s: float = 0.0
    tpot_s: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def chips(self) -> int:
        return self.plan.chips

    @property
    def tokens_per_s(self) -> float:
        r = self.request
        total = r.batch * self.ttft_s + r.output * self.tpot_s
        return r.batch * r.output / total if total else 0.0

    @property
    def tokens_per_s_per_chip(self) -> float:
        return self.tokens_per_s / self.chips

    @property
    def usd_per_million_tokens(self) -> float:
        rate = self.tokens_per_s
        return self.chips * self.price_per_chip_hour / 3600 / rate * 1e6 if rate else math.inf

    def max_batch_at(self, context: int) -> int:
        return self.memory.max_batch(context, self.machine.hbm_bytes)

    def to_json(self) -> dict:
        r, plan = self.request, self.plan
        return {
            "model": self.model.name,
            "model_assumed": self.model.assumed,
            "machine": self.machine.name,
            "chips": self.chips,
            "plan": {"tp": plan.tp, "pp": plan.pp, "ep": plan.ep},
            "batch": r.batch, "prompt": r.prompt, "output": r.output,
            "weight_dtype": r.weight_dtype, "kv_dtype": r.kv_dtype,
            "decode_launch": r.decode_launch,
            "ttft_s": self.ttft_s,
            "tpot_s": self.tpot_s,
            "tokens_per_s": self.tokens_per_s,
            "tokens_per_s_per_chip": self.tokens_per_s_per_chip,
            "usd_per_million_tokens": self.usd_per_million_tokens,
            "price_per_chip_hour": self.price_per_chip_hour,
            "weights_bytes_per_chip": self.memory.weights,
            "kv_bytes_per_chip": self.memory.kv_cache,
            "activation_bytes_per_chip": self.memory.activations,
            "memory_bytes_per_chip": self.memory.total,
            "hbm_bytes_per_chip": self.machine.hbm_bytes,
            "max_batch_at_context": self.max_batch_at(r.context),
            "max_batch_at_32k": self.max_batch_at(32768),
            "programs": [
                {"name": use.spec.name, "phase": use.phase, "cycles": rec["cycles"],
                 "seconds": rec["seconds"], "count": use.count,
                 "roofline_cycles": rec["roofline_cycles"], "kernels": rec["kernels"],
                 "hbm_bytes": rec["hbm_read_bytes"] + rec["hbm_write_bytes"],
                 "launches": 1 if use.persistent else rec["kernels"],
                 "simulated": True}
                for use, rec in self.programs
            ],
            "analytic": [
                {"name": a.name, "phase": a.phase, "seconds": a.seconds, "count": a.count,
                 "simulated": False, "model": "analytic"}
                for a in self.analytic
            ],
            "notes": self.notes,
        }


def activation_bytes(records: list[tuple[ProgramUse, dict]]) -> int:
    """The largest program's inputs and outputs other than weights and cache."""
    best = 0
    for use, rec in records:
        skip = set(use.spec.weights) | set(use.spec.cache)
        live = sum(b for name, b in rec["param_bytes"].items() if name not in skip)
        best = max(best, live + sum(rec["output_bytes"]))
    return best


def compose(model: ModelConfig, machine, plan: Plan, request: Request,
            records: list[tuple[ProgramUse, dict]], analytic: list[AnalyticUse],
            price_per_chip_hour: float) -> Estimate:
    """TTFT and TPOT from the programs' simulated seconds and the analytic pieces."""
    phase_seconds = {"prefill": 0.0, "decode": 0.0}
    for use, rec in records:
        phase_seconds[use.phase] += rec["seconds"] * use.count
    for piece in analytic:
        phase_seconds[piece.phase] += piece.seconds * piece.count
    memory = memory_per_chip(model, plan, request, activation_bytes(records))
    estimate = Estimate(model, machine, plan, request, price_per_chip_hour, records, analytic,
                        memory, ttft_s=phase_seconds["prefill"], tpot_s=phase_seconds["decode"])
    if model.assumed:
        estimate.notes.append(f"{model.name} is an ASSUMED configuration: read its numbers "
                              f"as what-ifs")
    return estimate


def check_fits(model: ModelConfig, machine, plan: Plan, request: Request) -> Memory:
    """The memory per chip, or a ServeError saying what would fit."""
    memory = memory_per_chip(model, plan, request)
    if memory.total <= machine.hbm_bytes:
        return memory
    gb = 1e9
    notes = []
    most = memory.max_batch(request.context, machine.hbm_bytes)
    if most >= 1:
        notes.append(f"at most batch {most} fits at context {request.context} on "
                     f"{plan.chips} chip(s) with tp={plan.tp} pp={plan.pp}")
    for chips in (2 ** i for i in range(11)):
        if chips <= plan.chips:
            continue
        try:
            other = default_plan(model, chips, plan.chips_per_node)
            need = memory_per_chip(model, other, request)
        except ServeError:
            continue
        if need.total <= machine.hbm_bytes:
            notes.append(f"batch {request.batch} at context {request.context} fits on {chips} "
                         f"chips (tp={other.tp} pp={other.pp}): {need.total / gb:.1f} GB per chip")
            break
    raise ServeError(
        f"{model.name} does not fit {plan.chips} x {machine.name} at batch {request.batch}, "
        f"context {request.context}: weights {memory.weights / gb:.1f} GB + KV cache "
        f"{memory.kv_cache / gb:.1f} GB per chip > {machine.hbm_bytes / gb:.0f} GB of HBM",
        notes=notes)
