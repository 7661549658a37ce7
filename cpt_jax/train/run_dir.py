"""A run directory is a run of one plan: its config.yaml records which (by fingerprint).

Nothing in it is ever deleted by cpt_jax: a new start moves the old run aside, and a start from
scratch is refused while the directory holds checkpoints (good or damaged ones).
"""

from __future__ import annotations

import time
from pathlib import Path

import yaml

from cpt_jax.config.base import to_dict
from cpt_jax.errors import CheckpointError, UserError
from cpt_jax.storage import absolute, as_path, check_writable, move
from cpt_jax.train.config import RunConfig, plan_fingerprint
from cpt_jax.train.plan_growth import (
    check_plan_change,
    phase_fingerprints,
    trained_progress,
)

# What a run writes into its directory (moved aside together by a new start).
RUN_FILES = ("checkpoints", "corrupt-checkpoints", "metrics.jsonl", "tensorboard", "wandb", "config.yaml")


def _holds_steps(directory: Path) -> bool:
    return directory.is_dir() and any(p.name.split("-")[0].isdigit() for p in directory.iterdir())


def holds_checkpoints(run_dir: str | Path) -> bool:
    """Whether the run directory holds checkpoint steps, good (checkpoints/) or damaged
    (corrupt-checkpoints/): then it must resume or be moved aside, never restart in place."""
    run_dir = as_path(run_dir)
    return _holds_steps(run_dir / "checkpoints") or _holds_steps(run_dir / "corrupt-checkpoints")


def check_fresh_start(run_dir: str | Path) -> None:
    """Refuse to train from step 0 in a directory that holds checkpoints (the metrics of the old
    run would be overwritten and its checkpoints mixed with the new ones)."""
    if holds_checkpoints(run_dir):
        raise CheckpointError(
            f"{run_dir} holds checkpoints but none can be resumed (damaged ones are in "
            f"{as_path(run_dir) / 'corrupt-checkpoints'}); nothing was changed: restore a good step into "
            f"{as_path(run_dir) / 'checkpoints'}, or start over with force_new (`cpt-jax train --force-new`), "
            "which moves the old run aside")


def move_run_aside(run_dir: Path) -> Path | None:
    """Move everything a run wrote into `previous-<time>/` inside the run directory."""
    present = [n for n in RUN_FILES if (run_dir / n).exists()]
    if not present:
        return None
    aside = run_dir / f"previous-{time.strftime('%Y%m%d-%H%M%S')}"
    n = 1
    while aside.exists():
        n += 1
        aside = run_dir / f"previous-{time.strftime('%Y%m%d-%H%M%S')}-{n}"
    aside.mkdir()
    for name in present:
        move(run_dir / name, aside / name)
    return aside


def check_run_dir_path(run_dir: str | Path) -> None:
    """Refuse a run_dir that is (or lies inside) an existing file, before anything is written."""
    run_dir = Path(run_dir)
    for path in (run_dir, *run_dir.parents):
        if path.exists():
            if not path.is_dir():
                what = "is a file" if path == run_dir else f"lies inside {path}, which is a file"
                raise UserError(f"run_dir {run_dir} {what}, not a directory; choose another run_dir")
            return


def prepare_run_dir(cfg: RunConfig, force_new: bool, is_writer: bool) -> None:
    """Refuse to mix two plans in one run directory; force_new moves the old run (whatever its
    plan) aside and starts over."""
    run_dir = as_path(cfg.run_dir)
    check_run_dir_path(run_dir)
    saved = run_dir / "config.yaml"
    if saved.exists() and not force_new:
        old = yaml.safe_load(saved.read_text()) or {}
        # Phases may be appended (or changed before they start): see plan_growth.
        check_plan_change(run_dir, old, cfg, trained_progress(run_dir))
    if not is_writer:
        return
    check_writable(run_dir)  # a missing bucket or no permission: one error before any work
    if force_new and run_dir.is_dir():
        move_run_aside(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    doc = {"plan_hash": plan_fingerprint(cfg), "phase_hashes": phase_fingerprints(cfg), "config": to_dict(cfg)}
    if cfg.branch_point:  # where a branch came from, for `cpt-jax report` and for people
        parent, step = cfg.branch_point
        doc["branch"] = {"parent": str(absolute(parent)), "step": step,
                         "carry": "+".join(p for p in ("params", "optimizer", "data") if p in cfg.phases[0].carried)}
    tmp = saved.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump(doc, sort_keys=False))
    tmp.replace(saved)
