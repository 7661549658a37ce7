"""Model checkpoints: parameters + metadata in an orbax CheckpointManager directory.

The same items (`params`, `meta`) sit in every step of a run's `checkpoints/`, so a model
checkpoint (from `import-hf`) and a training run are read by the same code, onto any mesh.
"""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from cpt_jax.errors import CheckpointError, UserError
from cpt_jax.config.base import from_dict, to_dict
from cpt_jax.errors import ConfigError
from cpt_jax.model.config import ModelConfig
from cpt_jax.model.params import abstract_params, find_layout, relayout, to_layout, with_shardings
from cpt_jax.storage import absolute, as_path, copy, is_remote, upload_tree

FORMAT = "cpt_jax.model/1"
ITEMS = ("params", "meta")
READ_ITEMS = (*ITEMS, "ema")  # a run's steps may also hold the weight EMA (optimizer.ema_decay)
SAVE_HOST_GB = 0.5  # host copies in flight while saving (raised to the largest array if that is larger)
# Files a model checkpoint keeps in tokenizer/ (whichever the source has).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                   "generation_config.json", "added_tokens.json", "vocab.json", "merges.txt", "chat_template.jinja")


def parse_ckpt_ref(ref: str) -> tuple[str, int | None]:
    """'dir' or 'dir@step'."""
    path, _, step = ref.rpartition("@") if "@" in ref else (ref, "", "")
    if step and not step.isdigit():
        raise CheckpointError(f"checkpoint reference {ref!r}: the part after '@' must be a step number")
    return path, int(step) if step else None


def manager_dir(path: str | Path) -> Path:
    """A run directory holds its steps in checkpoints/; a model checkpoint holds them directly."""
    path = absolute(path)
    return path / "checkpoints" if (path / "checkpoints").is_dir() else path


@contextmanager
def _open(path: str | Path, step: int | None) -> Iterator[tuple[ocp.CheckpointManager, int]]:
    """The step's manager, closed on exit; `step` None means the latest."""
    directory = manager_dir(path)
    if not directory.is_dir():
        raise UserError(f"{path} is not a cpt_jax checkpoint (no such directory)")
    mngr = ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(create=False),
                                 item_names=READ_ITEMS)
    try:
        steps = sorted(mngr.all_steps())
        if not steps:
            raise UserError(f"{path} holds no checkpoint steps; pass the output of import-hf or a run directory")
        if step is not None and step not in steps:
            raise UserError(f"{path} has no step {step}; it has {', '.join(map(str, steps))}")
        yield mngr, steps[-1] if step is None else step
    finally:
        mngr.close()


def _read_meta(mngr: ocp.CheckpointManager, step: int, path) -> dict:
    meta = mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
    if not isinstance(meta, dict) or "model" not in meta:
        raise UserError(f"{path} step {step} has no model config in its metadata; it was not written by cpt_jax")
    return {**meta, "step": step}


def read_meta(path: str | Path, step: int | None = None) -> dict:
    """The step's metadata (model config, source, ...), with `step` set to the step read."""
    with _open(path, step) as (mngr, s):
        return _read_meta(mngr, s, path)


def saved_model_config(meta: dict) -> dict:
    """The model section of a checkpoint's metadata. Checkpoints written before `scan_layers`
    existed hold unrolled layers, whatever today's default is."""
    return {"scan_layers": False, **meta["model"]}


def _model_config(meta: dict, path) -> ModelConfig:
    try:
        return from_dict(ModelConfig, saved_model_config(meta), "model")
    except ConfigError as e:
        raise UserError(f"{path}: the model config in its metadata is not valid for this cpt_jax: {e}") from e


def read_model_config(path: str | Path, step: int | None = None) -> ModelConfig:
    return _model_config(read_meta(path, step), path)


def load_model_checkpoint(path: str | Path, shardings: Any = None, step: int | None = None) -> tuple[Any, ModelConfig, dict]:
    """(params, model config, meta). With `shardings` (a tree like params) the arrays land sharded
    on that mesh, whatever mesh saved them, and in the layer layout of `shardings` (converted on
    device if the checkpoint has the other one; the returned config says which); without, on the
    default device in the saved layout."""
    with _open(path, step) as (mngr, s):
        meta = _read_meta(mngr, s, path)
        model_cfg = _model_config(meta, path)
        abstract = abstract_params(model_cfg)
        if shardings is None:
            device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
            shardings = jax.tree.map(lambda _: device, abstract)
        scanned = find_layout(shardings)
        saved_shardings = to_layout(shardings, model_cfg.scan_layers, model_cfg.num_layers)
        target = with_shardings(abstract, saved_shardings)
        params = mngr.restore(s, args=ocp.args.Composite(params=ocp.args.StandardRestore(target)))["params"]
    if scanned != model_cfg.scan_layers:
        params = relayout(params, scanned, shardings, model_cfg.num_layers)
        model_cfg = dataclasses.replace(model_cfg, scan_layers=scanned)
    return params, model_cfg, meta


class HostParamReader:
    """Reads one step's parameters to host numpy a subtree at a time (orbax partial restore), so
    a consumer such as the HF exporter holds one layer in memory, never the whole model, and
    needs no accelerator."""

    def __init__(self, path: str | Path, step: int | None = None, item: str = "params"):
        """item: 'params', or 'ema' for a run's weight EMA."""
        self._stack = ExitStack()
        self._mngr, self.step = self._stack.enter_context(_open(path, step))
        self.item = item
        try:
            self.meta = _read_meta(self._mngr, self.step, path)
            self.model_cfg = _model_config(self.meta, path)
            if item != "params" and not (manager_dir(path) / str(self.step) / item).is_dir():
                raise UserError(f"{path} step {self.step} holds no {item!r} weights (a run keeps a weight EMA "
                                "only with optimizer.ema_decay > 0)")
        except BaseException:
            self.close()
            raise

    def read(self, subtree: dict) -> dict:
        """`subtree`: nested dict (a part of the param tree) of ShapeDtypeStructs -> numpy arrays."""
        restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), subtree)
        args = ocp.args.PyTreeRestore(item=subtree, restore_args=restore_args, partial_restore=True)
        return self._mngr.restore(self.step, args=ocp.args.Composite(**{self.item: args}))[self.item]

    def close(self) -> None:
        self._stack.close()

    def __enter__(self) -> HostParamReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def check_output_dir(out: Path, overwrite: bool, *protected: Path) -> None:
    """Refuse a non-empty output (unless overwrite) and an output whose replacement would delete
    an input (the input itself or a folder holding it)."""
    out = absolute(out)
    for p in protected:
        p = absolute(p)
        if out == p or out in p.parents:
            raise UserError(f"output {out} would replace the input {p}; write to a separate folder")
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise UserError(f"{out} is not empty; choose another folder or pass --overwrite")


@contextmanager
def staged_output(out_dir: str | Path) -> Iterator[Path]:
    """A temporary sibling of `out_dir` that replaces it only when the block succeeds: the
    output is whole or absent, never half-written."""
    out = absolute(out_dir)
    if is_remote(out):  # a bucket has no rename: stage locally, upload once whole
        with tempfile.TemporaryDirectory(prefix=".cpt-jax-out-") as tmp:
            yield Path(tmp)
            upload_tree(Path(tmp), out)
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        yield tmp
        if out.is_dir():
            shutil.rmtree(out)
        elif out.exists():
            out.unlink()
        tmp.rename(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def save_model_checkpoint(out_dir: str | Path, params: Any, model_cfg: ModelConfig, meta_extra: dict,
                          tokenizer_dir: str | Path | None = None, overwrite: bool = False,
                          host_gb: float | None = None) -> Path:
    """Write step 0 (`params`, `meta`) and `tokenizer/` (the TOKENIZER_FILES found in
    `tokenizer_dir`) as one orbax CheckpointManager directory, whole or not at all. `host_gb`:
    host copies in flight (default SAVE_HOST_GB; never below the largest array)."""
    out = absolute(out_dir)
    check_output_dir(out, overwrite)
    with staged_output(out) as tmp:
        # The files StandardSave writes (StandardRestore reads them), through a handler that bounds
        # host copies (by default orbax copies every array to host at once; orbax refuses a bound
        # below the largest array) and leaves arrays uncompressed: tensorstore then writes straight
        # from the array, where zstd first encoded a second copy of it. Parameters already in host
        # memory (an import without a mesh) are written with no extra memory, not +0.3-0.5 GB per
        # GB (benchmarks/RESULTS.md section 3a); random-like fp32 weights compress by under 10%.
        largest = (max((x.nbytes for x in jax.tree.leaves(params)), default=0) + 4096) / 1e9
        bound = max(SAVE_HOST_GB if host_gb is None else host_gb, largest)
        bounded = ocp.PyTreeCheckpointHandler(save_device_host_concurrent_gb=bound, save_concurrent_gb=bound,
                                              use_compression=False)
        handlers = {"params": bounded, "meta": ocp.JsonCheckpointHandler()}
        mngr = ocp.CheckpointManager(tmp, item_names=ITEMS, item_handlers=handlers)
        meta = {**meta_extra, "model": to_dict(model_cfg), "format": FORMAT}
        mngr.save(0, args=ocp.args.Composite(params=ocp.args.PyTreeSave(params), meta=ocp.args.JsonSave(meta)))
        mngr.wait_until_finished()
        mngr.close()
        found = [as_path(tokenizer_dir) / n for n in TOKENIZER_FILES] if tokenizer_dir else []
        found = [f for f in found if f.is_file()]
        if found:
            (tmp / "tokenizer").mkdir()
            for f in found:
                copy(f, tmp / "tokenizer" / f.name)
    return out
