"""Train state (step, params, optimizer state), its optimizer and its shardings."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct
from jax.sharding import Mesh, NamedSharding

from cpt_jax.sharding.placement import replicated


@struct.dataclass
class TrainState:
    step: jax.Array  # global step (int32 scalar): the schedule is a function of it
    params: Any  # pure nested dict of arrays
    opt_state: Any


def train_state_shardings(tx: optax.GradientTransformation, params_shardings, abstract_params, mesh: Mesh):
    """Optimizer moments follow their parameter's sharding; counters are replicated."""
    abstract_opt = jax.eval_shape(tx.init, abstract_params)
    opt_shardings = optax.tree_map_params(
        tx, lambda _, s: s, abstract_opt, params_shardings,
        transform_non_params=lambda _: replicated(mesh),
        is_leaf=lambda x: isinstance(x, NamedSharding))
    return TrainState(step=replicated(mesh), params=params_shardings, opt_state=opt_shardings)


def init_opt_state(tx, params, shardings: TrainState):
    return jax.jit(tx.init, out_shardings=shardings.opt_state)(params)


def new_train_state(tx, params, shardings: TrainState, step: int = 0) -> TrainState:
    step_arr = jax.device_put(jnp.asarray(step, jnp.int32), shardings.step)
    return TrainState(step=step_arr, params=params, opt_state=init_opt_state(tx, params, shardings))
