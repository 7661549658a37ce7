"""Write the files that start a plan on every host of a cluster: GKE JobSet, TPU VM script or SLURM batch script.

The kit runs `cpt-jax train PLAN distributed.mode=auto` on every host (JAX finds the cluster), with
the slices, hosts and chips per host of --target; the plan's mesh is checked against the target first.
Rerunning the kit resumes the run from its last checkpoint.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from cpt_jax.errors import UserError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="run/plan YAML, as the hosts will see it (a path on their disk or gs://...)")
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value", help="overrides passed to every host")
    parser.add_argument("--target", required=True, help="tpu-v5p:4x8x8, v5p-256, v6e-256, h100x64, ...")
    parser.add_argument("--slices", type=int, default=1, help="TPU slices joined over DCN")
    parser.add_argument("--format", required=True, choices=("gke", "tpu-vm", "slurm"), dest="fmt")
    parser.add_argument("--out", required=True, metavar="FILE", help="where to write the kit (not overwritten)")
    parser.add_argument("--name", default="cpt-jax", help="job / TPU / JobSet name")
    parser.add_argument("--image", default="", help="gke: container image with cpt-jax[tpu] installed")
    parser.add_argument("--zone", default="us-east5-a", help="tpu-vm: the slice's zone")
    parser.add_argument("--time", default="24:00:00", dest="time_limit", help="slurm: the job's time limit")


def run(args: argparse.Namespace) -> int:
    from cpt_jax.estimate.targets import parse_target
    from cpt_jax.launch import write_kit
    from cpt_jax.train.config import load_run_config

    out = Path(args.out)
    if out.exists():
        raise UserError(f"{args.out} exists; choose another --out (a kit is never overwritten)")
    cfg = load_run_config(args.config, args.overrides)
    text = write_kit(args.fmt, parse_target(args.target, args.slices), cfg.mesh, str(args.config), args.overrides,
                     name=args.name, image=args.image, zone=args.zone, time_limit=args.time_limit)
    out.write_text(text)
    if args.fmt != "gke":
        out.chmod(0o755)
    print(f"wrote {args.out} ({args.fmt}, {args.target})")
    return 0
