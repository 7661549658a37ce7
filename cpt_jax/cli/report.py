"""Draw loss, LR and per-domain held-out curves of one or more runs to PNG, with a markdown table."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dirs", nargs="+", help="run directories (several: compared side by side)")
    parser.add_argument("--out", default=None, help="output folder (default: RUN_DIR/report)")
    parser.add_argument("--labels", nargs="*", default=None, help="one label per run for the legend")


def run(args: argparse.Namespace) -> int:
    from cpt_jax.report import write_report

    report = write_report(args.run_dirs, args.out, args.labels)
    print(report.tables)
    for path in report.written:
        print(f"wrote {path}")
    return 0
