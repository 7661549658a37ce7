"""Rotary position embeddings in the Hugging Face (rotate-half) convention."""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np

from cpt_jax.model.config import ModelConfig


def inverse_frequencies(cfg: ModelConfig) -> np.ndarray:
    """Per-pair inverse frequencies, with Llama 3.1 scaling when configured.

    llama3 scaling leaves high frequencies (wavelength < orig/high_freq_factor) alone, divides
    low frequencies (wavelength > orig/low_freq_factor) by `factor`, and interpolates smoothly
    in between; this matches transformers' `_compute_llama3_parameters`.
    """
    dim = cfg.dim_per_head
    inv = 1.0 / (cfg.rope_theta ** (np.arange(0, dim, 2, dtype=np.float64) / dim))
    rs = cfg.rope_scaling
    if rs is None:
        return inv.astype(np.float32)
    low_wavelen = rs.original_max_position_embeddings / rs.low_freq_factor
    high_wavelen = rs.original_max_position_embeddings / rs.high_freq_factor
    wavelen = 2 * math.pi / inv
    smooth = (rs.original_max_position_embeddings / wavelen - rs.low_freq_factor) / (
        rs.high_freq_factor - rs.low_freq_factor)
    scaled = np.where(wavelen > low_wavelen, inv / rs.factor, inv)
    mid = (1 - smooth) * scaled / rs.factor + smooth * scaled
    is_mid = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    return np.where(is_mid, mid, scaled).astype(np.float32)


def apply_rope(x: jnp.ndarray, positions: jnp.ndarray, inv_freq: np.ndarray) -> jnp.ndarray:
    """x: [batch, length, heads, head_dim]; positions: [batch, length]. Computed in fp32.

    Rotate-half on the two halves directly: one concatenate instead of building a rotated copy
    and a doubled angle table (fewer full passes over x; the same values).
    """
    angles = positions[..., None].astype(jnp.float32) * jnp.asarray(inv_freq)  # [B, L, D/2]
    cos, sin = jnp.cos(angles)[:, :, None, :], jnp.sin(angles)[:, :, None, :]
    xf = x.astype(jnp.float32)
    half = xf.shape[-1] // 2
    x1, x2 = xf[..., :half], xf[..., half:]
    return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1).astype(x.dtype)
