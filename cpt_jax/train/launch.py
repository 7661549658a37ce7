"""What happens before the first step of every training run, on every process: keep host memory
(CPU), start jax.distributed, check that the processes agree on the run, and that they share its
run_dir. `train()` calls it, so the CLI, the demo and a library caller get the same."""

from __future__ import annotations

import dataclasses

from cpt_jax import host_memory
from cpt_jax.config.base import fingerprint
from cpt_jax.distributed import check_same_run, check_shared_dir, initialize
from cpt_jax.train.config import RunConfig
from cpt_jax.train.run_dir import check_run_dir_path


def launch(cfg: RunConfig, **extra: object) -> RunConfig:
    """The config with its `distributed` section resolved. `extra`: per-invocation settings
    (command-line flags) that every process must share too. Safe to call again (idempotent)."""
    host_memory.apply(cfg.keep_host_memory)  # before jax.distributed and the backends start their threads
    cfg = dataclasses.replace(cfg, distributed=initialize(cfg.distributed))
    check_same_run(fingerprint(cfg, ignore=("distributed",)), **extra)
    check_run_dir_path(cfg.run_dir)
    check_shared_dir(cfg.run_dir)
    return cfg
