"""Run a continual pre-training plan (one or more phases); rerun the same command to resume."""

from __future__ import annotations

import argparse
import sys

from cpt_jax.cli.common import add_cpu_devices_argument, apply_cpu_devices


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="run/plan YAML (see configs/)")
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value",
                        help="override config values, e.g. optimizer.grad_accum=2 mesh.tensor=2")
    parser.add_argument("--force-new", action="store_true",
                        help="the run directory holds a different plan: move it aside and start over")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (log lines only)")
    add_cpu_devices_argument(parser)


def run(args: argparse.Namespace) -> int:
    apply_cpu_devices(args.cpu_devices)
    from cpt_jax.train.loop import run_plan

    summary = run_plan(args.config, args.overrides, force_new=args.force_new, progress=not args.no_progress)
    if "stopped_at" in summary:
        print(f"stopped at step {summary['stopped_at']}; rerun `cpt-jax train {args.config}` to resume",
              file=sys.stderr)
    else:
        print(f"done: {summary.get('final_step')} steps; metrics in {summary['run_dir']}/metrics.jsonl",
              file=sys.stderr)
    return 0
