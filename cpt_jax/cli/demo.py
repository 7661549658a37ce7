"""Run the embedded continual pre-training demo on CPU (prose -> code, with and without replay)."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="demo sizes to change, e.g. pretrain_steps=600 hidden_size=256 (see cpt_jax/demo/config.py)")
    parser.add_argument("--out", default="demo_out", help="output folder (default: demo_out)")
    parser.add_argument("--size", default="default", choices=["default", "test"], help="size preset")
    parser.add_argument("--no-progress", action="store_true")


def run(args: argparse.Namespace) -> int:
    from cpt_jax.config.base import apply_overrides, from_dict
    from cpt_jax.demo.config import PRESETS, DemoConfig
    from cpt_jax.demo.run import run_demo

    cfg = from_dict(DemoConfig, apply_overrides(dict(PRESETS[args.size]), args.overrides))
    run_demo(cfg, args.out, progress=not args.no_progress)
    return 0
