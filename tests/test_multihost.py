"""Multi-host training on one machine: several CPU processes on 127.0.0.1 joined by
jax.distributed (gloo collectives), each with fake devices, running the real `cpt-jax train` CLI.

A run split over processes must train exactly like one process on the same devices and mesh,
resume on another process count, stop together when one process is signalled, and refuse bad
launches (unreachable coordinator, mismatched configs) quickly and by name.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest
import yaml

from cpt_jax.config.base import ConfigError
from cpt_jax.distributed import DistributedConfig
from cpt_jax.distributed import ENV_VARS, resolve
from cpt_jax.train.metrics import read_jsonl

pytestmark = pytest.mark.slow  # several real processes per test: `make test-slow` (and CI) runs it

REPO = Path(__file__).resolve().parent.parent
STEPS = 8
DEVICES = 4  # total fake devices of every training run below
LAUNCH_TIMEOUT_S = 150  # per launch; a hung collective fails the test instead of the session

PLAN = {
    "model": {"vocab_size": 64, "hidden_size": 32, "intermediate_size": 64, "num_layers": 2, "num_heads": 4,
              "num_kv_heads": 2, "max_position_embeddings": 64},
    "data": {"seq_len": 32, "global_batch_size": 8, "sources": {"text": {"kind": "prepared"}}},
    "mesh": {"data": 2, "fsdp": -1, "tensor": 1},
    "checkpoint": {"every": 4, "keep_last": 5},
    "eval": {"every": 4, "batches": 1},
    "log": {"every": 1, "tensorboard": False},
    "phases": [{"name": "p0", "init": "scratch", "steps": STEPS, "mixture": {"text": 1.0},
                "schedule": {"peak_lr": 3.0e-3, "warmup_steps": 2}}],
}


# ----------------------------------------------------------------------------- helpers
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def child_env(**extra: str) -> dict[str, str]:
    """A clean environment: no cluster variables leaking in from the outside, CPU only."""
    drop = ("CPT_JAX_", "SLURM_", "OMPI_", "PMI_", "JAX_COORDINATOR", "JAX_PROCESS", "TPU_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop) and "_proxy" not in k.lower()}
    env.update(PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1")
    env.update(extra)
    return env


def train_argv(config: Path, run_dir: Path, devices: int, *overrides: str) -> list[str]:
    return [sys.executable, "-m", "cpt_jax", "train", str(config), f"run_dir={run_dir}", *overrides,
            "--cpu-devices", str(devices), "--no-progress"]


def manual(port: int, n: int, i: int, timeout_s: int = 60) -> list[str]:
    return ["distributed.mode=manual", f"distributed.coordinator=127.0.0.1:{port}",
            f"distributed.num_processes={n}", f"distributed.process_id={i}", f"distributed.timeout_s={timeout_s}"]


@dataclass
class Launch:
    procs: list[subprocess.Popen]
    logs: list[Path]
    started: float

    def finish(self, timeout: float = LAUNCH_TIMEOUT_S) -> list[tuple[int, str]]:
        """(exit status, output) per process; a process still running at the deadline fails."""
        deadline = self.started + timeout
        for p in self.procs:
            try:
                p.wait(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                pytest.fail(f"process {self.procs.index(p)} still running after {timeout} s:\n" + self.tails())
        return [(p.returncode, log.read_text()) for p, log in zip(self.procs, self.logs)]

    def tails(self) -> str:
        return "\n".join(f"--- process {i}:\n" + "\n".join(log.read_text().splitlines()[-15:])
                         for i, log in enumerate(self.logs))


@contextmanager
def launch(cmds: list[tuple[list[str], dict[str, str]]], logdir: Path) -> Iterator[Launch]:
    """Start every (argv, env) at once; whatever happens, no child outlives the block."""
    logdir.mkdir(parents=True, exist_ok=True)
    procs, logs = [], []
    try:
        for i, (argv, env) in enumerate(cmds):
            logs.append(logdir / f"process{i}.log")
            with open(logs[-1], "w") as out:
                procs.append(subprocess.Popen(argv, env=env, cwd=logdir, stdout=out, stderr=subprocess.STDOUT))
        yield Launch(procs, logs, time.monotonic())
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        for p in procs:
            p.wait()


def run_ok(cmds, logdir: Path) -> list[str]:
    with launch(cmds, logdir) as job:
        results = job.finish()
        assert all(rc == 0 for rc, _ in results), f"exit statuses {[rc for rc, _ in results]}:\n{job.tails()}"
        return [out for _, out in results]


def train_cluster(config: Path, run_dir: Path, processes: int, *overrides: str, logdir: Path) -> list[str]:
    """`processes` CLI processes with DEVICES // processes fake devices each (1: no jax.distributed)."""
    port = free_port()
    cmds = []
    for i in range(processes):
        dist = manual(port, processes, i) if processes > 1 else []
        cmds.append((train_argv(config, run_dir, DEVICES // processes, *dist, *overrides), child_env()))
    return run_ok(cmds, logdir)


def records(run_dir: Path, kind: str) -> list[dict]:
    return [r for r in read_jsonl(Path(run_dir) / "metrics.jsonl") if r["kind"] == kind]


def assert_trains_like(run_dir: Path, reference: Path) -> None:
    """The same training as the reference, step by step: every step logged exactly once, the
    same LR, and losses equal up to float32 summation order (gloo vs in-process reductions)."""
    got, want = records(run_dir, "train"), records(reference, "train")
    assert [r["step"] for r in got] == list(range(1, STEPS + 1))
    assert [r["lr"] for r in got] == [r["lr"] for r in want]
    assert [r["tokens"] for r in got] == [r["tokens"] for r in want]  # the same rows, not just similar
    for g, w in zip(got, want):
        assert g["loss"] == pytest.approx(w["loss"], rel=1e-6, abs=0), f"step {g['step']}"
        assert g["grad_norm"] == pytest.approx(w["grad_norm"], rel=1e-5, abs=0), f"step {g['step']}"
    got_eval = {(r["step"], r["source"]): r["loss"] for r in records(run_dir, "eval")}
    want_eval = {(r["step"], r["source"]): r["loss"] for r in records(reference, "eval")}
    assert got_eval.keys() == want_eval.keys()
    for key, loss in want_eval.items():
        assert got_eval[key] == pytest.approx(loss, rel=1e-6, abs=0), key


def checkpoint_steps(run_dir: Path) -> list[int]:
    return sorted(int(p.name) for p in (Path(run_dir) / "checkpoints").iterdir() if p.name.isdigit())


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def config(tmp_path_factory) -> Path:
    """A real prepared dataset (the `prepare` CLI on generated text) and the plan's YAML."""
    from text_fixtures import documents, vocabulary, word_level_tokenizer, write_jsonl

    root = tmp_path_factory.mktemp("multihost")
    words = vocabulary("w", 60)
    write_jsonl(root / "in" / "docs.jsonl", documents(words, 200, seed=3))
    tokenizer = word_level_tokenizer(root / "tok" / "tokenizer.json", words)
    subprocess.run([sys.executable, "-m", "cpt_jax", "prepare", str(root / "in" / "docs.jsonl"),
                    "--out", str(root / "data"), "--tokenizer", str(tokenizer), "--eval-docs", "8", "--quiet"],
                   env=child_env(), check=True, capture_output=True)
    plan = json.loads(json.dumps(PLAN))
    plan["data"]["sources"]["text"]["path"] = str(root / "data")
    plan["tokenizer"] = str(tokenizer)
    plan["run_dir"] = str(root / "unused")
    path = root / "plan.yaml"
    path.write_text(yaml.safe_dump(plan))
    return path


@pytest.fixture(scope="module")
def reference(config, tmp_path_factory) -> Path:
    """One process with all DEVICES devices, same mesh: what every multi-process run must equal."""
    run_dir = tmp_path_factory.mktemp("reference")
    train_cluster(config, run_dir, 1, logdir=run_dir.parent / "reference-logs")
    return run_dir


@pytest.fixture(scope="module")
def two_process_run(config, reference, tmp_path_factory) -> tuple[Path, list[str]]:
    """The plan on 2 processes x 2 devices, started from the CPT_JAX_* environment variables."""
    run_dir = tmp_path_factory.mktemp("two")
    port = free_port()
    cmds = [(train_argv(config, run_dir, DEVICES // 2),
             child_env(CPT_JAX_COORDINATOR=f"127.0.0.1:{port}", CPT_JAX_NUM_PROCESSES="2", CPT_JAX_PROCESS_ID=str(i)))
            for i in range(2)]
    return run_dir, run_ok(cmds, run_dir.parent / "two-logs")


# ----------------------------------------------------------------------------- training
def test_two_processes_train_exactly_like_one(two_process_run, reference):
    run_dir, logs = two_process_run
    assert_trains_like(run_dir, reference)
    assert checkpoint_steps(run_dir) == [4, 8]
    assert all(f"done: {STEPS} steps" in out for out in logs)
    # Process 0 alone writes and reports; the others stay quiet.
    assert "step 4 eval" in logs[0] and "step 4 eval" not in logs[1]


def test_resume_on_four_processes_with_tensor_across_hosts(config, two_process_run, reference, tmp_path):
    """Restart the 2-process run from its step-4 checkpoint on 4 processes x 1 device whose mesh
    puts the tensor axis across processes (pairs of processes hold the same batch rows)."""
    src, _ = two_process_run
    run_dir = tmp_path / "run"
    shutil.copytree(src, run_dir)
    shutil.rmtree(run_dir / "checkpoints" / "8")  # as if killed right after saving step 4 ...
    kept = [r for r in read_jsonl(run_dir / "metrics.jsonl") if r["step"] <= 4]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in kept))  # ... and its log
    logs = train_cluster(config, run_dir, 4, "mesh.data=2", "mesh.fsdp=1", "mesh.tensor=2", logdir=tmp_path / "logs")
    assert "resuming" in logs[0] and "at step 4" in logs[0]
    assert_trains_like(run_dir, reference)  # steps 5..8 were trained here, by 4 processes


def test_signal_to_one_process_stops_all_at_the_same_step(config, reference, tmp_path):
    """Preemption reaches hosts at different moments: SIGTERM to process 1 only must stop both
    after the same step with one checkpoint (saving is collective), and a 1-process rerun resumes."""
    run_dir = tmp_path / "run"
    port = free_port()
    cmds = [(train_argv(config, run_dir, DEVICES // 2, *manual(port, 2, i)), child_env()) for i in range(2)]
    with launch(cmds, tmp_path / "logs") as job:
        deadline = time.monotonic() + LAUNCH_TIMEOUT_S
        while not records(run_dir, "train"):
            assert all(p.poll() is None for p in job.procs), "a process ended before training:\n" + job.tails()
            assert time.monotonic() < deadline, "no training step logged:\n" + job.tails()
            time.sleep(0.05)
        job.procs[1].send_signal(signal.SIGTERM)
        results = job.finish()
    assert [rc for rc, _ in results] == [0, 0], job.tails()
    stops = {out.split("stopped at step ")[1].split(";")[0] for _, out in results if "stopped at step " in out}
    assert len(stops) == 1 and all("stopped at step" in out for _, out in results), job.tails()
    stopped = int(stops.pop())
    assert 1 <= stopped < STEPS, "the signal came too late to test anything"
    assert "preemption notice (SIGTERM) agreed by all processes" in results[0][1]  # process 0 prints
    assert checkpoint_steps(run_dir)[-1] == stopped
    logs = train_cluster(config, run_dir, 1, logdir=tmp_path / "resume-logs")
    assert f"at step {stopped}" in logs[0]
    assert_trains_like(run_dir, reference)


def test_preemption_saves_one_agreed_step_within_two_steps_whatever_log_every(config, tmp_path):
    """With log.every and checkpoint.every far beyond the run, SIGTERM to one process still ends
    both within two steps of the notice (JAX's preemption sync point, asked at every step), with
    that step saved, in a bounded time."""
    run_dir = tmp_path / "run"
    port = free_port()
    long = ["phases.0.steps=100000", "log.every=100000", "checkpoint.every=100000", "eval.every=100000"]
    cmds = [(train_argv(config, run_dir, DEVICES // 2, *manual(port, 2, i), *long), child_env()) for i in range(2)]
    with launch(cmds, tmp_path / "logs") as job:
        deadline = time.monotonic() + LAUNCH_TIMEOUT_S
        while "mixture:" not in job.logs[0].read_text():  # phase 0 has started stepping
            assert all(p.poll() is None for p in job.procs), "a process ended before training:\n" + job.tails()
            assert time.monotonic() < deadline, "training never started:\n" + job.tails()
            time.sleep(0.05)
        time.sleep(3)
        job.procs[1].send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        results = job.finish()
        took = time.monotonic() - signalled
    assert [rc for rc, _ in results] == [0, 0], job.tails()
    stops = {out.split("stopped at step ")[1].split(";")[0] for _, out in results if "stopped at step " in out}
    assert len(stops) == 1, job.tails()
    stopped = int(stops.pop())
    assert 1 <= stopped < 100000 and checkpoint_steps(run_dir) == [stopped]
    # The bound: two steps of this tiny model plus one checkpoint and shutting down, on a loaded
    # 2-core host; a stop at the log cadence would never come (log.every is past the run's end).
    assert took < 60, f"{took:.1f} s from SIGTERM to both processes done"


# ----------------------------------------------------------------------------- bad launches
def test_unreachable_coordinator_and_missing_peers_fail_within_the_timeout(config, tmp_path):
    """Process 1 whose coordinator never answers, and a process 0 whose peer never comes: both
    end with status 2 and an error naming the address, a few seconds after timeout_s=3."""
    lonely_peer, lonely_coordinator = free_port(), free_port()
    cmds = [(train_argv(config, tmp_path / "a", 1, *manual(lonely_peer, 2, 1, timeout_s=3)), child_env()),
            (train_argv(config, tmp_path / "b", 1, *manual(lonely_coordinator, 2, 0, timeout_s=3)), child_env())]
    with launch(cmds, tmp_path / "logs") as job:
        results = job.finish(timeout=60)
        took = time.monotonic() - job.started
    assert [rc for rc, _ in results] == [2, 2], job.tails()
    assert f"error: cannot reach the coordinator at 127.0.0.1:{lonely_peer} within 3 s" in results[0][1]
    assert (f"error: not all 2 processes joined the coordinator this process serves at 127.0.0.1:{lonely_coordinator}"
            in results[1][1])
    assert "Traceback" not in results[0][1] + results[1][1]
    assert took < 45, f"took {took:.0f} s"  # JAX's own default would wait 300 s
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_mismatched_configs_are_refused_naming_the_process(config, tmp_path):
    """Two processes started by `mode: auto` from a SLURM-like environment (as srun sets it), the
    second with another weight decay: both refuse before training, naming process 1."""
    port = free_port()
    slurm = {"SLURM_JOB_ID": "7", "SLURM_STEP_NODELIST": "127.0.0.1", "SLURM_NTASKS": "2",
             "JAX_COORDINATOR_PORT": str(port), "JAX_COORDINATOR_BIND_ADDRESS": f"127.0.0.1:{port}"}
    cmds = [(train_argv(config, tmp_path / "run", 2, "distributed.mode=auto", "distributed.timeout_s=60",
                        *(["optimizer.weight_decay=0.05"] if i == 1 else [])),
             child_env(**slurm, SLURM_PROCID=str(i), SLURM_LOCALID=str(i))) for i in range(2)]
    with launch(cmds, tmp_path / "logs") as job:
        results = job.finish(timeout=90)
    assert [rc for rc, _ in results] == [2, 2], job.tails()
    for _, out in results:
        assert "error: process 1 has a different config (hash" in out, out[-2000:]
        assert "Traceback" not in out
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


# ----------------------------------------------------------------------------- environment
def test_environment_fills_what_the_config_leaves_unset():
    env = {ENV_VARS["coordinator"]: "10.0.0.2:1234", ENV_VARS["num_processes"]: "4", ENV_VARS["process_id"]: "3"}
    got = resolve(DistributedConfig(), env)
    assert (got.mode, got.coordinator, got.num_processes, got.process_id) == ("manual", "10.0.0.2:1234", 4, 3)
    # The shared YAML names the coordinator; each process's id comes from its environment.
    shared = DistributedConfig(mode="manual", coordinator="10.0.0.2:1234", num_processes=4)
    assert resolve(shared, {ENV_VARS["process_id"]: "2"}).process_id == 2
    assert resolve(DistributedConfig(), {}) == DistributedConfig()
    assert resolve(DistributedConfig(), {ENV_VARS["mode"]: "auto"}).mode == "auto"


@pytest.mark.parametrize("cfg, env, words", [
    (DistributedConfig(mode="manual", coordinator="h:1", num_processes=4, process_id=1),
     {"CPT_JAX_PROCESS_ID": "2"}, "'distributed.process_id': is 1 but CPT_JAX_PROCESS_ID='2'"),
    (DistributedConfig(), {"CPT_JAX_NUM_PROCESSES": "two"}, "'CPT_JAX_NUM_PROCESSES': must be an integer"),
    (DistributedConfig(), {"CPT_JAX_DISTRIBUTED": "slurm"}, "must be off, auto or manual"),
    (DistributedConfig(), {"CPT_JAX_COORDINATOR": "h:1", "CPT_JAX_NUM_PROCESSES": "2", "CPT_JAX_PROCESS_ID": "2"},
     "'distributed.process_id': must be in [0, 2)"),
])
def test_bad_environment_is_refused_naming_the_variable(cfg, env, words):
    with pytest.raises(ConfigError) as err:
        resolve(cfg, env)
    assert words in str(err.value)
