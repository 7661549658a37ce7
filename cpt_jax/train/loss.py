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
    """`score_sums` from full logits [B, L, V] (the reference path; training never builds them)."""
    targets, _ = targets_and_mask(batch)
    logits = logits.astype(jnp.float32)
    nll = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
    return _sums(nll, jax.nn.logsumexp(logits, axis=-1), batch, z_loss, num_sources)


def model_loss_sums(model, batch: dict, z_loss: float = 0.0, num_sources: int = 0,
                    balanced: bool = False) -> dict[str, jax.Array]:
    """The loss sums of a Decoder on `batch`, its LM head applied chunk by chunk (Decoder.scores):
    equal to loss_sums(model(...), ...) without ever holding the [B, L, V] logits. balanced: the
    batch is in context parallelism's load-balanced order already, with its targets and mask."""
    targets, _ = targets_and_mask(batch)
    hidden = model.hidden(batch["tokens"], batch["positions"], batch["segment_ids"], balanced=balanced)
    scores = model.scores(hidden, targets)
    return _sums(scores["log_z"] - scores["target"], scores["log_z"], batch, z_loss, num_sources)


def _sums(nll: jax.Array, log_z: jax.Array, batch: dict, z_loss: float, num_sources: int) -> dict[str, jax.Array]:
    """Sums (not means) so that gradient accumulation and data parallelism weight every token
    equally, whatever the number of tokens in each micro-batch. nll, log_z: [B, L] fp32.

    num_sources > 0: also 'source_nll' and 'source_tokens', [num_sources] sums over the tokens of
    each source (batch['source_ids'], the index of each row's source), from the same forward pass."""
    _, mask = targets_and_mask(batch)
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
