"""Run checkpoints: one orbax CheckpointManager per run directory.

Each step directory holds the items `params`, `opt_state` (orbax array trees, restorable onto
any mesh) and `meta` (JSON: model config, global step, phase and step within it, data iterator
state, seed, plan hash). orbax writes into a temporary directory and renames it when complete,
so a step directory is whole or absent; a step that still fails to restore (disk corruption) is
skipped with a warning in favour of the one before it.
"""

from __future__ import annotations

import logging
import shutil
import time
import warnings
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

from cpt_jax.cli.errors import UserError
from cpt_jax.config.run import CheckpointConfig

log = logging.getLogger(__name__)

FORMAT = "cpt_jax.run/1"


def _abstract(tree: Any) -> Any:
    """ShapeDtypeStructs carrying the target shardings: orbax reshards on restore."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
                        if isinstance(x, jax.ShapeDtypeStruct) else x, tree)


class RunCheckpointer:
    def __init__(self, run_dir: str | Path, cfg: CheckpointConfig):
        self.directory = Path(run_dir).absolute() / "checkpoints"
        options = ocp.CheckpointManagerOptions(
            max_to_keep=cfg.keep_last,
            keep_period=cfg.keep_every or None,
            enable_async_checkpointing=cfg.async_save,
            cleanup_tmp_directories=True,  # half-written saves of a killed run are discarded
        )
        self.manager = ocp.CheckpointManager(self.directory, options=options,
                                             item_names=("params", "opt_state", "meta"))

    def steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, params: Any, opt_state: Any, meta: dict) -> None:
        """Start a save (asynchronous when configured); returns once the device arrays are
        copied, so training can go on while orbax writes."""
        meta = {**meta, "format": FORMAT, "step": int(step)}
        self.manager.save(step, force=True, args=ocp.args.Composite(
            params=ocp.args.StandardSave(params),
            opt_state=ocp.args.StandardSave(opt_state),
            meta=ocp.args.JsonSave(meta),
        ))

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def read_meta(self, step: int) -> dict:
        return self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

    def restore(self, step: int, abstract_params: Any, abstract_opt: Any | None) -> tuple[Any, Any, dict]:
        """Restore onto the shardings carried by the abstract trees (any mesh). With
        abstract_opt None only params and meta are read (a parameters-only start)."""
        items = {"params": ocp.args.StandardRestore(_abstract(abstract_params)), "meta": ocp.args.JsonRestore()}
        if abstract_opt is not None:
            items["opt_state"] = ocp.args.StandardRestore(_abstract(abstract_opt))
        out = self.manager.restore(step, args=ocp.args.Composite(**items))
        return out["params"], out.get("opt_state") if abstract_opt is not None else None, out["meta"]

    def restore_latest_good(self, abstract_params: Any, abstract_opt: Any) -> tuple[Any, Any, dict] | None:
        """The newest step that restores. A broken one is reported and moved to
        `corrupt-checkpoints/` beside `checkpoints/` (kept for inspection, out of orbax's way so
        the resumed run can save that step again)."""
        quarantined = False
        try:
            for step in reversed(self.steps()):
                try:
                    return self.restore(step, abstract_params, abstract_opt)
                except Exception as e:  # noqa: BLE001 - any failure means this step is unusable
                    if jax.process_count() > 1:
                        # The other processes may have restored this step and wait in orbax's
                        # collectives: trying an earlier step here would cross them (seen: a good
                        # step quarantined as broken). Stop; this process's exit ends the others.
                        raise UserError(
                            f"checkpoint step {step} in {self.directory} could not be restored on process "
                            f"{jax.process_index()} ({type(e).__name__}: {e}); with several processes a broken "
                            f"step is not skipped automatically: move {self.directory / str(step)} aside and "
                            "rerun to resume from the step before") from e
                    aside = self.directory.parent / "corrupt-checkpoints" / f"{step}-{int(time.time())}"
                    msg = (f"checkpoint step {step} in {self.directory} could not be restored "
                           f"({type(e).__name__}: {e}); moved it to {aside} and trying the previous one")
                    warnings.warn(msg, stacklevel=2)
                    log.warning(msg)
                    if jax.process_index() == 0:
                        aside.parent.mkdir(parents=True, exist_ok=True)
                        shutil.move(str(self.directory / str(step)), str(aside))
                    quarantined = True
            return None
        finally:
            if quarantined:
                self.manager.reload()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()
