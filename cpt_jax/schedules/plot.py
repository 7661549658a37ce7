"""Draw a plan's learning rate over global steps (tokens on the top axis) to a PNG."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import EngFormatter, FuncFormatter

from cpt_jax.schedules.plan import PhaseSpec, key_points, lr_at, plan_phases

MAX_POINTS = 20_000  # longer plans are sampled evenly, plus every key point, so corners stay sharp


def _sample_steps(total: int, extra: Sequence[int]) -> np.ndarray:
    steps = np.arange(total) if total <= MAX_POINTS else np.linspace(0, total - 1, MAX_POINTS).round()
    return np.unique(np.concatenate([steps.astype(np.int64), np.asarray(extra, np.int64)]))


def plot_plan(phases: Sequence[PhaseSpec], out: str | Path, tokens_per_step: int | None = None,
              title: str | None = None) -> Path:
    """Write the LR curve of the whole plan to `out` (PNG), with phase boundaries and labels.

    The file appears only once complete (written to a temporary name in the same folder, then
    renamed), so a half-written PNG is never left under the requested name.
    """
    out = Path(out)
    plans = plan_phases(phases)
    total = plans[-1].start + plans[-1].steps
    points = key_points(phases)
    # The last step of each phase as well as the first of the next, so each boundary is drawn as is.
    edges = [p.start for p in plans] + [p.start + p.steps - 1 for p in plans]
    steps = _sample_steps(total, [pt["step"] for pt in points] + edges)
    lrs = lr_at(phases, steps)

    fig = Figure(figsize=(10, 4.5), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.plot(steps, lrs, color="tab:blue", linewidth=1.5)
    ax.set_xlabel("global step")
    ax.set_ylabel("learning rate")
    ax.set_xlim(0, max(total - 1, 1))
    ax.set_ylim(0, max(float(lrs.max()), 1e-12) * 1.12)
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.3g}"))  # no offset text under the top axis
    ax.grid(alpha=0.3)
    for plan in plans:
        if plan.start > 0:
            ax.axvline(plan.start - 0.5, color="gray", linestyle="--", linewidth=1)
        ax.text(plan.start + 0.01 * total, 0.98, plan.name, transform=ax.get_xaxis_transform(),
                va="top", ha="left", fontsize=9, color="dimgray")
    ax.scatter([pt["step"] for pt in points], [pt["lr"] for pt in points], s=12, color="tab:red", zorder=3)
    if tokens_per_step:
        top = ax.secondary_xaxis("top", functions=(lambda s: s * tokens_per_step, lambda t: t / tokens_per_step))
        top.xaxis.set_major_formatter(EngFormatter())
        top.set_xlabel("tokens")
    if title:
        ax.set_title(title)

    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            fig.savefig(f, format="png", dpi=120)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out
