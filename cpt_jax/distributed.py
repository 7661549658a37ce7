"""jax.distributed wiring: JAX's own runtime, from config or auto-detection (TPU, SLURM, MPI)."""

from __future__ import annotations

import jax

from cpt_jax.config.run import DistributedConfig


def initialize(cfg: DistributedConfig) -> None:
    if cfg.mode == "off":
        return
    if jax.config.jax_platforms in (None, "", "cpu") or cfg.coordinator.startswith("127."):
        # Cross-process collectives on CPU need an implementation; gloo ships with jaxlib.
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if cfg.mode == "auto":
        jax.distributed.initialize(initialization_timeout=cfg.timeout_s)
    else:
        jax.distributed.initialize(cfg.coordinator, num_processes=cfg.num_processes,
                                   process_id=cfg.process_id, initialization_timeout=cfg.timeout_s)
