"""Tiny random Hugging Face models made by transformers itself (test-only; no downloads)."""

from __future__ import annotations

from pathlib import Path

FAMILIES = {
    "llama": ("LlamaConfig", "LlamaForCausalLM"),
    "mistral": ("MistralConfig", "MistralForCausalLM"),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM"),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM"),
}


def make_tiny_hf_model(path: Path, family: str = "llama", *, tie: bool = False, seed: int = 0,
                       max_shard_size: str = "40KB", **overrides) -> Path:
    import torch
    import transformers

    config_cls, model_cls = (getattr(transformers, n) for n in FAMILIES[family])
    kwargs = dict(vocab_size=160, hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=128, tie_word_embeddings=tie, rms_norm_eps=1e-6,
                  bos_token_id=1, eos_token_id=2)
    if family == "mistral":
        kwargs["sliding_window"] = None
    kwargs.update(overrides)
    torch.manual_seed(seed)
    model = model_cls(config_cls(**kwargs)).eval()
    with torch.no_grad():  # random, non-trivial norms and biases so a wrong mapping shows
        for name, p in model.named_parameters():
            if name.endswith("norm.weight") or name.endswith(".bias"):
                p.copy_(1.0 + 0.2 * torch.randn_like(p) if "norm" in name else 0.1 * torch.randn_like(p))
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path, max_shard_size=max_shard_size)
    return path


def hf_logits(hf_dir: Path, tokens, attention_mask=None):
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        out = model(torch.as_tensor(np.asarray(tokens)),
                    attention_mask=None if attention_mask is None else torch.as_tensor(np.asarray(attention_mask)))
    return out.logits.numpy()
