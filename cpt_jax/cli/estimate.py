"""Estimate a plan's per-device memory, FLOPs and step time on N devices, before launching it.

Compiles the plan's real train step for N fake CPU devices on abstract inputs (no parameter is
allocated) and sets XLA's per-device buffers beside an analytic count; with --device, says
whether it fits that chip and how long a step takes at the given MFU.
"""

from __future__ import annotations

import argparse
import json

from cpt_jax.cli.train import apply_cpu_devices
from cpt_jax.storage import as_path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="run/plan YAML")
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value", help="override config values")
    parser.add_argument("--devices", type=int, required=True, metavar="N", help="number of devices to plan for")
    parser.add_argument("--device", default=None, metavar="KIND",
                        help="h100, h200, a100-40gb, a100-80gb, tpu-v4, tpu-v5e, tpu-v5p, tpu-v6e")
    parser.add_argument("--mfu", type=float, default=0.4, help="model FLOPs utilisation for the step time")
    parser.add_argument("--analytic-only", action="store_true", help="count only; do not compile the step")
    parser.add_argument("--json", default=None, metavar="FILE", help="also write the estimate as JSON")


def run(args: argparse.Namespace) -> int:
    if not args.analytic_only:
        apply_cpu_devices(args.devices)  # before JAX starts: the compile runs on N fake CPU devices
    from cpt_jax.estimate import estimate_plan, format_estimate
    from cpt_jax.train.config import load_run_config

    cfg = load_run_config(args.config, args.overrides)
    result = estimate_plan(cfg, args.devices, device=args.device, mfu=args.mfu, compile=not args.analytic_only)
    print(format_estimate(result))
    if args.json:
        as_path(args.json).write_text(json.dumps(result, indent=2))
    return 0
