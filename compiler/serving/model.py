"""Model descriptions for `zhenwu serve`: a Qwen3-style decoder as data (a TOML file).

A model file names the decoder's sizes; `load_model` validates it into a frozen `ModelConfig`.
Every mistake (malformed TOML, a missing or unknown key, a wrong type, sizes that do not divide)
is a `ModelError` pointing at the file, line and key. Example (samples/models/qwen3-32b.toml):

    name = "Qwen3-32B"
    layers = 64
    hidden = 5120
    heads = 64
    kv_heads = 8
    head_dim = 128
    ffn = 25600            # dense SwiGLU width (omit for a mixture of experts)
    vocab = 151936
    norm = "rmsnorm"
    norm_eps = 1e-6
    rope_theta = 1000000.0
    qk_norm = true
    weight_dtype = "bf16"
    kv_dtype = "bf16"
    # assumed = true       # a configuration that is not public (printed with every estimate)

    [moe]                  # a mixture of experts in every layer instead of `ffn`
    experts = 128
    top_k = 8
    expert_ffn = 1536
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from zhenwu.isa.errors import SourceSpan, ZhenwuError
from zhenwu.isa.tomlfile import locate, read_toml

MODELS_DIR = Path(__file__).resolve().parents[2] / "samples" / "models"
WEIGHT_DTYPES = ("bf16", "f16", "fp8")
# an fp8 cache is not offered: the attention would convert it to bf16 in a kernel of its
# own (no fused dequantizing load yet), which reads and writes more than a bf16 cache
KV_DTYPES = ("bf16", "f16")
DTYPE_BYTES = {"bf16": 2, "f16": 2, "fp8": 1, "f32": 4}


class ModelError(ZhenwuError):
    """A model description file that is missing, malformed or inconsistent."""


@dataclass(frozen=True)
class MoeConfig:
    """A mixture of experts: `experts` SwiGLU FFNs of width `expert_ffn`, `top_k` per token."""

    experts: int
    top_k: int
    expert_ffn: int


@dataclass(frozen=True)
class ModelConfig:
    """One decoder-only transformer in the Qwen3 layout (RMSNorm, RoPE, GQA with qk-norm,
    SwiGLU or a mixture of SwiGLU experts, untied embeddings)."""

    name: str
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    ffn: int | None
    vocab: int
    norm_eps: float
    rope_theta: float
    qk_norm: bool
    weight_dtype: str
    kv_dtype: str
    moe: MoeConfig | None = None
    assumed: bool = False
    source: str = ""

    @property
    def group(self) -> int:
        """Query heads per key/value head."""
        return self.heads // self.kv_heads

    def parameters(self) -> int:
        """The number of weights (norm scales included): the model's size as published."""
        d, hd = self.hidden, self.head_dim
        attn = d * (self.heads + 2 * self.kv_heads) * hd + self.heads * hd * d
        norms = 2 * d + (2 * hd if self.qk_norm else 0)
        if self.moe is None:
            ffn = 3 * d * self.ffn
        else:
            ffn = d * self.moe.experts + self.moe.experts * 3 * d * self.moe.expert_ffn
        return self.layers * (attn + norms + ffn) + 2 * self.vocab * d + d

    def active_parameters(self) -> int:
        """The weights one token reads (top-k experts only)."""
        if self.moe is None:
            return self.parameters()
        idle = self.moe.experts - self.moe.top_k
        return self.parameters() - self.layers * idle * 3 * self.hidden * self.moe.expert_ffn


# key -> (python type, required); [moe] keys separately
_KEYS: dict[str, tuple[type, bool]] = {
    "name": (str, True), "layers": (int, True), "hidden": (int, True), "heads": (int, True),
    "kv_heads": (int, True), "head_dim": (int, True), "ffn": (int, False),
    "vocab": (int, True), "norm": (str, False), "norm_eps": (float, False),
    "rope_theta": (float, False), "qk_norm": (bool, False), "weight_dtype": (str, False),
    "kv_dtype": (str, False), "assumed": (bool, False), "moe": (dict, False),
    "rope": (str, False),
}
_MOE_KEYS = ("experts", "top_k", "expert_ffn")


def load_model(spec: str | Path) -> ModelConfig:
    """A model file by path, or by the name of a file in samples/models/ (`qwen3-32b`)."""
    path = Path(spec)
    if not path.is_file():
        sample = MODELS_DIR / f"{spec}.toml"
        if path.suffix != ".toml" and sample.is_file():
            path = sample
        else:
            names = ", ".join(p.stem for p in sorted(MODELS_DIR.glob("*.toml")))
            raise ModelError(f"model file '{spec}' not found",
                             notes=[f"sample models: {names}"])
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise ModelError(f"cannot read model file '{path}': {err}") from None
    return parse_model(text, str(path))


def parse_model(text: str, filename: str = "<model>") -> ModelConfig:
    """Validate the TOML text of a model description into a `ModelConfig`."""
    data = read_toml(text, filename, ModelError)

    def where(key: str | None, section: str | None = None) -> SourceSpan:
        return _locate(text, filename, section, key)

    for key in data:
        if key not in _KEYS:
            raise ModelError(f"unknown key '{key}' in model file {filename}", where(key),
                             notes=[f"keys: {', '.join(sorted(_KEYS))}"])
    values: dict[str, object] = {}
    for key, (kind, required) in _KEYS.items():
        if key not in data:
            if required:
                raise ModelError(f"missing key '{key}' in model file {filename}", where(None))
            continue
        value = data[key]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise ModelError(f"'{key}' must be {_KIND_NAMES[kind]} in {filename}", where(key))
        if kind in (int, float) and value <= 0:
            raise ModelError(f"'{key}' must be positive, got {value} in {filename}", where(key))
        values[key] = value
    for key, allowed in (("norm", ("rmsnorm",)), ("rope", ("rope",)),
                         ("weight_dtype", WEIGHT_DTYPES), ("kv_dtype", KV_DTYPES)):
        if key in values and values[key] not in allowed:
            raise ModelError(f"'{key}' = '{values[key]}' is not supported in {filename}",
                             where(key), notes=[f"supported: {', '.join(allowed)}"])
    moe = None
    if "moe" in values:
        table = values.pop("moe")
        for key in table:
            if key not in _MOE_KEYS:
                raise ModelError(f"unknown key 'moe.{key}' in model file {filename}",
                                 where(key, "moe"), notes=[f"[moe] takes: {', '.join(_MOE_KEYS)}"])
        for key in _MOE_KEYS:
            if key not in table:
                raise ModelError(f"missing key 'moe.{key}' in model file {filename}",
                                 where(None, "moe"))
            value = table[key]
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ModelError(f"'moe.{key}' must be a positive integer in {filename}",
                                 where(key, "moe"))
        moe = MoeConfig(table["experts"], table["top_k"], table["expert_ffn"])
        if moe.top_k > moe.experts:
            raise ModelError(f"'moe.top_k' ({moe.top_k}) exceeds 'moe.experts' "
                             f"({moe.experts}) in {filename}", where("top_k", "moe"))
        if "ffn" in values:
            raise ModelError(f"a model with [moe] takes no 'ffn' in {filename}", where("ffn"))
    elif "ffn" not in values:
        raise ModelError(f"missing key 'ffn' (or a [moe] table) in model file {filename}",
                         where(None))
    if values["heads"] % values["kv_heads"]:
        raise ModelError(f"'heads' ({values['heads']}) must be a multiple of 'kv_heads' "
                         f"({values['kv_heads']}) in {filename}", where("kv_heads"))
    if values["head_dim"] % 2:
        raise ModelError(f"'head_dim' must be even (rotary halves) in {filename}",
                         where("head_dim"))
    values.pop("norm", None)
    values.pop("rope", None)
    return ModelConfig(
        name=values["name"], layers=values["layers"], hidden=values["hidden"],
        heads=values["heads"], kv_heads=values["kv_heads"], head_dim=values["head_dim"],
        ffn=values.get("ffn"), vocab=values["vocab"], norm_eps=values.get("norm_eps", 1e-6),
        rope_theta=values.get("rope_theta", 1e6), qk_norm=values.get("qk_norm", True),
        weight_dtype=values.get("weight_dtype", "bf16"), kv_dtype=values.get("kv_dtype", "bf16"),
        moe=moe, assumed=values.get("assumed", False), source=filename,
    )


_KIND_NAMES = {str: "a string", int: "a positive integer", float: "a positive number",
               bool: "true or false", dict: "a table"}


_locate = locate
