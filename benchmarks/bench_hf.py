"""Hugging Face import and export: wall time and peak host memory for a ~1 GB fp32 Llama.

The model is made by transformers (random init, save_pretrained in several shards; no
download). Import and export each run in a fresh process that reports its own peak RSS and
its RSS just before the work (JAX and the libraries loaded), so the difference is what the
conversion itself holds: for import, the model's own shards (with one CPU device they are host
memory) plus about one tensor in flight (`import_bound_gb` = model + largest tensor); for
export, about one layer plus one output shard (it streams). Not a test. Prints one JSON line
and appends it to --out.

    python benchmarks/bench_hf.py --out results/bench_hf.jsonl            # ~1 GB
    python benchmarks/bench_hf.py --gb 0.05 --out /tmp/hf.jsonl           # a quick run
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

GB = 1e9
BASE = dict(hidden_size=1024, intermediate_size=2816, num_attention_heads=16, num_key_value_heads=8,
            vocab_size=32000, max_position_embeddings=2048, tie_word_embeddings=False)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="JSON-lines results file to append to")
    p.add_argument("--gb", type=float, default=1.0, help="approximate fp32 model size in GB (sets the layer count)")
    p.add_argument("--source-shard", default="200MB", help="max_shard_size of the HF model written by transformers")
    p.add_argument("--export-shard", default="200MB", help="--max-shard-size of the export")
    p.add_argument("--workdir", default="", help="keep the folders here (default: a temp dir, removed)")
    p.add_argument("--child", choices=["make", "make-tiny", "import", "export"], help=argparse.SUPPRESS)
    p.add_argument("--warm", help=argparse.SUPPRESS)
    p.add_argument("--src", help=argparse.SUPPRESS)
    p.add_argument("--dst", help=argparse.SUPPRESS)
    return p.parse_args()


def rss_gb() -> float:
    """Current resident set size (Linux /proc)."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / GB


def hwm_gb() -> float:
    """Peak RSS since the last reset of the kernel's mark (/proc/self/status VmHWM)."""
    line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024 / GB


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GB  # ru_maxrss is KiB on Linux


def layers_for(gb: float) -> int:
    d, f, kv_dim, v = BASE["hidden_size"], BASE["intermediate_size"], 512, BASE["vocab_size"]
    per_layer = 4 * (2 * d * d + 2 * d * kv_dim + 3 * d * f + 2 * d)
    return max(1, round((gb * GB - 4 * 2 * v * d) / per_layer))


def child(args: argparse.Namespace) -> dict:
    """One measured step in this (fresh) process."""
    if args.child == "make-tiny":  # for warming up the libraries before a measurement
        import torch
        from transformers import LlamaConfig, LlamaForCausalLM

        small = dict(BASE, hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2,
                     vocab_size=256)
        LlamaForCausalLM(LlamaConfig(num_hidden_layers=2, **small)).save_pretrained(args.dst)
        return {}
    if args.child == "make":
        import torch
        from transformers import LlamaConfig, LlamaForCausalLM

        torch.manual_seed(0)
        model = LlamaForCausalLM(LlamaConfig(num_hidden_layers=layers_for(args.gb), **BASE))
        model.save_pretrained(args.dst, max_shard_size=args.source_shard)
        return {"params": sum(p.numel() for p in model.parameters())}
    import jax

    from cpt_jax.hf import export_hf, import_hf

    jax.devices()
    base = rss_gb()
    # The same operation on a tiny model first: the first use of XLA's compiler, orbax and
    # tensorstore costs memory once; the peak after it (kernel mark reset) is the conversion's own.
    if args.child == "import":
        import_hf(args.warm, args.dst + ".warm")
    else:
        export_hf(args.src + ".warm", args.dst + ".warm", max_shard_size=args.export_shard)
    warm = rss_gb()
    peak_before_warm_reset = peak_rss_gb()
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM (ru_maxrss keeps the lifetime peak)
    t0 = time.perf_counter()
    if args.child == "import":
        import_hf(args.src, args.dst)
    else:
        export_hf(args.src, args.dst, max_shard_size=args.export_shard)
    return {"s": time.perf_counter() - t0, "peak_rss_gb": peak_rss_gb(), "baseline_rss_gb": base,
            "warm_baseline_rss_gb": warm, "warm_peak_rss_gb": hwm_gb(), "warmup_peak_rss_gb": peak_before_warm_reset}


def run_child(args: argparse.Namespace, what: str, src: Path | None, dst: Path, warm: Path | None = None) -> dict:
    cmd = [sys.executable, __file__, "--out", os.devnull, "--child", what, "--gb", str(args.gb),
           "--source-shard", args.source_shard, "--export-shard", args.export_shard, "--dst", str(dst)]
    if src is not None:
        cmd += ["--src", str(src)]
    if warm is not None:
        cmd += ["--warm", str(warm)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    env.pop("XLA_FLAGS", None)  # one host device, as a user's import would run
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"{what} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def folder_gb(path: Path, pattern: str) -> float:
    return sum(f.stat().st_size for f in path.rglob(pattern)) / GB


def verify(src: Path, dst: Path) -> int:
    """Every exported tensor equals its source tensor bit for bit (read one at a time)."""
    import numpy as np
    from safetensors import safe_open

    from cpt_jax.hf.safetensors_io import tensor_files

    a, b = tensor_files(src), tensor_files(dst)
    assert set(a) == set(b), set(a) ^ set(b)
    for name in a:
        with safe_open(a[name], "np") as f, safe_open(b[name], "np") as g:
            if not np.array_equal(f.get_tensor(name), g.get_tensor(name)):
                raise SystemExit(f"export differs from the source at {name}")
    return len(a)


def largest_tensor_gb(path: Path) -> float:
    from cpt_jax.hf.safetensors_io import read_header

    return max(t.end - t.start for f in path.glob("*.safetensors") for t in read_header(f).values()) / GB


def measure(args: argparse.Namespace, work: Path) -> dict:
    hf, ckpt, out = work / "hf", work / "ckpt", work / "export"
    made = run_child(args, "make", None, hf)
    run_child(args, "make-tiny", None, work / "tiny")
    imp = run_child(args, "import", hf, ckpt, warm=work / "tiny")
    exp = run_child(args, "export", ckpt, out)
    model_gb = folder_gb(hf, "*.safetensors")
    tensors = verify(hf, out)
    return {
        "bench": "hf", "params": made["params"], "layers": layers_for(args.gb), "model_gb": model_gb,
        "source_shards": len(list(hf.glob("*.safetensors"))), "export_shards": len(list(out.glob("*.safetensors"))),
        "tensors_bit_exact": tensors,
        "import_s": imp["s"], "import_gb_per_s": model_gb / imp["s"], "import_peak_rss_gb": imp["peak_rss_gb"],
        "import_rss_over_baseline_gb": imp["peak_rss_gb"] - imp["baseline_rss_gb"],
        "largest_tensor_gb": largest_tensor_gb(hf), "import_bound_gb": model_gb + largest_tensor_gb(hf),
        "export_s": exp["s"], "export_gb_per_s": model_gb / exp["s"], "export_peak_rss_gb": exp["peak_rss_gb"],
        "export_rss_over_baseline_gb": exp["peak_rss_gb"] - exp["baseline_rss_gb"],
        "import_warmup_peak_over_baseline_gb": imp["warmup_peak_rss_gb"] - imp["baseline_rss_gb"],
        "import_rss_over_warm_baseline_gb": imp["warm_peak_rss_gb"] - imp["warm_baseline_rss_gb"],
        "export_rss_over_warm_baseline_gb": exp["warm_peak_rss_gb"] - exp["warm_baseline_rss_gb"],
        "baseline_rss_gb": imp["baseline_rss_gb"], "export_shard_size": args.export_shard,
    }


def main() -> None:
    args = parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return
    if args.workdir:
        result = measure(args, Path(args.workdir))
    else:
        with tempfile.TemporaryDirectory() as tmp:
            result = measure(args, Path(tmp))
    result.update(host=platform.node(), cores=len(os.sched_getaffinity(0)), loadavg=list(os.getloadavg()),
                  python=platform.python_version(), time=time.time())
    line = json.dumps(result)
    print(line)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "a") as f:
        f.write(line + "\n")


if __name__ == "__main__":
    main()
