"""Compile one phase of a plan for a real accelerator target on this CPU host (deviceless AOT)
and print its per-device memory: e.g. a 128k-token context-parallel phase on a v5p slice.

    PYTHONPATH=. JAX_PLATFORMS=cpu .venv-tpu/bin/python benchmarks/compile_context.py \\
        configs/estimate/llama3.1-8b-128k.yaml --phase 1 --target tpu-v5p:2x2x2

The phase's own mesh section (a `mesh:` override, e.g. context: 8) is laid over the target's
devices; the step is the run's real train step (`build_setup`), with abstract inputs.
"""

from __future__ import annotations

import argparse
import json
import time

from cpt_jax.config.base import from_dict, load_yaml
from cpt_jax.estimate.step import abstract_inputs, memory_stats, without_data
from cpt_jax.estimate.targets import compiler_options, target_devices
from cpt_jax.sharding import make_mesh
from cpt_jax.train.config import RunConfig
from cpt_jax.train.setup import build_setup

GB = 1e9


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("plan")
    ap.add_argument("--phase", type=int, default=0)
    ap.add_argument("--target", required=True, help="e.g. tpu-v5p:2x2x2")
    ap.add_argument("--json", help="also write the figures here")
    args = ap.parse_args()
    cfg = without_data(from_dict(RunConfig, load_yaml(args.plan)))
    devices, info = target_devices(args.target)
    run = cfg.phase_run(args.phase)
    mesh = make_mesh(run.mesh, devices)
    setup = build_setup(cfg, mesh, args.phase)
    state, batch = abstract_inputs(setup)
    t0 = time.perf_counter()
    lowered = setup.train_step.lower(state, batch)
    t1 = time.perf_counter()
    compiled = lowered.compile(compiler_options(info))
    t2 = time.perf_counter()
    mem = memory_stats(compiled)
    peak = mem["arguments"] + mem["outputs"] - mem["aliased"] + mem["temporaries"]
    out = {"plan": args.plan, "phase": cfg.phases[args.phase].name, "target": info.name,
           "mesh": dict(mesh.shape), "seq_len": run.data.seq_len, "rows_per_step": run.data.global_batch_size,
           "per_device_gb": {k: round(v / GB, 2) for k, v in mem.items()}, "peak_gb": round(peak / GB, 2),
           "hbm_gb": round(info.memory_bytes / GB, 2), "lower_s": round(t1 - t0, 1), "compile_s": round(t2 - t1, 1)}
    print(json.dumps(out, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
