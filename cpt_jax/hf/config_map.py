"""HF config.json <-> ModelConfig, refusing whatever the cpt_jax graph cannot honour."""

from __future__ import annotations

from typing import Any

from cpt_jax.errors import UserError
from cpt_jax.config.base import ConfigError, from_dict, to_dict
from cpt_jax.model.config import ROPE_SCALING_KEYS, ModelConfig, RopeScalingConfig

# architectures[0] -> (family, model_type)
ARCHITECTURES = {
    "LlamaForCausalLM": ("llama", "llama"),
    "MistralForCausalLM": ("mistral", "mistral"),
    "Qwen2ForCausalLM": ("qwen2", "qwen2"),
    "Qwen3ForCausalLM": ("qwen3", "qwen3"),
}
FAMILY_ARCH = {family: (arch, model_type) for arch, (family, model_type) in ARCHITECTURES.items()}
# model_type -> architecture, for a config.json without `architectures` (transformers reads model_type then)
MODEL_TYPES = {model_type: arch for arch, (_, model_type) in ARCHITECTURES.items()}

# What transformers (5.x) assumes for a key that config.json leaves out, where it differs by
# family or from a plain default; tests/test_hf_config.py checks this table against transformers.
FAMILY_DEFAULTS: dict[str, dict[str, Any]] = {
    "llama": {"max_position_embeddings": 2048, "num_key_value_heads": None, "head_dim": None,
              "sliding_window": None},
    "mistral": {"max_position_embeddings": 131072, "num_key_value_heads": 8, "head_dim": None,
                "sliding_window": 4096},
    "qwen2": {"max_position_embeddings": 32768, "num_key_value_heads": 32, "head_dim": None,
              "sliding_window": None},
    "qwen3": {"max_position_embeddings": 32768, "num_key_value_heads": 32, "head_dim": 128,
              "sliding_window": None},
}
COMMON_DEFAULTS = {"rms_norm_eps": 1e-6, "tie_word_embeddings": False, "hidden_act": "silu", "rope_theta": 10000.0}
REQUIRED = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
LLAMA3_KEYS = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")
# Keys of the source config.json that describe the source file rather than the model: not copied on export.
DROPPED_ON_EXPORT = ("rope_scaling", "rope_theta", "rope_parameters", "torch_dtype", "dtype", "transformers_version",
                     "_name_or_path", "auto_map", "quantization_config")


def _refuse(key: str, why: str) -> None:
    raise UserError(f"config.json key '{key}': {why}; the cpt_jax graph cannot honour it, so it is not imported")


def _get(hf: dict, family: str, key: str) -> Any:
    if key in hf:
        return hf[key]
    return FAMILY_DEFAULTS[family].get(key, COMMON_DEFAULTS.get(key))


def _rope(hf: dict) -> tuple[float, RopeScalingConfig | None]:
    """transformers >= 5 writes `rope_parameters`; older checkpoints `rope_theta` + `rope_scaling`."""
    key = "rope_parameters" if hf.get("rope_parameters") else "rope_scaling"
    spec = {**(hf.get("rope_scaling") or {}), **(hf.get("rope_parameters") or {})}
    theta = float(spec.get("rope_theta", hf.get("rope_theta", COMMON_DEFAULTS["rope_theta"])))
    partial = spec.get("partial_rotary_factor", hf.get("partial_rotary_factor", 1.0))
    if partial != 1.0:
        _refuse("partial_rotary_factor", f"rotary embedding on part of each head ({partial})")
    rope_type = spec.get("rope_type", spec.get("type", "default"))
    if rope_type in ("default", None):
        return theta, None
    if rope_type in ("linear", "yarn"):
        needed = ("factor",) if rope_type == "linear" else ("factor", "original_max_position_embeddings")
        missing = [k for k in needed if spec.get(k) is None]
        if missing:
            _refuse(f"{key}.{missing[0]}", f"{rope_type} rope scaling needs it and it is missing")
        keys = [k for k in ROPE_SCALING_KEYS[rope_type] if spec.get(k) is not None]
        return theta, _scaling({"rope_type": rope_type, **{k: spec[k] for k in keys}}, key)
    if rope_type != "llama3":
        _refuse(key, f"rope type {rope_type!r} is not supported (only 'default', 'linear', 'yarn' and 'llama3')")
    missing = [k for k in LLAMA3_KEYS if k not in spec]
    if missing:
        _refuse(f"{key}.{missing[0]}", "llama3 rope scaling needs it and it is missing")
    return theta, _scaling({"rope_type": "llama3", **{k: spec[k] for k in LLAMA3_KEYS}}, key)


def _scaling(spec: dict, key: str) -> RopeScalingConfig:
    try:
        return from_dict(RopeScalingConfig, spec, key)
    except ConfigError as e:
        raise UserError(f"config.json: {e}") from e


def _check_supported(hf: dict, family: str) -> None:
    if hf.get("quantization_config"):
        _refuse("quantization_config", "quantized weights; import the unquantized (bf16/fp32) checkpoint")
    act = _get(hf, family, "hidden_act")
    if act not in ("silu", "swish"):
        _refuse("hidden_act", f"{act!r} (only silu, i.e. SwiGLU)")
    if hf.get("mlp_bias"):
        _refuse("mlp_bias", "MLP biases are not part of the supported graph")
    if family != "qwen2" and hf.get("attention_bias"):
        _refuse("attention_bias", "biases on the q/k/v/o projections")
    window = _get(hf, family, "sliding_window")
    if family == "mistral" and window is not None and window < _get(hf, family, "max_position_embeddings"):
        _refuse("sliding_window", f"sliding-window attention over {window} tokens")
    if family in ("qwen2", "qwen3") and hf.get("use_sliding_window"):
        _refuse("use_sliding_window", "sliding-window attention")
    kinds = set(hf.get("layer_types") or ()) - {"full_attention"}
    if kinds:
        _refuse("layer_types", f"layers of type {sorted(kinds)} (only full_attention)")
    for key in REQUIRED:
        if key not in hf:
            raise UserError(f"config.json has no '{key}'; it is not a complete Hugging Face model config")


def hf_config_to_model_config(hf: dict, dtype: str = "float32") -> ModelConfig:
    """ModelConfig of an HF config.json (parameters fp32; `dtype` is the compute dtype)."""
    archs = hf.get("architectures") or []
    arch = archs[0] if archs else MODEL_TYPES.get(hf.get("model_type"))
    if arch not in ARCHITECTURES:
        what = repr(arch) if archs else f"(no architectures) with model_type {hf.get('model_type')!r}"
        raise UserError(f"config.json: unsupported architecture {what}; supported: {', '.join(ARCHITECTURES)} "
                        f"(or, without architectures, model_type {', '.join(MODEL_TYPES)})")
    family, _ = ARCHITECTURES[arch]
    _check_supported(hf, family)
    theta, scaling = _rope(hf)
    heads = hf["num_attention_heads"]
    head_dim = _get(hf, family, "head_dim")
    if head_dim == hf["hidden_size"] // heads:
        head_dim = None
    model = dict(
        family=family, vocab_size=hf["vocab_size"], hidden_size=hf["hidden_size"],
        intermediate_size=hf["intermediate_size"], num_layers=hf["num_hidden_layers"], num_heads=heads,
        num_kv_heads=_get(hf, family, "num_key_value_heads") or heads, head_dim=head_dim, rope_theta=theta,
        rope_scaling=to_dict(scaling) if scaling else None, rms_norm_eps=float(_get(hf, family, "rms_norm_eps")),
        max_position_embeddings=_get(hf, family, "max_position_embeddings"),
        tie_embeddings=bool(_get(hf, family, "tie_word_embeddings")), qkv_bias=family == "qwen2",
        qk_norm=family == "qwen3", param_dtype="float32", dtype=dtype,
        initializer_range=float(hf.get("initializer_range", 0.02)))
    try:
        return from_dict(ModelConfig, model, "model")
    except ConfigError as e:
        raise UserError(f"config.json describes a model cpt_jax cannot build: {e}") from e


def model_config_to_hf_config(cfg: ModelConfig, source: dict | None = None, dtype: str = "float32") -> dict:
    """config.json for `cfg`. Keys of the source checkpoint's config that still hold (token ids,
    use_cache, ...) are kept; every key that shapes the graph is written from `cfg`."""
    arch, model_type = FAMILY_ARCH[cfg.family]
    hf = {k: v for k, v in (source or {}).items() if k not in DROPPED_ON_EXPORT}
    scaling = to_dict(cfg.rope_scaling) if cfg.rope_scaling is not None else None
    if scaling:  # the keys of its type only (the others would be unknown to transformers)
        kind = scaling["rope_type"]
        scaling = {"rope_type": kind, **{k: scaling[k] for k in ROPE_SCALING_KEYS[kind] if scaling[k] is not None}}
    rope = {**(scaling or {"rope_type": "default"}), "rope_theta": cfg.rope_theta}
    hf.update({
        "architectures": [arch], "model_type": model_type, "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size, "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.num_layers, "num_attention_heads": cfg.num_heads,
        "num_key_value_heads": cfg.kv_heads, "head_dim": cfg.dim_per_head, "hidden_act": "silu",
        "rms_norm_eps": cfg.rms_norm_eps, "max_position_embeddings": cfg.max_position_embeddings,
        "tie_word_embeddings": cfg.tie_embeddings, "rope_parameters": rope, "dtype": dtype,
        # The same in the transformers 4 spelling, which other tools (vLLM, llama.cpp's converter,
        # older transformers) read; transformers 5 accepts both.
        "rope_theta": cfg.rope_theta, "rope_scaling": scaling, "torch_dtype": dtype,
    })
    hf.setdefault("initializer_range", cfg.initializer_range)
    if cfg.family in ("llama", "mistral", "qwen3"):
        hf["attention_bias"] = False
    if cfg.family == "llama":
        hf["mlp_bias"] = False
    if cfg.family in ("qwen2", "qwen3"):
        hf.update({"use_sliding_window": False, "sliding_window": None,
                   "layer_types": ["full_attention"] * cfg.num_layers})
    if cfg.family == "mistral":
        hf["sliding_window"] = None
    return hf


# Earlier names (benchmarks/bench_step.py uses them).
hf_to_model_config = hf_config_to_model_config
model_config_to_hf = model_config_to_hf_config
