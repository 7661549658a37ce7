"""Run checkpoints: one orbax CheckpointManager per run directory.

Each step directory holds the items `params`, `opt_state` (orbax array trees, restorable onto
any mesh) and `meta` (JSON: model config, global step, phase and step within it, data iterator
state, seed, plan hash). orbax writes into a temporary directory and renames it when complete,
so a step directory is whole or absent. A step that fails to restore is inspected on its own
(`damage.find_damage`): only a step whose files are broken is moved aside, with a warning, in
favour of the one before it; a whole step that this invocation cannot restore (device count,
mesh, memory) stops the run before anything is touched. A background save that did not complete
(disk full, read-only directory) is reported at the next step (`check`).
"""

from __future__ import annotations

import functools
import logging
import os
import re
import sys
import time
import traceback
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

from cpt_jax.checkpoint.damage import find_damage
from cpt_jax.checkpoint.model_checkpoint import saved_model_config
from cpt_jax.config.base import require
from cpt_jax.errors import CheckpointError, StorageError, brief
from cpt_jax.model.params import (
    find_layout,
    num_stacked,
    relayout,
    stack_layers,
    to_layout,
)
from cpt_jax.storage import absolute, is_remote, move, remove_tree, storage_error

log = logging.getLogger(__name__)

FORMAT = "cpt_jax.run/1"
COMMIT_MARKER = "commit_success.txt"  # orbax's marker of a whole step on gs://


@dataclass(frozen=True)
class CheckpointConfig:
    every: int = 100  # save every N steps (and always at the end of each phase)
    keep_last: int = 3  # newest checkpoints kept
    keep_every: int = 0  # also keep every M-th step for good (0: off)
    async_save: bool = True  # write in the background while training goes on

    def validate(self, path: str) -> None:
        require(self.every > 0, path, "every", "must be positive")
        require(self.keep_last >= 1, path, "keep_last", "must be >= 1")
        require(self.keep_every >= 0, path, "keep_every", "must be >= 0")


def _abstract(tree: Any) -> Any:
    """ShapeDtypeStructs carrying the target shardings: orbax reshards on restore."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
                        if isinstance(x, jax.ShapeDtypeStruct) else x, tree)


def _shardings(abstract: Any) -> Any:
    return jax.tree.map(lambda x: x.sharding, abstract)


def check_checkpoint_location(run_dir: str | Path) -> None:
    """Refuse s3:// for checkpoints before anything touches the bucket."""
    if str(run_dir).startswith("s3://"):
        raise StorageError(f"run_dir {run_dir}: checkpoints cannot be written to s3:// (orbax {ocp.__version__} "
                           "hands only local and gs:// paths to tensorstore); use gs:// or a shared filesystem "
                           "for run_dir (prepared data and HF folders may be on s3://)")


class RunCheckpointer:
    def __init__(self, run_dir: str | Path, cfg: CheckpointConfig, read_only: bool = False):
        """read_only: another run's checkpoints (a branch's parent, possibly still training):
        nothing is created, cleaned up or deleted there."""
        check_checkpoint_location(run_dir)
        self.directory = absolute(run_dir) / "checkpoints"
        remote = is_remote(self.directory)
        if remote and not read_only and jax.process_index() == 0:
            _drop_uncommitted(self.directory)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=cfg.keep_last,
            keep_period=cfg.keep_every or None,
            enable_async_checkpointing=cfg.async_save,
            # half-written saves of a killed run are discarded (in a bucket by _drop_uncommitted: orbax's
            # own cleanup there races its event loop's shutdown)
            cleanup_tmp_directories=not read_only and not remote,
            create=not read_only,
            read_only=read_only,
        )
        self.manager = ocp.CheckpointManager(self.directory, options=options,
                                             item_names=("params", "opt_state", "meta", "ema"))
        self._pending: int | None = None  # the step whose (background) save is not yet confirmed
        self._errors = _ErrorCapture()  # orbax logs a failed background write instead of raising it
        _ORBAX_ERRORS.install()
        _ORBAX_ERRORS.captures.append(self._errors)

    def steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, params: Any, opt_state: Any, meta: dict, ema: Any = None) -> None:
        """Start a save (asynchronous when configured); returns once the device arrays are
        copied, so training can go on while orbax writes. ema: the weight EMA (item `ema`), if kept."""
        if self._pending is not None:  # orbax waits for the previous save anyway: confirm it first,
            self.wait()  # so a failed earlier save is the one reported, not this one
        refused = _write_probe(self.directory)  # read-only or full already: orbax's threads would
        if refused is not None:  # wait minutes for a step directory that is never created
            raise self._save_failed(step, refused)
        meta = {**meta, "format": FORMAT, "step": int(step)}
        try:
            self.manager.save(step, force=True, args=ocp.args.Composite(
                params=ocp.args.StandardSave(params),
                opt_state=ocp.args.StandardSave(opt_state),
                meta=ocp.args.JsonSave(meta),
                **({"ema": ocp.args.StandardSave(ema)} if ema is not None else {}),
            ))
        except Exception as e:
            raise self._save_failed(step, e) from e
        self._pending = int(step)
        self.check()

    def check(self) -> None:
        """Raise if the last save finished without its step directory: orbax logs a failed
        background write (disk full, read-only directory) and goes on, so it is confirmed here,
        once it is done, by the step being on disk. Cheap: call it after every step."""
        if self._pending is None or self.manager.is_saving_in_progress():
            return
        step, self._pending = self._pending, None
        whole = self.directory / str(step) / (COMMIT_MARKER if is_remote(self.directory) else "")
        if not whole.exists():
            raise self._save_failed(step, self._errors.first())
        self._errors.clear()

    def _save_failed(self, step: int, error: BaseException | None) -> CheckpointError:
        """Why the save of `step` failed (the write error, else what the directory says now)."""
        why = _reason(error) if error is not None else None
        if why is None:
            probe = _write_probe(self.directory)
            why = probe.strerror if probe is not None else "reason not reported; see the log"
        good = [s for s in self.steps() if s != step and (self.directory / str(s)).is_dir()]
        kept = f"the earlier checkpoints ({', '.join(map(str, good))}) are intact" if good else "no earlier checkpoint exists"
        return CheckpointError(f"saving checkpoint step {step} to {self.directory} failed ({why}); {kept}: free disk "
                               "space or make the directory writable, then rerun to resume from the latest one")

    def wait(self) -> None:
        """Wait for the background save and confirm it."""
        try:
            self.manager.wait_until_finished()
        except Exception as e:
            step, self._pending = self._pending, None
            raise self._save_failed(step if step is not None else -1, e) from e
        self.check()

    def read_meta(self, step: int) -> dict:
        return self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

    def restore(self, step: int, abstract_params: Any, abstract_opt: Any | None) -> tuple[Any, Any, dict]:
        """Restore onto the shardings carried by the abstract trees (any mesh) and in their layer
        layout: a step saved in the other one (scanned vs unrolled) is restored as saved, then
        parameters and optimizer moments are converted on device. With abstract_opt None only
        params and meta are read (a parameters-only start)."""
        saved = bool(saved_model_config(self.read_meta(step))["scan_layers"])
        wanted = find_layout(abstract_params)
        n = num_stacked(stack_layers(abstract_params))
        items = {"params": ocp.args.StandardRestore(_abstract(to_layout(abstract_params, saved, n))),
                 "meta": ocp.args.JsonRestore()}
        if abstract_opt is not None:
            items["opt_state"] = ocp.args.StandardRestore(_abstract(to_layout(abstract_opt, saved, n)))
        out = self.manager.restore(step, args=ocp.args.Composite(**items))
        params, opt_state = out["params"], out.get("opt_state") if abstract_opt is not None else None
        if saved != wanted:
            params = relayout(params, wanted, _shardings(abstract_params), n)
            if opt_state is not None:
                opt_state = relayout(opt_state, wanted, _shardings(abstract_opt), n)
        return params, opt_state, out["meta"]

    def restore_ema(self, step: int, abstract_params: Any) -> Any | None:
        """The weight EMA saved with `step` (shaped and placed like params), or None when that
        step holds none (EMA off when it was saved)."""
        if not (self.directory / str(step) / "ema").is_dir():
            return None
        saved = bool(saved_model_config(self.read_meta(step))["scan_layers"])
        wanted, n = find_layout(abstract_params), num_stacked(stack_layers(abstract_params))
        target = _abstract(to_layout(abstract_params, saved, n))
        ema = self.manager.restore(step, args=ocp.args.Composite(ema=ocp.args.StandardRestore(target)))["ema"]
        return relayout(ema, wanted, _shardings(abstract_params), n) if saved != wanted else ema

    def restore_latest_good(self, abstract_params: Any, abstract_opt: Any) -> tuple[Any, Any, dict] | None:
        """The newest step that restores. A step whose own files are damaged is reported and
        moved to `corrupt-checkpoints/` beside `checkpoints/` (kept for inspection, out of orbax's
        way so the resumed run can save that step again). A whole step that fails to restore here
        raises CheckpointError and nothing is moved. None when every step was damaged."""
        quarantined = False
        try:
            for step in reversed(self.steps()):
                try:
                    return self.restore(step, abstract_params, abstract_opt)
                except Exception as e:
                    damage = find_damage(self.directory / str(step), step, FORMAT)
                    if damage is None:
                        raise CheckpointError(
                            f"checkpoint step {step} in {self.directory} is intact but could not be restored by "
                            f"this invocation ({brief(e)}); nothing was changed: run with the device count, mesh "
                            "and memory the run can use (the mesh may differ from the saving run's if every "
                            "sharded size divides it), then rerun") from e
                    if jax.process_count() > 1:
                        # The other processes may have restored this step and wait in orbax's
                        # collectives: trying an earlier step here would cross them. Stop; this
                        # process's exit ends the others.
                        raise CheckpointError(
                            f"checkpoint step {step} in {self.directory} is damaged ({damage}); with several "
                            f"processes a damaged step is not skipped automatically: move "
                            f"{self.directory / str(step)} aside and rerun to resume from the step before") from e
                    aside = self.directory.parent / "corrupt-checkpoints" / f"{step}-{int(time.time())}"
                    msg = (f"checkpoint step {step} in {self.directory} is damaged ({damage}); moved it to "
                           f"{aside} and trying the previous one")
                    warnings.warn(msg, stacklevel=2)
                    log.warning(msg)
                    if jax.process_index() == 0:
                        aside.parent.mkdir(parents=True, exist_ok=True)
                        move(self.directory / str(step), aside)
                    quarantined = True
            return None
        finally:
            if quarantined:
                self.manager.reload()

    def close(self) -> None:
        """Wait for a save in flight and release orbax's threads (without raising: a failed save
        was reported by `check` or `wait`)."""
        try:
            self.manager.wait_until_finished()
        except Exception as e:  # noqa: BLE001 - reported by check/wait; here only logged
            log.warning("checkpoint save failed: %s", brief(e))
        finally:
            self.manager.close()
            if self._errors in _ORBAX_ERRORS.captures:
                _ORBAX_ERRORS.captures.remove(self._errors)


class _ErrorCapture:
    """The exceptions orbax logs (with their tracebacks) from its background save threads."""

    def __init__(self):
        self.errors: list[BaseException] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.errors.append(record.exc_info[1])

    def first(self) -> BaseException | None:
        return self.errors[0] if self.errors else None

    def clear(self) -> None:
        self.errors.clear()


# How tensorstore words the errors it raises: ValueError("<absl status code>: ...").
_TENSORSTORE_ERROR = re.compile(r"(CANCELLED|UNKNOWN|INVALID_ARGUMENT|DEADLINE_EXCEEDED|NOT_FOUND|ALREADY_EXISTS|"
                                r"PERMISSION_DENIED|RESOURCE_EXHAUSTED|FAILED_PRECONDITION|ABORTED|OUT_OF_RANGE|"
                                r"UNIMPLEMENTED|INTERNAL|UNAVAILABLE|DATA_LOSS|UNAUTHENTICATED): ")


def _raised_in_orbax(record: logging.LogRecord) -> bool:
    if "orbax" in record.pathname:
        return True
    error = record.exc_info[1]
    if record.name == "asyncio" and isinstance(error, ValueError) and _TENSORSTORE_ERROR.match(str(error)):
        # a tensorstore write (zarr or OCDBT) orbax awaited in a task that its failed save
        # abandoned: asyncio logs "Future exception was never retrieved" with no orbax frame
        return True
    tb = error.__traceback__
    while tb is not None:
        if "orbax" in tb.tb_frame.f_code.co_filename:
            return True
        tb = tb.tb_next
    return False


class _OrbaxErrors(logging.Filter):
    """orbax logs each failed background write with its traceback (ERROR, on stderr: absl's
    logger, and asyncio's for its write tasks) and goes on; cpt_jax reports the failure itself
    as one error (RunCheckpointer.check/wait). So those records go to the open checkpointers'
    captures and to this module's logger at debug level, not to the terminal."""

    LOGGERS = ("absl", "asyncio")

    def __init__(self):
        super().__init__()
        self.captures: list[_ErrorCapture] = []
        self.installed = False

    def install(self) -> None:
        if not self.installed:  # once per process: orbax's threads may log after a checkpointer closes
            for name in self.LOGGERS:
                logging.getLogger(name).addFilter(self)
            sys.unraisablehook = functools.partial(_late_write_callback_hook, sys.unraisablehook)
            self.installed = True

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.ERROR or not record.exc_info or record.exc_info[1] is None \
                or not _raised_in_orbax(record):
            return True
        for capture in self.captures:
            capture.emit(record)
        log.debug("orbax (reported as a checkpoint error): %s", record.getMessage(), exc_info=record.exc_info)
        return False


_ORBAX_ERRORS = _OrbaxErrors()


def _late_write_callback_hook(previous, unraisable) -> None:
    """After a failed background save orbax closes its event loop while tensorstore still
    finishes other writes; each one's completion callback then fails in a tensorstore thread
    ("Event loop is closed") and is printed through sys.unraisablehook. Those go to the debug log
    (the failure itself is reported once); anything else is printed as before."""
    kind, error, tb = unraisable.exc_type, unraisable.exc_value, unraisable.exc_traceback
    frames = traceback.extract_tb(tb) if tb is not None else []
    if kind is RuntimeError and str(error) == "Event loop is closed" and frames \
            and frames[0].name == "call_soon_threadsafe" and "asyncio" in frames[0].filename:
        log.debug("tensorstore write finished after orbax closed its event loop", exc_info=(kind, error, tb))
        return
    previous(unraisable)


def _reason(error: BaseException) -> str:
    """The filesystem's reason for a failed write (ENOSPC, EROFS, ...), however it was wrapped."""
    os_error = _first_os_error(error)
    if os_error is not None and os_error.strerror:
        return os_error.strerror
    found = re.search(r"os_error_code='?(\d+)|\[Errno (\d+)\]", str(error))
    if found:
        return os.strerror(int(found.group(1) or found.group(2)))
    return brief(error)


def _first_os_error(e: BaseException | None) -> OSError | None:
    while e is not None:
        if isinstance(e, OSError):
            return e
        e = e.__cause__ or e.__context__
    return None


def _write_probe(directory: Path) -> OSError | None:
    """Try a small write where the step went: the error the filesystem gives now (ENOSPC,
    EROFS, EACCES), or None if it takes writes again."""
    probe = directory / f".write-probe-{os.getpid()}"
    if is_remote(directory):  # no fsync there: a small object must be accepted
        try:
            probe.write_bytes(b"\0" * 4096)
            probe.unlink()
        except Exception as e:  # noqa: BLE001 - gcsfs, aiohttp and botocore raise their own
            return OSError(0, str(storage_error(directory, e, "writing to")))
        return None
    try:
        with open(probe, "wb") as f:
            f.write(b"\0" * 4096)
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        return e
    finally:
        try:
            probe.unlink()
        except OSError:
            pass
    return None


def _drop_uncommitted(directory) -> None:
    """In a bucket orbax writes a step in place and its commit marker last: a step directory
    without the marker is a save cut short (killed, endpoint gone). Delete it, so the run resumes
    from the last whole step and can save this one again."""
    if not directory.is_dir():
        return
    for step_dir in directory.iterdir():
        if step_dir.name.isdigit() and not (step_dir / COMMIT_MARKER).exists():
            msg = f"checkpoint step {step_dir.name} in {directory} was not committed (a save cut short); deleting it"
            warnings.warn(msg, stacklevel=3)
            log.warning(msg)
            remove_tree(step_dir)
