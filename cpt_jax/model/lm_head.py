"""The LM head fused with the per-token scores the loss and the task scorer need, so that the full
[B, L, V] logits never exist.

The fp32 logits of a whole batch are the largest activation of a large-vocabulary model (Llama 3:
128,256 x 8,192 x 4 bytes = 4.2 GB per row, plus their gradient). Everything downstream only needs
two numbers per token, log Z = logsumexp(logits) and the target's logit (nll = log Z - target,
z-loss = log Z^2), and optionally whether the target is the argmax. `token_scores` computes them
over chunks of the sequence in a `lax.scan` whose body is rematerialised (`jax.checkpoint`): the
forward keeps only one chunk's logits, and the backward recomputes each chunk's logits and turns
them into the gradient of that chunk's hidden states and of the head, one chunk at a time.
Everything reduces over the vocabulary axis, so a vocabulary sharded over `tensor` stays sharded.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

LOGITS_CHUNK_BUDGET = 2 ** 26  # automatic chunk: fp32 logits elements of one chunk per device (256 MiB)
MIN_AUTO_CHUNK = 16  # the automatic chunk never goes below this many positions (loop overhead)


def auto_chunk(rows_per_device: int, vocab_per_device: int, length: int) -> int:
    """The largest power of two of positions whose fp32 logits per device fit LOGITS_CHUNK_BUDGET
    (at least MIN_AUTO_CHUNK), and never longer than the row."""
    fit = max(LOGITS_CHUNK_BUDGET // max(rows_per_device * vocab_per_device, 1), 1)
    return min(max(1 << (fit.bit_length() - 1), MIN_AUTO_CHUNK), length)


def scores_from_logits(logits: jax.Array, targets: jax.Array, greedy: bool = False) -> dict[str, jax.Array]:
    """{'log_z', 'target'} (fp32, logits.shape[:-1]) and with `greedy` a bool 'greedy': the target is
    the first argmax, as torch's argmax picks it. Reductions over the vocabulary only (no gather), so
    they work on a vocabulary sharded over devices."""
    logits = logits.astype(jnp.float32)
    ids = jax.lax.broadcasted_iota(jnp.int32, logits.shape, logits.ndim - 1)
    hit = ids == targets[..., None]
    out = {"log_z": jax.nn.logsumexp(logits, axis=-1), "target": jnp.sum(jnp.where(hit, logits, 0.0), axis=-1)}
    if greedy:
        top = jax.lax.stop_gradient(jnp.max(logits, axis=-1, keepdims=True))
        first = jnp.min(jnp.where(logits == top, ids, logits.shape[-1]), axis=-1)
        out["greedy"] = first == targets
    return out


def head_logits(hidden: jax.Array, head: jax.Array) -> jax.Array:
    """fp32 logits of hidden [..., D] under the head [D, V], in hidden's (the compute) dtype. The
    head comes in its parameter dtype and is cast here, inside the chunk loop, so that the loop
    accumulates the head's gradient in that dtype (fp32), not in bf16."""
    return jnp.dot(hidden, head.astype(hidden.dtype), preferred_element_type=jnp.float32)


def token_scores(hidden: jax.Array, head: jax.Array, targets: jax.Array, chunk: int,
                 constrain: Callable[[jax.Array, tuple], jax.Array] = lambda x, axes: x,
                 greedy: bool = False) -> dict[str, jax.Array]:
    """scores_from_logits(hidden @ head, targets) for hidden [B, L, D] (compute dtype), head [D, V]
    (parameter dtype), targets [B, L], computed
    `chunk` positions at a time (0: all at once, the full logits). `constrain(x, logical axes)`
    places the chunk's logits (the model's Sharder). L need not be a multiple of `chunk`: the last
    chunk is padded and the padding cut off."""
    batch, length, dim = hidden.shape
    if chunk <= 0 or chunk >= length:
        logits = constrain(head_logits(hidden, head), ("batch", "length", "act_vocab"))
        return scores_from_logits(logits, targets, greedy)
    n = -(-length // chunk)
    pad = n * chunk - length
    if pad:
        hidden = jnp.pad(hidden, ((0, 0), (0, pad), (0, 0)))
        targets = jnp.pad(targets, ((0, 0), (0, pad)))
    hs = constrain(hidden.reshape(batch, n, chunk, dim).swapaxes(0, 1), (None, "batch", "length", "act_embed"))
    ts = targets.reshape(batch, n, chunk).swapaxes(0, 1)

    @jax.checkpoint
    def one_chunk(h, t, w):
        logits = constrain(head_logits(h, w), ("batch", "length", "act_vocab"))
        return scores_from_logits(logits, t, greedy)

    _, out = jax.lax.scan(lambda carry, x: (carry, one_chunk(x[0], x[1], head)), None, (hs, ts))
    return {k: v.swapaxes(0, 1).reshape(batch, n * chunk)[:, :length] for k, v in out.items()}
