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
    if rs.rope_type == "linear":  # position interpolation (transformers' linear scaling)
        return (inv / rs.factor).astype(np.float32)
    if rs.rope_type == "yarn":
        return _yarn_inverse_frequencies(cfg)
    low_wavelen = rs.original_max_position_embeddings / rs.low_freq_factor
    high_wavelen = rs.original_max_position_embeddings / rs.high_freq_factor
    wavelen = 2 * math.pi / inv
    smooth = (rs.original_max_position_embeddings / wavelen - rs.low_freq_factor) / (
        rs.high_freq_factor - rs.low_freq_factor)
    scaled = np.where(wavelen > low_wavelen, inv / rs.factor, inv)
    mid = (1 - smooth) * scaled / rs.factor + smooth * scaled
    is_mid = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    return np.where(is_mid, mid, scaled).astype(np.float32)


def _yarn_inverse_frequencies(cfg: ModelConfig) -> np.ndarray:
    """YaRN (Peng et al. 2023) as transformers' `_compute_yarn_parameters`: dimensions that turn
    more than beta_fast times over the original context keep their frequency, those turning fewer
    than beta_slow times are interpolated (divided by factor), with a linear ramp between."""
    rs, dim, base = cfg.rope_scaling, cfg.dim_per_head, cfg.rope_theta
    pos_freqs = base ** (np.arange(0, dim, 2, dtype=np.float32) / np.float32(dim))

    def correction_dim(rotations: float) -> float:
        return dim * math.log(rs.original_max_position_embeddings / (rotations * 2 * math.pi)) / (2 * math.log(base))

    low, high = correction_dim(rs.beta_fast), correction_dim(rs.beta_slow)
    if rs.truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    ramp = np.clip((np.arange(dim // 2, dtype=np.float32) - low) / ((high + 0.001 if low == high else high) - low),
                   0, 1)
    extrapolation = 1 - ramp
    inv = (1.0 / (rs.factor * pos_freqs)) * (1 - extrapolation) + (1.0 / pos_freqs) * extrapolation
    return inv.astype(np.float32)


def attention_scaling(cfg: ModelConfig) -> float:
    """The factor YaRN scales cos and sin by (1.0 for every other RoPE)."""
    rs = cfg.rope_scaling
    if rs is None or rs.rope_type != "yarn":
        return 1.0
    if rs.attention_factor is not None:
        return float(rs.attention_factor)

    def mscale(scale: float, m: float = 1.0) -> float:
        return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

    if rs.mscale and rs.mscale_all_dim:
        return mscale(rs.factor, rs.mscale) / mscale(rs.factor, rs.mscale_all_dim)
    return mscale(rs.factor)


def apply_rope(x: jnp.ndarray, positions: jnp.ndarray, inv_freq: np.ndarray, scale: float = 1.0) -> jnp.ndarray:
    """x: [batch, length, heads, head_dim]; positions: [batch, length]. Computed in fp32.
    scale: multiplies cos and sin (YaRN's attention factor; see attention_scaling).

    Rotate-half on the two halves directly: one concatenate instead of building a rotated copy
    and a doubled angle table (fewer full passes over x; the same values).
    """
    angles = positions[..., None].astype(jnp.float32) * jnp.asarray(inv_freq)  # [B, L, D/2]
    cos, sin = jnp.cos(angles)[:, :, None, :], jnp.sin(angles)[:, :, None, :]
    if scale != 1.0:
        cos, sin = cos * scale, sin * scale
    xf = x.astype(jnp.float32)
    half = xf.shape[-1] // 2
    x1, x2 = xf[..., :half], xf[..., half:]
    return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1).astype(x.dtype)
