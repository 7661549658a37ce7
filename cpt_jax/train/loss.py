"""Next-token cross-entropy on packed rows, with an optional z-loss."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def targets_and_mask(batch: dict) -> tuple[jax.Array, jax.Array]:
    """Target t is token t+1 of the same document; padding (segment 0), the row's last position
    and document ends (the next token belongs to another document) carry no loss."""
    tokens, seg = batch["tokens"], batch["segment_ids"]
    targets = jnp.concatenate([tokens[:, 1:], jnp.zeros_like(tokens[:, :1])], axis=1)
    next_seg = jnp.concatenate([seg[:, 1:], jnp.zeros_like(seg[:, :1])], axis=1)
    mask = (seg != 0) & (next_seg == seg)
    return targets, mask


def loss_sums(logits: jax.Array, batch: dict, z_loss: float = 0.0) -> dict[str, jax.Array]:
    """Sums (not means) so that gradient accumulation and data parallelism weight every token
    equally, whatever the number of tokens in each micro-batch."""
    targets, mask = targets_and_mask(batch)
    logits = logits.astype(jnp.float32)
    nll = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
    maskf = mask.astype(jnp.float32)
    out = {"nll_sum": jnp.sum(nll * maskf), "tokens": jnp.sum(maskf)}
    if z_loss:
        log_z = jax.nn.logsumexp(logits, axis=-1)
        out["z_sum"] = jnp.sum(z_loss * jnp.square(log_z) * maskf)
    else:
        out["z_sum"] = jnp.zeros((), jnp.float32)
    return out


def lm_loss(logits: jax.Array, batch: dict, z_loss: float = 0.0) -> tuple[jax.Array, dict]:
    """Mean next-token loss over the counted tokens (plus z-loss), and the sums behind it."""
    sums = loss_sums(logits, batch, z_loss)
    denom = jnp.maximum(sums["tokens"], 1.0)
    return (sums["nll_sum"] + sums["z_sum"]) / denom, sums
