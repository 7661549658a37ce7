"""A finished (or running) run directory, read back: config, phase boundaries and metrics."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yaml

from cpt_jax.errors import UserError
from cpt_jax.config.base import from_dict
from cpt_jax.storage import as_path
from cpt_jax.train.config import RunConfig
from cpt_jax.train.metrics import read_jsonl


@dataclass
class RunRecord:
    path: Path
    label: str
    config: RunConfig
    train: list[dict]
    evals: list[dict]
    tasks: list[dict] = field(default_factory=list)  # kind "task" rows: {"task", "step", "acc", ...}
    branch: tuple[str, int] | None = None  # (parent run dir, step) of a branch; its steps continue from there
    times: list[dict] = field(default_factory=list)  # kind "time" rows: where the wall time went (train/goodput.py)

    @property
    def boundaries(self) -> list[tuple[int, str]]:
        """(global step where the phase starts, phase name)."""
        return list(zip(self.config.phase_starts(), (p.name for p in self.config.phases)))

    @property
    def train_sources(self) -> list[str]:
        """Sources with a per-source train loss in the log."""
        return sorted({k[5:] for r in self.train for k in r if k.startswith("loss/")})

    @property
    def sources(self) -> list[str]:
        return sorted({r["source"] for r in self.evals})

    def eval_curve(self, source: str) -> tuple[list[int], list[float]]:
        rows = [r for r in self.evals if r["source"] == source]
        return [r["step"] for r in rows], [r["loss"] for r in rows]

    @property
    def task_names(self) -> list[str]:
        return sorted({r["task"] for r in self.tasks})

    def task_curve(self, task: str, metric: str) -> tuple[list[int], list[float]]:
        rows = sorted((r["step"], r[metric]) for r in self.tasks if r["task"] == task and metric in r)
        return [s for s, _ in rows], [v for _, v in rows]


def load_run(path: str | Path, label: str | None = None) -> RunRecord:
    path = as_path(path)
    cfg_file = path / "config.yaml"
    if not cfg_file.exists():
        raise UserError(f"{path} is not a cpt_jax run directory (no config.yaml); pass the run_dir of a "
                        "`cpt-jax train` run")
    doc = yaml.safe_load(cfg_file.read_text())
    config = from_dict(RunConfig, doc["config"])
    branch = doc.get("branch")
    records = read_jsonl(path / "metrics.jsonl")
    if not records:
        raise UserError(f"{path}/metrics.jsonl has no records yet; train first")
    return RunRecord(path=path, label=label or path.name, config=config,
                     train=[r for r in records if r.get("kind") == "train"],
                     evals=[r for r in records if r.get("kind") == "eval" and r.get("weights") != "ema"],
                     tasks=[r for r in records if r.get("kind") == "task"],
                     times=[r for r in records if r.get("kind") == "time"],
                     branch=(branch["parent"], int(branch["step"])) if branch else None)
