"""The `.zt` programs a serving estimate simulates: one chip's share of one layer.

Each function here writes an ordinary `.zt` program (text) for one phase of one decoder layer
as one chip runs it under tensor parallelism (its heads / TP, its FFN columns / TP, its experts
/ EP). The programs are compiled with the normal pipeline and simulated like any other.

Decode (one step for B sequences at context L), per layer:

- `decode_qkv`: RMSNorm, the q/k/v projections, qk-norm, rotary embedding at position L
  (the rotary cos/sin rows of that position are inputs, as a server reads them from its
  rope cache; `rope_tables` makes them).
  Its outputs `k_new`, `v_new` are the step's new KV-cache entries: writing them to HBM is the
  cache append (the same bytes a cache-slice update writes; the DSL has no in-place update,
  so the append is this program's output write, and the next program reads the cache with
  the new entries in place, as vLLM's reshape_and_cache then paged attention do).
- `decode_attn` (dense): attention of the new token over the L + 1 cached keys and values
  (GQA: each KV head serves `group` query heads), the output projection and residual, then
  RMSNorm and the SwiGLU FFN and residual.
- `decode_attn_router` (MoE): the attention as above, then RMSNorm and the router: softmax
  over the experts, the top-k (a rank count: kept when fewer than k experts are more
  likely) renormalised, as dense gates [B, E] that are zero for the experts not chosen.
- `experts`: the SwiGLU FFNs of the experts the tokens chose, each over its tokens
  (`[experts_hit, tokens_per_expert, hidden]`); only the hit experts' weights are inputs.
- `moe_combine`: the residual plus each token's k expert outputs weighted by its gates.

Between `decode_attn_router` and `experts` the tokens are permuted to their experts, and back
after: under expert parallelism this is the all-to-all (costed in comm.py); without it, a
local copy of the same rows (costed by its bytes in estimate.py). In a functional run the
host does it.

Prefill (one prompt of T tokens): `prefill_qkv` (as decode_qkv, at positions 0..T-1; its K
and V outputs are the prompt's cache) and `prefill_attn` (causal flash attention, the output
projection and the FFN) or `prefill_attn_router` + `experts` + `moe_combine` (MoE).
`lm_head`: the final norm and the vocabulary projection of the rows that need logits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from compiler.serving.model import ModelConfig


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


_ROPE = """
# rotary embedding of x [R, N, HD] with angles [R, HD]: x * cos + rotate_half(x) * sin
fn rope(x: f32[R, N, HD], cos_t: f32[R, HD], sin_t: f32[R, HD]) -> f32[R, N, HD] {
    rotated = concat([-x[:, :, HD // 2:], x[:, :, :HD // 2]], axis=-1)
    return x * cos_t[:, None, :] + rotated * sin_t[:, None, :]
}
"""


def rope_tables(head_dim: int, theta: float, positions) -> tuple:
    """The rotary tables [rows, head_dim] (cos, sin) for `positions` (numpy, f32): the rows
    of the rope cache a server keeps, which the q/k/v programs take as inputs."""
    import numpy as np

    inv_freq = theta ** -(np.arange(0, head_dim, 2, dtype=np.float32) / head_dim)
    angles = np.asarray(positions, np.float32)[:, None] * inv_freq[None, :]
    angles = np.concatenate([angles, angles], axis=-1)
    return np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)


def _qkv_body(model: ModelConfig, rows: str, wdt: str, kvdt: str) -> str:
    """Statements from the residual `x` [rows, D] to q f32 [rows, HL, HD] and k, v in the
    cache dtype [rows, KL, HD] (q and k normed per head and rotated). q is returned in the
    cache dtype too, so that the attention's products take both operands as they are (a
    dtype mismatch would convert the whole cache in a kernel of its own)."""
    eps = model.norm_eps
    q_norm = f"rmsnorm(q, q_norm, eps={eps!r})" if model.qk_norm else "q"
    k_norm = f"rmsnorm(k, k_norm, eps={eps!r})" if model.qk_norm else "k"
    return (
        f"    a = cast(rmsnorm(cast(x, f32), attn_norm, eps={eps!r}), {wdt})\n"
        f"    q = reshape(a @ wq, [{rows}, HL, HD])\n"
        f"    k = reshape(a @ wk, [{rows}, KL, HD])\n"
        f"    v = reshape(a @ wv, [{rows}, KL, HD])\n"
        f"    q = rope({q_norm}, cos_t, sin_t)\n"
        f"    k = cast(rope({k_norm}, cos_t, sin_t), {kvdt})\n"
        f"    v = cast(v, {kvdt})\n"
    )


def _qkv_params(model: ModelConfig, rows: str, wdt: str) -> tuple[str, tuple[str, ...]]:
    params = (f"x: bf16[{rows}, D], cos_t: f32[{rows}, HD], sin_t: f32[{rows}, HD], "
              f"attn_norm: f32[D], wq: {wdt}[D, HL * HD], "
              f"wk: {wdt}[D, KL * HD], wv: {wdt}[D, KL * HD]")
    weights = ("attn_norm", "wq", "wk", "wv")
    if model.qk_norm:
        params += ", q_norm: f32[HD], k_norm: f32[HD]"
        weights += ("q_norm", "k_norm")
    return params, weights


def _ffn_body(model: ModelConfig, wdt: str) -> str:
    """Statements from `h` f32 [rows, D] to `out` bf16: RMSNorm, SwiGLU, residual."""
    return (
        f"    m = cast(rmsnorm(h, mlp_norm, eps={model.norm_eps!r}), {wdt})\n"
        f"    out = cast(h + (silu(m @ w_gate) * (m @ w_up)) @ w_down, bf16)\n"
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
        "    p = softmax(m32 @ w_router, axis=-1)\n"
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
        return (f"mlp_norm: f32[D], w_gate: {wdt}[D, F], w_up: {wdt}[D, F], "
                f"w_down: {wdt}[F, D]"), ("mlp_norm", "w_gate", "w_up", "w_down")
    # the router stays in f32 (as Qwen3's reference code computes it): bf16 logits would
    # flip near-tied top-k choices
    return "mlp_norm: f32[D], w_router: f32[D, E]", ("mlp_norm", "w_router")


def _tail(model: ModelConfig, wdt: str) -> tuple[str, str, str]:
    """(result types, body, return) after the attention's residual `h`."""
    if model.moe is None:
        return "bf16[R, D]", _ffn_body(model, wdt), "    return out\n"
    return ("(bf16[R, D], bf16[R, D], f32[R, E])", _router_body(model, wdt),
            "    return cast(h, bf16), m, gates\n")


def decode_qkv(model: ModelConfig, shard: Shard, batch: int, position: int,
               wdt: str, kvdt: str) -> ProgramSpec:
    """Step 1 of a decode layer: q, and the new K/V entries at `position` (the rotary
    tables `cos_t`, `sin_t` are that position's rows of the rope cache)."""
    params, weights = _qkv_params(model, "B", wdt)
    source = (
        f"# decode step, {model.name}: q/k/v of B sequences at one position each\n"
        + _header(model, shard, {"B": batch}) + _ROPE
        + f"fn main({params}) -> ({kvdt}[B, KL, G, HD], {kvdt}[B, KL, HD], {kvdt}[B, KL, HD]) {{\n"
        + _qkv_body(model, "B", wdt, kvdt)
        + f"    return cast(reshape(q, [B, KL, G, HD]), {kvdt}), k, v\n}}\n"
    )
    return ProgramSpec("decode_qkv", source, weights)


def decode_attn(model: ModelConfig, shard: Shard, batch: int, context: int,
                wdt: str, kvdt: str) -> ProgramSpec:
    """Step 2 of a decode layer: attention over the `context` cached entries (the new one
    included), the output projection, and the FFN (dense) or the router (MoE)."""
    params, weights = _tail_params(model, wdt)
    results, body, ret = _tail(model, wdt)
    scale = 1.0 / math.sqrt(model.head_dim)
    source = (
        f"# decode step, {model.name}: attention over {context} cached positions, then "
        f"{'the FFN' if model.moe is None else 'the router'}\n"
        + _header(model, shard, {"B": batch, "L": context, "R": batch,
                                 **_shard_consts(model, shard)})
        + f"fn main(x: bf16[B, D], q: {kvdt}[B, KL, G, HD], k_cache: {kvdt}[B, KL, L, HD], "
          f"v_cache: {kvdt}[B, KL, L, HD], wo: {wdt}[HL * HD, D], {params}) -> {results} {{\n"
          f"    scores = einsum(\"bkgd,bktd->bkgt\", q, k_cache) * {scale!r}\n"
          f"    p = softmax(scores, axis=-1)\n"
          f"    attn = cast(einsum(\"bkgt,bktd->bkgd\", p, v_cache), {wdt})\n"
          f"    h = cast(x, f32) + reshape(attn, [B, HL * HD]) @ wo\n"
        + body + ret + "}\n"
    )
    return ProgramSpec("decode_attn" if model.moe is None else "decode_attn_router", source,
                       ("wo",) + weights, ("k_cache", "v_cache"))


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


def prefill_qkv(model: ModelConfig, shard: Shard, tokens: int, wdt: str,
                kvdt: str) -> ProgramSpec:
    """Step 1 of a prefill layer: q, and the prompt's K/V (the cache) at positions 0..T-1."""
    params, weights = _qkv_params(model, "T", wdt)
    source = (
        f"# prefill, {model.name}: q/k/v of a prompt of T tokens\n"
        + _header(model, shard, {"T": tokens}) + _ROPE
        + f"fn main({params}) -> ({kvdt}[T, KL, G, HD], {kvdt}[T, KL, HD], {kvdt}[T, KL, HD]) {{\n"
        + _qkv_body(model, "T", wdt, kvdt)
        + f"    return cast(reshape(q, [T, KL, G, HD]), {kvdt}), k, v\n}}\n"
    )
    return ProgramSpec("prefill_qkv", source, weights)


def prefill_attn(model: ModelConfig, shard: Shard, tokens: int, wdt: str,
                 kvdt: str) -> ProgramSpec:
    """Step 2 of a prefill layer: causal attention over the prompt, the output projection,
    and the FFN (dense) or the router (MoE)."""
    params, weights = _tail_params(model, wdt)
    results, body, ret = _tail(model, wdt)
    scale = 1.0 / math.sqrt(model.head_dim)
    source = (
        f"# prefill, {model.name}: causal attention over T tokens, then "
        f"{'the FFN' if model.moe is None else 'the router'}\n"
        + _header(model, shard, {"T": tokens, "R": tokens, **_shard_consts(model, shard)})
        + f"fn main(x: bf16[T, D], q: {kvdt}[T, KL, G, HD], k: {kvdt}[T, KL, HD], "
          f"v: {kvdt}[T, KL, HD], wo: {wdt}[HL * HD, D], {params}) -> {results} {{\n"
          f"    scores = einsum(\"skgd,tkd->kgst\", q, k) * {scale!r}\n"
          f"    causal = arange(T)[:, None] >= arange(T)[None, :]\n"
          f"    p = softmax(where(causal, scores, -inf), axis=-1)\n"
          f"    attn = cast(einsum(\"kgst,tkd->skgd\", p, v), {wdt})\n"
          f"    h = cast(x, f32) + reshape(attn, [T, HL * HD]) @ wo\n"
        + body + ret + "}\n"
    )
    return ProgramSpec("prefill_attn" if model.moe is None else "prefill_attn_router", source,
                       ("wo",) + weights)


def experts(model: ModelConfig, shard: Shard, hit: int, per_expert: int,
            wdt: str) -> ProgramSpec:
    """The SwiGLU FFNs of `hit` experts, `per_expert` tokens each: only their weights."""
    source = (
        f"# {model.name}: {hit} experts' SwiGLU FFNs, {per_expert} tokens each\n"
        f"const D = {model.hidden}\nconst EH = {hit}\nconst C = {per_expert}\n"
        f"const FE = {shard.expert_ffn}\n"
        f"fn main(xe: bf16[EH, C, D], w_gate: {wdt}[EH, D, FE], w_up: {wdt}[EH, D, FE], "
        f"w_down: {wdt}[EH, FE, D]) -> bf16[EH, C, D] {{\n"
        f"    xw = cast(xe, {wdt})\n"
        f"    return cast((silu(xw @ w_gate) * (xw @ w_up)) @ w_down, bf16)\n}}\n"
    )
    return ProgramSpec("experts", source, ("w_gate", "w_up", "w_down"))


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
        f"fn main(x: bf16[R, D], final_norm: f32[D], w_lm: {wdt}[D, V]) -> bf16[R, V] {{\n"
        f"    return cast(cast(rmsnorm(x, final_norm, eps={model.norm_eps!r}), {wdt}) @ w_lm, "
        f"bf16)\n}}\n"
    )
    return ProgramSpec("lm_head", source, ("final_norm", "w_lm"))
