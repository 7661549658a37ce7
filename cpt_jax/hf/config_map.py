"""HF config.json <-> ModelConfig, refusing what the cpt_jax graph cannot honour."""

from __future__ import annotations

from cpt_jax.cli.errors import UserError
from cpt_jax.config.base import to_dict
from cpt_jax.config.model import ModelConfig, RopeScalingConfig

# architectures[0] -> (family, model_type)
ARCHITECTURES = {
    "LlamaForCausalLM": ("llama", "llama"),
    "MistralForCausalLM": ("mistral", "mistral"),
    "Qwen2ForCausalLM": ("qwen2", "qwen2"),
    "Qwen3ForCausalLM": ("qwen3", "qwen3"),
}
FAMILY_ARCH = {family: (arch, model_type) for arch, (family, model_type) in ARCHITECTURES.items()}


def _refuse(key: str, why: str) -> None:
    raise UserError(f"config.json key '{key}': {why}; cpt_jax cannot honour it, so it refuses to import")


def _rope(hf: dict) -> tuple[float, RopeScalingConfig | None]:
    """transformers >= 5 writes `rope_parameters`; older checkpoints `rope_theta` + `rope_scaling`."""
    params = dict(hf.get("rope_parameters") or {})
    scaling = hf.get("rope_scaling") or {}
    theta = float(params.get("rope_theta", hf.get("rope_theta", 10000.0)))
    spec = {**scaling, **params}
    rope_type = spec.get("rope_type", spec.get("type", "default"))
    if rope_type in ("default", None):
        return theta, None
    if rope_type != "llama3":
        _refuse("rope_scaling" if scaling else "rope_parameters", f"rope type {rope_type!r} is not supported (only default and llama3)")
    return theta, RopeScalingConfig(
        factor=float(spec["factor"]), low_freq_factor=float(spec["low_freq_factor"]),
        high_freq_factor=float(spec["high_freq_factor"]),
        original_max_position_embeddings=int(spec["original_max_position_embeddings"]))


def hf_to_model_config(hf: dict, dtype: str = "float32") -> ModelConfig:
    archs = hf.get("architectures") or []
    arch = archs[0] if archs else None
    if arch not in ARCHITECTURES:
        raise UserError(f"unsupported architecture {arch!r}; supported: {', '.join(ARCHITECTURES)}")
    family, _ = ARCHITECTURES[arch]
    if hf.get("hidden_act", "silu") != "silu":
        _refuse("hidden_act", f"{hf['hidden_act']!r} (only silu / SwiGLU)")
    if hf.get("mlp_bias"):
        _refuse("mlp_bias", "MLP biases are not part of the supported graph")
    if family in ("llama", "mistral", "qwen3") and hf.get("attention_bias"):
        _refuse("attention_bias", "biases on q/k/v/o projections")
    if family == "mistral" and hf.get("sliding_window") and hf["sliding_window"] < hf.get("max_position_embeddings", 0):
        _refuse("sliding_window", f"sliding-window attention ({hf['sliding_window']} tokens)")
    if family in ("qwen2", "qwen3") and hf.get("use_sliding_window"):
        _refuse("use_sliding_window", "sliding-window attention")
    theta, scaling = _rope(hf)
    heads = hf["num_attention_heads"]
    head_dim = hf.get("head_dim")
    if head_dim == hf["hidden_size"] // heads:
        head_dim = None
    return ModelConfig(
        family=family, vocab_size=hf["vocab_size"], hidden_size=hf["hidden_size"],
        intermediate_size=hf["intermediate_size"], num_layers=hf["num_hidden_layers"], num_heads=heads,
        num_kv_heads=hf.get("num_key_value_heads") or heads, head_dim=head_dim, rope_theta=theta,
        rope_scaling=scaling, rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        max_position_embeddings=hf.get("max_position_embeddings", 4096),
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)), qkv_bias=family == "qwen2",
        qk_norm=family == "qwen3", param_dtype="float32", dtype=dtype)


def model_config_to_hf(cfg: ModelConfig, source: dict | None = None, dtype: str = "float32") -> dict:
    """config.json for `cfg`; keys of the source checkpoint that still hold (token ids, ...) are kept."""
    arch, model_type = FAMILY_ARCH[cfg.family]
    hf = {k: v for k, v in (source or {}).items()
          if k not in ("rope_scaling", "rope_theta", "rope_parameters", "torch_dtype", "transformers_version")}
    rope = {"rope_type": "default", "rope_theta": cfg.rope_theta}
    if cfg.rope_scaling is not None:
        rope = {**{k: v for k, v in to_dict(cfg.rope_scaling).items()}, "rope_theta": cfg.rope_theta}
    hf.update({
        "architectures": [arch], "model_type": model_type, "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size, "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.num_layers, "num_attention_heads": cfg.num_heads,
        "num_key_value_heads": cfg.kv_heads, "head_dim": cfg.dim_per_head, "hidden_act": "silu",
        "rms_norm_eps": cfg.rms_norm_eps, "max_position_embeddings": cfg.max_position_embeddings,
        "tie_word_embeddings": cfg.tie_embeddings, "rope_parameters": rope, "dtype": dtype,
    })
    if cfg.family in ("llama", "mistral"):
        hf.update({"attention_bias": False, "mlp_bias": False})
    if cfg.family == "qwen3":
        hf.setdefault("attention_bias", False)
    if cfg.family in ("qwen2", "qwen3"):
        hf.update({"use_sliding_window": False, "sliding_window": None,
                   "layer_types": ["full_attention"] * cfg.num_layers})
    if cfg.family == "mistral":
        hf["sliding_window"] = None
    return hf
