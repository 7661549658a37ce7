"""What `evaluate` scores: a run directory, a checkpoint DIR[@STEP], a plan's run, or an HF folder,
loaded onto a mesh with the shardings training gives parameters."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from jax.sharding import Mesh

from cpt_jax.checkpoint.model_checkpoint import load_model_checkpoint, parse_ckpt_ref, read_meta, read_model_config
from cpt_jax.config.base import apply_overrides, from_dict
from cpt_jax.errors import UserError
from cpt_jax.hf import hf_config_to_model_config, load_hf_params, read_hf_config
from cpt_jax.model.config import ModelConfig
from cpt_jax.model.params import abstract_model, check_compatible, param_shardings
from cpt_jax.storage import as_path
from cpt_jax.train.config import RunConfig, load_run_config


@dataclass
class LoadedModel:
    """Parameters on `mesh` with their graph, and where they came from."""

    description: str  # what was loaded, for tables and JSON
    step: int | None  # checkpoint step (None for an HF folder)
    model: ModelConfig
    graphdef: Any
    params: Any
    shardings: Any
    mesh: Mesh
    tokenizer: str  # tokenizer.json / .model / folder for tasks ('' when unknown)


def run_dir_config(run_dir: str | Path, overrides: list[str] | None = None) -> RunConfig | None:
    """The RunConfig a run directory was trained with (its config.yaml), or None if it has none."""
    saved = as_path(run_dir) / "config.yaml"
    if not saved.is_file():
        return None
    doc = yaml.safe_load(saved.read_text()) or {}
    return from_dict(RunConfig, apply_overrides(doc.get("config", doc), list(overrides or [])))


def resolve_plan(target: str | None, plan: str | None, overrides: list[str]) -> tuple[RunConfig | None, str | None]:
    """(plan, checkpoint reference) of a target: a plan file means its run_dir; a run directory
    brings its own config.yaml unless a plan is given."""
    if plan is not None:
        return load_run_config(plan, overrides), target
    if target is None:
        return None, None
    path, _ = parse_ckpt_ref(target)
    if not as_path(path).exists():
        raise UserError(f"{path} does not exist; name a run directory, a checkpoint (DIR or DIR@STEP) or a plan YAML")
    if as_path(path).is_file() and as_path(path).suffix in (".yaml", ".yml"):
        cfg = load_run_config(path, overrides)
        return cfg, cfg.run_dir
    return run_dir_config(path, overrides), target


def checkpoint_phase(ref: str | None, cfg: RunConfig) -> int:
    """The plan phase a run checkpoint was saved in: it is evaluated with that phase's row length
    and RoPE settings (a long-context phase's checkpoint at its own context). 0 when unknown."""
    if ref is None:
        return 0
    path, step = parse_ckpt_ref(ref)
    try:
        meta = read_meta(path, step)
    except UserError:
        return 0
    return min(int(meta.get("phase", 0)), len(cfg.phases) - 1)


def _checkpoint_tokenizer(path: str) -> str:
    folder = as_path(path) / "tokenizer"
    for name in ("tokenizer.json", "tokenizer.model"):
        if (folder / name).is_file():
            return str(folder / name)
    return ""


def load_checkpoint(ref: str, cfg: RunConfig | None, mesh: Mesh) -> LoadedModel:
    path, step = parse_ckpt_ref(ref)
    if not as_path(path).exists():
        raise UserError(f"checkpoint {path} does not exist; train first, or name a run directory or a model "
                        "checkpoint (DIR or DIR@STEP)")
    saved = read_model_config(path, step)
    if cfg is not None:
        check_compatible(saved, cfg.model, path)
    model = cfg.model if cfg is not None else saved
    shardings = param_shardings(model, mesh)
    params, loaded, meta = load_model_checkpoint(path, shardings=shardings, step=step)
    graphdef, _ = abstract_model(loaded, mesh)
    tokenizer = (cfg.tokenizer if cfg is not None else "") or _checkpoint_tokenizer(path)
    return LoadedModel(f"{path}@{meta.get('step')}", meta.get("step"), loaded, graphdef, params,
                       param_shardings(loaded, mesh), mesh, tokenizer)


def load_hf(hf_dir: str, cfg: RunConfig | None, mesh: Mesh, dtype: str = "float32") -> LoadedModel:
    """An HF folder imported in memory (nothing written)."""
    model = cfg.model if cfg is not None else hf_config_to_model_config(read_hf_config(hf_dir), dtype=dtype)
    shardings = param_shardings(model, mesh)
    model, params, _ = load_hf_params(hf_dir, cfg.model if cfg is not None else None, shardings, dtype=dtype)
    graphdef, _ = abstract_model(model, mesh)
    tok = Path(hf_dir) / "tokenizer.json"
    tokenizer = (cfg.tokenizer if cfg is not None else "") or (str(tok) if tok.is_file() else "")
    return LoadedModel(str(Path(hf_dir)), None, model, graphdef, params, shardings, mesh, tokenizer)
