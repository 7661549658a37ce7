"""Tensor names and layouts: HF Linear weights are [out, in]; cpt_jax keeps [in, ...heads, out]."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from cpt_jax.config.model import ModelConfig


@dataclass(frozen=True)
class Mapping:
    hf_name: str
    path: tuple  # key path into the cpt_jax param dict
    hf_shape: tuple[int, ...]  # shape of the tensor in the safetensors file
    to_jax: Callable[[np.ndarray], np.ndarray]  # HF layout -> cpt_jax layout
    to_hf: Callable[[np.ndarray], np.ndarray]

    @property
    def group(self) -> tuple:
        """Parameters read or written together: one decoder layer, or one top-level tensor."""
        return self.path[:2] if self.path[0] == "layers" else self.path[:1]


def _identity(x):
    return x


def mappings(cfg: ModelConfig) -> list[Mapping]:
    """Every tensor of the model, in HF's order."""
    d, h, kv, hd, f = cfg.hidden_size, cfg.num_heads, cfg.kv_heads, cfg.dim_per_head, cfg.intermediate_size

    def proj(heads):  # q/k/v: [heads*hd, d] <-> [d, heads, hd]
        return ((heads * hd, d), lambda w: w.T.reshape(d, heads, hd), lambda p: p.reshape(d, heads * hd).T)

    def out_proj():  # o: [d, h*hd] <-> [h, hd, d]
        return ((d, h * hd), lambda w: w.T.reshape(h, hd, d), lambda p: p.reshape(h * hd, d).T)

    def bias(heads):
        return ((heads * hd,), lambda b: b.reshape(heads, hd), lambda p: p.reshape(heads * hd))

    def linear(n_out, n_in):
        return ((n_out, n_in), lambda w: w.T, lambda p: p.T)

    def vector(n):
        return ((n,), _identity, _identity)

    out = [Mapping("model.embed_tokens.weight", ("embed",), (cfg.vocab_size, d), _identity, _identity)]
    for i in range(cfg.num_layers):
        entries = [
            ("self_attn.q_proj.weight", ("attn", "q"), proj(h)),
            ("self_attn.k_proj.weight", ("attn", "k"), proj(kv)),
            ("self_attn.v_proj.weight", ("attn", "v"), proj(kv)),
            ("self_attn.o_proj.weight", ("attn", "o"), out_proj()),
        ]
        if cfg.qkv_bias:
            entries += [("self_attn.q_proj.bias", ("attn", "q_bias"), bias(h)),
                        ("self_attn.k_proj.bias", ("attn", "k_bias"), bias(kv)),
                        ("self_attn.v_proj.bias", ("attn", "v_bias"), bias(kv))]
        if cfg.qk_norm:
            entries += [("self_attn.q_norm.weight", ("attn", "q_norm", "weight"), vector(hd)),
                        ("self_attn.k_norm.weight", ("attn", "k_norm", "weight"), vector(hd))]
        entries += [
            ("mlp.gate_proj.weight", ("mlp", "gate"), linear(f, d)),
            ("mlp.up_proj.weight", ("mlp", "up"), linear(f, d)),
            ("mlp.down_proj.weight", ("mlp", "down"), linear(d, f)),
            ("input_layernorm.weight", ("attn_norm", "weight"), vector(d)),
            ("post_attention_layernorm.weight", ("mlp_norm", "weight"), vector(d)),
        ]
        out += [Mapping(f"model.layers.{i}.{name}", ("layers", i, *path), *spec) for name, path, spec in entries]
    out.append(Mapping("model.norm.weight", ("final_norm", "weight"), *vector(d)))
    if not cfg.tie_embeddings:
        out.append(Mapping("lm_head.weight", ("lm_head",), *linear(cfg.vocab_size, d)))
    return out


def get_path(tree: dict, path: tuple):
    for key in path:
        tree = tree[key]
    return tree


def set_path(tree: dict, path: tuple, value) -> None:
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value
