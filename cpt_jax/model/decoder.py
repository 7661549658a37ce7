"""The decoder LM: embeddings, a stack of pre-norm blocks, final norm, LM head."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from cpt_jax.config.model import ModelConfig
from cpt_jax.model.layers import Block, RMSNorm, dtype_of, make_param
from cpt_jax.sharding.rules import Sharder

REMAT_POLICIES = {
    "full": None,  # recompute everything in the backward pass
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
}


def _run_block(block: Block, x, positions, segment_ids):
    return block(x, positions, segment_ids)


class Decoder(nnx.Module):
    """Llama / Mistral / Qwen2 / Qwen3 decoder; the family differences live in ModelConfig."""

    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs, sharder: Sharder | None = None):
        sharder = sharder or Sharder()
        self.cfg, self.sharder = cfg, sharder
        pdt = dtype_of(cfg.param_dtype)
        init = nnx.initializers.normal(cfg.initializer_range)
        self.embed = make_param(rngs, init, (cfg.vocab_size, cfg.hidden_size), ("vocab", "embed"), pdt)
        self.layers = nnx.List([Block(cfg, sharder, rngs) for _ in range(cfg.num_layers)])
        self.final_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, cfg, rngs)
        if not cfg.tie_embeddings:
            self.lm_head = make_param(rngs, init, (cfg.hidden_size, cfg.vocab_size), ("embed", "vocab"), pdt)

    def __call__(self, tokens: jax.Array, positions: jax.Array | None = None,
                 segment_ids: jax.Array | None = None) -> jax.Array:
        """tokens, positions, segment_ids: [batch, length] int32. Returns fp32 logits.

        segment_ids tell packed documents apart (attention never crosses them); padding is
        its own segment (0) and is excluded by the loss mask, not here.
        """
        cfg = self.cfg
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(tokens.shape[1], dtype=jnp.int32), tokens.shape)
        if segment_ids is None:
            segment_ids = jnp.ones_like(tokens)
        dt = dtype_of(cfg.dtype)
        x = jnp.take(self.embed[...], tokens, axis=0).astype(dt)
        x = self.sharder.constrain(x, ("batch", "length", "act_embed"))
        run = _run_block
        if cfg.remat != "none":
            run = nnx.remat(_run_block, policy=REMAT_POLICIES[cfg.remat])
        for block in self.layers:
            x = run(block, x, positions, segment_ids)
        x = self.final_norm(x)
        head = self.embed[...].T if cfg.tie_embeddings else self.lm_head[...]
        logits = jnp.dot(x, head.astype(dt), preferred_element_type=jnp.float32)
        return self.sharder.constrain(logits, ("batch", "length", "act_vocab"))
