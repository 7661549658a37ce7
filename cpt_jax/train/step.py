"""The jitted train step: explicit in/out shardings, donated state, gradient accumulation."""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding

from cpt_jax.train.optimizer import OptimizerConfig
from cpt_jax.sharding.context import context_size, reorder_rows
from cpt_jax.sharding.placement import BATCH_AXES, batch_sharding, replicated
from cpt_jax.sharding.rules import logical_to_spec
from cpt_jax.train.freeze import Freeze
from cpt_jax.train.loss import model_loss_sums, targets_and_mask
from cpt_jax.train.state import TrainState, ema_update


def _forward_sums(graphdef, params, batch, z_loss, num_sources=0):
    model = nnx.merge(graphdef, params)
    shards = context_size(model.sharder.mesh)
    if shards > 1:  # context parallelism: shift targets in natural order, then reorder every per-token array
        targets, mask = targets_and_mask(batch)
        batch = reorder_rows({**batch, "targets": targets, "loss_mask": mask}, shards)
    return model_loss_sums(model, batch, z_loss, num_sources, balanced=True)


def _zero_sums(num_sources: int) -> dict[str, jax.Array]:
    sums = {k: jnp.zeros((), jnp.float32) for k in ("nll_sum", "tokens", "z_sum")}
    if num_sources:
        sums["source_nll"] = sums["source_tokens"] = jnp.zeros((num_sources,), jnp.float32)
    return sums


def make_train_step(graphdef, tx: optax.GradientTransformation, schedule: Callable,
                    opt_cfg: OptimizerConfig, mesh: Mesh | None = None, num_sources: int = 0,
                    freeze: Freeze | None = None) -> Callable:
    """Pure step function (state, batch) -> (state, metrics); jit it with `jit_train_step`.

    num_sources > 0 (len(data.sources)): metrics also hold 'source_nll' and 'source_tokens',
    [num_sources] sums from the same forward pass; `per_source_losses` turns them into losses.
    freeze: gradients, updates and the optimizer state cover `freeze.view(params)` only."""
    accum = opt_cfg.grad_accum
    freeze = freeze or Freeze({})

    def objective(trainable, params, micro):
        sums = _forward_sums(graphdef, freeze.merge(trainable, params), micro, opt_cfg.z_loss, num_sources)
        return sums["nll_sum"] + sums["z_sum"], sums

    grad_fn = jax.grad(objective, has_aux=True)

    def micro_batches(batch):
        # Rows i*accum + j form micro-batch j: each device keeps its own rows, no reshuffle.
        def split(x):
            x = x.reshape(x.shape[0] // accum, accum, *x.shape[1:]).swapaxes(0, 1)
            if mesh is not None:
                x = jax.lax.with_sharding_constraint(
                    x, NamedSharding(mesh, logical_to_spec((None, *BATCH_AXES), mesh=mesh)))
            return x
        return jax.tree.map(split, batch)

    def step_fn(state: TrainState, batch: dict):
        trainable = freeze.view(state.params)
        if accum == 1:
            grads, sums = grad_fn(trainable, state.params, batch)
        else:
            def body(carry, micro):
                g, s = grad_fn(trainable, state.params, micro)
                return jax.tree.map(jnp.add, carry, (g, s)), None
            zeros = (jax.tree.map(jnp.zeros_like, trainable), _zero_sums(num_sources))
            (grads, sums), _ = jax.lax.scan(body, zeros, micro_batches(batch))
        count = jnp.maximum(sums["tokens"], 1.0)
        grads = jax.tree.map(lambda g: g / count, grads)
        lr = schedule(state.step)
        direction, opt_state = tx.update(grads, state.opt_state, trainable)
        trained = optax.apply_updates(trainable, jax.tree.map(lambda u: -lr * u, direction))
        params = freeze.merge(trained, state.params)
        metrics = {
            "loss": sums["nll_sum"] / count,
            "z_loss": sums["z_sum"] / count,
            "tokens": sums["tokens"],
            "grad_norm": optax.tree.norm(grads),
            "lr": jnp.asarray(lr, jnp.float32),
        }
        if num_sources:
            metrics["source_nll"], metrics["source_tokens"] = sums["source_nll"], sums["source_tokens"]
        ema = ema_update(state.ema, params, opt_cfg.ema_decay)
        return TrainState(step=state.step + 1, params=params, opt_state=opt_state, ema=ema), metrics

    return step_fn


def jit_train_step(step_fn: Callable, state_shardings: TrainState, mesh: Mesh) -> Callable:
    """Explicit shardings in and out; the old state is donated so updates happen in place."""
    return jax.jit(step_fn,
                   in_shardings=(state_shardings, batch_sharding(mesh)),
                   out_shardings=(state_shardings, replicated(mesh)),
                   donate_argnums=(0,))


def make_eval_step(graphdef, params_shardings, mesh: Mesh) -> Callable:
    """(params, batch) -> {'nll_sum', 'tokens'}: sums, so several batches average exactly."""
    def eval_fn(params, batch):
        sums = _forward_sums(graphdef, params, batch, 0.0)
        return {"nll_sum": sums["nll_sum"], "tokens": sums["tokens"]}

    return jax.jit(eval_fn, in_shardings=(params_shardings, batch_sharding(mesh)),
                   out_shardings=replicated(mesh))
