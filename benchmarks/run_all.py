"""Run every benchmark, collect their JSON into results/<date>-<host>.json and print a markdown table.

    python benchmarks/run_all.py            # the full suite (make bench)
    python benchmarks/run_all.py --quick    # tiny sizes, a smoke test of the suite in ~2 minutes
    python benchmarks/run_all.py --reuse results/parts   # keep each benchmark's output there; a rerun
                                                         # only runs the benchmarks whose output is missing

Each benchmark is its own process (a clean JAX runtime and thread pool each, and one crash does
not lose the others' results). The step benchmark runs first: its best measured cpt_jax tokens/s
is the demand handed to the pipeline benchmark. Benchmarks written by others (bench_pipeline.py,
bench_hf.py) are run when present. Shared helpers live in common.py.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import environment, usable_cores, write_json  # noqa: F401 (used by older scripts too)

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
def read_result(path: Path):
    """A benchmark's --out file: one JSON document, or JSON lines (the last line is this run)."""
    text = path.read_text()
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        lines = [line for line in text.splitlines() if line.strip()]
        return json.loads(lines[-1])


def one_core_prefix() -> list[str] | None:
    """`taskset -c <first usable core>`: the step compared on one dedicated core, where neither
    framework's thread pool can be slowed by a co-tenant taking one of its cores."""
    if not hasattr(os, "sched_getaffinity") or shutil.which("taskset") is None:
        return None
    return ["taskset", "-c", str(min(os.sched_getaffinity(0)))]


def run_bench(script: str, args: list[str], out: Path, timeout: float, reuse: bool = False,
              prefix: list[str] | None = None) -> dict:
    """Run one benchmark script; its result, or why there is none (never an exception). With
    reuse, an output already in `out` (written whole: every script renames into place) is taken
    as is, so an interrupted suite resumes where it stopped."""
    path = HERE / script
    if not path.exists():
        return {"status": "absent", "script": script}
    if reuse and out.exists():
        print(f"\n=== {script}: reusing {out}", file=sys.stderr, flush=True)
        return {"status": "ok", "script": script, "reused": str(out), "result": read_result(out)}
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # no fake devices: real hardware
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH", "")]))
    cmd = [*(prefix or []), sys.executable, str(path), "--out", str(out), *args]
    print(f"\n=== {' '.join(cmd)}", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, env=env, cwd=ROOT, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return {"status": "timeout", "script": script, "wall_s": time.perf_counter() - t0}
    wall = time.perf_counter() - t0
    if proc.returncode != 0 or not out.exists():
        return {"status": f"failed (exit {proc.returncode})", "script": script, "wall_s": wall}
    return {"status": "ok", "script": script, "wall_s": wall, "result": read_result(out)}


def fmt(x, digits=3) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:,.{digits}g}" if abs(x) < 1000 else f"{x:,.0f}"
    return str(x)


def step_table(res: dict) -> list[str]:
    header = ("| case | cpt_jax tok/s | torch tok/s | jax/torch | paired | quiet reps: jax/torch | cpt_jax MFU | "
              "torch MFU | compile s | others' CPU share |")
    rows = [header, "|---|---|---|---|---|---|---|---|---|---|"]
    for c in res["cases"]:
        j, t = c.get("jax") or {}, c.get("torch") or {}
        quiet = c.get("quiet_ratio_jax_over_torch")
        quiet_txt = f"{fmt(quiet)} ({c.get('quiet_reps')} reps)" if quiet else "- (no quiet rep)"
        foreign = j.get("rep_foreign_cpu", []) + t.get("rep_foreign_cpu", [])
        rows.append(f"| {c['name']} | {fmt(j.get('tokens_per_s'))} | {fmt(t.get('tokens_per_s'))} | "
                    f"{fmt(c.get('ratio_jax_over_torch'))} | {fmt(c.get('ratio_paired_median'))} | {quiet_txt} | "
                    f"{fmt(j.get('mfu'))} | {fmt(t.get('mfu'))} | {fmt(j.get('compile_s'))} | "
                    f"{fmt(statistics.median(foreign) if foreign else None, 2)} |")
    return rows


def checkpoint_table(res: dict) -> list[str]:
    rows = ["| measure | median s | s per GB | GB/s |", "|---|---|---|---|"]
    for name, m in res["timings"].items():
        rows.append(f"| {name} | {fmt(m['median_s'])} | {fmt(m['s_per_gb'])} | {fmt(m['gb_per_s'])} |")
    rows.append(f"\nasync save blocks for {fmt(100 * res['blocking_fraction'])}% of the save's wall time "
                f"({fmt(res['gb'])} GB)")
    return rows


def profile_table(res: dict) -> list[str]:
    prof = res["profile"]
    j = prof["jax"]
    rows = [f"cpt_jax {prof['name']}: {j['wall_s_per_step']:.3f} s/step wall; share of thunk time by source line:",
            "", "| s/step | share | source |", "|---|---|---|"]
    rows += [f"| {r['s']:.3f} | {100 * r['share']:.1f}% | `{r['source']}` |" for r in j["by_source_line"][:12]]
    if "torch" in prof:
        rows += ["", f"torch: {prof['torch']['wall_s_per_step']:.3f} s/step wall; top ops by self CPU time:", "",
                 "| s/step | share | op |", "|---|---|---|"]
        rows += [f"| {r['s']:.3f} | {100 * r['share']:.1f}% | {r['op']} |" for r in prof["torch"]["top_ops"][:8]]
    return rows


def summary(results: dict) -> str:
    tables = {"step": step_table, "step_1core": step_table, "checkpoint": checkpoint_table,
              "step_profile": profile_table}
    out = []
    for name, entry in results["benchmarks"].items():
        out.append(f"\n### {name}: {entry['status']}")
        if entry["status"] != "ok":
            continue
        res = entry["result"]
        if name in tables:
            out += tables[name](res)
        else:  # another engineer's format: show its scalar fields
            out += ["| key | value |", "|---|---|"]
            out += [f"| {k} | {fmt(v)} |" for k, v in res.items() if isinstance(v, (int, float, str))]
    out += ["\n### targets", "| target | verdict |", "|---|---|"]
    out += [f"| {k} | {v} |" for k, v in results["targets"].items()]
    return "\n".join(out)


def h100_demand_tokens_per_s() -> float:
    """Tokens/s a Llama-3.2-1B step at seq 2048 would consume at the 50% MFU target on one H100
    (989 TFLOP/s dense bf16 spec): derived from the spec, not measured."""
    from bench_step import SIZES  # heavy import (jax), only when needed

    from cpt_jax.model.config import ModelConfig
    return 0.5 * 989e12 / ModelConfig(**SIZES["llama-1b"]).flops_per_token(2048)


def ok(results: dict, name: str) -> dict | None:
    entry = results["benchmarks"].get(name, {})
    return entry.get("result") if entry.get("status") == "ok" else None


def targets(results: dict) -> dict[str, str]:
    """The issue's targets, each met / missed / not measured, from this run's numbers only."""
    out = {}
    step = ok(results, "step")
    verdicts = []
    for name, label in (("step", "all cores"), ("step_1core", "one core")):
        cpu_cases = [c for c in (ok(results, name) or {}).get("cases", []) if "ratio_jax_over_torch" in c]
        if cpu_cases:
            worst = min(cpu_cases, key=lambda c: c["ratio_jax_over_torch"])
            verdict = "met" if worst["ratio_jax_over_torch"] >= 1 else "missed"
            verdicts.append(
                f"{label}: {verdict}, cpt_jax/torch tokens/s from {worst['ratio_jax_over_torch']:.2f}x "
                f"({worst['name']}) to {max(c['ratio_jax_over_torch'] for c in cpu_cases):.2f}x over "
                f"{len(cpu_cases)} cases")
    out["cpt_jax step >= torch step (CPU)"] = "; ".join(verdicts) or "not measured"
    gpu = [c for c in (step or {}).get("cases", [])
           if step.get("backend") == "gpu" and c["size"] == "llama-1b" and c["seq_len"] == 2048 and "jax" in c]
    if gpu:
        best = max(gpu, key=lambda c: c["jax"]["mfu"])
        out["MFU >= 50%, 1B at seq 2048, one H100"] = (
            f"{'met' if best['jax']['mfu'] >= 0.5 else 'missed'}: {100 * best['jax']['mfu']:.1f}% "
            f"({best['name']}, {step['device']})")
    else:
        out["MFU >= 50%, 1B at seq 2048, one H100"] = "not measured (no GPU in this run)"
    pipe = ok(results, "pipeline")
    if pipe:
        derived = pipe["pipeline_tokens_per_s"] / h100_demand_tokens_per_s()
        out["pipeline >= 20x step demand"] = (
            f"{'met' if pipe['pipeline_over_demand'] >= 20 else 'missed'}: {pipe['pipeline_over_demand']:.0f}x the "
            f"measured CPU step demand ({pipe['demand_tokens_per_s']:,.0f} tok/s); {derived:.1f}x the demand "
            f"derived for 1B on one H100 at 50% MFU ({h100_demand_tokens_per_s():,.0f} tok/s, not measured)")
    else:
        out["pipeline >= 20x step demand"] = "not measured"
    ckpt = ok(results, "checkpoint")
    if ckpt:
        frac = ckpt["blocking_fraction"]
        out["async checkpoint blocks < 5% of save wall time"] = (
            f"{'met' if frac < 0.05 else 'missed'}: {100 * frac:.1f}% ({ckpt['gb']:.2f} GB)")
    else:
        out["async checkpoint blocks < 5% of save wall time"] = "not measured"
    return out


def worst_case(step: dict) -> dict | None:
    """The CPU case with the lowest cpt_jax/torch ratio (the one to profile)."""
    if step.get("status") != "ok":
        return None
    cases = [c for c in step["result"]["cases"] if "ratio_jax_over_torch" in c]
    return min(cases, key=lambda c: c["ratio_jax_over_torch"]) if cases else None


def demand_tokens_per_s(step: dict) -> float | None:
    """The demand the pipeline must meet: the measured cpt_jax step tokens/s of the largest model
    (its fastest sequence length)."""
    if step.get("status") != "ok":
        return None
    cases = [c for c in step["result"]["cases"] if c.get("jax", {}).get("tokens_per_s")]
    if not cases:
        return None
    largest = max(c["params"] for c in cases)
    return max(c["jax"]["tokens_per_s"] for c in cases if c["params"] == largest)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes and few repetitions (smoke test)")
    p.add_argument("--results-dir", default=str(HERE / "results"), help="where the collected JSON goes")
    p.add_argument("--skip", default="",
                   help="comma-separated benchmarks to skip: step,step_1core,profile,checkpoint,pipeline,hf")
    p.add_argument("--timeout", type=float, default=1800, help="seconds allowed per benchmark")
    p.add_argument("--reuse", default="", help="keep each benchmark's output in this folder and reuse the ones "
                   "already there (default: a temporary folder, nothing reused)")
    return p.parse_args()


def main() -> int:
    args = parse_args()
    skip = set(filter(None, args.skip.split(",")))
    t0 = time.perf_counter()
    results = {"environment": environment(), "quick": args.quick, "benchmarks": {}}
    quick_step = ["--sizes", "tiny", "--seq", "64", "--reps", "2"]
    with tempfile.TemporaryDirectory(prefix="cpt_jax-bench-") as tmp:
        tmp = Path(args.reuse or tmp)
        tmp.mkdir(parents=True, exist_ok=True)
        reuse = bool(args.reuse)
        run = lambda script, extra, out, prefix=None: run_bench(  # noqa: E731
            script, extra, tmp / out, args.timeout, reuse, prefix)
        bench = results["benchmarks"]
        if "step" not in skip:
            bench["step"] = run("bench_step.py", quick_step if args.quick else [], "step.json")
        on_cpu = bench.get("step", {}).get("result", {}).get("backend", "cpu") == "cpu"
        if "step_1core" not in skip and on_cpu and one_core_prefix() is not None and usable_cores() > 1:
            bench["step_1core"] = run("bench_step.py", quick_step if args.quick else [], "step_1core.json",
                                      one_core_prefix())
        # Profile where cpt_jax gains least on torch; on one core when that run exists (the fair
        # comparison on a shared host), pinned the same way.
        pinned = worst_case(bench.get("step_1core", {}))
        worst = pinned or worst_case(bench.get("step", {}))
        if "profile" not in skip and worst is not None:
            extra = ["--sizes", worst["size"], "--seq", str(worst["seq_len"]), "--batch", str(worst["batch"]),
                     "--profile", str(tmp / "traces"), "--profile-steps", "1" if args.quick else "3"]
            bench["step_profile"] = run("bench_step.py", extra, "profile.json", one_core_prefix() if pinned else None)
            shutil.rmtree(tmp / "traces", ignore_errors=True)  # large; the JSON keeps the per-line summary
        if "checkpoint" not in skip:
            bench["checkpoint"] = run("bench_checkpoint.py", ["--gb", "0.05", "--reps", "1"] if args.quick else [],
                                      "checkpoint.json")
        demand = demand_tokens_per_s(bench.get("step", {}))
        if "pipeline" not in skip:
            if demand is None:
                bench["pipeline"] = {"status": "skipped: no measured step demand"}
            else:
                extra = ["--demand", f"{demand:.1f}"] + (["--docs", "2000", "--steps", "5"] if args.quick else [])
                bench["pipeline"] = run("bench_pipeline.py", extra, "pipeline.jsonl")
        if "hf" not in skip:
            bench["hf"] = run("bench_hf.py", ["--gb", "0.1"] if args.quick else [], "hf.jsonl")
    results["targets"] = targets(results)
    results["wall_s"] = time.perf_counter() - t0
    results["environment"]["loadavg_end"] = list(os.getloadavg())
    env = results["environment"]
    stamp = dt.datetime.now().strftime("%Y-%m-%d")
    dest = Path(args.results_dir) / f"{stamp}-{env['host']}{'-quick' if args.quick else ''}.json"
    write_json(dest, results)
    print(f"\n## cpt_jax benchmarks ({env['cpu_model']}, {env['cores']} cores, load {env['loadavg'][0]:.2f}"
          f" -> {env['loadavg_end'][0]:.2f}, {results['wall_s']:.0f} s)")
    print(summary(results))
    print(f"\nresults: {dest}")
    return 0 if all(e["status"] in ("ok", "absent") for e in results["benchmarks"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
