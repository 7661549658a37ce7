"""Continual phases end to end: resume after kill -9 / SIGTERM / a corrupt checkpoint, restore onto
other meshes, divergence and bad plans. Each run is a real `Trainer` (or the CLI) on fake devices."""

import copy
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from cpt_jax.config.base import apply_overrides, from_dict
from cpt_jax.config.run import RunConfig
from cpt_jax.train.loop import TrainingDiverged, Trainer
from cpt_jax.train.metrics import read_jsonl

REPO = Path(__file__).resolve().parent.parent

PLAN = {
    "model": {"vocab_size": 96, "hidden_size": 32, "intermediate_size": 64, "num_layers": 2, "num_heads": 4,
              "num_kv_heads": 2, "max_position_embeddings": 64},
    "data": {"seq_len": 32, "global_batch_size": 8,
             "sources": {"general": {"kind": "synthetic", "seed": 1, "num_docs": 256, "eval_docs": 16},
                         "domain": {"kind": "synthetic", "seed": 2, "num_docs": 256, "eval_docs": 16}}},
    "mesh": {"data": 1, "fsdp": 8, "tensor": 1},
    "checkpoint": {"every": 5, "keep_last": 10},
    "eval": {"every": 10, "batches": 1},
    "log": {"every": 4, "tensorboard": False},
    "phases": [
        {"name": "pretrain", "init": "scratch", "steps": 12, "mixture": {"general": 1.0},
         "schedule": {"shape": "cosine", "peak_lr": 3e-3, "warmup_steps": 3}},
        {"name": "cpt", "steps": 12, "carry": "params", "mixture": {"domain": 0.75, "general": 0.25},
         "schedule": {"shape": "wsd", "peak_lr": 2e-3, "warmup_steps": 3, "warmup_from": "previous",
                      "cooldown_fraction": 0.25}},
    ],
}


def make_cfg(run_dir, *overrides) -> RunConfig:
    data = apply_overrides(copy.deepcopy(PLAN), [f"run_dir={run_dir}", *overrides])
    return from_dict(RunConfig, data)


def train_log(run_dir, kind="train"):
    return [r for r in read_jsonl(Path(run_dir) / "metrics.jsonl") if r["kind"] == kind]


def losses(run_dir):
    return [(r["step"], r["loss"], r["lr"]) for r in train_log(run_dir)]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted two-phase run every variant is compared with."""
    run_dir = tmp_path_factory.mktemp("reference")
    Trainer(make_cfg(run_dir), progress=False).run()
    return run_dir


def test_reference_run_logs_every_step_and_both_domains(reference):
    log = losses(reference)
    assert [s for s, _, _ in log] == list(range(1, 25))
    evals = train_log(reference, "eval")
    # Both domains at step 0 of each phase, every 10 steps and at each phase end.
    assert sorted({(r["step"], r["phase"]) for r in evals}) == [(0, 0), (10, 0), (12, 0), (12, 1), (20, 1), (24, 1)]
    assert {r["source"] for r in evals} == {"general", "domain"}
    # LR re-warms continuously from where phase 0 ended.
    lr = {s: v for s, _, v in log}
    assert lr[13] > lr[12] and lr[15] == pytest.approx(2e-3)
    # The run learned its domain in phase 1.
    dom = {(r["step"], r["phase"]): r["loss"] for r in evals if r["source"] == "domain"}
    assert dom[(24, 1)] < dom[(12, 1)]
    # Checkpoints every 5 steps plus phase ends, all kept.
    assert sorted(int(p.name) for p in (reference / "checkpoints").iterdir() if p.name.isdigit()) == [5, 10, 12, 15, 20, 24]


def test_preempted_mid_phase_resumes_bit_identically(reference, tmp_path):
    Trainer(make_cfg(tmp_path), progress=False, stop_after=17).run()  # stops like a preemption: no save at 17
    assert max(s for s, _, _ in losses(tmp_path)) == 17
    Trainer(make_cfg(tmp_path), progress=False).run()
    assert losses(tmp_path) == losses(reference)
    # Eval records are not duplicated by the resume.
    key = [(r["step"], r["phase"], r["source"]) for r in train_log(tmp_path, "eval")]
    assert len(key) == len(set(key)) == len(train_log(reference, "eval"))


def test_corrupt_latest_checkpoint_falls_back_to_previous(reference, tmp_path):
    Trainer(make_cfg(tmp_path), progress=False, stop_after=15).run()
    latest = tmp_path / "checkpoints" / "15" / "params"
    for f in latest.rglob("*"):
        if f.is_file() and f.stat().st_size > 0 and "zarray" not in f.name and f.suffix != ".json":
            f.write_bytes(b"\0garbage")
    shutil_rm_metadata = list(latest.rglob("_METADATA"))
    for f in shutil_rm_metadata:
        f.write_text("{not json")
    with pytest.warns(UserWarning, match="step 15 .* could not be restored"):
        Trainer(make_cfg(tmp_path), progress=False).run()
    assert losses(tmp_path) == losses(reference)


@pytest.mark.parametrize("mesh", [("data=2", "fsdp=1", "tensor=2"), ("data=1", "fsdp=1", "tensor=1")], ids=["d2t2", "single"])
def test_restore_on_another_mesh_and_device_count(reference, tmp_path, mesh):
    """Saved with fsdp=8; resumed in a fresh process with 4 devices (data=2, tensor=2) or 1."""
    Trainer(make_cfg(tmp_path), progress=False, stop_after=15).run()
    cfg_file = tmp_path / "plan.yaml"
    cfg_file.write_text(yaml.safe_dump(apply_overrides(copy.deepcopy(PLAN), [f"run_dir={tmp_path}"])))
    devices = 1 if mesh[0] == "data=1" else 4
    overrides = [f"mesh.{m}" for m in mesh]
    run_cli(["train", str(cfg_file), *overrides, "--no-progress"], devices=devices)
    ref = losses(reference)
    got = losses(tmp_path)
    assert [s for s, _, _ in got] == [s for s, _, _ in ref]
    np.testing.assert_allclose([l for _, l, _ in got], [l for _, l, _ in ref], rtol=2e-5)
    assert [lr for *_, lr in got] == [lr for *_, lr in ref]


def run_cli(args, devices=8, check=True, **kwargs):
    env = {**os.environ, "PYTHONPATH": str(REPO), "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
    proc = subprocess.run([sys.executable, "-m", "cpt_jax", *args], env=env, capture_output=True, text=True,
                          timeout=300, **kwargs)
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def start_cli_and_signal(tmp_path, sig, after_step):
    cfg_file = tmp_path / "plan.yaml"
    cfg_file.write_text(yaml.safe_dump(apply_overrides(copy.deepcopy(PLAN), [f"run_dir={tmp_path}/run", "log.every=1"])))
    env = {**os.environ, "PYTHONPATH": str(REPO), "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    proc = subprocess.Popen([sys.executable, "-m", "cpt_jax", "train", str(cfg_file), "--no-progress"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 240
        while time.time() < deadline:
            log = train_log(tmp_path / "run") if (tmp_path / "run" / "metrics.jsonl").exists() else []
            if log and log[-1]["step"] >= after_step:
                break
            if proc.poll() is not None:
                pytest.fail(f"run ended before step {after_step}: {proc.stderr.read()[-2000:]}")
            time.sleep(0.05)
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    return proc.returncode, err, cfg_file


def test_kill_9_then_rerun_gives_the_same_log(reference, tmp_path):
    code, _, cfg_file = start_cli_and_signal(tmp_path, signal.SIGKILL, after_step=7)
    assert code == -signal.SIGKILL
    assert max(s for s, _, _ in losses(tmp_path / "run")) < 24
    run_cli(["train", str(cfg_file), "--no-progress"])
    assert losses(tmp_path / "run") == losses(reference)


def test_sigterm_saves_and_exits_zero(reference, tmp_path):
    code, err, cfg_file = start_cli_and_signal(tmp_path, signal.SIGTERM, after_step=3)
    assert code == 0, err[-2000:]
    assert "SIGTERM received: saved step" in err and "rerun" in err
    stopped = max(s for s, _, _ in losses(tmp_path / "run"))
    assert stopped < 24 and (tmp_path / "run" / "checkpoints" / str(stopped)).is_dir()
    run_cli(["train", str(cfg_file), "--no-progress"])
    assert losses(tmp_path / "run") == losses(reference)


def test_non_finite_loss_stops_naming_the_step_and_keeps_last_good(tmp_path):
    cfg = make_cfg(tmp_path, "phases.0.schedule.peak_lr=1.0e+6", "optimizer.grad_clip=0", "phases.0.steps=30",
                   "checkpoint.every=2")
    with pytest.raises(TrainingDiverged, match=r"non-finite loss .* at step (\d+).*last good checkpoint is step") as err:
        Trainer(cfg, progress=False).run()
    bad_step = int(err.value.args[0].split("at step ")[1].split()[0])
    kept = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
    assert kept and max(kept) < bad_step


def test_a_different_plan_in_the_same_run_dir_is_refused(reference, tmp_path):
    from cpt_jax.cli.errors import UserError
    Trainer(make_cfg(tmp_path), progress=False, stop_after=5).run()
    changed = make_cfg(tmp_path, "phases.1.mixture.general=0.5")
    with pytest.raises(UserError, match="different plan.*--force-new"):
        Trainer(changed, progress=False).run()
    # A different mesh or eval cadence is not a different plan.
    Trainer(make_cfg(tmp_path, "eval.every=4"), progress=False, stop_after=6).run()
    # --force-new moves the old run aside, nothing is deleted.
    Trainer(changed, force_new=True, progress=False, stop_after=2).run()
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("previous-")]
    assert len(aside) == 1 and (aside[0] / "checkpoints" / "5").is_dir()


def test_phase_from_missing_or_incompatible_checkpoint(reference, tmp_path):
    from cpt_jax.cli.errors import UserError
    with pytest.raises(UserError, match=r"phases\[0\].init: checkpoint .*missing.* does not exist"):
        Trainer(make_cfg(tmp_path / "a", f"phases.0.init=ckpt:{tmp_path}/missing"), progress=False).run()
    wider = make_cfg(tmp_path / "b", f"phases.0.init=ckpt:{reference}@12", "model.intermediate_size=96")
    with pytest.raises(UserError, match=r"tensor layers.0.mlp.down has shape \(64, 32\) but the run's model needs \(96, 32\)"):
        Trainer(wider, progress=False).run()


def test_params_only_start_from_a_checkpoint_step(reference, tmp_path):
    """A new run's phase starts from step 12 of the reference (end of pretraining)."""
    data = apply_overrides(copy.deepcopy(PLAN), [f"run_dir={tmp_path}", f"phases.0.init=ckpt:{reference}@12"])
    data["phases"] = [dict(data["phases"][1], init=f"ckpt:{reference}@12", name="cpt-only")]
    data["phases"][0]["schedule"] = dict(data["phases"][0]["schedule"], warmup_from=0.0)
    cfg = from_dict(RunConfig, data)
    Trainer(cfg, progress=False).run()
    start = {r["source"]: r["loss"] for r in train_log(tmp_path, "eval") if r["step"] == 0}
    ref_end = {r["source"]: r["loss"] for r in train_log(reference, "eval") if (r["step"], r["phase"]) == (12, 0)}
    assert start == pytest.approx(ref_end, rel=1e-6)


def test_disk_full_during_save_keeps_previous_checkpoint(tmp_path, monkeypatch):
    from cpt_jax.checkpoint import manager
    from cpt_jax.cli.errors import UserError
    real_save = manager.RunCheckpointer.save

    def full_after_first(self, step, *args, **kwargs):
        if step > 5:
            raise OSError(28, "No space left on device")
        return real_save(self, step, *args, **kwargs)

    monkeypatch.setattr(manager.RunCheckpointer, "save", full_after_first)
    with pytest.raises(UserError, match=r"saving checkpoint step 10 failed .*No space left.*step 5\) is kept"):
        Trainer(make_cfg(tmp_path), progress=False).run()
    monkeypatch.setattr(manager.RunCheckpointer, "save", real_save)
    assert sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()) == [5]
