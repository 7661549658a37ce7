"""Train state (step, params, optimizer state, optional weight EMA), its optimizer and its shardings."""

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
    ema: Any = None  # exponential moving average of params (optimizer.ema_decay > 0), sharded like them


def ema_update(ema: Any, params: Any, decay: float) -> Any:
    """ema <- decay * ema + (1 - decay) * params after each step (in fp32, stored in the
    parameters' dtype); None (EMA off) stays None."""
    if ema is None:
        return None
    return jax.tree.map(lambda e, p: (decay * e.astype(jnp.float32) + (1.0 - decay) * p.astype(jnp.float32))
                        .astype(e.dtype), ema, params)


def train_state_shardings(tx: optax.GradientTransformation, params_shardings, abstract_params, mesh: Mesh,
                          ema: bool = False, freeze: Any = None):
    """Optimizer moments (and the EMA, when kept) follow their parameter's sharding; counters are
    replicated. With `freeze` (train/freeze.py) the optimizer holds state for its trainable view only."""
    view = freeze.view if freeze is not None else (lambda t: t)
    abstract_opt = jax.eval_shape(tx.init, view(abstract_params))
    opt_shardings = optax.tree_map_params(
        tx, lambda _, s: s, abstract_opt, view(params_shardings),
        transform_non_params=lambda _: replicated(mesh),
        is_leaf=lambda x: isinstance(x, NamedSharding))
    return TrainState(step=replicated(mesh), params=params_shardings, opt_state=opt_shardings,
                      ema=params_shardings if ema else None)


def init_opt_state(tx, params, shardings: TrainState, freeze: Any = None):
    view = freeze.view if freeze is not None else (lambda t: t)
    return jax.jit(lambda p: tx.init(view(p)), out_shardings=shardings.opt_state)(params)


def start_ema(params: Any, shardings: TrainState, ema: Any = None) -> Any:
    """The EMA a phase starts with: `ema` when carried, else a copy of the starting params (a
    buffer of its own: the train state is donated to each step); None when EMA is off."""
    if shardings.ema is None:
        return None
    if ema is not None:
        return ema
    return jax.jit(lambda p: jax.tree.map(jnp.copy, p), out_shardings=shardings.ema)(params)


def new_train_state(tx, params, shardings: TrainState, step: int = 0, ema: Any = None,
                    freeze: Any = None) -> TrainState:
    step_arr = jax.device_put(jnp.asarray(step, jnp.int32), shardings.step)
    return TrainState(step=step_arr, params=params, opt_state=init_opt_state(tx, params, shardings, freeze),
                      ema=start_ema(params, shardings, ema))
