"""Estimate every phase's per-device memory, FLOPs and step time before launching a plan.

With --target (a TPU topology or slice name, or a GPU count), compiles each phase's real train
step for that accelerator with its own compiler on this host (compile-only devices; needs the
`tpu` or `cuda12` extra) and says whether it fits. With --devices N, compiles for N fake CPU
devices (XLA:CPU) and, with --device, judges the fit against that chip. Beside either, an
analytic count from shapes and shardings.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from cpt_jax.cli.train import apply_cpu_devices
from cpt_jax.errors import UserError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="run/plan YAML")
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value", help="override config values")
    parser.add_argument("--target", default=None, metavar="T",
                        help="compile for a real accelerator: tpu-v5p:4x8x8, tpu-v6e:16x16, v5p-256, v6e-256, "
                             "v5e-16, h100x64, h200x8, a100-80gbx16")
    parser.add_argument("--slices", type=int, default=1, metavar="N", help="TPU slices of the target (DCN)")
    parser.add_argument("--devices", type=int, default=None, metavar="N",
                        help="number of devices to plan for (without --target: fake CPU devices)")
    parser.add_argument("--device", default=None, metavar="KIND",
                        help="with --devices: h100, h200, a100-40gb, a100-80gb, tpu-v4, tpu-v5e, tpu-v5p, tpu-v6e")
    parser.add_argument("--mfu", type=float, default=0.4, help="model FLOPs utilisation for the step time")
    parser.add_argument("--analytic-only", action="store_true", help="count only; do not compile the step")
    parser.add_argument("--breakdown", type=int, nargs="?", const=12, default=0, metavar="K",
                        help="list the K largest buffers live at the compiled peak, by what they hold")
    parser.add_argument("--json", default=None, metavar="FILE", help="also write the estimate as JSON")


def run(args: argparse.Namespace) -> int:
    if (args.target is None) == (args.devices is None):
        raise UserError("give either --target T (a real accelerator) or --devices N")
    if args.breakdown and args.analytic_only:
        raise UserError("--breakdown reads the compiled program; drop --analytic-only")
    if args.breakdown < 0:
        raise UserError(f"--breakdown K must be positive, got {args.breakdown}")
    if args.target:
        os.environ.setdefault("JAX_PLATFORMS", "cpu")  # compile-only devices; never claim this host's chips
    elif not args.analytic_only:
        apply_cpu_devices(args.devices)  # before JAX starts: the compile runs on N fake CPU devices
    from cpt_jax.estimate import estimate_plan, format_estimate
    from cpt_jax.train.config import load_run_config

    cfg = load_run_config(args.config, args.overrides)
    result = estimate_plan(cfg, args.devices, device=args.device, mfu=args.mfu, compile=not args.analytic_only,
                           target=args.target, slices=args.slices, breakdown=args.breakdown)
    print(format_estimate(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0
