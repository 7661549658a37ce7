"""The demo's picture: held-out loss of each domain across phase 0 and both phase-1 variants."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from cpt_jax.report.runs import RunRecord  # noqa: E402


def plot_story(pretrain: RunRecord, branches: list[RunRecord], out: str | Path) -> Path:
    """Phase-1 runs start from the end of pretraining, so their steps are drawn after it."""
    offset = pretrain.config.total_steps
    sources = sorted({s for r in (pretrain, *branches) for s in r.sources})
    fig, axes = plt.subplots(1, len(sources), figsize=(6 * len(sources), 4.5), squeeze=False)
    for ax, source in zip(axes[0], sources):
        x, y = pretrain.eval_curve(source)
        ax.plot(x, y, color="black", marker="o", markersize=3, label=pretrain.label)
        for run in branches:
            bx, by = run.eval_curve(source)
            ax.plot([s + offset for s in bx], by, marker="o", markersize=3, label=run.label)
        ax.axvline(offset, color="grey", linestyle="--", linewidth=0.8)
        ax.annotate("phase 1", (offset, 1.0), xycoords=("data", "axes fraction"), va="top", ha="left", fontsize=8)
        ax.set_title(f"held-out {source} loss")
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("learning the new domain, forgetting the old one")
    fig.tight_layout()
    out = Path(out)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
