"""Run a continual pre-training plan (one or more phases); rerun the same command to resume."""

from __future__ import annotations

import argparse
import os
import sys

from cpt_jax.cli.errors import UserError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="run/plan YAML (see configs/)")
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value",
                        help="override config values, e.g. optimizer.grad_accum=2 mesh.tensor=2")
    parser.add_argument("--force-new", action="store_true",
                        help="the run directory holds a different plan: move it aside and start over")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (log lines only)")
    add_cpu_devices_argument(parser)


def add_cpu_devices_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cpu-devices", type=int, default=0, metavar="N",
                        help="on CPU, split the host into N fake devices to try a sharded mesh")


def apply_cpu_devices(n: int) -> None:
    """Must run before JAX starts its backends (it reads XLA_FLAGS once)."""
    if n > 0:
        flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if "host_platform_device_count" not in f]
        os.environ["XLA_FLAGS"] = " ".join([*flags, f"--xla_force_host_platform_device_count={n}"])


def run(args: argparse.Namespace) -> int:
    apply_cpu_devices(args.cpu_devices)
    from cpt_jax.config.run import load_run_config
    from cpt_jax.distributed import start

    cfg = load_run_config(args.config, args.overrides)
    cfg = start(cfg, force_new=args.force_new)
    from cpt_jax.train.loop import TrainingDiverged, train

    try:
        summary = train(cfg, force_new=args.force_new, progress=not args.no_progress)
    except TrainingDiverged as e:
        raise UserError(str(e)) from e
    if "stopped_at" in summary:
        print(f"stopped at step {summary['stopped_at']}; rerun `cpt-jax train {args.config}` to resume",
              file=sys.stderr)
    else:
        print(f"done: {summary.get('final_step')} steps; metrics in {cfg.run_dir}/metrics.jsonl", file=sys.stderr)
    return 0
