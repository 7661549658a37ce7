"""Per-device memory of a plan's compiled train step under several LM-head settings (or any other
plan overrides), for a real accelerator target compiled on this host (compile-only devices: the
target's own compiler, no accelerator needed).

    JAX_PLATFORMS=cpu PYTHONPATH=. /work/main/.venv-cuda/bin/python benchmarks/bench_logits_memory.py \\
      --plan configs/estimate/llama3.1-8b.yaml --target h100x8 \\
      --set model.attention=pallas_gpu data.global_batch_size=8 mesh.fsdp=8 \\
      --variant model.logits_chunk=0 --variant model.logits_vocab_tiles=1 --variant ""

Each --variant is a space-separated list of extra overrides ("": the plan as set). Prints one JSON
line per variant: {"variant", "arguments", "temporaries", "peak", ...} in bytes; --breakdown K adds
the K largest buffers live at the peak and the bytes by kind (cpt_jax/estimate/breakdown.py).
"""

from __future__ import annotations

import argparse
import json

from cpt_jax.estimate.step import compile_step
from cpt_jax.estimate.targets import compiler_options, target_devices
from cpt_jax.sharding import make_mesh
from cpt_jax.train.config import load_run_config


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--plan", required=True)
    ap.add_argument("--target", required=True, help="e.g. h100x8, tpu-v5p:2x2x1 (cpt-jax estimate --target)")
    ap.add_argument("--set", nargs="*", default=[], help="plan overrides KEY=VALUE for every variant")
    ap.add_argument("--variant", action="append", default=None, help="extra overrides of one variant (repeat)")
    ap.add_argument("--breakdown", type=int, default=0, metavar="K")
    args = ap.parse_args()
    devices, info = target_devices(args.target)
    for variant in args.variant or [""]:
        cfg = load_run_config(args.plan, [*args.set, *variant.split()])
        res = compile_step(cfg, make_mesh(cfg.mesh, devices), compiler_options=compiler_options(info),
                           breakdown=args.breakdown)
        row = {"variant": variant, "target": info.name, **res.get("memory", {}), "peak": res.get("peak"),
               "oom": res.get("oom"), "compile_s": round(res["compile_s"], 1)}
        if args.breakdown and "breakdown" in res:
            row["by_kind"] = res["breakdown"]["by_kind"]
            row["buffers"] = res["breakdown"]["buffers"]
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
