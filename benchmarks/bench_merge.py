"""`cpt-jax merge`: wall time and peak host memory for merging three ~1 GB fp32 models.

Three random Llama-shaped HF folders (safetensors only, one shard per layer; no transformers,
no download) are written to a temp dir. Each merge runs in a fresh process that reports its RSS
after the imports and its peak RSS (ru_maxrss), so the difference is what the merge itself holds:
it streams, so about one tensor of each input plus the method's scratch, not the models. Not a
test. Prints one JSON line per method and appends them to --out.

    python benchmarks/bench_merge.py --out results/bench_merge.jsonl              # 3 x ~1 GB
    python benchmarks/bench_merge.py --gb 0.3 --out /tmp/merge.jsonl              # a quick run
    python benchmarks/bench_merge.py --mergekit --out ...     # MergeKit (test extra) on the same recipes too
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

GB = 1e9
D, F, HEADS, KV, VOCAB = 1024, 2816, 16, 8, 32000
METHODS = ("linear", "task_arithmetic", "ties")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="JSON-lines results file to append to")
    p.add_argument("--gb", type=float, default=1.0,
                   help="approximate fp32 size of each model in GB (at least ~0.31: the embeddings and one layer)")
    p.add_argument("--methods", default=",".join(METHODS), help="comma-separated merge methods to time")
    p.add_argument("--workdir", default="", help="keep the folders here (default: a temp dir, removed)")
    p.add_argument("--mergekit", action="store_true", help="also time MergeKit (mergekit 0.1.5, CPU) on each recipe")
    p.add_argument("--child", help=argparse.SUPPRESS)  # a recipe to merge in this process
    p.add_argument("--dst", help=argparse.SUPPRESS)
    p.add_argument("--tool", default="cpt_jax", help=argparse.SUPPRESS)
    return p.parse_args()


def layer_shapes() -> dict[str, tuple[int, ...]]:
    hd = D // HEADS
    return {"self_attn.q_proj.weight": (D, D), "self_attn.k_proj.weight": (KV * hd, D),
            "self_attn.v_proj.weight": (KV * hd, D), "self_attn.o_proj.weight": (D, D),
            "mlp.gate_proj.weight": (F, D), "mlp.up_proj.weight": (F, D), "mlp.down_proj.weight": (D, F),
            "input_layernorm.weight": (D,), "post_attention_layernorm.weight": (D,)}


def layers_for(gb: float) -> int:
    per_layer = sum(int(np.prod(s)) for s in layer_shapes().values()) * 4
    return max(1, round((gb * GB - 2 * VOCAB * D * 4) / per_layer))


def make_model(folder: Path, layers: int, seed: int) -> None:
    """A random model written layer by layer (one shard each), so this process holds one layer."""
    from safetensors.numpy import save_file

    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    shards = [{"model.embed_tokens.weight": (VOCAB, D)}]
    shards += [{f"model.layers.{i}.{k}": s for k, s in layer_shapes().items()} for i in range(layers)]
    shards += [{"model.norm.weight": (D,), "lm_head.weight": (VOCAB, D)}]
    weight_map = {}
    for j, shard in enumerate(shards):
        name = f"model-{j + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file({k: rng.standard_normal(s, dtype=np.float32) * 0.02 for k, s in shard.items()}, folder / name)
        weight_map.update(dict.fromkeys(shard, name))
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    (folder / "config.json").write_text(json.dumps({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": D, "intermediate_size": F,
        "num_hidden_layers": layers, "num_attention_heads": HEADS, "num_key_value_heads": KV, "vocab_size": VOCAB,
        "max_position_embeddings": 2048, "rms_norm_eps": 1e-5, "tie_word_embeddings": False, "dtype": "float32"}))


def recipe(method: str, models: list[Path]) -> dict:
    base, a, b = (str(m) for m in models)
    if method == "linear":
        return {"merge_method": "linear", "models": [{"model": m, "parameters": {"weight": 1.0}} for m in (base, a, b)]}
    params = {"weight": 1.0, "density": 0.5} if method == "ties" else {"weight": 1.0}
    return {"merge_method": method, "base_model": base, "models": [{"model": m, "parameters": params} for m in (a, b)]}


def child(recipe_path: str, dst: str, tool: str) -> None:
    if tool == "mergekit":
        import yaml
        from mergekit.config import MergeConfiguration
        from mergekit.merge import run_merge
        from mergekit.options import MergeOptions

        config = MergeConfiguration.model_validate(yaml.safe_load(Path(recipe_path).read_text()))
        options = MergeOptions(quiet=True, write_model_card=False, out_shard_size=500_000_000)
        merge = lambda: run_merge(config, dst, options)
    else:
        from cpt_jax.surgery.merge import merge_from_recipe

        merge = lambda: merge_from_recipe(recipe_path, dst, progress=False, max_shard_size="500MB")
    before = int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / GB
    t0 = time.perf_counter()
    merge()
    wall = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GB  # KiB on Linux
    print(json.dumps({"wall_s": round(wall, 2), "rss_before_gb": round(before, 3), "peak_rss_gb": round(peak, 3)}))


def main() -> None:
    args = parse_args()
    if args.child:
        return child(args.child, args.dst, args.tool)
    import yaml

    with tempfile.TemporaryDirectory(dir=args.workdir or None) as tmp:
        work = Path(tmp)
        layers = layers_for(args.gb)
        models = [work / name for name in ("base", "a", "b")]
        for seed, folder in enumerate(models):
            make_model(folder, layers, seed)
        model_gb = sum(f.stat().st_size for f in models[0].iterdir()) / GB
        tools = ["cpt_jax", "mergekit"] if args.mergekit else ["cpt_jax"]
        for method in args.methods.split(","):
            path = work / f"{method}.yaml"
            path.write_text(yaml.safe_dump(recipe(method, models)))
            for tool in tools:
                dst = work / f"out-{method}-{tool}"
                out = subprocess.run([sys.executable, __file__, "--out", args.out, "--child", str(path), "--dst",
                                      str(dst), "--tool", tool], check=True, capture_output=True, text=True)
                result = {"bench": "merge", "tool": tool, "method": method, "models": 3,
                          "model_gb": round(model_gb, 3), "layers": layers, "host": platform.node(),
                          "cpus": os.cpu_count(), "load_avg_1m": round(os.getloadavg()[0], 1),
                          **json.loads(out.stdout.strip().splitlines()[-1])}
                result["merge_held_gb"] = round(result["peak_rss_gb"] - result["rss_before_gb"], 3)
                print(json.dumps(result), flush=True)
                with open(args.out, "a") as f:
                    f.write(json.dumps(result) + "\n")
                shutil.rmtree(dst, ignore_errors=True)


if __name__ == "__main__":
    main()
