"""Tensor names and layouts: HF Linear weights are [out, in]; cpt_jax keeps [in, ...heads, out]."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from cpt_jax.config.model import ModelConfig


@dataclass(frozen=True)
class Mapping:
    hf_name: str
    path: tuple  # key path into the cpt_jax param dict
    to_jax: Callable[[np.ndarray], np.ndarray]  # HF layout -> cpt_jax layout
    to_hf: Callable[[np.ndarray], np.ndarray]


def _identity(x):
    return x


def mappings(cfg: ModelConfig) -> list[Mapping]:
    """Every tensor of the model, in HF's order."""
    d, h, kv, hd = cfg.hidden_size, cfg.num_heads, cfg.kv_heads, cfg.dim_per_head

    def proj(heads):  # [heads*hd, d] <-> [d, heads, hd]
        return (lambda w: w.T.reshape(d, heads, hd), lambda p: p.reshape(d, heads * hd).T)

    def bias(heads):
        return (lambda b: b.reshape(heads, hd), lambda p: p.reshape(heads * hd))

    def transpose():
        return (lambda w: w.T, lambda p: p.T)

    out = [Mapping("model.embed_tokens.weight", ("embed",), _identity, _identity)]
    for i in range(cfg.num_layers):
        pre = f"model.layers.{i}."
        layer = ("layers", i)
        entries = [
            ("self_attn.q_proj.weight", ("attn", "q"), proj(h)),
            ("self_attn.k_proj.weight", ("attn", "k"), proj(kv)),
            ("self_attn.v_proj.weight", ("attn", "v"), proj(kv)),
            ("self_attn.o_proj.weight", ("attn", "o"),
             (lambda w: w.T.reshape(h, hd, d), lambda p: p.reshape(h * hd, d).T)),
        ]
        if cfg.qkv_bias:
            entries += [("self_attn.q_proj.bias", ("attn", "q_bias"), bias(h)),
                        ("self_attn.k_proj.bias", ("attn", "k_bias"), bias(kv)),
                        ("self_attn.v_proj.bias", ("attn", "v_bias"), bias(kv))]
        if cfg.qk_norm:
            entries += [("self_attn.q_norm.weight", ("attn", "q_norm", "weight"), (_identity, _identity)),
                        ("self_attn.k_norm.weight", ("attn", "k_norm", "weight"), (_identity, _identity))]
        entries += [
            ("mlp.gate_proj.weight", ("mlp", "gate"), transpose()),
            ("mlp.up_proj.weight", ("mlp", "up"), transpose()),
            ("mlp.down_proj.weight", ("mlp", "down"), transpose()),
            ("input_layernorm.weight", ("attn_norm", "weight"), (_identity, _identity)),
            ("post_attention_layernorm.weight", ("mlp_norm", "weight"), (_identity, _identity)),
        ]
        out += [Mapping(pre + name, layer + path, fns[0], fns[1]) for name, path, fns in entries]
    out.append(Mapping("model.norm.weight", ("final_norm", "weight"), _identity, _identity))
    if not cfg.tie_embeddings:
        out.append(Mapping("lm_head.weight", ("lm_head",), lambda w: w.T, lambda p: p.T))
    return out


def get_path(tree: dict, path: tuple):
    for key in path:
        tree = tree[key]
    return tree


def set_path(tree: dict, path: tuple, value) -> None:
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value
