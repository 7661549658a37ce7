"""The run config: the parts' configs composed into one plan of continual pre-training phases."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

from cpt_jax.checkpoint.model_checkpoint import parse_ckpt_ref
from cpt_jax.checkpoint.run_checkpoint import CheckpointConfig
from cpt_jax.config.base import apply_overrides, fail, fingerprint, from_dict, join, load_yaml, require, to_dict
from cpt_jax.data.config import DataConfig
from cpt_jax.distributed import DistributedConfig
from cpt_jax.errors import ConfigError
from cpt_jax.model.config import ModelConfig, RopeScalingConfig
from cpt_jax.schedules.config import ScheduleConfig
from cpt_jax.sharding.mesh import MeshConfig
from cpt_jax.tasks.config import TaskConfig
from cpt_jax.train.optimizer import OptimizerConfig
from cpt_jax.train.profile import ProfileConfig


CARRY_PARTS = ("params", "optimizer", "data")
PHASE_DATA_KEYS = ("seq_len", "global_batch_size")  # per-phase overrides of the data section ...
PHASE_MODEL_KEYS = ("rope_theta", "rope_scaling", "max_position_embeddings")  # ... and of the model's


@dataclass(frozen=True)
class PhaseConfig:
    """One phase of the plan: its mixture, budget, schedule and starting point.

    init: 'scratch' (random init), 'previous' (the phase before; the default after phase 0),
    'hf:<dir>' (a Hugging Face folder, imported on the fly), 'ckpt:<dir>[@step]' (a cpt_jax model
    or run checkpoint). carry: what a phase keeps from where it starts, '+'-joined: params,
    optimizer (moments and count), data (each source's stream offsets; `ckpt:` of a run only).
    'params' alone resets the optimizer state, as a new phase from an upstream model does. A first
    phase `ckpt:<run_dir>@<step>` that carries the optimizer or the data is a branch of that run:
    its global steps continue from <step> (see RunConfig.branch_point).
    """

    name: str  # shown in logs, plots and tables
    mixture: dict[str, float]  # source name -> weight; each batch within one row of it, rows so far within one row
    schedule: ScheduleConfig  # this phase's LR curve (see the schedule section)
    steps: Optional[int] = None  # phase budget in optimizer steps ...
    tokens: Optional[int] = None  # ... or in tokens (rounded up to whole steps)
    init: str = "previous"  # scratch, previous, hf:<dir> or ckpt:<dir>[@step]
    carry: Optional[str] = None  # params[+optimizer][+data]; default params+optimizer after previous, else params
    from_ema: bool = False  # start from the weight EMA of `previous` or of ckpt:<run_dir>@<step> (optimizer.ema_decay)
    # Per-phase overrides (a long-context phase): unset keeps the value of the phase before (the
    # run's data/model section for the first phase). Parameter shapes never depend on them.
    seq_len: Optional[int] = None  # row length of this phase's batches
    global_batch_size: Optional[int] = None  # rows per optimizer step in this phase
    rope_theta: Optional[float] = None  # RoPE base from this phase on
    rope_scaling: Optional[RopeScalingConfig] = None  # RoPE scaling from this phase on
    max_position_embeddings: Optional[int] = None  # the model's context length from this phase on
    freeze: Optional[list[str]] = None  # optimizer.freeze from this phase on ([] trains everything again)
    mesh: Optional[MeshConfig] = None  # the device mesh from this phase on (e.g. context: 2 for long rows)

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
        self._validate_carry(path)
        for key in ("seq_len", "global_batch_size", "max_position_embeddings"):
            if getattr(self, key) is not None:
                require(getattr(self, key) > 0, path, key, f"must be positive, got {getattr(self, key)}")
        if self.from_ema:
            require(self.init == "previous" or self.init.startswith("ckpt:"), path, "from_ema",
                    "only a phase that starts from `previous` or from a ckpt:<run_dir>@<step> has an EMA to start from")
        if self.rope_theta is not None:
            require(self.rope_theta > 0, path, "rope_theta", f"must be positive, got {self.rope_theta}")
        if self.freeze is not None:
            from cpt_jax.train.freeze import parse_entry

            for entry in self.freeze:
                parse_entry(entry, join(path, "freeze"))

    @property
    def carried(self) -> frozenset[str]:
        """What the phase keeps from its starting point (carry, with its default resolved)."""
        if self.carry is None:
            return frozenset({"params", "optimizer"} if self.init == "previous" else {"params"})
        return frozenset(self.carry.split("+"))

    def _validate_carry(self, path: str) -> None:
        if self.carry is None:
            return
        parts = self.carry.split("+")
        require(all(p in CARRY_PARTS for p in parts) and len(set(parts)) == len(parts), path, "carry",
                f"join params, optimizer and data with '+' (e.g. params+optimizer+data), got {self.carry!r}")
        require("params" in parts, path, "carry", f"must include params (a phase always starts from "
                                                  f"its starting point's weights), got {self.carry!r}")
        if self.init in ("scratch",) or self.init.startswith("hf:"):
            require(parts == ["params"], path, "carry", f"init {self.init.split(':')[0]!r} has only parameters "
                                                        "to keep; use carry: params or remove carry")
        if self.init == "previous":
            require("data" not in parts, path, "carry", "a phase after `previous` always continues each source's "
                                                        "stream where the phase before stopped; drop 'data'")
        if self.init.startswith("ckpt:") and {"optimizer", "data"} & set(parts):
            _, step = parse_ckpt_ref(self.init[5:])
            require(step is not None, path, "init", f"carry {self.carry!r} continues a run: name the step to "
                                                    "branch from, as ckpt:<run_dir>@<step>")


@dataclass(frozen=True)
class EvalConfig:
    every: int = 50  # held-out eval every N steps, at step 0 of each phase and at its end
    batches: int = 4  # batches per source
    batch_size: int = 0  # 0: the training global batch size
    tasks: list[TaskConfig] = field(default_factory=list)  # downstream tasks scored at every eval (see eval.tasks[])
    dense_first: int = 0  # during the first N steps of each phase (where the stability gap lives) ...
    dense_every: int = 0  # ... also evaluate every M steps (0, 0: off)

    def validate(self, path: str) -> None:
        require(self.every > 0, path, "every", "must be positive")
        require(self.batches >= 1, path, "batches", "must be >= 1")
        require(self.batch_size >= 0, path, "batch_size", "must be >= 0")
        require(self.dense_first >= 0, path, "dense_first", f"must be >= 0, got {self.dense_first}")
        require(self.dense_every >= 0, path, "dense_every", f"must be >= 0, got {self.dense_every}")
        require((self.dense_first > 0) == (self.dense_every > 0), path, "dense_every",
                "set dense_first and dense_every together (both 0 turns dense evaluation off)")
        names = [t.name for t in self.tasks]
        dup = next((n for n in names if names.count(n) > 1), None)
        require(dup is None, path, "tasks", f"task name {dup!r} is used twice; give each task its own name")

    def due(self, step_in_phase: int, global_step: int) -> bool:
        """Whether to evaluate after `step_in_phase` steps of the current phase (global step
        `global_step`): at the phase start, every `every` global steps, and every `dense_every`
        phase steps within the first `dense_first`. The phase end is the loop's to add."""
        if step_in_phase == 0 or global_step % self.every == 0:
            return True
        return 0 < step_in_phase <= self.dense_first and step_in_phase % self.dense_every == 0


@dataclass(frozen=True)
class LogConfig:
    every: int = 10  # fetch metrics every N steps (bar, flush, divergence check); each step is logged
    tensorboard: bool = True  # also write TensorBoard event files
    progress: bool = True  # terminal progress bar
    wandb: bool = False  # also log to Weights & Biases (pip install 'cpt-jax[wandb]'), same metric names
    wandb_project: str = "cpt-jax"  # W&B project of the run
    wandb_mode: Literal["offline", "online"] = "offline"  # offline: files under <run_dir>/wandb, no network

    def validate(self, path: str) -> None:
        require(self.every > 0, path, "every", "must be positive")


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
    profile: ProfileConfig = field(default_factory=ProfileConfig)  # a jax.profiler trace of some steps
    tokenizer: str = ""  # sentencepiece .model or tokenizer.json; empty for synthetic data
    seed: int = 0  # parameter init (scratch phases)
    keep_host_memory: Optional[bool] = None  # glibc keeps freed memory (no page faults per CPU step); null: on CPU-only runs

    @property
    def tokens_per_step(self) -> int:
        """Of the first phase (see phase_run for the others)."""
        return self.phase_run(0).data.global_batch_size * self.phase_run(0).data.seq_len

    def phase_run(self, i: int) -> RunConfig:
        """The run as phase i sees it: its data, model and mesh sections (and optimizer.freeze) with
        the per-phase overrides of phases 0..i applied (each key: the latest phase that sets it; a
        phase's mesh replaces the whole mesh section)."""
        data, model, optimizer, mesh = {}, {}, {}, self.mesh
        for phase in self.phases[: i + 1]:
            data.update({k: getattr(phase, k) for k in PHASE_DATA_KEYS if getattr(phase, k) is not None})
            model.update({k: getattr(phase, k) for k in PHASE_MODEL_KEYS if getattr(phase, k) is not None})
            if phase.freeze is not None:
                optimizer["freeze"] = phase.freeze
            mesh = phase.mesh or mesh
        if not data and not model and not optimizer and mesh is self.mesh:
            return self
        return dataclasses.replace(self, data=dataclasses.replace(self.data, **data),
                                   model=dataclasses.replace(self.model, **model),
                                   optimizer=dataclasses.replace(self.optimizer, **optimizer), mesh=mesh)

    def phase_tokens_per_step(self) -> list[int]:
        return [r.data.global_batch_size * r.data.seq_len for r in map(self.phase_run, range(len(self.phases)))]

    def phase_steps(self) -> list[int]:
        return [p.steps if p.steps is not None else math.ceil(p.tokens / t)
                for p, t in zip(self.phases, self.phase_tokens_per_step())]

    @property
    def branch_point(self) -> tuple[str, int] | None:
        """(parent run directory, step) when this run is a branch: its first phase starts from a
        run's checkpoint and carries its optimizer or data, so the run continues that run's
        global steps (and LR clock) from <step>, as a WSD cooldown branched off a stable trunk."""
        first = self.phases[0]
        if first.init.startswith("ckpt:") and first.carried & {"optimizer", "data"}:
            path, step = parse_ckpt_ref(first.init[5:])
            return path, int(step)
        return None

    @property
    def base_step(self) -> int:
        """Global step before the first step of this run: 0, or a branch's starting step."""
        point = self.branch_point
        return point[1] if point else 0

    def phase_starts(self) -> list[int]:
        """Global step at which each phase starts (a branch's continue from its branch point)."""
        starts, total = [], self.base_step
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
        for i in range(len(self.phases)):
            run, where = self.phase_run(i), f" (in phase {self.phases[i].name!r})" if i else ""
            require(run.data.seq_len <= run.model.max_position_embeddings, "data", "seq_len",
                    f"seq_len={run.data.seq_len} exceeds model.max_position_embeddings="
                    f"{run.model.max_position_embeddings}{where}")
            b = run.data.global_batch_size
            require(b > 0, "data", "global_batch_size", "must be positive")
            require(b % self.optimizer.grad_accum == 0, "optimizer", "grad_accum",
                    f"must divide data.global_batch_size={b}{where}")
        for i, phase in enumerate(self.phases):
            for src in phase.mixture:
                if src not in self.data.sources:
                    fail(f"phases[{i}].mixture", src, f"unknown source; data.sources defines "
                         f"{', '.join(sorted(self.data.sources)) or 'none'}")
        for i, phase in enumerate(self.phases[1:], start=1):
            if "data" in phase.carried:
                fail(f"phases[{i}]", "carry", "only the first phase can carry data (a branch continues its "
                                              "parent's streams); later phases continue the plan's own")
        for i, phase in enumerate(self.phases):
            if phase.from_ema and phase.init == "previous":
                require(self.optimizer.ema_decay > 0, f"phases[{i}]", "from_ema",
                        "the run keeps no weight EMA: set optimizer.ema_decay (e.g. 0.999)")
        if self.phases[0].init == "previous":
            fail("phases[0]", "init", "the first phase has no previous phase: use scratch, hf:<dir> or ckpt:<dir>")
        # Lengths that depend on each phase's budget (warmup + cooldown fit, fractions): checked
        # now, so a bad plan fails at load time, not after compilation.
        from cpt_jax.schedules import plan_phases
        plan_phases([(p.name, p.schedule, n) for p, n in zip(self.phases, self.phase_steps())])


# Config sections that may change between a run and its resumption (a different mesh or
# cadence does not change what is trained); everything else is "the plan".
RESUMABLE_CHANGES = ("mesh", "distributed", "log", "checkpoint", "eval", "run_dir", "keep_host_memory", "profile")


def plan_fingerprint(cfg: RunConfig) -> str:
    """What a run directory is a run of: resuming under another plan is refused."""
    return fingerprint(plan_dict(cfg), ignore=RESUMABLE_CHANGES)


def plan_dict(cfg: RunConfig) -> dict:
    """The plain form of a plan as runs compare it. The layer layout (model.scan_layers, and
    scan_unroll) and the LM head's chunking (logits_chunk, logits_vocab_tiles) are how the model compiles, not what it
    trains: checkpoint restores convert the layout, so they may change."""
    plain = to_dict(cfg)
    for key in ("scan_layers", "scan_unroll", "logits_chunk", "logits_vocab_tiles"):
        plain["model"].pop(key, None)
    for phase in plain["phases"]:  # a phase's mesh, like the run's, may change on resumption
        phase.pop("mesh", None)
    return plain


def check_mesh_batch(cfg: RunConfig, data_parallel: int) -> None:
    """The micro-batch must split evenly over the data-parallel devices."""
    micro = cfg.data.global_batch_size // cfg.optimizer.grad_accum
    if micro % data_parallel:
        raise ConfigError("data.global_batch_size", f"micro-batch {micro} (global_batch_size / grad_accum) "
                          f"is not divisible by the {data_parallel} data-parallel devices (mesh data x fsdp)")


def load_run_config(path: str | Path, overrides: list[str] | None = None) -> RunConfig:
    """The plan at `path` with `overrides` applied; a first phase from `hf:DIR` takes its model from there."""
    from cpt_jax.train.upstream import resolve_upstream_model
    data = apply_overrides(load_yaml(path), list(overrides or []))
    return from_dict(RunConfig, resolve_upstream_model(data))
