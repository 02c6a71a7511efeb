"""The `.zt` programs a serving estimate simulates: one chip's share of one layer.

Each function here writes an ordinary `.zt` program (text) for one phase of one decoder layer
as one chip runs it under tensor parallelism (its heads / TP, its FFN columns / TP, its experts
/ EP). The programs are compiled with the normal pipeline and simulated like any other.

Every weight matrix is stored [out features, in features], as checkpoints store a linear
layer (PyTorch's `nn.Linear.weight`), and the products read it through `transpose`: a tile
of it is then rows contiguous along the reduction, whole DRAM rows, which is what keeps a
decode step's matrix-vector products near the HBM bandwidth (an [in, out] layout reads each
weight row in 64-byte pieces, half a DRAM row or less, at the scattered-access efficiency).

One builder serves both phases: a `Step` is a prompt's prefill (T tokens attending causally
to each other) or a decode step (B sequences, one new token each, attending to L cached
positions). Per layer:

- `qkv` (named `prefill_qkv` / `decode_qkv`): RMSNorm, the fused q/k/v projection, qk-norm,
  the rotary embedding (the rotary cos/sin rows of the rows' positions are inputs, as a
  server reads them from its rope cache; `rope_tables` makes them).
  Its K and V outputs are the new KV-cache entries: writing them to HBM is the cache append
  (the same bytes a cache-slice update writes; the DSL has no in-place update, so the append
  is this program's output write, and the next program reads the cache with the new entries
  in place, as vLLM's reshape_and_cache then paged attention do). In prefill they are the
  prompt's cache.
- `layer_attention` (named `prefill_attn` / `decode_attn`, dense): the attention (GQA: each
  KV head serves `group` query heads; causal flash attention in prefill, over the cache in
  decode), the output projection and residual, then RMSNorm, the SwiGLU FFN (gate and up
  projections fused into one product) and residual.
- `*_attn_router` (MoE): the attention as above, then RMSNorm and the router: softmax
  over the experts, the top-k (a rank count: kept when fewer than k experts are more
  likely) renormalised, as dense gates [R, E] that are zero for the experts not chosen.
- `experts`: the SwiGLU FFNs of the experts the tokens chose, each over its tokens
  (`[experts_hit, tokens_per_expert, hidden]`); only the hit experts' weights are inputs.
- `moe_combine`: the residual plus each token's k expert outputs weighted by its gates.

Between `*_attn_router` and `experts` the tokens are permuted to their experts, and back
after: under expert parallelism this is the all-to-all (costed in comm.py); without it, a
local copy of the same rows (costed by its bytes in estimate.py). In a functional run the
host does it.

`lm_head`: the final norm and the vocabulary projection of the rows that need logits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from zhenwu.compiler.serving.model import ModelConfig


@dataclass(frozen=True)
class Shard:
    """One chip's share of a layer: query heads, KV heads, FFN width, experts and expert FFN
    width, vocabulary columns."""

    heads: int
    kv_heads: int
    ffn: int | None
    experts: int | None
    expert_ffn: int | None
    vocab: int

    @property
    def group(self) -> int:
        return self.heads // self.kv_heads


@dataclass(frozen=True)
class ProgramSpec:
    """A generated program: its name, source, and which parameters are weights (resident in
    HBM) and which are the KV cache."""

    name: str
    source: str
    weights: tuple[str, ...] = ()
    cache: tuple[str, ...] = ()


def expected_experts_hit(experts: int, top_k: int, tokens: int) -> float:
    """The expected number of distinct experts `tokens` tokens choose, each picking `top_k`
    of `experts` uniformly: E * (1 - (1 - k/E)^N)."""
    return experts * (1.0 - (1.0 - top_k / experts) ** tokens)


def experts_per_chip(model: ModelConfig, shard: Shard, tokens: int) -> tuple[int, int]:
    """(experts hit on one chip, tokens per hit expert) for `tokens` routed tokens, with the
    hits spread evenly over the expert-parallel chips and the token-expert pairs over the
    hit experts (balanced routing)."""
    moe = model.moe
    ep = moe.experts // shard.experts
    hit = expected_experts_hit(moe.experts, moe.top_k, tokens)
    per_chip = min(shard.experts, max(1, math.ceil(hit / ep - 1e-9)))
    per_expert = max(1, math.ceil(tokens * moe.top_k / hit - 1e-9))
    return per_chip, per_expert


def _header(model: ModelConfig, shard: Shard, extra: dict[str, int]) -> str:
    consts = {"D": model.hidden, "HL": shard.heads, "KL": shard.kv_heads, "G": shard.group,
              "HD": model.head_dim, **extra}
    return "".join(f"const {name} = {value}\n" for name, value in consts.items())


@dataclass(frozen=True)
class Step:
    """What a layer program computes: one prompt's prefill or one decode step.

    `rows` are the tokens the program projects: a prompt's T tokens (prefill) or one new
    token for each of B sequences (decode). `context` is how many positions each row's
    attention reads: the prompt itself, causally (prefill), or the cache with the new entry in
    place (decode)."""

    phase: str        # "prefill" or "decode"
    rows: int
    context: int

    @property
    def prefill(self) -> bool:
        return self.phase == "prefill"


def prefill(tokens: int) -> Step:
    """A prompt of `tokens` tokens, attending causally to itself."""
    return Step("prefill", tokens, tokens)


def decode(batch: int, context: int) -> Step:
    """A decode step of `batch` sequences, each attending to `context` cached positions (the
    new one included)."""
    return Step("decode", batch, context)


# The rotary embedding: x * cos + rotate_half(x) * sin, with the sign of rotate_half folded into
# the table (`rope_tables` gives sin with its first half negated, as a server's rope cache can
# store it), so that rotate_half is the swap of the two halves and no kernel negates.
_ROPE = """
fn rope(x: {dt}[R, N, HD], cos_t: f32[R, HD], sin_t: f32[R, HD]) -> f32[R, N, HD] {{
    swapped = concat([x[:, :, HD // 2:], x[:, :, :HD // 2]], axis=-1)
    return x * cos_t[:, None, :] + swapped * sin_t[:, None, :]
}}
"""


def rope_tables(head_dim: int, theta: float, positions) -> tuple:
    """The rotary tables [rows, head_dim] (cos, signed sin) for `positions` (numpy, f32): the
    rows of the rope cache a server keeps, which the q/k/v programs take as inputs. The sin
    table's first half is negated (rotate_half's sign), so x * cos + swap_halves(x) * sin is
    the rotation."""
    import numpy as np

    inv_freq = theta ** -(np.arange(0, head_dim, 2, dtype=np.float32) / head_dim)
    angles = np.asarray(positions, np.float32)[:, None] * inv_freq[None, :]
    sin = np.sin(angles)
    angles = np.concatenate([angles, angles], axis=-1)
    return (np.cos(angles).astype(np.float32),
            np.concatenate([-sin, sin], axis=-1).astype(np.float32))


def qkv(model: ModelConfig, shard: Shard, step: Step, wdt: str, kvdt: str) -> ProgramSpec:
    """Step 1 of a layer: RMSNorm, the fused q/k/v projection (one product with the three
    weights side by side, as vLLM's qkv_proj), qk-norm and the rotary embedding of the step's
    rows (the tables `cos_t`, `sin_t` are those positions' rows of the rope cache).

    Outputs q [R, KL, G, HD] and the new K and V entries [R, KL, HD], all in the cache dtype
    (the attention then takes both operands as they are; a dtype mismatch would convert the
    whole cache in a kernel of its own). Writing k and v is the cache append. The norms are
    computed in f32 and their results rounded to the cache dtype before the rotation, as
    Qwen3's reference code does (RMSNorm returns its input's dtype)."""
    eps = model.norm_eps
    q_norm = f"rmsnorm(q, q_norm, eps={eps!r})" if model.qk_norm else "q"
    k_norm = f"rmsnorm(k, k_norm, eps={eps!r})" if model.qk_norm else "k"
    params = ("x: bf16[R, D], cos_t: f32[R, HD], sin_t: f32[R, HD], attn_norm: f32[D], "
              f"w_qkv: {wdt}[(HL + 2 * KL) * HD, D]")
    weights = ("attn_norm", "w_qkv")
    if model.qk_norm:
        params += ", q_norm: f32[HD], k_norm: f32[HD]"
        weights += ("q_norm", "k_norm")
    what = ("a prompt of R tokens" if step.prefill
            else "R sequences at one new position each")
    source = (
        f"# {step.phase}, {model.name}: q/k/v of {what}\n"
        + _header(model, shard, {"R": step.rows}) + _ROPE.format(dt=kvdt)
        + f"fn main({params}) -> ({kvdt}[R, KL, G, HD], {kvdt}[R, KL, HD], "
          f"{kvdt}[R, KL, HD]) {{\n"
          f"    a = cast(rmsnorm(cast(x, f32), attn_norm, eps={eps!r}), {wdt})\n"
          f"    qkv = a @ transpose(w_qkv)\n"
          f"    q = reshape(qkv[:, :HL * HD], [R, HL, HD])\n"
          f"    k = reshape(qkv[:, HL * HD:(HL + KL) * HD], [R, KL, HD])\n"
          f"    v = reshape(qkv[:, (HL + KL) * HD:], [R, KL, HD])\n"
          f"    q = cast(rope(cast({q_norm}, {kvdt}), cos_t, sin_t), {kvdt})\n"
          f"    k = cast(rope(cast({k_norm}, {kvdt}), cos_t, sin_t), {kvdt})\n"
          f"    return reshape(q, [R, KL, G, HD]), k, cast(v, {kvdt})\n}}\n"
    )
    return ProgramSpec(f"{step.phase}_qkv", source, weights)


def _attention(step: Step, scale: float, wdt: str) -> str:
    """Statements from q [R, KL, G, HD] and the keys and values to `attn` [R, KL, G, HD]."""
    if step.prefill:   # the prompt's own k, v [R, KL, HD], causally
        return (f"    scores = einsum(\"skgd,tkd->kgst\", q, k) * {scale!r}\n"
                f"    causal = arange(R)[:, None] >= arange(R)[None, :]\n"
                f"    p = softmax(where(causal, scores, -inf), axis=-1)\n"
                f"    attn = cast(einsum(\"kgst,tkd->skgd\", p, v), {wdt})\n")
    return (f"    scores = einsum(\"bkgd,bktd->bkgt\", q, k_cache) * {scale!r}\n"
            f"    p = softmax(scores, axis=-1)\n"
            f"    attn = cast(einsum(\"bkgt,bktd->bkgd\", p, v_cache), {wdt})\n")


def _ffn_body(model: ModelConfig, wdt: str) -> str:
    """Statements from `h` f32 [rows, D] to `out` bf16: RMSNorm, SwiGLU with the gate and up
    projections fused into one product (the two weights side by side, as vLLM's
    gate_up_proj), residual."""
    return (
        f"    m = cast(rmsnorm(h, mlp_norm, eps={model.norm_eps!r}), {wdt})\n"
        f"    gu = m @ transpose(w_gate_up)\n"
        f"    out = cast(h + (silu(gu[:, :F]) * gu[:, F:]) @ transpose(w_down), bf16)\n"
    )


def _router_body(model: ModelConfig, wdt: str) -> str:
    """Statements from `h` f32 [rows, D] to the normed `m` and the router's gates [rows, E]:
    the softmax over the experts kept for the top k and renormalised, zero elsewhere.

    The top-k is a rank count: an expert is kept when fewer than k experts have a larger
    probability (three kernels; k rounds of argmax and mask would take 2k). It keeps more
    than k only on an exact tie at the k-th place."""
    return (
        f"    m32 = rmsnorm(h, mlp_norm, eps={model.norm_eps!r})\n"
        "    m = cast(m32, bf16)\n"
        "    p = softmax(m32 @ transpose(w_router), axis=-1)\n"
        "    rank = sum(cast(p[:, None, :] > p[:, :, None], f32), axis=-1)\n"
        "    top = where(rank < K, p, 0.0)\n"
        "    gates = top / sum(top, axis=-1, keepdims=true)\n"
    )


def _shard_consts(model: ModelConfig, shard: Shard) -> dict[str, int]:
    if model.moe is None:
        return {"F": shard.ffn}
    return {"E": model.moe.experts, "K": model.moe.top_k}


def _tail_params(model: ModelConfig, wdt: str) -> tuple[str, tuple[str, ...]]:
    if model.moe is None:
        return (f"mlp_norm: f32[D], w_gate_up: {wdt}[2 * F, D], w_down: {wdt}[D, F]",
                ("mlp_norm", "w_gate_up", "w_down"))
    # the router stays in f32 (as Qwen3's reference code computes it): bf16 logits would
    # flip near-tied top-k choices
    return "mlp_norm: f32[D], w_router: f32[E, D]", ("mlp_norm", "w_router")


def _tail(model: ModelConfig, wdt: str) -> tuple[str, str, str]:
    """(result types, body, return) after the attention's residual `h`."""
    if model.moe is None:
        return "bf16[R, D]", _ffn_body(model, wdt), "    return out\n"
    return ("(bf16[R, D], bf16[R, D], f32[R, E])", _router_body(model, wdt),
            "    return cast(h, bf16), m, gates\n")


def layer_attention(model: ModelConfig, shard: Shard, step: Step, wdt: str,
                    kvdt: str) -> ProgramSpec:
    """Step 2 of a layer: the attention of the step's rows (causal over the prompt, or over
    the cache with the new entries in place), the output projection and residual, then the
    FFN (dense) or the router (MoE)."""
    params, weights = _tail_params(model, wdt)
    results, body, ret = _tail(model, wdt)
    scale = 1.0 / math.sqrt(model.head_dim)
    tail = "the FFN" if model.moe is None else "the router"
    if step.prefill:
        what = f"causal attention over a prompt of {step.rows} tokens"
        keys = f"k: {kvdt}[R, KL, HD], v: {kvdt}[R, KL, HD]"
        consts, cache = {"R": step.rows}, ()
    else:
        what = f"attention over {step.context} cached positions"
        keys = f"k_cache: {kvdt}[R, KL, L, HD], v_cache: {kvdt}[R, KL, L, HD]"
        consts, cache = {"R": step.rows, "L": step.context}, ("k_cache", "v_cache")
    source = (
        f"# {step.phase}, {model.name}: {what}, then {tail}\n"
        + _header(model, shard, {**consts, **_shard_consts(model, shard)})
        + f"fn main(x: bf16[R, D], q: {kvdt}[R, KL, G, HD], {keys}, wo: {wdt}[D, HL * HD], "
          f"{params}) -> {results} {{\n"
        + _attention(step, scale, wdt)
        + "    h = cast(x, f32) + reshape(attn, [R, HL * HD]) @ transpose(wo)\n"
        + body + ret + "}\n"
    )
    name = f"{step.phase}_attn" + ("" if model.moe is None else "_router")
    return ProgramSpec(name, source, ("wo",) + weights, cache)


def decode_attention(model: ModelConfig, shard: Shard, batch: int, context: int,
                     kvdt: str) -> ProgramSpec:
    """The KV-cache attention of a decode step alone (what `zhenwu bench serving` holds
    against the bytes of the cache it reads)."""
    scale = 1.0 / math.sqrt(model.head_dim)
    source = (
        f"# decode step, {model.name}: attention of B queries over {context} cached positions\n"
        + _header(model, shard, {"B": batch, "L": context})
        + f"fn main(q: {kvdt}[B, KL, G, HD], k_cache: {kvdt}[B, KL, L, HD], "
          f"v_cache: {kvdt}[B, KL, L, HD]) -> bf16[B, KL, G, HD] {{\n"
          f"    p = softmax(einsum(\"bkgd,bktd->bkgt\", q, k_cache) * {scale!r}, axis=-1)\n"
          f"    return cast(einsum(\"bkgt,bktd->bkgd\", p, v_cache), bf16)\n}}\n"
    )
    return ProgramSpec("decode_attention", source, (), ("k_cache", "v_cache"))


def experts(model: ModelConfig, shard: Shard, hit: int, per_expert: int,
            wdt: str) -> ProgramSpec:
    """The SwiGLU FFNs of `hit` experts, `per_expert` tokens each: only their weights (each
    expert's gate and up projections side by side, one product, as vLLM's fused MoE w13)."""
    source = (
        f"# {model.name}: {hit} experts' SwiGLU FFNs, {per_expert} tokens each\n"
        f"const D = {model.hidden}\nconst EH = {hit}\nconst C = {per_expert}\n"
        f"const FE = {shard.expert_ffn}\n"
        f"fn main(xe: bf16[EH, C, D], w_gate_up: {wdt}[EH, 2 * FE, D], "
        f"w_down: {wdt}[EH, D, FE]) -> bf16[EH, C, D] {{\n"
        f"    gu = cast(xe, {wdt}) @ transpose(w_gate_up, [0, 2, 1])\n"
        f"    return cast((silu(gu[:, :, :FE]) * gu[:, :, FE:]) @ transpose(w_down, [0, 2, 1]), "
        f"bf16)\n}}\n"
    )
    return ProgramSpec("experts", source, ("w_gate_up", "w_down"))


def moe_combine(model: ModelConfig, rows: int) -> ProgramSpec:
    """The residual plus each row's k expert outputs weighted by its gates."""
    source = (
        f"# {model.name}: the residual plus the gated outputs of each token's experts\n"
        f"const R = {rows}\nconst D = {model.hidden}\nconst K = {model.moe.top_k}\n"
        f"fn main(h: bf16[R, D], gates: f32[R, K], ye: bf16[R, K, D]) -> bf16[R, D] {{\n"
        f"    y = sum(gates[:, :, None] * cast(ye, f32), axis=1)\n"
        f"    return cast(cast(h, f32) + y, bf16)\n}}\n"
    )
    return ProgramSpec("moe_combine", source)


def lm_head(model: ModelConfig, shard: Shard, rows: int, wdt: str) -> ProgramSpec:
    """The final RMSNorm and this chip's vocabulary columns of the logits, for `rows` rows."""
    source = (
        f"# {model.name}: final norm and LM head ({shard.vocab} vocabulary columns)\n"
        f"const R = {rows}\nconst D = {model.hidden}\nconst V = {shard.vocab}\n"
        f"fn main(x: bf16[R, D], final_norm: f32[D], w_lm: {wdt}[V, D]) -> bf16[R, V] {{\n"
        f"    return cast(cast(rmsnorm(x, final_norm, eps={model.norm_eps!r}), {wdt}) "
        f"@ transpose(w_lm), bf16)\n}}\n"
    )
    return ProgramSpec("lm_head", source, ("final_norm", "w_lm"))
