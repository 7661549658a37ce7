"""Arguments several commands share."""

from __future__ import annotations

import argparse
import os


def add_cpu_devices_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cpu-devices", type=int, default=0, metavar="N",
                        help="on CPU, split the host into N fake devices to try a sharded mesh")


def apply_cpu_devices(n: int) -> None:
    """Must run before JAX starts its backends (it reads XLA_FLAGS once)."""
    if n > 0:
        flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if "host_platform_device_count" not in f]
        os.environ["XLA_FLAGS"] = " ".join([*flags, f"--xla_force_host_platform_device_count={n}"])
