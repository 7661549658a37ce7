"""Draw loss, LR and per-domain held-out curves of one or more runs to PNG, with a markdown table."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dirs", nargs="+", help="run directories (several: compared side by side)")
    parser.add_argument("--out", default=None, help="output folder (default: RUN_DIR/report)")
    parser.add_argument("--labels", nargs="*", default=None, help="one label per run for the legend")


def run(args: argparse.Namespace) -> int:
    from cpt_jax.cli.errors import UserError
    from cpt_jax.report import load_run, phase_table, plot_compare, plot_run

    labels = args.labels or [None] * len(args.run_dirs)
    if len(labels) != len(args.run_dirs):
        raise UserError(f"--labels gave {len(labels)} labels for {len(args.run_dirs)} runs; give one per run")
    runs = [load_run(d, label) for d, label in zip(args.run_dirs, labels)]
    out = Path(args.out or Path(args.run_dirs[0]) / "report")
    written = [plot_run(r, out / f"curves-{r.label}.png") for r in runs]
    if len(runs) > 1:
        written.append(plot_compare(runs, out / "compare.png"))
    table = phase_table(runs)
    (out / "heldout.md").write_text("# Held-out loss per domain\n\n" + table)
    written.append(out / "heldout.md")
    print(table)
    for path in written:
        print(f"wrote {path}")
    return 0
