"""The decoder LM: embeddings, a stack of pre-norm blocks, final norm, LM head.

The blocks are either one block scanned over weights stacked on a leading 'layers' axis
(`scan_layers`, the default: the compiled program and its compile time do not grow with depth)
or a Python list unrolled into the program. Both compute the same function; params.py converts
one layout into the other.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from cpt_jax.model.config import ModelConfig
from cpt_jax.model.layers import Block, RMSNorm, dtype_of, make_param
from cpt_jax.model.lm_head import auto_chunk, auto_tiles, head_logits, token_scores
from cpt_jax.sharding.context import context_size, reorder, restore
from cpt_jax.sharding.rules import Sharder

REMAT_POLICIES = {
    "full": None,  # recompute everything in the backward pass
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
}
LAYERS_AXIS = "layers"  # logical name of the stacking axis (mapped to no mesh axis)


def logits_tiling(cfg: ModelConfig, sharder: Sharder, rows: int, length: int) -> tuple[int, int]:
    """(positions per LM-head chunk, vocabulary tiles) for [rows, length] batches placed by
    `sharder`: cfg.logits_chunk and cfg.logits_vocab_tiles, or automatic when null (lm_head.auto_tiles
    of the hidden size and the vocabulary per device, then lm_head.auto_chunk of the rows per device
    and one tile per device). logits_chunk 0 with automatic tiles: the full logits, one tile. A
    function of the config and the mesh alone, so the memory estimate follows the same rule."""
    vocab = -(-cfg.vocab_size // sharder.ways("act_vocab"))
    tiles = cfg.logits_vocab_tiles
    if tiles is None:
        tiles = 1 if cfg.logits_chunk == 0 else auto_tiles(cfg.hidden_size, vocab)
    tiles = min(tiles, cfg.vocab_size)
    chunk = cfg.logits_chunk
    if chunk is None:
        chunk = auto_chunk(-(-rows // sharder.ways("batch")), -(-vocab // tiles), length)
    return chunk, tiles


def _run_block(block: Block, x, positions, segment_ids):
    return block(x, positions, segment_ids)


def stacked_blocks(cfg: ModelConfig, sharder: Sharder, rngs: nnx.Rngs) -> Block:
    """One Block whose every parameter has a leading [num_layers] axis (independent inits)."""

    @nnx.split_rngs(splits=cfg.num_layers)
    @nnx.vmap(in_axes=0, out_axes=0, axis_size=cfg.num_layers)
    def make(rngs):
        return Block(cfg, sharder, rngs)

    blocks = make(rngs)
    for _, var in nnx.iter_graph(blocks):
        if isinstance(var, nnx.Param):
            var.set_metadata(logical_axes=(LAYERS_AXIS, *var.get_metadata()["logical_axes"]))
    return blocks


class Decoder(nnx.Module):
    """Llama / Mistral / Qwen2 / Qwen3 decoder; the family differences live in ModelConfig."""

    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs, sharder: Sharder | None = None):
        sharder = sharder or Sharder()
        self.cfg, self.sharder = cfg, sharder
        pdt = dtype_of(cfg.param_dtype)
        init = nnx.initializers.normal(cfg.initializer_range)
        self.embed = make_param(rngs, init, (cfg.vocab_size, cfg.hidden_size), ("vocab", "embed"), pdt)
        if cfg.scan_layers:
            self.layers = stacked_blocks(cfg, sharder, rngs)
        else:
            self.layers = nnx.List([Block(cfg, sharder, rngs) for _ in range(cfg.num_layers)])
        self.final_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, cfg, rngs)
        if not cfg.tie_embeddings:
            self.lm_head = make_param(rngs, init, (cfg.hidden_size, cfg.vocab_size), ("embed", "vocab"), pdt)

    def __call__(self, tokens: jax.Array, positions: jax.Array | None = None,
                 segment_ids: jax.Array | None = None, balanced: bool = False) -> jax.Array:
        """tokens, positions, segment_ids: [batch, length] int32. Returns the full fp32 logits, for
        what truly needs them (sampling); losses and scores use `hidden` and `scores` instead."""
        return self.logits(self.hidden(tokens, positions, segment_ids, balanced))

    def hidden(self, tokens: jax.Array, positions: jax.Array | None = None,
               segment_ids: jax.Array | None = None, balanced: bool = False) -> jax.Array:
        """The final-normed hidden states [batch, length, hidden] (compute dtype), before the LM head.
        With a `context` mesh axis the rows run in its load-balanced order: natural order in and
        out, unless `balanced` (the loss path: inputs reordered already, the output left so).

        segment_ids tell packed documents apart (attention never crosses them); padding is
        its own segment (0) and is excluded by the loss mask, not here.
        """
        cfg = self.cfg
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(tokens.shape[1], dtype=jnp.int32), tokens.shape)
        if segment_ids is None:
            segment_ids = jnp.ones_like(tokens)
        shards = 1 if balanced else context_size(self.sharder.mesh)
        tokens, positions, segment_ids = (reorder(a, shards) for a in (tokens, positions, segment_ids))
        x = jnp.take(self.embed[...], tokens, axis=0).astype(dtype_of(cfg.dtype))
        x = self.sharder.constrain(x, ("batch", "length", "act_embed"))
        x = self._scanned(x, positions, segment_ids) if cfg.scan_layers else self._unrolled(x, positions, segment_ids)
        return restore(self.final_norm(x), shards)

    def head_weight(self) -> jax.Array:
        """The LM head [hidden, vocab] in the parameter dtype (the embedding's transpose when tied);
        head_logits casts it to the compute dtype."""
        return self.embed[...].T if self.cfg.tie_embeddings else self.lm_head[...]

    def logits(self, hidden: jax.Array) -> jax.Array:
        """Full fp32 logits [batch, length, vocab] of `hidden`."""
        return self.sharder.constrain(head_logits(hidden, self.head_weight()), ("batch", "length", "act_vocab"))

    def logits_tiling(self, rows: int, length: int) -> tuple[int, int]:
        """(positions per LM-head chunk, vocabulary tiles) for [rows, length] batches on this mesh."""
        return logits_tiling(self.cfg, self.sharder, rows, length)

    def scores(self, hidden: jax.Array, targets: jax.Array, greedy: bool = False) -> dict[str, jax.Array]:
        """Per-token {'log_z', 'target'} (and 'greedy') of `hidden` [B, L, D] against `targets`
        [B, L], the LM head applied tile by tile (lm_head.token_scores): the full logits never exist."""
        chunk, tiles = self.logits_tiling(*targets.shape)
        return token_scores(hidden, self.head_weight(), targets, chunk, tiles, self.sharder.constrain, greedy,
                            vocab_multiple=self.sharder.ways("act_vocab"))

    def _unrolled(self, x, positions, segment_ids):
        run = _run_block
        if self.cfg.remat != "none":
            run = nnx.remat(_run_block, policy=REMAT_POLICIES[self.cfg.remat])
        for block in self.layers:
            x = run(block, x, positions, segment_ids)
        return x

    def _scanned(self, x, positions, segment_ids):
        """lax.scan over the stacked weights; each iteration rebuilds one Block from its slice.
        The remat policy wraps the body, so it applies per layer as in the unrolled model. With
        `unroll`, an iteration runs several blocks (all of them: no loop at all)."""
        graphdef, stacked = nnx.split(self.layers)

        def body(carry, layer_state):
            return nnx.merge(graphdef, layer_state)(carry, positions, segment_ids), None

        if self.cfg.remat != "none":
            body = jax.checkpoint(body, policy=REMAT_POLICIES[self.cfg.remat], prevent_cse=False)
        x, _ = jax.lax.scan(body, x, stacked, unroll=self.cfg.layers_per_scan_iteration)
        return x
