"""Where a phase's parameters come from: scratch, the previous phase, an HF folder or a checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax

from cpt_jax.cli.errors import UserError
from cpt_jax.config.model import ModelConfig
from cpt_jax.train.state import abstract_params, init_params


def parse_ckpt_ref(ref: str) -> tuple[str, int | None]:
    """'dir' or 'dir@step'."""
    path, _, step = ref.rpartition("@") if "@" in ref else (ref, "", "")
    if step and not step.isdigit():
        raise UserError(f"checkpoint reference {ref!r}: the part after '@' must be a step number")
    return path, int(step) if step else None


def _shapes(cfg: ModelConfig) -> dict:
    """{key path: shape} of every parameter of the model `cfg` describes."""
    leaves = jax.tree_util.tree_flatten_with_path(abstract_params(cfg))[0]
    return {path: tuple(x.shape) for path, x in leaves}


def check_compatible(loaded: ModelConfig, expected: ModelConfig, where: str) -> None:
    """Refuse a start point whose tensors do not match the run's model, naming the first one."""
    want_shapes, got_shapes = (_shapes(cfg) for cfg in (expected, loaded))
    for path, shape in want_shapes.items():
        name = jax.tree_util.keystr(path, simple=True, separator=".")
        if path not in got_shapes:
            raise UserError(f"{where}: tensor {name} is missing from the start point; its model config "
                            "differs from the run's model section")
        if got_shapes[path] != shape:
            raise UserError(f"{where}: tensor {name} has shape {got_shapes[path]} but the run's model "
                            f"needs {shape}; make the run's model section match the start point")
    extra = set(got_shapes) - set(want_shapes)
    if extra:
        name = jax.tree_util.keystr(sorted(extra, key=str)[0], simple=True, separator=".")
        raise UserError(f"{where}: the start point has tensor {name}, which the run's model lacks")


def phase_start_params(init: str, model_cfg: ModelConfig, mesh, shardings, seed: int,
                       previous: Any, where: str) -> tuple[Any, dict | None]:
    """(parameters a phase starts from, placed on `shardings`; where they came from, for export:
    None keeps the run's current source)."""
    if init == "scratch":
        return init_params(model_cfg, mesh, seed), {}
    if init == "previous":
        if previous is None:
            raise UserError(f"{where}: init is 'previous' but there is no previous phase in this run")
        return previous, None
    if init.startswith("hf:"):
        from cpt_jax.hf import load_hf_params

        hf_dir = init[3:]
        if not Path(hf_dir).is_dir():
            raise UserError(f"{where}: Hugging Face folder {hf_dir} does not exist")
        _, params, source = load_hf_params(hf_dir, model_cfg, shardings)
        return params, source
    if init.startswith("ckpt:"):
        from cpt_jax.checkpoint.params import load_model_checkpoint, read_model_config

        path, step = parse_ckpt_ref(init[5:])
        if not Path(path).exists():
            raise UserError(f"{where}: checkpoint {path} does not exist")
        check_compatible(read_model_config(path, step), model_cfg, where)
        params, _, meta = load_model_checkpoint(path, shardings=shardings, step=step)
        return params, meta.get("source") or {}
    raise UserError(f"{where}: unknown init {init!r}")
