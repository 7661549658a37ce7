"""Metrics sinks: JSONL (the source of truth for reports and tests), TensorBoard, Weights & Biases
(optional, offline by default), progress bar. TensorBoard and W&B get the same scalar names.

Only process 0 writes. On resume, records past the restored step are dropped, so the log of a
killed-and-resumed run reads exactly like the log of an uninterrupted one.
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

from cpt_jax.errors import UserError
from cpt_jax.storage import AppendLog, as_path
from cpt_jax.train.run_dir import holds_checkpoints


def read_jsonl(path: str | Path) -> list[dict]:
    path = as_path(path)
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            break  # a line cut by a crash ends the usable log
    return out


NON_SCALAR_KEYS = ("step", "phase", "phase_step", "first_step")


def scalar_tags(record: dict[str, Any]) -> dict[str, float]:
    """The scalars of a metrics row under their dashboard names: train/<key>, eval/<source>/<key>,
    task/<task>/<key> (any other kind: <kind>/<key>)."""
    kind = record.get("kind", "train")
    prefix = {"eval": f"eval/{record.get('source')}", "task": f"task/{record.get('task')}"}.get(kind, kind)
    return {f"{prefix}/{key}": float(value) for key, value in record.items()
            if isinstance(value, (int, float)) and not isinstance(value, bool) and key not in NON_SCALAR_KEYS
            and math.isfinite(value)}


class WandbSink:
    """A W&B run in `<run_dir>/wandb`; offline mode writes files only (sync them later with `wandb sync`)."""

    def __init__(self, run_dir: Path, project: str, mode: str, config: dict | None):
        try:
            import wandb
        except ImportError as e:
            raise UserError("W&B logging is on (log.wandb) but wandb is not installed: pip install "
                            "'cpt-jax[wandb]', or set log.wandb false") from e
        run_dir.mkdir(parents=True, exist_ok=True)
        run_id = "cpt-" + hashlib.sha256(str(run_dir.resolve()).encode()).hexdigest()[:12]
        self._wandb = wandb
        self._run = wandb.init(project=project, dir=str(run_dir), mode=mode, id=run_id, resume="allow",
                               name=run_dir.resolve().name, config=config or {},
                               settings=wandb.Settings(console="off", silent=True))

    def log(self, tags: dict[str, float], step: int) -> None:
        if tags:
            self._run.log(tags, step=step)

    def close(self) -> None:
        self._run.finish()
        self._wandb.teardown()  # finish() returns before the W&B service has written the run's files


class MetricsWriter:
    def __init__(self, run_dir: str | Path, *, enabled: bool, tensorboard: bool,
                 resume_point: tuple[int, int] | None, wandb_project: str | None = None,
                 wandb_mode: str = "offline", wandb_config: dict | None = None):
        """resume_point: (global step, phase) of the restored checkpoint; None for a fresh start.
        wandb_project: also log to this W&B project (None: no W&B); wandb_mode: offline or online;
        wandb_config: the run's config shown in W&B."""
        self.enabled = enabled
        self.path = as_path(run_dir) / "metrics.jsonl"
        self._tb = None
        self._wandb = None
        if not enabled:
            return
        records = read_jsonl(self.path)
        keep = []
        if resume_point is None and records and holds_checkpoints(run_dir):
            # Never drop the log of a run that can still be resumed (or inspected).
            raise UserError(f"{self.path} belongs to a run with checkpoints; refusing to start its log over: "
                            "resume the run, or move it aside (force_new) first")
        if resume_point is not None:
            step, phase = resume_point
            # Rows past the resume point are retrained and logged again; "time" rows stay: they are
            # what those steps cost the first time (goodput's lost time).
            keep = [r for r in records if r.get("kind") == "time" or (r["step"], r.get("phase", 0)) <= (step, phase)]
        tmp = self.path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in keep))
        tmp.replace(self.path)
        self._file = AppendLog(self.path)
        if tensorboard:
            from tensorboardX import SummaryWriter
            self._tb = SummaryWriter(str(as_path(run_dir) / "tensorboard"),
                                     purge_step=resume_point[0] + 1 if resume_point else None)
        if wandb_project:
            self._wandb = WandbSink(Path(run_dir), wandb_project, wandb_mode, wandb_config)

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        record = {k: (float(v) if hasattr(v, "dtype") else v) for k, v in record.items()}
        self._file.write(json.dumps(record) + "\n")
        if self._tb is not None or self._wandb is not None:
            tags = scalar_tags(record)
            if self._tb is not None:
                for tag, value in tags.items():
                    self._tb.add_scalar(tag, value, record["step"])
            if self._wandb is not None:
                self._wandb.log(tags, record["step"])

    def flush(self) -> None:
        if self.enabled:
            self._file.flush()
            if self._tb is not None:
                self._tb.flush()

    def close(self) -> None:
        if self.enabled:
            self._file.close()
            if self._tb is not None:
                self._tb.close()
            if self._wandb is not None:
                self._wandb.close()


class Progress:
    """A tqdm bar over the whole plan with loss, LR, tokens/s, MFU and ETA."""

    def __init__(self, total: int, initial: int, enabled: bool, echo: bool = True):
        """echo: print log lines when the bar is off (False on processes other than 0, so a
        multi-host launch shows each line once)."""
        self.bar = None
        self.echo = echo
        if enabled:
            from tqdm import tqdm
            self.bar = tqdm(total=total, initial=initial, unit="step", file=sys.stderr,
                            dynamic_ncols=True, mininterval=0.5)
        self.last = time.perf_counter()

    def update(self, n: int, postfix: dict[str, str]) -> None:
        if self.bar is not None:
            self.bar.set_postfix(postfix, refresh=False)
            self.bar.update(n)

    def write(self, line: str) -> None:
        if self.bar is not None:
            self.bar.write(line, file=sys.stderr)
        elif self.echo:
            print(line, file=sys.stderr)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
