"""The LM head fused with the per-token scores the loss and the task scorer need, so that the full
[B, L, V] logits never exist.

The fp32 logits of a whole batch are the largest activation of a large-vocabulary model (Llama 3:
128,256 x 8,192 x 4 bytes = 4.2 GB per row, plus their gradient). Everything downstream only needs
two numbers per token, log Z = logsumexp(logits) and the target's logit (nll = log Z - target,
z-loss = log Z^2), and optionally whether the target is the argmax. `token_scores` computes them
tile by tile: `tiles` slices of the vocabulary, each over chunks of `chunk` positions, with an
online logsumexp across the vocabulary tiles. Its backward pass (a custom VJP) recomputes each
tile's logits and turns them into the gradient of the hidden states (accumulated in fp32) and of
that tile of the head. So the program holds one chunk's logits, one tile of the head gathered over
the data-parallel devices, and one tile of the head's gradient, which is reduce-scattered onto the
head's own sharding before the next tile starts: the full head's gathered copy and unsharded fp32
gradient (2 x 2.1 GB for Llama 3 8B) never exist either. The vocabulary tiles are strided (tile i
holds ids i, i + tiles, ...), so a vocabulary sharded over `tensor` stays sharded in every tile.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable

import jax
import jax.numpy as jnp

LOGITS_CHUNK_BUDGET = 2 ** 26  # automatic chunk: fp32 logits elements of one chunk per device (256 MiB)
MIN_AUTO_CHUNK = 16  # the automatic chunk never goes below this many positions (loop overhead)
HEAD_TILE_BUDGET = 2 ** 27  # automatic tiles: bytes of one fp32 tile of the head (its gradient) per device

Constrain = Callable[[jax.Array, tuple], jax.Array]


def _no_constraint(x: jax.Array, axes: tuple) -> jax.Array:
    return x


def auto_chunk(rows_per_device: int, vocab_per_device: int, length: int) -> int:
    """The largest power of two of positions whose fp32 logits per device fit LOGITS_CHUNK_BUDGET
    (at least MIN_AUTO_CHUNK), and never longer than the row. vocab_per_device: of one tile."""
    fit = max(LOGITS_CHUNK_BUDGET // max(rows_per_device * vocab_per_device, 1), 1)
    return min(max(1 << (fit.bit_length() - 1), MIN_AUTO_CHUNK), length)


def auto_tiles(hidden_size: int, vocab_per_device: int) -> int:
    """The fewest vocabulary tiles (a power of two) whose fp32 head tile, gathered to the whole
    hidden size, fits HEAD_TILE_BUDGET."""
    tiles = 1
    while hidden_size * -(-vocab_per_device // tiles) * 4 > HEAD_TILE_BUDGET and tiles < vocab_per_device:
        tiles *= 2
    return tiles


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
    """fp32 logits of hidden [..., D] under the head [D, V], in hidden's (the compute) dtype."""
    return jnp.dot(hidden, head.astype(hidden.dtype), preferred_element_type=jnp.float32)


def token_scores(hidden: jax.Array, head: jax.Array, targets: jax.Array, chunk: int, tiles: int = 1,
                 constrain: Constrain = _no_constraint, greedy: bool = False,
                 vocab_multiple: int = 1) -> dict[str, jax.Array]:
    """scores_from_logits(hidden @ head, targets) for hidden [B, L, D] (compute dtype), head [D, V]
    (parameter dtype), targets [B, L], computed `chunk` positions (0: the whole row) and `tiles`
    vocabulary slices at a time; chunk 0 with one tile is the plain full-logits path (autodiff).
    `constrain(x, logical axes)` places the arrays (the model's Sharder). L need not be a multiple
    of `chunk`, nor V of `tiles`: both are padded, the padding masked or cut off. vocab_multiple:
    each tile's width is a multiple of it (the devices the vocabulary is split over)."""
    length = hidden.shape[1]
    chunk = length if chunk <= 0 else min(chunk, length)
    if chunk == length and tiles <= 1:
        logits = constrain(head_logits(hidden, head), ("batch", "length", "act_vocab"))
        return scores_from_logits(logits, targets, greedy)
    spec = _Tiling.of(chunk, tiles, head.shape[1], vocab_multiple, constrain)
    if greedy:  # task scoring: no gradient
        return _forward(spec, hidden, head, targets, greedy=True)
    log_z, target = _scores(spec, hidden, head, targets)
    return {"log_z": log_z, "target": target}


@dataclass(frozen=True)
class _Tiling:
    """How the head is cut: the row into chunks, the vocabulary into `tiles` strided tiles of
    `width` columns (padded). Hashable: the custom VJP's static argument."""

    chunk: int
    tiles: int
    vocab: int
    width: int
    constrain: Constrain

    @classmethod
    def of(cls, chunk: int, tiles: int, vocab: int, multiple: int, constrain: Constrain) -> "_Tiling":
        tiles = max(tiles, 1)
        step = tiles * max(multiple, 1)
        return cls(chunk, tiles, vocab, -(-vocab // step) * step // tiles, constrain)

    def head_tiles(self, head: jax.Array) -> jax.Array:
        """[D, V] -> [tiles, D, width]; tile i holds vocabulary ids i, i + tiles, ... (zero padded)."""
        pad = self.tiles * self.width - self.vocab
        if pad:
            head = jnp.pad(head, ((0, 0), (0, pad)))
        return head.reshape(head.shape[0], self.width, self.tiles).transpose(2, 0, 1)

    def head_from_tiles(self, tiles: jax.Array) -> jax.Array:
        """Inverse of head_tiles (the padding cut off)."""
        n, d, w = tiles.shape
        return tiles.transpose(1, 2, 0).reshape(d, w * n)[:, :self.vocab]

    def chunks(self, x: jax.Array, axes: tuple) -> jax.Array:
        """[B, L, ...] -> [n, B, chunk, ...], the row zero padded to a whole number of chunks."""
        batch, length = x.shape[:2]
        n = -(-length // self.chunk)
        if pad := n * self.chunk - length:
            x = jnp.pad(x, ((0, 0), (0, pad)) + ((0, 0),) * (x.ndim - 2))
        x = x.reshape(batch, n, self.chunk, *x.shape[2:]).swapaxes(0, 1)
        return self.constrain(x, (None, *axes))

    def unchunk(self, x: jax.Array, length: int) -> jax.Array:
        """Inverse of chunks."""
        n, batch = x.shape[:2]
        return x.swapaxes(0, 1).reshape(batch, n * self.chunk, *x.shape[3:])[:, :length]

    def gathered(self, w: jax.Array, dtype) -> jax.Array:
        """A head tile [D, width] in `dtype`, whole over the data-parallel devices (as a layer's
        weight is gathered for its matmul); its vocabulary stays split over `tensor`."""
        return self.constrain(w.astype(dtype), (None, "vocab"))

    def logits(self, h: jax.Array, w: jax.Array, i: jax.Array) -> tuple[jax.Array, jax.Array]:
        """fp32 logits of a chunk h [B, c, D] under a gathered tile w [D, width], and the tile's
        vocabulary ids; padded ids get -inf."""
        logits = self.constrain(jnp.dot(h, w, preferred_element_type=jnp.float32), ("batch", "length", "act_vocab"))
        ids = jax.lax.broadcasted_iota(jnp.int32, logits.shape, 2) * self.tiles + i
        return jnp.where(ids < self.vocab, logits, -jnp.inf), ids


def _forward(spec: _Tiling, hidden, head, targets, greedy: bool = False) -> dict[str, jax.Array]:
    """Online logsumexp over the vocabulary tiles; each tile's logits chunk by chunk."""
    length = hidden.shape[1]
    hs = spec.chunks(hidden, ("batch", "length", "act_embed"))
    ts = spec.chunks(targets, ("batch", "length"))

    def tile(carry, x):
        w, i = x

        w = spec.gathered(w, hidden.dtype)

        def chunk_stats(_, y):
            logits, ids = spec.logits(y[0], w, i)
            top = jnp.max(logits, axis=-1)
            out = {"max": top, "sum": jnp.sum(jnp.exp(logits - top[..., None]), axis=-1),
                   "target": jnp.sum(jnp.where(ids == y[1][..., None], logits, 0.0), axis=-1)}
            if greedy:
                out["first"] = jnp.min(jnp.where(logits == top[..., None], ids, spec.tiles * spec.width), axis=-1)
            return None, out

        _, s = jax.lax.scan(chunk_stats, None, (hs, ts))
        top = jnp.maximum(carry["max"], s["max"])
        new = {"max": top, "target": carry["target"] + s["target"],
               "sum": carry["sum"] * jnp.exp(carry["max"] - top) + s["sum"] * jnp.exp(s["max"] - top)}
        if greedy:  # the first argmax: a higher maximum, or the same one at a smaller id
            better = (s["max"] > carry["max"]) | ((s["max"] == carry["max"]) & (s["first"] < carry["first"]))
            new["first"] = jnp.where(better, s["first"], carry["first"])
        return new, None

    zeros = jnp.zeros(ts.shape, jnp.float32)
    init = {"max": jnp.full(ts.shape, -jnp.inf), "sum": zeros, "target": zeros}
    if greedy:
        init["first"] = jnp.full(ts.shape, spec.tiles * spec.width, jnp.int32)
    stats, _ = jax.lax.scan(tile, init, (spec.head_tiles(head), jnp.arange(spec.tiles)))
    out = {"log_z": stats["max"] + jnp.log(stats["sum"]), "target": stats["target"]}
    if greedy:
        out["greedy"] = stats["first"] == ts
    return {k: spec.unchunk(v, length) for k, v in out.items()}


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _scores(spec: _Tiling, hidden, head, targets):
    out = _forward(spec, hidden, head, targets)
    return out["log_z"], out["target"]


def _scores_fwd(spec, hidden, head, targets):
    log_z, target = _scores(spec, hidden, head, targets)
    return (log_z, target), (hidden, head, targets, log_z)


def _scores_bwd(spec, residuals, cotangents):
    """d log_z / d logits = softmax, d target / d logits = one-hot; per tile, the hidden states'
    gradient accumulates in fp32 and the tile's head gradient is reduce-scattered onto the head's
    sharding ('embed', 'vocab') before the next tile."""
    hidden, head, targets, log_z = residuals
    g_log_z, g_target = cotangents
    length = hidden.shape[1]
    hs = spec.chunks(hidden, ("batch", "length", "act_embed"))
    xs = tuple(spec.chunks(x, ("batch", "length")) for x in (targets, log_z, g_log_z, g_target))

    def tile(dh, x):
        w, i = x
        w = spec.gathered(w, hidden.dtype)

        def chunk_grads(dw, y):
            h, t, lz, gz, gt, dh_c = y
            logits, ids = spec.logits(h, w, i)
            dlogits = gz[..., None] * jnp.exp(logits - lz[..., None]) + jnp.where(ids == t[..., None], gt[..., None], 0.0)
            # the fp32 gradient of the logits against the compute-dtype head and hidden states (mixed
            # dots, as autodiff of head_logits makes them: no fp32 copy of the head tile)
            dh_c = dh_c + jax.lax.dot_general(dlogits, w, (((2,), (1,)), ((), ())), preferred_element_type=jnp.float32)
            dw = dw + jax.lax.dot_general(h, dlogits, (((0, 1), (0, 1)), ((), ())), preferred_element_type=jnp.float32)
            return spec.constrain(dw, (None, "vocab")), spec.constrain(dh_c, ("batch", "length", "act_embed"))

        dw0 = spec.constrain(jnp.zeros(w.shape, jnp.float32), (None, "vocab"))  # this device's rows' share
        dw, dh = jax.lax.scan(chunk_grads, dw0, (hs, *xs, dh))
        return dh, spec.constrain(dw, ("embed", "vocab"))

    dh0 = jnp.zeros(hs.shape, jnp.float32)
    dh, dws = jax.lax.scan(tile, dh0, (spec.head_tiles(head), jnp.arange(spec.tiles)))
    d_head = spec.head_from_tiles(dws).astype(head.dtype)
    return spec.unchunk(dh, length).astype(hidden.dtype), d_head, None


_scores.defvjp(_scores_fwd, _scores_bwd)
