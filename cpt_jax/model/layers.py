"""Decoder building blocks. Parameters carry `logical_axes` metadata for the sharding rules."""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from cpt_jax.model.config import ModelConfig
from cpt_jax.model.attention import attend
from cpt_jax.model.rope import apply_rope, attention_scaling, inverse_frequencies
from cpt_jax.sharding.rules import Sharder

Axes = tuple[str | None, ...]


def make_param(rngs: nnx.Rngs, init: Callable, shape: tuple[int, ...], axes: Axes, dtype) -> nnx.Param:
    assert len(shape) == len(axes), (shape, axes)
    return nnx.Param(init(rngs.params(), shape, dtype), logical_axes=axes)


def dtype_of(name: str):
    return jnp.dtype(name)


class RMSNorm(nnx.Module):
    def __init__(self, dim: int, eps: float, cfg: ModelConfig, rngs: nnx.Rngs):
        self.eps = eps
        self.weight = make_param(rngs, nnx.initializers.ones, (dim,), ("norm",), dtype_of(cfg.param_dtype))

    def __call__(self, x: jax.Array) -> jax.Array:
        # Normalise in fp32, cast back, then scale: the order transformers uses.
        xf = x.astype(jnp.float32)
        xf = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + self.eps)
        return self.weight[...].astype(x.dtype) * xf.astype(x.dtype)


class Attention(nnx.Module):
    def __init__(self, cfg: ModelConfig, sharder: Sharder, rngs: nnx.Rngs):
        d, h, kv, hd = cfg.hidden_size, cfg.num_heads, cfg.kv_heads, cfg.dim_per_head
        pdt = dtype_of(cfg.param_dtype)
        init = nnx.initializers.normal(cfg.initializer_range)
        self.cfg, self.sharder = cfg, sharder
        self.q = make_param(rngs, init, (d, h, hd), ("embed", "heads", "head_dim"), pdt)
        self.k = make_param(rngs, init, (d, kv, hd), ("embed", "kv_heads", "head_dim"), pdt)
        self.v = make_param(rngs, init, (d, kv, hd), ("embed", "kv_heads", "head_dim"), pdt)
        self.o = make_param(rngs, init, (h, hd, d), ("heads", "head_dim", "embed"), pdt)
        if cfg.qkv_bias:
            zeros = nnx.initializers.zeros
            self.q_bias = make_param(rngs, zeros, (h, hd), ("heads", "head_dim"), pdt)
            self.k_bias = make_param(rngs, zeros, (kv, hd), ("kv_heads", "head_dim"), pdt)
            self.v_bias = make_param(rngs, zeros, (kv, hd), ("kv_heads", "head_dim"), pdt)
        if cfg.qk_norm:
            self.q_norm = RMSNorm(hd, cfg.rms_norm_eps, cfg, rngs)
            self.k_norm = RMSNorm(hd, cfg.rms_norm_eps, cfg, rngs)

    def _project(self, x, name: str, axes: Axes):
        dt = x.dtype
        y = jnp.einsum("bld,dhk->blhk", x, getattr(self, name)[...].astype(dt))
        if self.cfg.qkv_bias:
            y = y + getattr(self, f"{name}_bias")[...].astype(dt)
        return self.sharder.constrain(y, axes)

    def __call__(self, x, positions, segment_ids):
        cfg = self.cfg
        q = self._project(x, "q", ("batch", "length", "act_heads", None))
        k = self._project(x, "k", ("batch", "length", "act_kv_heads", None))
        v = self._project(x, "v", ("batch", "length", "act_kv_heads", None))
        if cfg.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        inv_freq = inverse_frequencies(cfg)  # a trace-time constant, not a parameter
        q = apply_rope(q, positions, inv_freq, attention_scaling(cfg))
        k = apply_rope(k, positions, inv_freq, attention_scaling(cfg))
        # Causal within a document: packed rows never attend across a segment boundary.
        out = attend(q, k, v, segment_ids, cfg.attention, self.sharder)
        out = self.sharder.constrain(out, ("batch", "length", "act_heads", None))
        y = jnp.einsum("blhk,hkd->bld", out, self.o[...].astype(x.dtype))
        return self.sharder.constrain(y, ("batch", "length", "act_embed"))


class MLP(nnx.Module):
    def __init__(self, cfg: ModelConfig, sharder: Sharder, rngs: nnx.Rngs):
        d, f = cfg.hidden_size, cfg.intermediate_size
        pdt = dtype_of(cfg.param_dtype)
        init = nnx.initializers.normal(cfg.initializer_range)
        self.sharder = sharder
        self.gate = make_param(rngs, init, (d, f), ("embed", "mlp"), pdt)
        self.up = make_param(rngs, init, (d, f), ("embed", "mlp"), pdt)
        self.down = make_param(rngs, init, (f, d), ("mlp", "embed"), pdt)

    def __call__(self, x):
        dt = x.dtype
        gate, up = self.gate[...].astype(dt), self.up[...].astype(dt)
        if self.sharder.is_split("mlp"):
            # Tensor parallel: two matmuls. Stacked, the backward needs one more all-reduce per layer.
            g, u = x @ gate, x @ up
        else:
            # One GEMM for both, forward and backward (1-6% of a CPU step, benchmarks/RESULTS.md).
            gate_up = jnp.einsum("bld,dcf->blcf", x, jnp.stack([gate, up], axis=1))
            g, u = gate_up[..., 0, :], gate_up[..., 1, :]
        h = self.sharder.constrain(jax.nn.silu(g) * u, ("batch", "length", "act_mlp"))
        return self.sharder.constrain(h @ self.down[...].astype(dt), ("batch", "length", "act_embed"))


class Block(nnx.Module):
    def __init__(self, cfg: ModelConfig, sharder: Sharder, rngs: nnx.Rngs):
        self.attn_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, cfg, rngs)
        self.attn = Attention(cfg, sharder, rngs)
        self.mlp_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, cfg, rngs)
        self.mlp = MLP(cfg, sharder, rngs)

    def __call__(self, x, positions, segment_ids):
        x = x + self.attn(self.attn_norm(x), positions, segment_ids)
        return x + self.mlp(self.mlp_norm(x))
