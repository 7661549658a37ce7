"""Continual phases end to end: resume after kill -9 / SIGTERM / a corrupt checkpoint, restore onto
other meshes, divergence and bad plans. Each run is a real `Trainer` (or the CLI) on fake devices."""

import copy
import re
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from cpt_jax.config.base import apply_overrides, from_dict
from cpt_jax.errors import TrainingDiverged
from cpt_jax.train.config import RunConfig
from cpt_jax.train.loop import Trainer
from cpt_jax.train.metrics import read_jsonl

pytestmark = pytest.mark.slow  # kill -9, preemption and restore runs through the CLI: `make test-slow` (and CI) runs it

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
    with pytest.warns(UserWarning, match=r"step 15 .* is damaged"):
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
    from cpt_jax.errors import UserError
    Trainer(make_cfg(tmp_path), progress=False, stop_after=5).run()
    changed = make_cfg(tmp_path, "phases.0.schedule.peak_lr=1e-3")  # phase 0 has started (phase 1 could change)
    with pytest.raises(UserError, match="different plan.*--force-new"):
        Trainer(changed, progress=False).run()
    # A different mesh or eval cadence is not a different plan.
    Trainer(make_cfg(tmp_path, "eval.every=4"), progress=False, stop_after=6).run()
    # --force-new moves the old run aside, nothing is deleted.
    Trainer(changed, force_new=True, progress=False, stop_after=2).run()
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("previous-")]
    assert len(aside) == 1 and (aside[0] / "checkpoints" / "5").is_dir()


def test_phase_from_missing_or_incompatible_checkpoint(reference, tmp_path):
    from cpt_jax.errors import UserError
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


def tree_state(root) -> dict:
    """{relative path: sha256} of every file under root: what 'nothing was touched' compares."""
    import hashlib
    root = Path(root)
    return {str(f.relative_to(root)): hashlib.sha256(f.read_bytes()).hexdigest()
            for f in sorted(root.rglob("*")) if f.is_file()}


def dir_bytes(root) -> int:
    return sum(f.stat().st_size for f in Path(root).rglob("*") if f.is_file())


def step_dirs(run_dir, sub="checkpoints"):
    d = Path(run_dir) / sub
    return sorted(int(p.name.split("-")[0]) for p in d.iterdir() if p.name.split("-")[0].isdigit()) if d.is_dir() else []


def test_wrong_device_count_stops_before_touching_the_run_then_the_right_one_resumes(tmp_path):
    """The issue's reproduction: trained on 8 devices, the latest step lost as a preemption
    would, rerun on 6 devices (the batch of 24 splits over 6, the hidden size of 32 does not):
    one error line naming the setting and a mesh that fits, exit 2, every file as it was; the
    right device count then resumes from the latest step."""
    run = tmp_path / "run"
    plan = apply_overrides(copy.deepcopy(PLAN), [f"run_dir={run}", "mesh.fsdp=-1", "data.global_batch_size=24"])
    cfg_file = tmp_path / "plan.yaml"
    cfg_file.write_text(yaml.safe_dump(plan))
    Trainer(from_dict(RunConfig, plan), progress=False, stop_after=12).run()
    shutil.rmtree(run / "checkpoints" / "12")
    before = tree_state(run)
    proc = run_cli(["train", str(cfg_file), "--no-progress"], devices=6, check=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    # The one line besides the error says what keep_host_memory decided (host_memory.py).
    lines = [l for l in proc.stderr.splitlines() if l.strip() and not l.startswith("host memory: ")]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-2000:]
    assert "model.hidden_size=32" in lines[0] and "fsdp=6" in lines[0] and "mesh.fsdp=2" in lines[0]
    assert tree_state(run) == before and step_dirs(run) == [5, 10]
    resumed = run_cli(["train", str(cfg_file), "--no-progress"], devices=8)
    assert "resuming" in resumed.stderr and "at step 10" in resumed.stderr
    assert [s for s, _, _ in losses(run)] == list(range(1, 25))
    assert not (run / "corrupt-checkpoints").exists()


def test_an_intact_step_that_this_invocation_cannot_restore_is_not_moved(reference, tmp_path):
    """A restore that fails for a reason of this invocation (here: restore targets of another
    model, as a wrong mesh or device count would give) stops with CheckpointError; the step's
    own files are whole, so nothing is moved aside."""

    from cpt_jax.checkpoint.run_checkpoint import CheckpointConfig, RunCheckpointer
    from cpt_jax.errors import CheckpointError
    from cpt_jax.train.setup import build_setup
    shutil.copytree(reference / "checkpoints", tmp_path / "checkpoints")
    before = tree_state(tmp_path)
    other = build_setup(make_cfg(tmp_path, "model.hidden_size=64"))
    ckpt = RunCheckpointer(tmp_path, CheckpointConfig())
    try:
        with pytest.raises(CheckpointError, match=r"step 24 .* is intact but could not be restored by this invocation"):
            ckpt.restore_latest_good(other.abstract_params, other.abstract_opt)
    finally:
        ckpt.close()
    assert tree_state(tmp_path) == before


@pytest.mark.parametrize("damage", ["metadata", "chunks", "meta_json", "missing_item"])
def test_find_damage_names_what_is_broken(reference, tmp_path, damage):
    """Damage is judged from the step's own files: each kind is found and named; the intact
    step has none."""

    from cpt_jax.checkpoint.damage import find_damage
    from cpt_jax.checkpoint.run_checkpoint import FORMAT
    step = tmp_path / "24"
    shutil.copytree(reference / "checkpoints" / "24", step)
    assert find_damage(step, 24, FORMAT) is None
    if damage == "metadata":
        (step / "params" / "_METADATA").write_text("{not json")
        expect = "array metadata of params is unreadable"
    elif damage == "chunks":
        for f in (step / "opt_state").rglob("*"):
            if f.is_file() and f.parent.name == "d":
                f.write_bytes(b"\0garbage")
        expect = "of opt_state is unreadable"
    elif damage == "meta_json":
        (step / "meta" / "metadata").write_text('{"format": "cpt_jax.run/1", "step": 23}')
        expect = "says step 23, not 24"
    else:
        shutil.rmtree(step / "opt_state")
        expect = "opt_state item is missing"
    assert expect in find_damage(step, 24, FORMAT)


def test_every_step_damaged_refuses_to_start_over(reference, tmp_path):
    """Damaged steps are moved aside, never deleted, and the run does not restart from scratch
    over them (nor truncate its metrics); force_new moves the whole run aside."""
    from cpt_jax.errors import CheckpointError
    shutil.copytree(reference / "checkpoints" / "5", tmp_path / "checkpoints" / "5")  # a run with one step
    for name in ("config.yaml", "metrics.jsonl"):
        shutil.copy(reference / name, tmp_path / name)
    (tmp_path / "checkpoints" / "5" / "meta" / "metadata").write_text("garbage")
    metrics = (tmp_path / "metrics.jsonl").read_bytes()
    with (pytest.warns(UserWarning, match=r"step 5 .* is damaged \(its meta/metadata file is unreadable"),
          pytest.raises(CheckpointError, match="holds checkpoints but none can be resumed")):
        Trainer(make_cfg(tmp_path), progress=False).run()
    assert step_dirs(tmp_path, "corrupt-checkpoints") == [5] and step_dirs(tmp_path) == []
    with pytest.raises(CheckpointError, match="holds checkpoints but none can be resumed"):
        Trainer(make_cfg(tmp_path), progress=False).run()  # the next attempt refuses too
    assert (tmp_path / "metrics.jsonl").read_bytes() == metrics
    Trainer(make_cfg(tmp_path), force_new=True, progress=False, stop_after=1).run()
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("previous-")]
    assert len(aside) == 1 and (aside[0] / "metrics.jsonl").read_bytes() == metrics
    assert step_dirs(aside[0], "corrupt-checkpoints") == [5]


@pytest.fixture
def small_fs(tmp_path):
    """A real small filesystem (tmpfs) mounted on <run>/checkpoints; needs root."""
    mounts = []

    def mount(where: Path, size: str) -> Path:
        where.mkdir(parents=True, exist_ok=True)
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                              capture_output=True, text=True, check=False)
        if proc.returncode:
            pytest.skip(f"cannot mount a tmpfs to fill or make read-only ({proc.stderr.strip()}); needs root")
        mounts.append(where)
        return where

    yield mount
    for where in reversed(mounts):
        subprocess.run(["umount", "-l", str(where)], check=False)


def test_background_save_on_a_full_disk_stops_with_a_clear_error(tmp_path, small_fs):
    """Disk full during an async save: `cpt-jax train` stops at the next step with one error line
    (orbax's own logged traceback of the failed write is not shown), the earlier step stays whole
    and restorable. The real tmpfs is shrunk to what step 5 left plus 128 KiB, less than any step
    takes: a fixed size flaked, as one step's files vary by a fifth between runs (OCDBT's data
    files follow the writers' timing) and CI once could not fit even the first."""
    from cpt_jax.checkpoint.damage import find_damage
    from cpt_jax.checkpoint.run_checkpoint import FORMAT
    ckpts = small_fs(tmp_path / "checkpoints", "16m")
    Trainer(make_cfg(tmp_path, "checkpoint.async_save=true"), progress=False, stop_after=7).run()
    assert step_dirs(tmp_path) == [5]
    st = os.statvfs(ckpts)
    used, step_bytes, headroom = (st.f_blocks - st.f_bfree) * st.f_frsize, dir_bytes(ckpts / "5"), 128 * 1024
    assert step_bytes > 2 * headroom, step_bytes  # the next step cannot fit in the headroom
    subprocess.run(["mount", "-o", f"remount,size={used + headroom}", str(ckpts)], check=True)
    cfg_file = tmp_path.parent / f"{tmp_path.name}-plan.yaml"
    cfg_file.write_text(yaml.safe_dump(apply_overrides(copy.deepcopy(PLAN), [f"run_dir={tmp_path}",
                                                                             "checkpoint.async_save=true"])))
    proc = run_cli(["train", str(cfg_file), "--no-progress"], check=False)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "ERROR" not in proc.stderr, proc.stderr[-3000:]
    err = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and re.search(r"saving checkpoint step 10 .* failed \(No space left on device\); "
                                       r"the earlier checkpoints \(5\) are intact", err[0]), proc.stderr[-2000:]
    assert step_dirs(tmp_path) == [5] and find_damage(ckpts / "5", 5, FORMAT) is None
    assert max(s for s, _, _ in losses(tmp_path)) <= 12  # stopped within a step or two of the failed save


def test_read_only_checkpoint_dir_fails_the_save_and_keeps_earlier_steps(tmp_path, small_fs):
    """A run resumed onto a checkpoint directory that became read-only (remounted ro): the next
    save fails with a clear error, no traceback, and step 5 is untouched."""
    small_fs(tmp_path / "checkpoints", "4m")
    Trainer(make_cfg(tmp_path), progress=False, stop_after=7).run()
    before = tree_state(tmp_path / "checkpoints")
    subprocess.run(["mount", "-o", "remount,ro", str(tmp_path / "checkpoints")], check=True)
    cfg_file = tmp_path / "plan.yaml"
    cfg_file.write_text(yaml.safe_dump(apply_overrides(copy.deepcopy(PLAN), [f"run_dir={tmp_path}"])))
    proc = run_cli(["train", str(cfg_file), "--no-progress"], check=False)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    err = [l for l in proc.stderr.splitlines() if l.startswith("error:")]
    assert len(err) == 1 and "saving checkpoint step 10" in err[0] and "Read-only file system" in err[0], proc.stderr[-2000:]
    assert tree_state(tmp_path / "checkpoints") == before


def test_weight_decay_skips_every_bias_and_norm_by_name():
    """decay_norms_and_biases: false excludes Qwen2's q/k/v biases too, which are 2-D per layer
    (3-D stacked), not only 1-D tensors; true decays everything."""
    import dataclasses

    import jax

    from cpt_jax.model.config import ModelConfig
    from cpt_jax.model.params import abstract_params
    from cpt_jax.train.optimizer import weight_mask
    cfg = ModelConfig(vocab_size=96, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4,
                      num_kv_heads=2, max_position_embeddings=64, family="qwen2")
    for scanned in (True, False):
        params = abstract_params(dataclasses.replace(cfg, scan_layers=scanned))
        mask = {jax.tree_util.keystr(p, simple=True, separator="."): v
                for p, v in jax.tree_util.tree_flatten_with_path(weight_mask(params))[0]}
        off = sorted({k.split(".")[-1] if "bias" in k else k.split(".")[-2] for k, v in mask.items() if not v})
        assert off == ["attn_norm", "final_norm", "k_bias", "mlp_norm", "q_bias", "v_bias"], off
        assert all(v for k, v in mask.items() if "bias" not in k and "norm" not in k)


def test_ckpt_start_loads_into_the_runs_param_dtype(reference, tmp_path):
    """init: ckpt: of a float32 checkpoint in a bfloat16 run gives bfloat16 parameters, as a
    resumed bfloat16 run has."""
    import jax
    import jax.numpy as jnp

    from cpt_jax.train.phase_init import phase_start_params
    from cpt_jax.train.setup import build_setup
    cfg = make_cfg(tmp_path, "model.param_dtype=bfloat16")
    setup = build_setup(cfg)
    params, _ = phase_start_params(f"ckpt:{reference}@12", cfg.model, setup.mesh, setup.param_shardings, 0, None,
                                   "phases[0].init")
    assert {x.dtype for x in jax.tree.leaves(params)} == {jnp.dtype(jnp.bfloat16)}
    assert {x.dtype for x in jax.tree.leaves(setup.abstract_params)} == {jnp.dtype(jnp.bfloat16)}


def test_log_progress_false_turns_the_bar_off(tmp_path, capsys):
    Trainer(make_cfg(tmp_path, "log.progress=false", "phases.0.steps=4", "phases.1.steps=5"), progress=True).run()
    err = capsys.readouterr().err
    assert "phase 0 'pretrain'" in err and "%|" not in err and "step/s" not in err


def test_log_every_is_the_metrics_fetch_cadence(tmp_path):
    """log.every (REFERENCE.md: fetch metrics every N steps; each step is logged): the log hook
    is due once N steps are pending, and each pending step becomes its own metrics line."""
    from cpt_jax.train.hooks import StepInfo
    from cpt_jax.train.loop import LoopState, PendingMetrics
    trainer = Trainer(make_cfg(tmp_path, "log.every=3"), progress=False)
    pending = PendingMetrics()
    hooks = trainer._hooks(LoopState(), pending)
    info = StepInfo(step=2, phase=0, phase_step=2, phase_end=False, stopping=False)
    pending.steps[:] = [(1, 1, None), (2, 2, None)]
    assert "log" not in [h.name for h in hooks.due(info)]
    pending.steps.append((3, 3, None))
    assert "log" in [h.name for h in hooks.due(StepInfo(**{**info.__dict__, "step": 3, "phase_step": 3}))]
