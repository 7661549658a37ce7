"""Host allocators under `cpt-jax train` on CPU: step time, page faults per step and peak memory.

    python benchmarks/bench_allocators.py --out results/allocators.json            # all variants, 2 rounds
    python benchmarks/bench_allocators.py --out /tmp/a.json --variants system,keep --rounds 1 --steps 12

Each variant trains the same short plan (Llama-shaped model, synthetic tokens, one device, held-out
evals and a checkpoint, as a real run has) in a fresh process, so that the malloc setting precedes
JAX's threads as it must: glibc's defaults (`system`), keep_host_memory's setting (`keep`), gentler
glibc settings (no per-block mmap, but a bounded trim threshold or several arenas), and jemalloc /
tcmalloc through LD_PRELOAD where the library is installed (Debian: libjemalloc2,
libtcmalloc-minimal4), jemalloc also with MALLOC_CONF=oversize_threshold:0. Rounds interleave the variants (ABC ABC ...) so that load from other users
of a shared host lands on all of them. Per variant: the median step period after warm-up (the loop
waits for each step, so consecutive steps' starts are one step apart), minor page faults per step
over the same steps, and the process's peak resident memory (ru_maxrss).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import environment, write_json  # noqa: E402

M_TRIM_THRESHOLD, M_MMAP_MAX, M_ARENA_MAX = -1, -4, -8
GLIBC = {  # variant -> mallopt settings applied before JAX starts (None: glibc defaults)
    "system": None,
    "keep": "KEEP_SETTINGS",  # cpt_jax.host_memory.KEEP_SETTINGS, whatever it currently is
    "keep-arena1-trim1g": ((M_ARENA_MAX, 1), (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, 1 << 30)),
    "keep-arenas-default": ((M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, 2**31 - 1)),
    "keep-arena4": ((M_ARENA_MAX, 4), (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, 2**31 - 1)),
}
PRELOAD = {"jemalloc": "libjemalloc.so.2", "jemalloc-no-oversize": "libjemalloc.so.2",
           "tcmalloc": "libtcmalloc_minimal.so.4"}
# jemalloc >= 5.1 serves blocks above 8 MiB from an arena that purges them at once (each step
# faults its block in again); without it, freed pages are kept for dirty_decay_ms (10 s) and reused.
MALLOC_CONF = {"jemalloc-no-oversize": "oversize_threshold:0"}
LIB_DIRS = ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64", "/usr/lib")


def plan(run_dir: str, steps: int, size: str, seq: int) -> dict:
    dims = {"tiny": dict(vocab_size=1024, hidden_size=128, intermediate_size=384, num_layers=2, num_heads=2),
            "small": dict(vocab_size=4096, hidden_size=256, intermediate_size=704, num_layers=4, num_heads=4),
            "medium": dict(vocab_size=8192, hidden_size=512, intermediate_size=1408, num_layers=4, num_heads=8)}
    return {
        "run_dir": run_dir,
        "model": {**dims[size], "max_position_embeddings": 256},
        "data": {"seq_len": seq, "global_batch_size": 8,
                 "sources": {"a": {"kind": "synthetic", "seed": 1, "num_docs": 4096, "eval_docs": 64},
                             "b": {"kind": "synthetic", "seed": 2, "num_docs": 4096, "eval_docs": 64}}},
        "mesh": {"data": 1, "fsdp": 1, "tensor": 1},
        "checkpoint": {"every": steps // 2, "keep_last": 1},
        "eval": {"every": steps // 3, "batches": 2},
        "log": {"every": 1, "tensorboard": False, "progress": False},
        "keep_host_memory": False,  # the child sets malloc itself (the variant)
        "phases": [{"name": "p", "init": "scratch", "steps": steps, "mixture": {"a": 0.7, "b": 0.3},
                    "schedule": {"peak_lr": 1e-3, "warmup_steps": 2}}],
    }


def child(variant: str, plan_path: str, warmup: int) -> None:
    """One training run under `variant`; prints a JSON line of per-step figures."""
    settings = GLIBC.get(variant)
    if settings is not None:
        from cpt_jax import host_memory
        ok = host_memory.set_malloc_options(host_memory.KEEP_SETTINGS if settings == "KEEP_SETTINGS" else settings)
        assert ok, f"mallopt refused {variant}"
    from cpt_jax.train import loop
    from cpt_jax.train.config import load_run_config

    marks = []  # (time, minor faults) at each step's start: the loop fetches the batch first
    place = loop.to_global_batch

    def marked(*args, **kwargs):
        marks.append((time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF).ru_minflt))
        return place(*args, **kwargs)

    loop.to_global_batch = marked
    t0 = time.perf_counter()
    loop.train(load_run_config(plan_path), progress=False)
    steady = marks[warmup:]
    periods = [b[0] - a[0] for a, b in zip(steady, steady[1:])]
    faults = [b[1] - a[1] for a, b in zip(steady, steady[1:])]
    print(json.dumps({"step_s": statistics.median(periods), "step_s_all": periods,
                      "faults_per_step": statistics.median(faults), "wall_s": time.perf_counter() - t0,
                      "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6}))  # KiB


def find_library(name: str) -> str | None:
    return next((str(Path(d) / name) for d in LIB_DIRS if (Path(d) / name).exists()), None)


def run_variant(variant: str, args, tmp: Path, round_: int) -> dict:
    run_dir = tmp / f"{variant}-{round_}"
    plan_path = tmp / f"{variant}-{round_}.json"
    plan_path.write_text(json.dumps(plan(str(run_dir), args.steps, args.size, args.seq)))
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    if variant in PRELOAD:
        env["LD_PRELOAD"] = find_library(PRELOAD[variant])
    if variant in MALLOC_CONF:
        env["MALLOC_CONF"] = MALLOC_CONF[variant]
    load = os.getloadavg()[0]
    proc = subprocess.Popen([sys.executable, __file__, "--child", variant, str(plan_path), "--warmup",
                             str(args.warmup)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = proc.communicate()
    if proc.returncode:
        return {"variant": variant, "round": round_, "error": err.strip().splitlines()[-1:]}
    row = json.loads(out.strip().splitlines()[-1])
    return {"variant": variant, "round": round_, "load_1m_before": load, **row}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", help="JSON file to write the results to")
    p.add_argument("--variants", default=",".join([*GLIBC, *PRELOAD]))
    p.add_argument("--size", default="small", choices=["tiny", "small", "medium"])
    p.add_argument("--seq", type=int, default=256, help="row length (8 rows per step)")
    p.add_argument("--steps", type=int, default=24, help="steps per run (evals every steps/3, a save at steps/2)")
    p.add_argument("--warmup", type=int, default=3, help="steps left out of the medians (compilation)")
    p.add_argument("--rounds", type=int, default=2, help="interleaved rounds of all variants")
    p.add_argument("--child", nargs=2, metavar=("VARIANT", "PLAN"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(*args.child, args.warmup)
        return 0
    variants = [v for v in args.variants.split(",") if v in GLIBC or find_library(PRELOAD[v])]
    skipped = sorted(set(args.variants.split(",")) - set(variants))
    rows, t0 = [], time.perf_counter()
    env = environment()
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for v in variants:
                rows.append(run_variant(v, args, Path(tmp), r))
                print(json.dumps({k: rows[-1].get(k) for k in ("variant", "round", "step_s", "faults_per_step",
                                                                "peak_rss_gb", "error")}), file=sys.stderr, flush=True)
    summary = {}
    for v in variants:
        ok = [r for r in rows if r["variant"] == v and "error" not in r]
        if ok:
            summary[v] = {"step_s": statistics.median(r["step_s"] for r in ok),
                          "faults_per_step": statistics.median(r["faults_per_step"] for r in ok),
                          "peak_rss_gb": max(r["peak_rss_gb"] for r in ok)}
    result = {"bench": "allocators", "environment": env, "args": vars(args), "skipped": skipped,
              "loadavg_end": list(os.getloadavg()), "wall_s": time.perf_counter() - t0, "summary": summary, "runs": rows}
    if args.out:
        write_json(args.out, result)
    print(json.dumps(summary, indent=1))
    return 0 if all("error" not in r for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
