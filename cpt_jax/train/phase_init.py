"""Where a phase's parameters come from: scratch, the previous phase, an HF folder or a checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import yaml

from cpt_jax.checkpoint.model_checkpoint import load_model_checkpoint, parse_ckpt_ref, read_model_config
from cpt_jax.checkpoint.run_checkpoint import CheckpointConfig, RunCheckpointer
from cpt_jax.config.base import to_dict
from cpt_jax.data.config import DataConfig
from cpt_jax.errors import UserError
from cpt_jax.hf import load_hf_params
from cpt_jax.model.config import ModelConfig
from cpt_jax.model.params import check_compatible, init_params
from cpt_jax.storage import as_path


def missing_start_point(init: str, where: str) -> str | None:
    """Why a phase's hf:/ckpt: start point cannot be read, or None."""
    if init.startswith("hf:") and not as_path(init[3:]).is_dir():
        return f"{where}: Hugging Face folder {init[3:]} does not exist"
    if init.startswith("ckpt:") and not as_path(parse_ckpt_ref(init[5:])[0]).exists():
        return f"{where}: checkpoint {parse_ckpt_ref(init[5:])[0]} does not exist"
    return None


def check_start_points(inits: list[str]) -> None:
    """Before a fresh run writes anything: every phase's hf:/ckpt: start point exists."""
    for i, init in enumerate(inits):
        problem = missing_start_point(init, f"phases[{i}].init")
        if problem:
            raise UserError(f"{problem}; fix the path in the plan")


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
        hf_dir = init[3:]
        if not as_path(hf_dir).is_dir():
            raise UserError(f"{where}: Hugging Face folder {hf_dir} does not exist")
        _, params, source = load_hf_params(hf_dir, model_cfg, shardings)
        return params, source
    if init.startswith("ckpt:"):
        path, step = parse_ckpt_ref(init[5:])
        if not as_path(path).exists():
            raise UserError(f"{where}: checkpoint {path} does not exist")
        check_compatible(read_model_config(path, step), model_cfg, where)
        params, _, meta = load_model_checkpoint(path, shardings=shardings, step=step)
        return in_param_dtype(params, model_cfg, shardings), meta.get("source") or {}
    raise UserError(f"{where}: unknown init {init!r}")


def in_param_dtype(params: Any, model_cfg: ModelConfig, shardings: Any) -> Any:
    """Parameters stored in the run's model.param_dtype, whatever precision the start point was
    saved in: a run started from a checkpoint trains at the same precision as one resumed."""
    dtype = jnp.dtype(model_cfg.param_dtype)
    if all(x.dtype == dtype for x in jax.tree.leaves(params)):
        return params
    return jax.jit(lambda t: jax.tree.map(lambda x: x.astype(dtype), t), out_shardings=shardings,
                   donate_argnums=0)(params)


def run_checkpoint_start(init: str, carried: frozenset[str], model_cfg: ModelConfig, abstract_params: Any,
                         abstract_opt: Any, where: str, from_ema: bool = False) -> tuple[Any, Any, dict]:
    """(params, optimizer state or None, the checkpoint's meta) of `ckpt:<run_dir>@<step>` for a
    phase that carries more than parameters (a branch) or starts from the run's weight EMA
    (from_ema: the EMA is returned as the params): read-only, so the parent run may still be
    training."""
    path, step = parse_ckpt_ref(init[5:])
    if not (Path(path) / "checkpoints").is_dir():
        raise UserError(f"{where}: carry {'+'.join(sorted(carried))} needs a training run directory "
                        f"(with checkpoints/), and {path} is not one; use carry: params for a model checkpoint")
    check_compatible(read_model_config(path, step), model_cfg, where)
    ckpt = RunCheckpointer(path, CheckpointConfig(), read_only=True)
    try:
        if step not in ckpt.steps():
            raise UserError(f"{where}: {path} has no checkpoint step {step}; it has "
                            f"{', '.join(map(str, ckpt.steps())) or 'none'}")
        wants_opt = "optimizer" in carried
        try:
            params, opt_state, meta = ckpt.restore(step, abstract_params, abstract_opt if wants_opt else None)
        except Exception as e:  # noqa: BLE001 - orbax reports a structure mismatch in many ways
            raise UserError(f"{where}: the optimizer state of {path}@{step} does not fit this run's optimizer "
                            f"({type(e).__name__}: {str(e)[:200]}); use the parent's optimizer settings "
                            "(clipping and weight decay on or off alike), or carry: params") from e
        if from_ema:
            params = ckpt.restore_ema(step, abstract_params)
            if params is None:
                raise UserError(f"{where}: {path}@{step} holds no weight EMA (its optimizer.ema_decay was 0); "
                                "remove from_ema")
    finally:
        ckpt.close()
    if "data" in carried and not isinstance(meta.get("data"), dict):
        raise UserError(f"{where}: {path}@{step} holds no data stream state to carry; drop 'data' from carry")
    return params, opt_state, meta


def carried_stream_state(meta: dict, parent_dir: str, data_cfg: DataConfig, where: str) -> dict:
    """The parent run's data iterator state at the branch point (each source's stream offset).
    The streams must be the same ones: same data seed, and each source defined alike."""
    state = meta["data"]
    if state.get("seed") != data_cfg.seed:
        raise UserError(f"{where}: the parent run's data stream used data.seed {state.get('seed')} but this run "
                        f"has {data_cfg.seed}; set data.seed to the parent's to continue its streams")
    saved = Path(parent_dir) / "config.yaml"
    parent_sources = (yaml.safe_load(saved.read_text()) or {}).get("config", {}).get("data", {}).get(
        "sources", {}) if saved.is_file() else {}
    tokens = {n: int(t) for n, t in state.get("tokens", {}).items() if n in data_cfg.sources}
    for name in tokens:
        if name in parent_sources and parent_sources[name] != to_dict(data_cfg.sources[name]):
            raise UserError(f"{where}: source {name!r} is defined differently than in the parent run "
                            f"{parent_dir}; its stream offsets would point into other documents: use the "
                            "parent's definition, or drop 'data' from carry")
    return state
