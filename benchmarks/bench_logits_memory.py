"""Per-device memory of a plan's compiled train step with the full logits (model.logits_chunk=0)
and with the chunked LM head (the plan's logits_chunk, null: automatic), on compile-only GPU
devices: the real XLA:GPU compiler, no GPU needed.

    XLA_FLAGS=--xla_gpu_shard_autotuning=false JAX_PLATFORMS=cpu PYTHONPATH=. \\
      /work/main/.venv-cuda/bin/python benchmarks/bench_logits_memory.py \\
      --plan configs/estimate/llama3.1-8b.yaml --target-config H100.txtpb --devices 8 \\
      --set model.attention=pallas_gpu data.global_batch_size=8 mesh.fsdp=8

--target-config is a GpuTargetConfigProto text proto of the GPU (jaxlib's cuda topology needs
one). Prints one JSON line per variant: {"logits_chunk", "arguments", "temporaries", ...} in bytes.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from jax.experimental import topologies

from cpt_jax.estimate.step import compile_step
from cpt_jax.sharding import make_mesh
from cpt_jax.train.config import load_run_config


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--plan", required=True)
    ap.add_argument("--target-config", required=True, help="GpuTargetConfigProto text proto")
    ap.add_argument("--devices", type=int, default=8)
    ap.add_argument("--set", nargs="*", default=[], help="plan overrides KEY=VALUE")
    ap.add_argument("--chunks", nargs="*", default=["0", "auto"],
                    help="logits_chunk values to compare (auto: null; unset: the plan's own, e.g. on a version "
                         "without the key)")
    args = ap.parse_args()
    topo = topologies.get_topology_desc(platform="cuda", topology_name="",
                                        target_config=Path(args.target_config).read_text(),
                                        topology=f"1x1x{args.devices}")
    for chunk in args.chunks:
        value = "null" if chunk == "auto" else chunk
        cfg = load_run_config(args.plan, [*args.set] + ([] if chunk == "unset" else [f"model.logits_chunk={value}"]))
        mesh = make_mesh(cfg.mesh, topo.devices)
        res = compile_step(cfg, mesh)
        print(json.dumps({"logits_chunk": chunk, **res["memory"], "compile_s": round(res["compile_s"], 1)}),
              flush=True)


if __name__ == "__main__":
    main()
