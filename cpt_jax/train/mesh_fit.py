"""Does a run's model and batch fit its mesh? The run's side of `sharding.checks`: which sizes
the mesh splits (parameter dimensions by their logical axes, the micro-batch and the eval batch)."""

from __future__ import annotations

import jax
from flax import nnx
from jax.sharding import Mesh

from cpt_jax.model.config import ModelConfig
from cpt_jax.model.params import abstract_model
from cpt_jax.sharding.checks import (
    Misfit,
    batch_misfits,
    check_fits,
    param_misfits,
    suggest_mesh,
)
from cpt_jax.sharding.context import check_length, context_size
from cpt_jax.sharding.rules import DEFAULT_RULES, param_axes
from cpt_jax.train.config import RunConfig

# Logical axis -> the config key that sets its size.
MODEL_KEYS = {"embed": "model.hidden_size", "vocab": "model.vocab_size", "mlp": "model.intermediate_size",
              "heads": "model.num_heads", "kv_heads": "model.num_kv_heads", "head_dim": "model.head_dim"}


def model_arrays(model: ModelConfig) -> list[tuple[str, tuple, tuple]]:
    """(name, shape, logical axes) of every parameter."""
    _, state = abstract_model(model)
    axes = jax.tree_util.tree_flatten_with_path(nnx.to_pure_dict(param_axes(state)),
                                                is_leaf=lambda x: isinstance(x, tuple))[0]
    shapes = jax.tree.leaves(nnx.to_pure_dict(state))
    return [(jax.tree_util.keystr(p, simple=True, separator="."), tuple(x.shape), a)
            for (p, a), x in zip(axes, shapes)]


def run_batches(cfg: RunConfig) -> dict[str, int]:
    """Batch sizes split over the data-parallel devices, by the config key that sets them."""
    accum = cfg.optimizer.grad_accum
    key = "data.global_batch_size" if accum == 1 else "data.global_batch_size / optimizer.grad_accum"
    batches = {key: cfg.data.global_batch_size // accum}
    for i, phase in enumerate(cfg.phases):  # phases may change the batch (a batch-size ramp)
        rows = getattr(phase, "global_batch_size", None)
        if rows:
            batches[f"phases[{i}].global_batch_size" + ("" if accum == 1 else " / optimizer.grad_accum")] = rows // accum
    if cfg.eval.batch_size:
        batches["eval.batch_size"] = cfg.eval.batch_size
    return batches


def run_misfits(cfg: RunConfig, rules=DEFAULT_RULES):
    """shape -> the sizes of this run that a mesh of that shape does not divide."""
    arrays, batches = model_arrays(cfg.model), run_batches(cfg)

    def misfits(shape: dict[str, int]) -> list[Misfit]:
        return batch_misfits(batches, shape) + param_misfits(arrays, shape, MODEL_KEYS, rules)

    return misfits


def check_run_fits_mesh(cfg: RunConfig, mesh: Mesh, rules=DEFAULT_RULES) -> None:
    """Raise ConfigError naming the first size the mesh does not divide, and a mesh that fits."""
    check_length(cfg.data.seq_len, context_size(mesh))
    check_fits(mesh.size, dict(mesh.shape), run_misfits(cfg, rules), (cfg.mesh.dcn_data, cfg.mesh.dcn_fsdp))


def fitting_mesh(cfg: RunConfig, num_devices: int) -> dict[str, int] | None:
    """A (data, fsdp, tensor) split of `num_devices` that the run fits, as close to all-fsdp as
    possible; None if there is none."""
    misfits = run_misfits(cfg)
    return suggest_mesh(num_devices, lambda s: not misfits(s), {"data": 1, "fsdp": num_devices, "tensor": 1})
