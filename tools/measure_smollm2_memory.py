"""Peak host memory (max RSS) of `cpt-jax eval --model` and `cpt-jax train` on SmolLM2-135M-Instruct
(tools/fetch_smollm2.py), as issue 25 measured them. Each command is killed past --limit GiB so
that a regression cannot take a shared host down.

    python tools/measure_smollm2_memory.py eval  [--limit 6]
    python tools/measure_smollm2_memory.py train [--limit 12] [--steps 2]   # 8 x 256, remat none:
        with/without evals x keep_host_memory true/false
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "tools"))

from fetch_smollm2 import fetch  # noqa: E402
from memory_fixtures import run_bounded  # noqa: E402

TASK = REPO / "configs" / "tasks" / "world_facts_mc.jsonl"
CLI = [sys.executable, "-m", "cpt_jax"]


def env() -> dict:
    flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if "xla_force_host_platform_device_count" not in f]
    return dict(os.environ, XLA_FLAGS=" ".join(flags),
                PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))


def report(name: str, cmd: list[str], limit: float) -> dict:
    t = time.time()
    run = run_bounded(cmd, int(limit * 2**30), env=env(), timeout=3600)
    row = {"case": name, "peak_gib": round(run.peak_bytes / 2**30, 2), "killed_at_limit": run.killed,
           "rc": run.returncode, "wall_s": round(time.time() - t)}
    print(json.dumps(row), flush=True)
    if run.returncode != 0 and not run.killed:
        print(run.output[-2000:], file=sys.stderr)
    return row


def prepare(tmp: Path, hf: Path) -> tuple[dict, dict]:
    """({"evals": data with held-out docs, "noevals": the same without}, import-hf's model section)."""
    import yaml

    data, docs = {}, tmp / "docs"
    docs.mkdir()
    for md in ("README.md", "BUILD.md", "benchmarks/RESULTS.md"):  # prepare reads .txt
        (docs / Path(md).with_suffix(".txt").name).write_text((REPO / md).read_text())
    for name, held_out in (("evals", 16), ("noevals", 0)):
        data[name] = tmp / f"data-{name}"
        subprocess.run([*CLI, "prepare", str(docs), "--out", str(data[name]),
                        "--tokenizer", str(hf / "tokenizer.json"), "--txt-split", "blank-lines",
                        "--eval-docs", str(held_out), "--quiet"], check=True, env=env(), capture_output=True)
    out = subprocess.run([*CLI, "import-hf", str(hf), str(tmp / "ckpt")], check=True, env=env(), capture_output=True,
                         text=True).stdout
    return data, yaml.safe_load(out[out.index("\nmodel:\n") + 1:])["model"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=["eval", "train"])
    ap.add_argument("--limit", type=float, default=12.0, help="GiB: kill a command past this RSS")
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--cases", default="evals-keep,noevals-keep,evals-nokeep,noevals-nokeep")
    args = ap.parse_args()
    hf = fetch()
    if args.what == "eval":
        with tempfile.TemporaryDirectory() as tmp:
            report("eval --model", [*CLI, "eval", "--model", str(hf), "--task", f"facts={TASK}",
                                    "--json", f"{tmp}/out.json"], args.limit)
        return
    import yaml

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data, model = prepare(tmp, hf)
        for case in args.cases.split(","):
            evals, keep = case.split("-")
            plan = {"run_dir": str(tmp / f"run-{case}"), "tokenizer": str(hf / "tokenizer.json"),
                    "model": {**model, "remat": "none"}, "keep_host_memory": keep == "keep",
                    "data": {"seq_len": 256, "global_batch_size": 8, "sources": {"domain": {"path": str(data[evals])}}},
                    "log": {"tensorboard": False}, "checkpoint": {"every": 10**6},
                    "eval": ({"every": 1, "batches": 2, "tasks": [{"name": "facts", "path": str(TASK)}]}
                             if evals == "evals" else {"every": 10**6}),  # no held-out docs: nothing to evaluate
                    "phases": [{"name": "cpt", "init": f"hf:{hf}", "carry": "params", "steps": args.steps,
                                "mixture": {"domain": 1.0}, "schedule": {"shape": "constant", "peak_lr": 1e-5}}]}
            (tmp / f"{case}.yaml").write_text(yaml.safe_dump(plan))
            report(f"train 8x256 {case}", [*CLI, "train", str(tmp / f"{case}.yaml"), "--no-progress"], args.limit)


if __name__ == "__main__":
    main()
