"""PNG curves: training loss, LR and per-domain held-out loss, with phase boundaries marked."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from cpt_jax.report.runs import RunRecord  # noqa: E402
from cpt_jax.storage import as_path


def _mark_phases(ax, run: RunRecord) -> None:
    for step, name in run.boundaries[1:]:
        ax.axvline(step, color="grey", linestyle="--", linewidth=0.8)
        ax.annotate(name, (step, 1.0), xycoords=("data", "axes fraction"), rotation=90, va="top",
                    ha="right", fontsize=7, color="grey")


TASK_METRICS = ("acc", "acc_norm", "bits_per_byte")  # drawn when a task row has them


def plot_run(run: RunRecord, out: str | Path) -> Path:
    """Three panels: train loss, LR, and held-out loss per source (learning vs forgetting); a
    fourth with downstream-task scores when the run logged task rows."""
    panels = 4 if run.tasks else 3
    fig, axes = plt.subplots(panels, 1, figsize=(9, 3 * panels), sharex=True)
    steps = [r["step"] for r in run.train]
    axes[0].plot(steps, [r["loss"] for r in run.train], linewidth=0.8, color="black", label="all")
    for source in run.train_sources:  # per-source loss from the same batches: which source a spike came from
        rows = [r for r in run.train if f"loss/{source}" in r]
        axes[0].plot([r["step"] for r in rows], [r[f"loss/{source}"] for r in rows], linewidth=0.6, label=source)
    axes[0].set_ylabel("train loss")
    if run.train_sources:
        axes[0].legend(fontsize=8)
    axes[1].plot(steps, [r["lr"] for r in run.train], color="tab:orange")
    axes[1].set_ylabel("learning rate")
    for source in run.sources:
        x, y = run.eval_curve(source)
        axes[2].plot(x, y, marker="o", markersize=3, label=source)
    axes[2].set_ylabel("held-out loss")
    axes[2].legend(fontsize=8)
    if run.tasks:
        _plot_tasks(axes[3], run)
    axes[-1].set_xlabel("step")
    for ax in axes:
        _mark_phases(ax, run)
        ax.grid(alpha=0.3)
    fig.suptitle(f"{run.label}: learning and forgetting")
    fig.tight_layout()
    return _save(fig, out)


def _plot_tasks(ax, run: RunRecord) -> None:
    styles = {"acc": "-", "acc_norm": "--", "bits_per_byte": ":"}
    for i, task in enumerate(run.task_names):
        for metric in TASK_METRICS:
            x, y = run.task_curve(task, metric)
            if x:
                ax.plot(x, y, styles[metric], color=f"C{i}", marker="o", markersize=3, label=f"{task} {metric}")
    ax.set_ylabel("task score")
    ax.legend(fontsize=8)


def plot_compare(runs: list[RunRecord], out: str | Path) -> Path:
    """Held-out loss per source, one panel per source, one line per run (e.g. replay vs none).
    x is the global step, so branches (which continue their trunk's steps) line up with it, each
    branch point marked by a dotted line in the branch's colour."""
    sources = sorted({s for run in runs for s in run.sources})
    fig, axes = plt.subplots(1, len(sources), figsize=(5 * len(sources), 4), squeeze=False)
    for ax, source in zip(axes[0], sources):
        for run in runs:
            x, y = run.eval_curve(source)
            if x:
                line, = ax.plot(x, y, marker="o", markersize=3, label=run.label)
                if run.branch:  # a branch continues its parent's global steps: mark where it left
                    ax.axvline(run.branch[1], color=line.get_color(), linestyle=":", linewidth=0.8)
        _mark_phases(ax, runs[0])
        ax.set_title(f"held-out {source}")
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, out)


def _save(fig, out: str | Path) -> Path:
    out = as_path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp.png")
    with tmp.open("wb") as f:  # a file object: the folder may be in a bucket
        fig.savefig(f, format="png", dpi=110)
    plt.close(fig)
    tmp.replace(out)
    return out
