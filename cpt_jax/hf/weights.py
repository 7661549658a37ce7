"""Tensor names and layouts: HF Linear weights are [out, in]; cpt_jax keeps [in, ...heads, out]."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from cpt_jax.model.config import ModelConfig


@dataclass(frozen=True)
class Mapping:
    hf_name: str
    path: tuple  # key path into the unrolled cpt_jax param dict: ("layers", i, ...) for layer tensors
    hf_shape: tuple[int, ...]  # shape of the tensor in the safetensors file
    to_jax: Callable[[np.ndarray], np.ndarray]  # HF layout -> cpt_jax layout
    to_hf: Callable[[np.ndarray], np.ndarray]
    layer: int | None = None  # decoder layer index; None for embeddings, final norm, LM head

    @property
    def group(self) -> tuple:
        """Parameters read or written together: one decoder layer, or one top-level tensor."""
        return self.path[:2] if self.path[0] == "layers" else self.path[:1]

    def location(self, scanned: bool) -> tuple[tuple, int | None]:
        """(key path in the param dict, index on its leading axis or None) in the unrolled layout
        or the stacked one (scan_layers), where layer i of a tensor is row i of one array."""
        if self.layer is None or not scanned:
            return self.path, None
        return ("layers", *self.path[2:]), self.layer

    def group_in(self, scanned: bool) -> tuple:
        """Parameters read or written together: one decoder layer when unrolled, one stacked
        tensor (that weight of every layer) when scanned, or one top-level tensor."""
        return self.location(scanned)[0] if scanned and self.layer is not None else self.group


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
        out += [Mapping(f"model.layers.{i}.{name}", ("layers", i, *path), *spec, layer=i)
                for name, path, spec in entries]
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


def stacked_targets(cfg: ModelConfig) -> dict[tuple, list[Mapping]]:
    """{key path in the param dict of cfg's layout: its HF tensors}; with scan_layers each layer
    tensor path lists one Mapping per layer, in layer order (row i of the stacked array)."""
    out: dict[tuple, list[Mapping]] = {}
    for m in mappings(cfg):
        out.setdefault(m.location(cfg.scan_layers)[0], []).append(m)
    return out
