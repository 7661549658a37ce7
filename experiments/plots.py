"""The suite's figures (matplotlib, Agg): loss curves of one seed, and the replay frontier over seeds."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from suite import evals


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def curves(runs: dict, out: Path, label, title: str, sources=("prose", "code"), first: int | None = None) -> None:
    plt = _plt()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, len(sources), figsize=(5 * len(sources), 4), squeeze=False)
    for ax, source in zip(axes[0], sources):
        for key, run_dir in runs.items():
            steps, losses = evals(run_dir, source)
            x = steps - steps[0]
            keep = x <= first if first else slice(None)
            ax.plot(x[keep], losses[keep], marker="o", markersize=2, label=label(key))
        ax.set_title(f"held-out {source}")
        ax.set_xlabel("step in the CPT phase")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def frontier(ratios, forget: dict, code: dict, out: Path) -> None:
    """Mean forgetting vs mean final new-domain loss per replay ratio, bars: the seeds' range."""
    plt = _plt()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6, 4.5))
    x = np.array([forget[r].mean() for r in ratios])
    y = np.array([code[r].mean() for r in ratios])
    xerr = np.array([[x[i] - forget[r].min(), forget[r].max() - x[i]] for i, r in enumerate(ratios)]).T
    yerr = np.array([[y[i] - code[r].min(), code[r].max() - y[i]] for i, r in enumerate(ratios)]).T
    ax.errorbar(x, y, xerr=xerr, yerr=yerr, marker="o")
    for i, r in enumerate(ratios):
        ax.annotate(f"{r:.0%}", (x[i], y[i]), fontsize=8, textcoords="offset points", xytext=(4, 4))
    ax.set_xlabel("forgetting: rise of held-out prose loss")
    ax.set_ylabel("final held-out code loss")
    ax.set_title("2. learning-forgetting frontier over replay ratios (bars: range of seeds)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
