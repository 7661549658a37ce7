"""Compile a plan's step in a fresh process whose JAX has exactly the requested number of fake
CPU devices (XLA reads the device count once, when JAX starts). Reads {"config", "devices", "phase", "breakdown"} as
JSON on stdin and prints the compile result as one JSON line."""

from __future__ import annotations

import json
import sys

import jax

from cpt_jax.config.base import from_dict
from cpt_jax.estimate.step import compile_step
from cpt_jax.sharding.mesh import make_mesh
from cpt_jax.train.config import RunConfig


def main() -> None:
    request = json.loads(sys.stdin.read())
    cfg = from_dict(RunConfig, request["config"])
    devices = jax.devices("cpu")
    if len(devices) != request["devices"]:
        raise SystemExit(f"worker has {len(devices)} CPU devices, wanted {request['devices']}")
    print(json.dumps(compile_step(cfg, make_mesh(cfg.mesh, devices), phase=request.get("phase", 0),
                                  breakdown=request.get("breakdown", 0))))


if __name__ == "__main__":
    main()
