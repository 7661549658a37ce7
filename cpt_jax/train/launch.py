"""What happens before the first step of `cpt-jax train` on every process: start jax.distributed,
check that the processes agree on the run, and that they share its run_dir."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from cpt_jax.config.base import fingerprint
from cpt_jax.distributed import check_same_run, check_shared_dir, initialize
from cpt_jax import host_memory
from cpt_jax.train.config import RunConfig, load_run_config
from cpt_jax.train.loop import train


def launch(cfg: RunConfig, **extra: object) -> RunConfig:
    """The config with its `distributed` section resolved. `extra`: per-invocation settings
    (command-line flags) that every process must share too."""
    host_memory.apply(cfg.keep_host_memory)  # before jax.distributed and the backends start their threads
    cfg = dataclasses.replace(cfg, distributed=initialize(cfg.distributed))
    check_same_run(fingerprint(cfg, ignore=("distributed",)), **extra)
    check_shared_dir(cfg.run_dir)
    return cfg


def run_plan(plan: str | Path, overrides: list[str] | None = None, *, force_new: bool = False,
             progress: bool = True) -> dict:
    """`cpt-jax train`: load the plan, launch (several processes agree on it), train or resume."""
    cfg = launch(load_run_config(plan, overrides), force_new=force_new)
    return train(cfg, force_new=force_new, progress=progress)
