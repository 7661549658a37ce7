"""The run config: model, mesh, optimizer, data and a plan of continual pre-training phases."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

from cpt_jax.config.base import ConfigError, apply_overrides, fail, from_dict, join, load_yaml, require
from cpt_jax.config.model import ModelConfig
from cpt_jax.data.config import DataConfig
from cpt_jax.schedules.config import ScheduleConfig
from cpt_jax.sharding.mesh import MeshConfig


@dataclass(frozen=True)
class OptimizerConfig:
    """AdamW with global-norm clipping. The learning rate comes from the phase schedules."""

    weight_decay: float = 0.1  # decoupled (AdamW); matrices only unless decay_norms_and_biases
    b1: float = 0.9  # Adam first-moment decay
    b2: float = 0.95  # Adam second-moment decay
    eps: float = 1e-8  # Adam epsilon
    grad_clip: float = 1.0  # max global gradient norm; 0 disables clipping
    z_loss: float = 0.0  # weight of log(Z)^2, keeps logits from drifting (PaLM)
    grad_accum: int = 1  # micro-batches per step; the global batch is split evenly
    decay_norms_and_biases: bool = False  # also decay 1-D parameters (norm scales, biases)

    def validate(self, path: str) -> None:
        require(self.weight_decay >= 0, path, "weight_decay", "must be >= 0")
        require(0 <= self.b1 < 1, path, "b1", "must be in [0, 1)")
        require(0 <= self.b2 < 1, path, "b2", "must be in [0, 1)")
        require(self.eps > 0, path, "eps", "must be positive")
        require(self.grad_clip >= 0, path, "grad_clip", "must be >= 0 (0 disables clipping)")
        require(self.z_loss >= 0, path, "z_loss", "must be >= 0")
        require(self.grad_accum >= 1, path, "grad_accum", "must be >= 1")


@dataclass(frozen=True)
class PhaseConfig:
    """One phase of the plan: its mixture, budget, schedule and starting point.

    init: 'scratch' (random init), 'previous' (the phase before; the default after phase 0),
    'hf:<dir>' (a Hugging Face folder, imported on the fly), 'ckpt:<dir>[@step]' (a cpt_jax model
    or run checkpoint). carry: what a phase keeps from where it starts ('params' resets the
    optimizer state, as a new phase from an upstream model does).
    """

    name: str  # shown in logs, plots and tables
    mixture: dict[str, float]  # source name -> weight; every batch holds exactly these shares
    schedule: ScheduleConfig  # this phase's LR curve (see the schedule section)
    steps: Optional[int] = None  # phase budget in optimizer steps ...
    tokens: Optional[int] = None  # ... or in tokens (rounded up to whole steps)
    init: str = "previous"  # scratch, previous, hf:<dir> or ckpt:<dir>[@step]
    carry: Literal["params", "params+optimizer"] = "params+optimizer"  # what a phase keeps from `previous`

    def validate(self, path: str) -> None:
        require((self.steps is None) != (self.tokens is None), path, "steps",
                "give exactly one of steps or tokens as the phase budget")
        if self.steps is not None:
            require(self.steps > 0, path, "steps", f"must be positive, got {self.steps}")
        if self.tokens is not None:
            require(self.tokens > 0, path, "tokens", f"must be positive, got {self.tokens}")
        require(bool(self.mixture), path, "mixture", "name at least one source with a weight")
        for name, w in self.mixture.items():
            require(w >= 0, join(path, "mixture"), name, f"weight must be >= 0, got {w}")
        require(sum(self.mixture.values()) > 0, path, "mixture", "weights must sum to a positive number")
        ok = self.init in ("scratch", "previous") or self.init.startswith(("hf:", "ckpt:"))
        require(ok, path, "init", f"must be scratch, previous, hf:<dir> or ckpt:<dir>[@step], got {self.init!r}")


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


@dataclass(frozen=True)
class EvalConfig:
    every: int = 50  # held-out eval every N steps, at step 0 of each phase and at its end
    batches: int = 4  # batches per source
    batch_size: int = 0  # 0: the training global batch size

    def validate(self, path: str) -> None:
        require(self.every > 0, path, "every", "must be positive")
        require(self.batches >= 1, path, "batches", "must be >= 1")
        require(self.batch_size >= 0, path, "batch_size", "must be >= 0")


@dataclass(frozen=True)
class LogConfig:
    every: int = 10  # progress-bar / TensorBoard cadence (every step goes to metrics.jsonl)
    tensorboard: bool = True  # also write TensorBoard event files
    progress: bool = True  # terminal progress bar

    def validate(self, path: str) -> None:
        require(self.every > 0, path, "every", "must be positive")


@dataclass(frozen=True)
class DistributedConfig:
    """jax.distributed settings. 'auto' lets JAX detect TPU pods, SLURM and Open MPI."""

    mode: Literal["off", "auto", "manual"] = "off"  # off: one process
    coordinator: str = ""  # host:port of process 0 (manual)
    num_processes: int = 1  # manual: total processes
    process_id: int = 0  # manual: this process (differs per host)
    timeout_s: int = 300  # give up reaching the coordinator after this long

    def validate(self, path: str) -> None:
        if self.mode == "manual":
            require(":" in self.coordinator, path, "coordinator", "set host:port of process 0")
            require(self.num_processes >= 1, path, "num_processes", "must be >= 1")
            require(0 <= self.process_id < self.num_processes, path, "process_id",
                    f"must be in [0, {self.num_processes})")
        require(self.timeout_s > 0, path, "timeout_s", "must be positive")


@dataclass(frozen=True)
class RunConfig:
    run_dir: str  # checkpoints, metrics and reports of this run
    model: ModelConfig  # architecture
    data: DataConfig  # sources, sequence length and global batch
    phases: list[PhaseConfig]  # the plan, run in order
    mesh: MeshConfig = field(default_factory=MeshConfig)  # may change between a run and its resumption
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)  # AdamW, clipping, z-loss, accumulation
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)  # orbax cadence and retention
    eval: EvalConfig = field(default_factory=EvalConfig)  # held-out loss of every source
    log: LogConfig = field(default_factory=LogConfig)  # progress bar and TensorBoard
    distributed: DistributedConfig = field(default_factory=DistributedConfig)  # jax.distributed (several hosts)
    tokenizer: str = ""  # sentencepiece .model or tokenizer.json; empty for synthetic data
    seed: int = 0  # parameter init (scratch phases)

    @property
    def tokens_per_step(self) -> int:
        return self.data.global_batch_size * self.data.seq_len

    def phase_steps(self) -> list[int]:
        return [p.steps if p.steps is not None else math.ceil(p.tokens / self.tokens_per_step)
                for p in self.phases]

    def phase_starts(self) -> list[int]:
        starts, total = [], 0
        for n in self.phase_steps():
            starts.append(total)
            total += n
        return starts

    @property
    def total_steps(self) -> int:
        return sum(self.phase_steps())

    def validate(self, path: str) -> None:
        require(bool(self.run_dir), path, "run_dir", "set the directory for checkpoints and logs")
        require(len(self.phases) > 0, path, "phases", "the plan needs at least one phase")
        require(self.data.seq_len > 0, "data", "seq_len", f"must be positive, got {self.data.seq_len}")
        require(self.data.seq_len <= self.model.max_position_embeddings, "data", "seq_len",
                f"seq_len={self.data.seq_len} exceeds model.max_position_embeddings="
                f"{self.model.max_position_embeddings}")
        b = self.data.global_batch_size
        require(b > 0, "data", "global_batch_size", "must be positive")
        require(b % self.optimizer.grad_accum == 0, "optimizer", "grad_accum",
                f"must divide data.global_batch_size={b}")
        for i, phase in enumerate(self.phases):
            for src in phase.mixture:
                if src not in self.data.sources:
                    fail(f"phases[{i}].mixture", src, f"unknown source; data.sources defines "
                         f"{', '.join(sorted(self.data.sources)) or 'none'}")
        if self.phases[0].init == "previous":
            fail("phases[0]", "init", "the first phase has no previous phase: use scratch, hf:<dir> or ckpt:<dir>")
        # Lengths that depend on each phase's budget (warmup + cooldown fit, fractions): checked
        # now, so a bad plan fails at load time, not after compilation.
        from cpt_jax.schedules import plan_phases
        plan_phases([(p.name, p.schedule, n) for p, n in zip(self.phases, self.phase_steps())])


def check_mesh_batch(cfg: RunConfig, data_parallel: int) -> None:
    """The micro-batch must split evenly over the data-parallel devices."""
    micro = cfg.data.global_batch_size // cfg.optimizer.grad_accum
    if micro % data_parallel:
        raise ConfigError("data.global_batch_size", f"micro-batch {micro} (global_batch_size / grad_accum) "
                          f"is not divisible by the {data_parallel} data-parallel devices (mesh data x fsdp)")


def load_run_config(path: str | Path, overrides: list[str] | None = None) -> RunConfig:
    data = apply_overrides(load_yaml(path), list(overrides or []))
    return from_dict(RunConfig, data)
