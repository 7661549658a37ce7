"""config.json <-> ModelConfig: the defaults transformers assumes, round trips, and every key the
cpt_jax graph cannot honour refused by name."""

import pytest
from hf_fixtures import FAMILIES, tiny_config_kwargs

from cpt_jax.errors import UserError
from cpt_jax.model.config import ModelConfig, RopeScalingConfig
from cpt_jax.hf.config_map import (
    ARCHITECTURES,
    FAMILY_ARCH,
    hf_config_to_model_config,
    model_config_to_hf_config,
)

REQUIRED = dict(vocab_size=160, hidden_size=1024, intermediate_size=96, num_hidden_layers=2, num_attention_heads=32)


def hf_dict(family: str, **kwargs) -> dict:
    """config.json as transformers writes it (to_dict of its config class)."""
    import transformers

    cfg = getattr(transformers, FAMILIES[family][0])(**tiny_config_kwargs(family, **kwargs))
    return {**cfg.to_dict(), "architectures": [FAMILIES[family][1]]}


@pytest.mark.parametrize("family", ["llama", "qwen2", "qwen3"])
def test_missing_keys_take_the_defaults_transformers_takes(family):
    """A sparse config.json (older exports) must mean what it means to transformers."""
    import transformers

    sparse = {**REQUIRED, "architectures": [FAMILIES[family][1]]}
    ours = hf_config_to_model_config(sparse)
    theirs = getattr(transformers, FAMILIES[family][0])(**REQUIRED)
    assert ours.kv_heads == theirs.num_key_value_heads
    assert ours.dim_per_head == (getattr(theirs, "head_dim", None) or theirs.hidden_size // theirs.num_attention_heads)
    assert ours.max_position_embeddings == theirs.max_position_embeddings
    assert ours.rms_norm_eps == theirs.rms_norm_eps
    assert ours.tie_embeddings == theirs.tie_word_embeddings
    assert ours.rope_theta == theirs.rope_parameters["rope_theta"] and ours.rope_scaling is None


def test_sparse_mistral_config_means_sliding_window_and_is_refused():
    import transformers

    assert transformers.MistralConfig(**REQUIRED).sliding_window == 4096  # what an absent key means
    with pytest.raises(UserError, match="'sliding_window'"):
        hf_config_to_model_config({**REQUIRED, "architectures": ["MistralForCausalLM"]})


@pytest.mark.parametrize("family, kwargs", [
    ("llama", dict(rope_scaling={"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                 "original_max_position_embeddings": 8192}, rope_theta=500000.0, tie_word_embeddings=True)),
    ("mistral", dict(num_key_value_heads=1)),
    ("qwen2", dict()),
    ("qwen3", dict(head_dim=32)),
])
def test_config_round_trip(family, kwargs):
    hf = hf_dict(family, **kwargs)
    cfg = hf_config_to_model_config(hf)
    assert cfg.family == family and ARCHITECTURES[hf["architectures"][0]][0] == family
    back = model_config_to_hf_config(cfg, source=hf)
    assert hf_config_to_model_config(back) == cfg
    assert back["architectures"] == hf["architectures"] and back["model_type"] == hf["model_type"]
    legacy = {k: v for k, v in back.items() if k != "rope_parameters"}  # what a transformers 4 reader sees
    assert legacy["rope_theta"] == cfg.rope_theta and hf_config_to_model_config(legacy) == cfg
    scratch = model_config_to_hf_config(cfg)  # no source: the family's defaults
    assert scratch["architectures"] == [FAMILY_ARCH[family][0]] and hf_config_to_model_config(scratch) == cfg


def test_llama3_rope_values_are_carried():
    hf = hf_dict("llama", rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 2.0,
                                        "high_freq_factor": 4.0, "original_max_position_embeddings": 64})
    assert hf_config_to_model_config(hf).rope_scaling == RopeScalingConfig(
        factor=8.0, low_freq_factor=2.0, high_freq_factor=4.0, original_max_position_embeddings=64)
    # transformers 4 spelling: rope_theta and rope_scaling at the top level, "type" for rope_type
    old = {**REQUIRED, "architectures": ["LlamaForCausalLM"], "rope_theta": 5e5,
           "rope_scaling": {"type": "llama3", "factor": 8.0, "low_freq_factor": 2.0, "high_freq_factor": 4.0,
                            "original_max_position_embeddings": 64}}
    cfg = hf_config_to_model_config(old)
    assert cfg.rope_theta == 5e5 and cfg.rope_scaling.low_freq_factor == 2.0


@pytest.mark.parametrize("family", ["llama", "mistral", "qwen2", "qwen3"])
def test_model_type_alone_names_the_architecture(family):
    """A config.json without `architectures` (as some conversions write) is read by its
    model_type, as transformers' AutoModelForCausalLM does."""
    hf = hf_dict(family)
    bare = {k: v for k, v in hf.items() if k != "architectures"}
    assert bare["model_type"] == family
    assert hf_config_to_model_config(bare) == hf_config_to_model_config(hf)


@pytest.mark.parametrize("family, change, message", [
    ("llama", {"architectures": ["GPT2LMHeadModel"]},
     "unsupported architecture 'GPT2LMHeadModel'; supported: LlamaForCausalLM, MistralForCausalLM, "
     "Qwen2ForCausalLM, Qwen3ForCausalLM"),
    ("llama", {"architectures": [], "model_type": "gpt2"},
     "unsupported architecture (no architectures) with model_type 'gpt2'"),
    ("llama", {"architectures": None, "model_type": None}, "unsupported architecture (no architectures)"),
    ("llama", {"rope_parameters": {"rope_type": "longrope", "rope_theta": 1e4, "factor": 2.0}},
     "'rope_parameters': rope type 'longrope' is not supported"),
    ("llama", {"rope_parameters": {"rope_type": "yarn", "rope_theta": 1e4, "factor": 2.0}},
     "'rope_parameters.original_max_position_embeddings': yarn rope scaling needs it"),
    ("llama", {"rope_parameters": None, "rope_scaling": {"type": "dynamic", "factor": 2.0}},
     "'rope_scaling': rope type 'dynamic'"),
    ("llama", {"rope_parameters": {"rope_type": "llama3", "rope_theta": 1e4, "factor": 8.0}},
     "'rope_parameters.low_freq_factor'"),
    ("llama", {"rope_parameters": {"rope_type": "default", "rope_theta": 1e4, "partial_rotary_factor": 0.5}},
     "'partial_rotary_factor'"),
    ("llama", {"hidden_act": "gelu"}, "'hidden_act': 'gelu'"),
    ("llama", {"mlp_bias": True}, "'mlp_bias'"),
    ("llama", {"attention_bias": True}, "'attention_bias'"),
    ("qwen3", {"attention_bias": True}, "'attention_bias'"),
    ("mistral", {"sliding_window": 32}, "'sliding_window': sliding-window attention over 32 tokens"),
    ("qwen2", {"use_sliding_window": True}, "'use_sliding_window'"),
    ("qwen3", {"layer_types": ["full_attention", "sliding_attention"]}, "'layer_types'"),
    ("llama", {"quantization_config": {"quant_method": "gptq"}}, "'quantization_config'"),
    ("llama", {"num_key_value_heads": 3}, "num_kv_heads=3 must divide num_heads=4"),
])
def test_unsupported_configs_are_refused_naming_the_key(family, change, message):
    hf = {**hf_dict(family), **change}
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        hf_config_to_model_config(hf)


def test_accepted_variants():
    """What looks unusual but is the same graph is accepted."""
    assert hf_config_to_model_config(hf_dict("mistral", sliding_window=128)).family == "mistral"  # = max positions
    assert hf_config_to_model_config({**hf_dict("llama"), "hidden_act": "swish"}).family == "llama"
    assert hf_config_to_model_config(hf_dict("qwen2", attention_bias=True)).qkv_bias  # ignored by Qwen2
    cfg = hf_config_to_model_config(hf_dict("llama"), dtype="bfloat16")
    assert cfg.dtype == "bfloat16" and cfg.param_dtype == "float32"
    assert isinstance(cfg, ModelConfig)
