"""Context parallelism's token order: each row's sequence split over the `context` mesh axis,
load-balanced for causal attention.

Split in plain order, the device holding the row's last tokens would attend to every key and
the first device to almost none. As in MaxText's and JAX's context-parallel designs, the row is
cut into 2 x context chunks and device j holds chunks j and 2 x context - 1 - j, so every device
does the same causal work. Everything per token (tokens, positions, segment ids, targets, loss
mask) is reordered together; targets are made before (a shift in the reordered row would pair
tokens that are not neighbours). Reordering is a reshape and a flip, so XLA moves whole chunks.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from cpt_jax.errors import ConfigError

AXIS = "context"


def context_size(mesh: Mesh | None) -> int:
    """How many devices split each row (1: no context parallelism)."""
    if mesh is None or AXIS not in mesh.shape:
        return 1
    return int(mesh.shape[AXIS])


def check_length(length: int, shards: int, where: str = "data.seq_len") -> None:
    if shards > 1 and length % (2 * shards):
        raise ConfigError(where, f"context parallelism over {shards} devices cuts each row into 2 x {shards} "
                                 f"equal chunks: {length} tokens do not split so; use a multiple of {2 * shards}")


def balanced_order(length: int, shards: int) -> np.ndarray:
    """The original index of each position of a reordered row (what `reorder` does to arange)."""
    chunks = np.arange(length, dtype=np.int32).reshape(2 * shards, -1)
    return np.concatenate([np.concatenate([chunks[j], chunks[2 * shards - 1 - j]]) for j in range(shards)])


def reorder(x: jax.Array, shards: int) -> jax.Array:
    """[B, L, ...] in natural order -> load-balanced order (axis 1)."""
    if shards == 1:
        return x
    b, length, *rest = x.shape
    chunks = x.reshape(b, 2 * shards, length // (2 * shards), *rest)
    pairs = jnp.stack([chunks[:, :shards], jnp.flip(chunks[:, shards:], axis=1)], axis=2)  # [B, s, 2, C, ...]
    return pairs.reshape(x.shape)


def restore(x: jax.Array, shards: int) -> jax.Array:
    """The inverse of `reorder` (axis 1): load-balanced -> natural order."""
    if shards == 1:
        return x
    b, length, *rest = x.shape
    pairs = x.reshape(b, shards, 2, length // (2 * shards), *rest)
    return jnp.concatenate([pairs[:, :, 0], jnp.flip(pairs[:, :, 1], axis=1)], axis=1).reshape(x.shape)


def reorder_rows(batch: dict, shards: int) -> dict:
    """Every per-token array of a batch ([B, L, ...] with the tokens' L) in load-balanced order."""
    length = batch["tokens"].shape[1]
    return {k: reorder(v, shards) if v.ndim >= 2 and v.shape[1] == length else v for k, v in batch.items()}
