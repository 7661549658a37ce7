"""Model checkpoints: parameters + metadata in an orbax CheckpointManager directory.

The same items (`params`, `meta`) sit in every step of a run's `checkpoints/`, so a model
checkpoint (from `import-hf`) and a training run are read by the same code, onto any mesh.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

from cpt_jax.cli.errors import UserError
from cpt_jax.config.base import from_dict, to_dict
from cpt_jax.config.model import ModelConfig

FORMAT = "cpt_jax.model/1"


def manager_dir(path: str | Path) -> Path:
    """A run directory holds its steps in checkpoints/; a model checkpoint holds them directly."""
    path = Path(path).absolute()
    return path / "checkpoints" if (path / "checkpoints").is_dir() else path


def _manager(path: str | Path) -> ocp.CheckpointManager:
    directory = manager_dir(path)
    if not directory.is_dir():
        raise UserError(f"{path} is not a cpt_jax checkpoint (no such directory)")
    return ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(create=False),
                                 item_names=("params", "meta"))


def _step(mngr: ocp.CheckpointManager, path, step: int | None) -> int:
    steps = sorted(mngr.all_steps())
    if not steps:
        raise UserError(f"{path} holds no checkpoint steps; is it the output of import-hf or a run_dir?")
    if step is None:
        return steps[-1]
    if step not in steps:
        raise UserError(f"{path} has no step {step}; it has {', '.join(map(str, steps))}")
    return step


def read_meta(path: str | Path, step: int | None = None) -> dict:
    mngr = _manager(path)
    try:
        s = _step(mngr, path, step)
        return mngr.restore(s, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
    finally:
        mngr.close()


def read_model_config(path: str | Path, step: int | None = None) -> ModelConfig:
    meta = read_meta(path, step)
    if "model" not in meta:
        raise UserError(f"{path} step metadata has no model config; it was not written by cpt_jax")
    return from_dict(ModelConfig, meta["model"], "model")


def load_model_checkpoint(path: str | Path, shardings: Any = None, step: int | None = None) -> tuple[Any, ModelConfig, dict]:
    """(params, model config, meta). With `shardings` (a tree like params) the arrays land sharded
    on that mesh; without, on the default device."""
    from cpt_jax.train.state import abstract_params, with_shardings

    meta = read_meta(path, step)
    model_cfg = from_dict(ModelConfig, meta["model"], "model")
    abstract = abstract_params(model_cfg)
    if shardings is None:
        device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        shardings = jax.tree.map(lambda _: device, abstract)
    target = with_shardings(abstract, shardings)
    mngr = _manager(path)
    try:
        s = _step(mngr, path, step)
        params = mngr.restore(s, args=ocp.args.Composite(params=ocp.args.StandardRestore(target)))["params"]
    finally:
        mngr.close()
    return params, model_cfg, {**meta, "step": s}


def save_model_checkpoint(out_dir: str | Path, params: Any, model_cfg: ModelConfig, meta_extra: dict,
                          tokenizer_files: list[Path] = (), overwrite: bool = False) -> Path:
    """Write step 0 (`params`, `meta`) and `tokenizer/` into a temporary sibling, then rename it
    into place: the output is whole or absent."""
    out = Path(out_dir).absolute()
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise UserError(f"{out} is not empty; choose another folder or pass --overwrite")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        mngr = ocp.CheckpointManager(tmp, item_names=("params", "meta"))
        meta = {**meta_extra, "model": to_dict(model_cfg), "format": FORMAT, "step": 0}
        mngr.save(0, args=ocp.args.Composite(params=ocp.args.StandardSave(params), meta=ocp.args.JsonSave(meta)))
        mngr.wait_until_finished()
        mngr.close()
        if tokenizer_files:
            (tmp / "tokenizer").mkdir()
            for f in tokenizer_files:
                shutil.copy2(f, tmp / "tokenizer" / f.name)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out
