"""Next-token cross-entropy on packed rows, with an optional z-loss and per-source sums."""

from __future__ import annotations

from typing import Mapping, Sequence

import jax
import jax.numpy as jnp
import optax


def targets_and_mask(batch: dict) -> tuple[jax.Array, jax.Array]:
    """Target t is token t+1 of the same document; padding (segment 0), the row's last position
    and document ends (the next token belongs to another document) carry no loss. A batch that
    carries them already ('targets', 'loss_mask': made before its tokens were reordered for
    context parallelism) keeps them."""
    if "targets" in batch:
        return batch["targets"], batch["loss_mask"]
    tokens, seg = batch["tokens"], batch["segment_ids"]
    targets = jnp.concatenate([tokens[:, 1:], jnp.zeros_like(tokens[:, :1])], axis=1)
    next_seg = jnp.concatenate([seg[:, 1:], jnp.zeros_like(seg[:, :1])], axis=1)
    mask = (seg != 0) & (next_seg == seg)
    return targets, mask


def loss_sums(logits: jax.Array, batch: dict, z_loss: float = 0.0, num_sources: int = 0) -> dict[str, jax.Array]:
    """Sums (not means) so that gradient accumulation and data parallelism weight every token
    equally, whatever the number of tokens in each micro-batch.

    num_sources > 0: also 'source_nll' and 'source_tokens', [num_sources] sums over the tokens of
    each source (batch['source_ids'], the index of each row's source), from the same forward pass."""
    targets, mask = targets_and_mask(batch)
    logits = logits.astype(jnp.float32)
    nll = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
    maskf = mask.astype(jnp.float32)
    out = {"nll_sum": jnp.sum(nll * maskf), "tokens": jnp.sum(maskf)}
    if num_sources:
        ids = batch.get("source_ids")
        if ids is None:  # batches without source ids (e.g. hand-made) count for no source
            out["source_nll"] = out["source_tokens"] = jnp.zeros((num_sources,), jnp.float32)
        else:
            onehot = jax.nn.one_hot(ids, num_sources, dtype=jnp.float32)
            out["source_nll"] = jnp.einsum("bt,btk->k", nll * maskf, onehot)
            out["source_tokens"] = jnp.einsum("bt,btk->k", maskf, onehot)
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


def per_source_losses(metrics: Mapping, names: Sequence[str]) -> dict[str, float]:
    """{'loss/<name>': mean train loss, 'tokens/<name>': loss tokens} of each source in a step's
    metrics ('source_nll'/'source_tokens', indexed like `names`: the sorted data.sources). A source
    without tokens in the batch gets its token count only."""
    if "source_nll" not in metrics:
        return {}
    nll = [float(x) for x in jax.device_get(metrics["source_nll"])]
    tokens = [float(x) for x in jax.device_get(metrics["source_tokens"])]
    out = {}
    for name, n, t in zip(names, nll, tokens):
        if t > 0:
            out[f"loss/{name}"] = n / t
        out[f"tokens/{name}"] = t
    return out
