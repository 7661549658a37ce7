"""Tiny random Hugging Face models made by transformers itself (test-only; no downloads).

`make_tiny_hf_model(path, family, tie=..., **config_overrides)` writes a folder as
`save_pretrained` does (config.json, generation_config.json, several safetensors shards with an
index, and a word-level tokenizer whose tokens are "w3", "w4", ...), so any test can start from
an "upstream checkpoint".
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from pathlib import Path

FAMILIES = {
    "llama": ("LlamaConfig", "LlamaForCausalLM"),
    "mistral": ("MistralConfig", "MistralForCausalLM"),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM"),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM"),
}
SPECIAL_TOKENS = ("<unk>", "<s>", "</s>")  # ids 0, 1, 2


def tiny_config_kwargs(family: str, tie: bool = False, **overrides) -> dict:
    kwargs = dict(vocab_size=160, hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=128, tie_word_embeddings=tie, rms_norm_eps=1e-6,
                  bos_token_id=1, eos_token_id=2)
    if family == "mistral":
        kwargs["sliding_window"] = None
    if family == "qwen3":
        kwargs["head_dim"] = kwargs["hidden_size"] // kwargs["num_attention_heads"]
    return {**kwargs, **overrides}


def save_tiny_tokenizer(path: Path, vocab_size: int) -> None:
    """A whitespace word-level tokenizer saved by transformers: '<unk>' '<s>' '</s>' then 'w3'.. ."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(SPECIAL_TOKENS)} | {f"w{i}": i for i in range(len(SPECIAL_TOKENS), vocab_size)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    fast.save_pretrained(path)


def make_tiny_hf_model(path: Path, family: str = "llama", *, tie: bool = False, seed: int = 0,
                       max_shard_size: str = "40KB", dtype: str = "float32", tokenizer: bool = True,
                       **overrides) -> Path:
    """A random `family` model with tiny dims saved to `path` (created); overrides go to the HF config."""
    import torch
    import transformers

    config_cls, model_cls = (getattr(transformers, n) for n in FAMILIES[family])
    cfg = config_cls(**tiny_config_kwargs(family, tie, **overrides))
    torch.manual_seed(seed)
    model = model_cls(cfg).eval()
    with torch.no_grad():  # random, non-trivial norms and biases so a wrong mapping shows
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            elif name.endswith(".bias"):
                p.copy_(0.1 * torch.randn_like(p))
    path.mkdir(parents=True, exist_ok=True)
    model.to(getattr(torch, dtype)).save_pretrained(path, max_shard_size=max_shard_size)
    if tokenizer:
        save_tiny_tokenizer(path, cfg.vocab_size)
    return path


@contextmanager
def transformers_warnings():
    """Collects the warnings transformers logs (its logger does not propagate to pytest's caplog)."""
    records: list[logging.LogRecord] = []

    class Collect(logging.Handler):
        def emit(self, record):
            records.append(record)

    logger = logging.getLogger("transformers")
    handler = Collect(logging.WARNING)
    logger.addHandler(handler)
    try:
        yield records
    finally:
        logger.removeHandler(handler)


def load_hf_model(hf_dir: Path, dtype: str = "float32"):
    """(model, loading info dict: missing/unexpected/mismatched keys)."""
    import torch
    from transformers import AutoModelForCausalLM

    model, info = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=getattr(torch, dtype), output_loading_info=True)
    return model.eval(), info


def hf_logits(hf_dir_or_model, tokens, attention_mask=None, position_ids=None):
    """fp32 logits of transformers' model (a folder or a loaded model) as numpy."""
    import numpy as np
    import torch

    model = hf_dir_or_model
    if isinstance(model, (str, Path)):
        model, _ = load_hf_model(Path(model))
    as_t = lambda a: None if a is None else torch.as_tensor(np.asarray(a), dtype=torch.long)
    with torch.no_grad():
        out = model(as_t(tokens), attention_mask=as_t(attention_mask), position_ids=as_t(position_ids))
    return out.logits.float().numpy()
