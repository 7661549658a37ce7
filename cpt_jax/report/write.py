"""`cpt-jax report`: curves and tables of one or more runs, written to a folder."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cpt_jax.errors import UserError
from cpt_jax.report.curves import plot_compare, plot_run
from cpt_jax.report.runs import load_run
from cpt_jax.report.stability import stability_table
from cpt_jax.report.tables import data_table, phase_table
from cpt_jax.train.goodput import format_goodput, goodput
from cpt_jax.storage import as_path


@dataclass(frozen=True)
class Report:
    tables: str  # markdown, also written to heldout.md
    written: list[Path]


def write_report(run_dirs: list[str], out: str | Path | None = None, labels: list[str] | None = None) -> Report:
    """Curves per run (and side by side when several), held-out tables; out defaults to RUN/report."""
    labels = labels or [None] * len(run_dirs)
    if len(labels) != len(run_dirs):
        raise UserError(f"{len(labels)} labels given for {len(run_dirs)} runs; give one label per run")
    runs = [load_run(d, label) for d, label in zip(run_dirs, labels)]
    out = as_path(out or as_path(run_dirs[0]) / "report")
    written = [plot_run(r, out / f"curves-{r.label}.png") for r in runs]
    if len(runs) > 1:
        written.append(plot_compare(runs, out / "compare.png"))
    table = (phase_table(runs) + "\nStability gap (worst held-out loss after each phase start):\n\n"
             + stability_table(runs) + "\nData per phase (shares of rows and epochs seen):\n\n" + data_table(runs)
             + "".join(f"\nGoodput of {r.label} (wall time by category, every invocation; see "
                       f"cpt_jax/train/goodput.py):\n\n" + format_goodput(goodput(r.times)) for r in runs))
    (out / "heldout.md").write_text("# Held-out loss per domain\n\n" + table)
    written.append(out / "heldout.md")
    return Report(tables=table, written=written)
