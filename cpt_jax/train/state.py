"""Train state (step, params, optimizer state), its optimizer and its shardings."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx, struct
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from cpt_jax.config.model import ModelConfig
from cpt_jax.config.run import OptimizerConfig
from cpt_jax.model import Decoder
from cpt_jax.sharding.rules import DEFAULT_RULES, Sharder, state_shardings


@struct.dataclass
class TrainState:
    step: jax.Array  # global step (int32 scalar): the schedule is a function of it
    params: Any  # pure nested dict of arrays
    opt_state: Any


def abstract_model(cfg: ModelConfig, mesh: Mesh | None = None, rules=DEFAULT_RULES):
    """Graph definition and abstract parameters, without allocating anything."""
    sharder = Sharder(mesh, rules)
    model = nnx.eval_shape(lambda: Decoder(cfg, nnx.Rngs(0), sharder))
    graphdef, state = nnx.split(model)
    return graphdef, state


def abstract_params(cfg: ModelConfig):
    """Shape/dtype tree of the parameters, as a pure dict."""
    return nnx.to_pure_dict(abstract_model(cfg)[1])


def with_shardings(abstract: Any, shardings: Any) -> Any:
    """Attach target shardings to a shape/dtype tree (what orbax restores onto)."""
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract, shardings)


def param_shardings(cfg: ModelConfig, mesh: Mesh, rules=DEFAULT_RULES):
    _, state = abstract_model(cfg, mesh, rules)
    return nnx.to_pure_dict(state_shardings(state, mesh, rules))


def init_params(cfg: ModelConfig, mesh: Mesh, seed: int, rules=DEFAULT_RULES):
    """Random init directly into the target shardings (no full copy on one device)."""
    shardings = param_shardings(cfg, mesh, rules)

    @jax.jit
    def init():
        return nnx.to_pure_dict(nnx.state(Decoder(cfg, nnx.Rngs(seed))))

    return jax.jit(init, out_shardings=shardings)()


def make_optimizer(cfg: OptimizerConfig) -> optax.GradientTransformation:
    """AdamW direction without the learning rate.

    The step multiplies by lr = schedule(global_step) itself, instead of letting optax count
    steps: the schedule stays a function of the global step even when a new phase resets the
    optimizer state (carry: params), so the LR is continuous exactly as the plan says.
    """
    decay_mask = None
    if not cfg.decay_norms_and_biases:
        decay_mask = lambda params: jax.tree.map(lambda p: p.ndim >= 2, params)  # noqa: E731
    parts = []
    if cfg.grad_clip > 0:
        parts.append(optax.clip_by_global_norm(cfg.grad_clip))
    parts.append(optax.scale_by_adam(b1=cfg.b1, b2=cfg.b2, eps=cfg.eps))
    if cfg.weight_decay > 0:
        parts.append(optax.add_decayed_weights(cfg.weight_decay, mask=decay_mask))
    return optax.chain(*parts)


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


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
