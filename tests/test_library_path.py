"""The library path (`cpt_jax.train.loop.train(cfg)`, `run_plan`) does what `cpt-jax train` does,
key by key: the CLI only parses its arguments; every behaviour lives in train()."""

import json

import pytest
import yaml
from plan_fixtures import tiny_plan

from cpt_jax.cli.main import main
from cpt_jax.errors import UserError
from cpt_jax.train import loop
from cpt_jax.train.config import load_run_config

PHASES = [{"name": "a", "init": "scratch", "steps": 3, "mixture": {"a": 1.0},
           "schedule": {"peak_lr": 1e-3, "warmup_steps": 1}},
          {"name": "b", "steps": 3, "mixture": {"a": 0.5, "b": 0.5},
           "schedule": {"peak_lr": 1e-3, "warmup_steps": 1}}]

# Every key added since wave two (configs/REFERENCE.md then and now), on a plan where it is valid.
KEYS_SINCE_WAVE_TWO = {
    "keep_host_memory": ["keep_host_memory=false"],
    "log.progress": ["log.progress=true"],
    "log.wandb": ["log.wandb=true", "log.wandb_project=p", "log.wandb_mode=offline"],
    "eval.dense_first/dense_every": ["eval.dense_first=2", "eval.dense_every=1"],
    "optimizer.ema_decay, phases[i].from_ema": ["optimizer.ema_decay=0.9", "phases.1.from_ema=true"],
    "phases[i].seq_len/global_batch_size": ["phases.1.seq_len=8", "phases.1.global_batch_size=16"],
    "phases[i].rope_theta/max_position_embeddings": ["phases.1.rope_theta=5000", "phases.1.max_position_embeddings=32"],
    "phases[i].rope_scaling (yarn keys)": ["phases.1.rope_scaling={rope_type: yarn, factor: 2.0, beta_fast: 16, "
                                           "beta_slow: 2, attention_factor: 1.1, truncate: false}"],
    "model.scan_unroll": ["model.scan_unroll=1"],
    # added since issue 25 was filed (a1402c3)
    "model.qkv_bias/qk_norm (null: the family's)": ["model.family=qwen3", "model.qk_norm=true"],
    "model.logits_chunk": ["model.logits_chunk=8"],
    "model.logits_vocab_tiles": ["model.logits_vocab_tiles=2"],
    "optimizer.mu_dtype": ["optimizer.mu_dtype=bfloat16"],
    "optimizer.freeze, phases[i].freeze": ["optimizer.freeze=[embed]", "phases.1.freeze=[]"],
    "mesh.context, phases[i].mesh": ["mesh.context=2", "mesh.fsdp=4",
                                     "phases.1.mesh={data: 1, fsdp: 8, tensor: 1, context: 1}"],
    "profile": ["profile.start_step=1", "profile.steps=1", "profile.processes=all"],
}
SHORT = ["phases.0.steps=2", "phases.1.steps=2"]


def write_plan(tmp_path, **extra) -> str:
    plan = {"run_dir": str(tmp_path / "run"), **tiny_plan(PHASES, checkpoint_every=100), **extra}
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "plan.yaml"
    path.write_text(yaml.safe_dump(plan))
    return str(path)


@pytest.mark.parametrize("key", list(KEYS_SINCE_WAVE_TWO))
def test_cli_hands_the_trainer_what_the_library_does(tmp_path, monkeypatch, key):
    """For each key, `cpt-jax train PLAN key=...` and train(load_run_config(PLAN, [key=...])) reach
    the trainer with equal configs and arguments (launch() included: it runs inside train())."""
    seen = []

    class Recorder:
        def __init__(self, cfg, **kwargs):
            seen.append((cfg, kwargs))

        def run(self):
            return {"run_dir": "x", "final_step": 0}

    monkeypatch.setattr(loop, "Trainer", Recorder)
    plan, overrides = write_plan(tmp_path), KEYS_SINCE_WAVE_TWO[key]
    assert main(["train", plan, *overrides]) == 0
    loop.train(load_run_config(plan, overrides), progress=True)
    (cli_cfg, cli_kwargs), (lib_cfg, lib_kwargs) = seen
    assert cli_cfg == lib_cfg and cli_kwargs == lib_kwargs
    assert cli_cfg != load_run_config(plan)  # the key did change the run


@pytest.mark.slow
def test_same_run_from_the_cli_and_the_library(tmp_path):
    """A two-phase plan with several keys added since wave two (dense evals, weight EMA and a
    phase from it, a per-phase row length and batch, RoPE base): the same metrics either way."""
    overrides = [*KEYS_SINCE_WAVE_TWO["eval.dense_first/dense_every"],
                 *KEYS_SINCE_WAVE_TWO["optimizer.ema_decay, phases[i].from_ema"],
                 *KEYS_SINCE_WAVE_TWO["phases[i].seq_len/global_batch_size"], "phases.1.rope_theta=5000"]
    rows = {}
    for how in ("cli", "library"):
        plan = write_plan(tmp_path / how)
        if how == "cli":
            assert main(["train", plan, *overrides, "--no-progress"]) == 0
        else:
            loop.run_plan(plan, overrides, progress=False)
        lines = [json.loads(x) for x in (tmp_path / how / "run" / "metrics.jsonl").read_text().splitlines()]
        rows[how] = [{k: v for k, v in r.items() if k not in ("time", "tokens_per_s", "mfu", "wall_s")}
                     for r in lines if r["kind"] != "time"]  # wall-clock rows (goodput) differ by nature
    assert rows["cli"] == rows["library"]
    evals = [r for r in rows["library"] if r.get("kind") == "eval"]
    assert any(r.get("weights") == "ema" for r in evals)  # ema_decay acted
    assert {r["step"] for r in evals if "weights" not in r} >= {0, 1, 2, 3}  # dense evals acted


@pytest.mark.parametrize("progress", [True, False])
def test_log_progress_on_the_library_path(tmp_path, capfd, progress):
    loop.train(load_run_config(write_plan(tmp_path), [f"log.progress={str(progress).lower()}", *SHORT]))
    err = capfd.readouterr().err
    assert ("4/4 [" in err) is progress  # tqdm's bar over the plan's 4 steps


@pytest.mark.slow  # over 20 s on CI's 2 cores: `make test-slow` runs it
def test_log_wandb_on_the_library_path(tmp_path, monkeypatch):
    pytest.importorskip("wandb", reason="wandb is an optional extra: pip install -e '.[wandb]'")
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    loop.train(load_run_config(write_plan(tmp_path), ["log.wandb=true", *SHORT]), progress=False)
    assert list((tmp_path / "run" / "wandb").glob("offline-run-*/run-*.wandb"))


def test_distributed_on_the_library_path(tmp_path, capsys):
    """The `distributed` section used to act only under `cpt-jax train` (launch()); train() starts
    jax.distributed too, and refuses an unreachable coordinator the same way."""
    ov = ["distributed.mode=manual", "distributed.coordinator=127.0.0.1:9", "distributed.num_processes=2",
          "distributed.process_id=1", "distributed.timeout_s=1"]
    plan = write_plan(tmp_path)
    with pytest.raises(UserError) as lib:
        loop.train(load_run_config(plan, ov), progress=False)
    assert main(["train", plan, *ov]) == 2
    assert f"error: {lib.value}" in capsys.readouterr().err
    assert "127.0.0.1:9" in str(lib.value)
    assert not (tmp_path / "run").exists()
