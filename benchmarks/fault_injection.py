"""Fault injection: kill -9 one small two-phase run at N random (seeded) moments, several of them
while an asynchronous checkpoint save is in flight, rerun the same command after each kill, and
check that every rerun resumes and the final (step, loss, lr) log equals an uninterrupted run's
bit for bit.

    python benchmarks/fault_injection.py                 # 10 kills, seed 0
    python benchmarks/fault_injection.py --kills 3 --seed 7 --json out.json

Each segment is its own process of `cpt-jax train` on 8 fake CPU devices. A kill moment is a
step of the run: the segment is killed as soon as metrics.jsonl shows that step (after a random
extra delay of up to 0.3 s), and every other kill targets a checkpoint step, so the kill lands
while that step's save is being written in the background.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
EVERY = 3  # checkpoint cadence: frequent saves, so many kills land in one
PLAN = {
    "model": {"vocab_size": 96, "hidden_size": 32, "intermediate_size": 64, "num_layers": 2, "num_heads": 4,
              "num_kv_heads": 2, "max_position_embeddings": 64},
    "data": {"seq_len": 32, "global_batch_size": 8,
             "sources": {"general": {"kind": "synthetic", "seed": 1, "num_docs": 256, "eval_docs": 16},
                         "domain": {"kind": "synthetic", "seed": 2, "num_docs": 256, "eval_docs": 16}}},
    "mesh": {"data": 1, "fsdp": 8, "tensor": 1},
    "checkpoint": {"every": EVERY, "keep_last": 3, "async_save": True},
    "eval": {"every": 100, "batches": 1},
    "log": {"every": 1, "tensorboard": False, "progress": False},
    "phases": [
        {"name": "pretrain", "init": "scratch", "steps": 30, "mixture": {"general": 1.0},
         "schedule": {"shape": "cosine", "peak_lr": 3e-3, "warmup_steps": 3}},
        {"name": "cpt", "steps": 30, "carry": "params", "mixture": {"domain": 0.75, "general": 0.25},
         "schedule": {"shape": "wsd", "peak_lr": 2e-3, "warmup_steps": 3, "warmup_from": "previous",
                      "cooldown_fraction": 0.25}},
    ],
}
TOTAL = sum(p["steps"] for p in PLAN["phases"])


def train_log(run_dir: Path) -> list[tuple[int, float, float]]:
    path = run_dir / "metrics.jsonl"
    out = []
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                r = json.loads(line)
            except json.JSONDecodeError:
                break
            if r.get("kind") == "train":
                out.append((r["step"], r["loss"], r["lr"]))
    return out


def start(plan: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    return subprocess.Popen([sys.executable, "-m", "cpt_jax", "train", str(plan), "--no-progress"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def write_plan(run_dir: Path, path: Path) -> Path:
    path.write_text(yaml.safe_dump({**PLAN, "run_dir": str(run_dir)}))
    return path


def latest_checkpoint(run_dir: Path) -> int:
    d = run_dir / "checkpoints"
    steps = [int(p.name) for p in d.iterdir() if p.name.isdigit()] if d.is_dir() else []
    return max(steps, default=0)


def kill_at(plan: Path, run_dir: Path, step: int, delay: float, timeout: float = 600) -> dict:
    """Start a segment and kill -9 it once the log shows `step` (plus `delay` seconds)."""
    resumed_from = latest_checkpoint(run_dir)
    proc = start(plan)
    t0 = time.time()
    try:
        while time.time() - t0 < timeout:
            log = train_log(run_dir)
            if log and log[-1][0] >= step:
                break
            if proc.poll() is not None:
                raise RuntimeError(f"segment ended on its own (exit {proc.returncode}) before step {step}: "
                                   f"{proc.stderr.read()[-2000:]}")
            time.sleep(0.01)
        time.sleep(delay)
        in_flight = any(".orbax-checkpoint-tmp" in q.name for q in (run_dir / "checkpoints").glob("*"))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    return {"resumed_from": resumed_from, "kill_after_step": step, "delay_s": round(delay, 3),
            "save_in_flight": in_flight,
            "logged_at_kill": train_log(run_dir)[-1][0] if train_log(run_dir) else 0,
            "segment_s": round(time.time() - t0, 1)}


def finish(plan: Path) -> None:
    proc = start(plan)
    _, err = proc.communicate(timeout=900)
    if proc.returncode:
        raise RuntimeError(f"the final rerun failed (exit {proc.returncode}): {err[-3000:]}")


def run(kills: int = 10, seed: int = 0, work: Path | None = None) -> dict:
    """Reference run, then the killed-and-resumed one; returns what happened and whether the
    logs are equal (raises AssertionError if not)."""
    work = Path(work or tempfile.mkdtemp(prefix="fault-injection-"))
    work.mkdir(parents=True, exist_ok=True)
    ref_dir, run_dir = work / "reference", work / "run"
    t0 = time.time()
    finish(write_plan(ref_dir, work / "reference.yaml"))
    reference_s = time.time() - t0
    plan = write_plan(run_dir, work / "run.yaml")
    rng = random.Random(seed)
    segments = []
    for k in range(kills):
        logged = train_log(run_dir)  # a target past what is logged: the old log is stale until the rerun cuts it
        low = max(latest_checkpoint(run_dir), logged[-1][0] if logged else 0) + 1
        span = max(1, 2 * (TOTAL - low) // (kills - k + 1))  # spread the kills over the rest of the run
        step = min(rng.randint(low, low + span), TOTAL - 1)
        if k % 2:  # during the background save of a checkpoint step
            step = min(TOTAL - 1, -(-step // EVERY) * EVERY)
            delay = rng.uniform(0.0, 0.02)
        else:
            delay = rng.uniform(0.0, 0.3)
        segments.append(kill_at(plan, run_dir, step, delay))
    finish(plan)
    ref, got = train_log(ref_dir), train_log(run_dir)
    equal = ref == got
    result = {"kills": kills, "seed": seed, "reference_s": round(reference_s, 1), "segments": segments,
              "kills_during_save": sum(s["save_in_flight"] for s in segments),
              "steps": len(got), "bit_identical": equal, "total_s": round(time.time() - t0, 1)}
    assert [s for s, _, _ in ref] == list(range(1, TOTAL + 1)), "the reference run is incomplete"
    assert equal, f"resumed log differs from the uninterrupted one: {[(a, b) for a, b in zip(ref, got) if a != b][:3]}"
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kills", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", default=None, help="folder for the two runs (default: a new temporary one)")
    ap.add_argument("--json", default=None, help="also write the result here")
    args = ap.parse_args()
    result = run(args.kills, args.seed, Path(args.work) if args.work else None)
    text = json.dumps(result, indent=1)
    print(text)
    if args.json:
        Path(args.json).write_text(text)


if __name__ == "__main__":
    main()
