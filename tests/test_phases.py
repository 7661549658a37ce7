"""Plans that grow: appending phases to a run in progress or finished, lengthening an infinite
schedule in its constant stretch, and refusing changes to phases that have started."""

import copy
from pathlib import Path

import pytest
import yaml

from plan_fixtures import tiny_plan

from cpt_jax.config.base import apply_overrides, from_dict
from cpt_jax.errors import UserError
from cpt_jax.train.config import RunConfig
from cpt_jax.train.loop import Trainer
from cpt_jax.train.metrics import read_jsonl
from cpt_jax.train.plan_growth import check_plan_change, phase_fingerprints

INFINITE = {"shape": "infinite", "peak_lr": 3e-3, "warmup_steps": 2, "cooldown_steps": 2, "constant_lr": 1e-3}
ANNEAL = {"shape": "linear", "peak_lr": 1e-3, "min_lr": 1e-4}
PLAN = tiny_plan([{"name": "open", "init": "scratch", "steps": 6, "mixture": {"a": 1.0}, "schedule": INFINITE}], checkpoint_every=3)
APPENDED = {"name": "anneal", "steps": 3, "mixture": {"a": 0.5, "b": 0.5}, "schedule": ANNEAL}


def cfg_of(run_dir, *overrides, phases=None) -> RunConfig:
    data = copy.deepcopy(PLAN)
    if phases is not None:
        data["phases"] = phases
    return from_dict(RunConfig, apply_overrides(data, [f"run_dir={run_dir}", *overrides]))


def train_rows(run_dir):
    return [r for r in read_jsonl(Path(run_dir) / "metrics.jsonl") if r["kind"] == "train"]


def grown_phases(open_steps=9):
    return [dict(PLAN["phases"][0], steps=open_steps), APPENDED]


@pytest.mark.slow  # over 20 s on CI's 2 cores: `make test-slow` runs it
def test_a_finished_plan_grows_without_retraining(tmp_path):
    grown, straight = tmp_path / "grown", tmp_path / "straight"
    Trainer(cfg_of(grown), progress=False).run()
    first = train_rows(grown)
    assert [r["step"] for r in first] == [1, 2, 3, 4, 5, 6]
    # Lengthen the infinite phase (still in its constant stretch) and append an anneal phase.
    summary = Trainer(cfg_of(grown, phases=grown_phases()), progress=False).run()
    assert summary["final_step"] == 12
    rows = train_rows(grown)
    assert [r["step"] for r in rows] == list(range(1, 13))  # nothing retrained, nothing skipped
    assert rows[:6] == first
    assert [r["lr"] for r in rows[6:9]] == pytest.approx([1e-3] * 3)  # the constant stretch goes on
    # Bit for bit what the grown plan gives when run straight through.
    Trainer(cfg_of(straight, phases=grown_phases()), progress=False).run()
    assert [(r["step"], r["loss"], r["lr"]) for r in train_rows(straight)] == \
           [(r["step"], r["loss"], r["lr"]) for r in rows]
    doc = yaml.safe_load((grown / "config.yaml").read_text())
    assert doc["phase_hashes"] == phase_fingerprints(cfg_of(grown, phases=grown_phases()))
    # The appended phase has started now: changing it is refused by name.
    changed = [grown_phases()[0], dict(APPENDED, mixture={"a": 1.0})]
    refused = r"phase 'anneal' \(phases\[1\]\) has started: its mixture.a cannot change \(0.5 -> 1.0\)"
    with pytest.raises(UserError, match=refused):
        Trainer(cfg_of(grown, phases=changed), progress=False).run()


def recorded(cfg: RunConfig) -> dict:
    from cpt_jax.config.base import to_dict
    from cpt_jax.train.config import plan_fingerprint
    return {"plan_hash": plan_fingerprint(cfg), "phase_hashes": phase_fingerprints(cfg), "config": to_dict(cfg)}


def test_phases_not_started_may_change_be_dropped_or_be_appended(tmp_path):
    old = cfg_of(tmp_path, phases=grown_phases())
    edited = [grown_phases()[0], dict(APPENDED, steps=5, mixture={"b": 1.0}), dict(APPENDED, name="more")]
    check_plan_change(tmp_path, recorded(old), cfg_of(tmp_path, phases=edited), progress=(0, 4))
    check_plan_change(tmp_path, recorded(old), cfg_of(tmp_path, phases=grown_phases()[:1]), progress=(0, 4))
    # Resumable sections are not the plan.
    check_plan_change(tmp_path, recorded(old), cfg_of(tmp_path, "eval.every=7", phases=grown_phases()), (1, 2))


OPEN = PLAN["phases"][0]
WITH_ANNEAL = dict(OPEN, steps=8, schedule=dict(INFINITE, anneal_steps=2))
BY_FRACTION = dict(OPEN, steps=8, schedule={**INFINITE, "cooldown_steps": None, "cooldown_fraction": 0.25})


@pytest.mark.parametrize("old, overrides, new, progress, message", [
    ([OPEN], ["optimizer.b2=0.9"], [OPEN], None, r"different plan: optimizer changed"),
    ([OPEN], [], [dict(OPEN, schedule=dict(INFINITE, peak_lr=2e-3))], (0, 4),
     r"phase 'open' \(phases\[0\]\) has started: its schedule.peak_lr cannot change \(0.003 -> 0.002\)"),
    ([OPEN], [], [dict(OPEN, steps=4)], (0, 5), r"trained 5 steps: its budget cannot shrink to 4 steps"),
    ([WITH_ANNEAL], [], [dict(WITH_ANNEAL, steps=12)], (0, 7), r"changes the LR of step 7, already trained"),
    ([BY_FRACTION], [], [dict(BY_FRACTION, steps=12)], (0, 4), r"changes the LR of step 3, already trained"),
    ([OPEN, APPENDED], [], [dict(OPEN, steps=9), APPENDED], (1, 1),
     r"phase 'open' \(phases\[0\]\) has started and finished, and the phase after it has started"),
    ([OPEN, APPENDED], [], [OPEN], (1, 1), r"phase 'anneal' \(phases\[1\]\) has started and cannot be removed"),
], ids=["base", "field", "shrink", "anneal-moved", "fraction-moved", "finished", "removed"])
def test_changes_to_started_phases_are_refused_by_name(tmp_path, old, overrides, new, progress, message):
    with pytest.raises(UserError, match=message + r".*--force-new"):
        check_plan_change(tmp_path, recorded(cfg_of(tmp_path, phases=old)), cfg_of(tmp_path, *overrides, phases=new),
                          progress)


def test_a_lengthened_infinite_phase_keeps_the_lr_it_trained_with(tmp_path):
    # In the constant stretch (6 of 8 steps trained, the anneal not begun): accepted.
    check_plan_change(tmp_path, recorded(cfg_of(tmp_path, phases=[WITH_ANNEAL])),
                      cfg_of(tmp_path, phases=[dict(WITH_ANNEAL, steps=20)]), progress=(0, 6))


# ----------------------------------------------------------------- long-context phases
REPO = Path(__file__).resolve().parent.parent


def test_phase_overrides_hold_from_the_phase_that_sets_them():
    from cpt_jax.train.config import load_run_config

    cfg = load_run_config(REPO / "configs" / "long_context.yaml")
    short, long_, cool = (cfg.phase_run(i) for i in range(3))
    assert (short.data.seq_len, short.data.global_batch_size, short.model.rope_theta) == (4096, 256, 10000.0)
    assert (long_.data.seq_len, long_.data.global_batch_size, long_.model.rope_theta) == (16384, 64, 500000.0)
    assert cool.model == long_.model and cool.data == long_.data
    assert cfg.phase_tokens_per_step() == [1 << 20] * 3
    # `cpt-jax schedule` counts tokens with each phase's batch x length.
    from cpt_jax.schedules import key_points
    grown = cfg_of("/tmp/x", phases=[OPEN, dict(APPENDED, seq_len=64, max_position_embeddings=64)])
    assert grown.phase_tokens_per_step() == [8 * 16, 8 * 64]
    specs = [(p.name, p.schedule, n) for p, n in zip(grown.phases, grown.phase_steps())]
    ends = {r["phase"]: r["tokens"] for r in key_points(specs, grown.phase_tokens_per_step()) if "end" in r["what"]}
    assert ends == {"open": 5 * 8 * 16, "anneal": 6 * 8 * 16 + 2 * 8 * 64}
    with pytest.raises(Exception, match=r"seq_len=128 exceeds model.max_position_embeddings=64 \(in phase 'long'\)"):
        cfg_of("/tmp/x", phases=[OPEN, dict(APPENDED, name="long", seq_len=128)])
    with pytest.raises(Exception, match=r"phases\[1\].hidden_size'?: unknown key"):
        cfg_of("/tmp/x", phases=[OPEN, dict(APPENDED, hidden_size=32)])


@pytest.mark.slow
def test_three_phase_long_context_plan_from_the_cli(tmp_path):
    """Short context, then seq_len x4 with a higher RoPE base, then a cooldown: prepared data, the
    CLI, kill -9 inside each phase, and an HF export that transformers reads back."""
    import json
    import os
    import signal
    import subprocess
    import sys
    import time

    from text_fixtures import documents, vocabulary, word_level_tokenizer, write_jsonl

    words = vocabulary("w", 60)
    tok = word_level_tokenizer(tmp_path / "tok" / "tokenizer.json", words)
    write_jsonl(tmp_path / "in" / "text.jsonl", documents(words, 300, seed=3, max_words=120))
    env = {**os.environ, "PYTHONPATH": str(REPO), "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}

    def cli(*args, **kw):
        return subprocess.Popen([sys.executable, "-m", "cpt_jax", *map(str, args)], env=env, cwd=tmp_path,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)

    out = cli("prepare", tmp_path / "in", "--out", tmp_path / "data", "--tokenizer", tok, "--eval-docs", "8",
              "--quiet").communicate()[0]
    assert (tmp_path / "data" / "manifest.json").is_file(), out
    run_dir = tmp_path / "run"
    plan = {
        "run_dir": str(run_dir), "tokenizer": str(tok),
        "model": {"vocab_size": 64, "hidden_size": 16, "intermediate_size": 32, "num_layers": 2, "num_heads": 2,
                  "num_kv_heads": 1, "rope_theta": 10000.0, "max_position_embeddings": 16},
        "data": {"seq_len": 16, "global_batch_size": 8, "sources": {"text": {"path": str(tmp_path / "data")}}},
        "mesh": {"data": 1, "fsdp": 8, "tensor": 1},
        "checkpoint": {"every": 2, "keep_last": 20},
        "eval": {"every": 100, "batches": 1},
        "log": {"every": 1, "tensorboard": False},
        "phases": [
            {"name": "short", "init": "scratch", "steps": 8, "mixture": {"text": 1.0},
             "schedule": {"shape": "infinite", "peak_lr": 3e-3, "warmup_steps": 2, "cooldown_steps": 0,
                          "constant_lr": 3e-3}},
            {"name": "long", "steps": 8, "mixture": {"text": 1.0}, "seq_len": 64, "rope_theta": 40000.0,
             "max_position_embeddings": 64,
             "schedule": {"shape": "infinite", "peak_lr": 3e-3, "cooldown_steps": 0, "constant_lr": 3e-3}},
            {"name": "cooldown", "steps": 8, "mixture": {"text": 1.0},
             "schedule": {"shape": "linear", "peak_lr": 3e-3, "min_lr": 3e-4}},
        ],
    }
    plan_file = tmp_path / "plan.yaml"
    plan_file.write_text(yaml.safe_dump(plan))
    metrics = run_dir / "metrics.jsonl"

    def logged() -> dict:
        rows = read_jsonl(metrics) if metrics.exists() else []
        return {r["step"]: r for r in rows if r["kind"] == "train"}

    before_kill = {}
    for kill_at in (5, 13, 21):  # inside each phase, after a checkpoint of that phase
        proc = cli("train", plan_file, "--no-progress")
        deadline = time.time() + 400
        while max(logged(), default=0) < kill_at and proc.poll() is None and time.time() < deadline:
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        assert max(logged()) < kill_at + 4, f"killed late, at step {max(logged())}"  # still inside the phase
        before_kill.update(logged())
    out, _ = cli("train", plan_file, "--no-progress").communicate()
    rows = logged()
    assert sorted(rows) == list(range(1, 25)), out[-2000:]
    # Steps trained before a kill and again after the resume: bit for bit the same.
    assert all(rows[s]["loss"] == r["loss"] and rows[s]["lr"] == r["lr"] for s, r in before_kill.items())
    # The long phase trains on rows four times longer (tokens per step), the cooldown keeps them.
    tokens = [rows[s]["tokens"] for s in (1, 9, 17)]
    assert min(tokens[1], tokens[2]) > 3.5 * tokens[0]  # (loss tokens: document ends vary a little)
    # Each source continues where it stopped: stream offsets at phase ends only grow.
    from cpt_jax.checkpoint.run_checkpoint import CheckpointConfig, RunCheckpointer
    ckpt = RunCheckpointer(run_dir, CheckpointConfig(), read_only=True)
    ends = [ckpt.read_meta(s) for s in (8, 16, 24)]
    ckpt.close()
    assert [m["data"]["seq_len"] for m in ends] == [16, 64, 64]
    offsets = [m["data"]["tokens"]["text"] for m in ends]
    assert offsets[0] == 8 * 8 * 16 and offsets[1] >= offsets[0] + 8 * 8 * 64 and offsets[2] == offsets[1] + 8 * 8 * 64
    assert ends[2]["model"]["rope_theta"] == 40000.0 and ends[0]["model"]["rope_theta"] == 10000.0
    # The export carries the final phase's position settings, and transformers reads them.
    out, _ = cli("export-hf", run_dir, tmp_path / "hf").communicate()
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["max_position_embeddings"] == 64, out
    from transformers import AutoConfig
    hf = AutoConfig.from_pretrained(tmp_path / "hf")
    theta = getattr(hf, "rope_theta", None) or hf.rope_parameters["rope_theta"]
    assert theta == 40000.0 and hf.max_position_embeddings == 64
    # `cpt-jax eval` of the run evaluates its last checkpoint in that checkpoint's phase (rows of 64,
    # RoPE base 40000): the same held-out loss the loop logged at the end.
    from cpt_jax.cli.main import main

    final = {r["source"]: r["loss"] for r in read_jsonl(metrics) if r["kind"] == "eval" and r["step"] == 24
             and r.get("weights", "raw") == "raw"}
    assert main(["eval", str(run_dir), "--json", str(tmp_path / "eval.json")]) == 0
    by_eval = json.loads((tmp_path / "eval.json").read_text())["heldout"]
    for source, loss in final.items():
        assert abs(by_eval[source]["loss"] - loss) < 1e-5, (source, by_eval[source]["loss"], loss)


def test_linear_rope_scaling_matches_transformers_and_round_trips():
    """A phase may switch to linear position interpolation; its frequencies are transformers'."""
    import numpy as np
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    from cpt_jax.hf.config_map import hf_config_to_model_config, model_config_to_hf_config
    from cpt_jax.model.rope import inverse_frequencies

    cfg = cfg_of("/tmp/x", phases=[OPEN, dict(APPENDED, rope_theta=40000.0,
                                              rope_scaling={"rope_type": "linear", "factor": 4.0})])
    model = cfg.phase_run(1).model
    hf = model_config_to_hf_config(model)
    assert hf["rope_scaling"] == {"rope_type": "linear", "factor": 4.0}
    inv, _ = ROPE_INIT_FUNCTIONS["linear"](LlamaConfig(**{k: v for k, v in hf.items() if k != "architectures"}), "cpu")
    np.testing.assert_allclose(inverse_frequencies(model), inv.numpy(), rtol=1e-6)
    back = hf_config_to_model_config(hf)
    assert (back.rope_theta, back.rope_scaling) == (40000.0, model.rope_scaling)
    assert cfg.phase_run(0).model.rope_scaling is None


@pytest.mark.parametrize("scaling", [
    {"rope_type": "linear", "factor": 4.0},
    {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32},
    {"rope_type": "yarn", "factor": 8.0, "original_max_position_embeddings": 16, "beta_fast": 16.0,
     "mscale": 1.0, "mscale_all_dim": 0.5, "truncate": False},
], ids=["linear", "yarn", "yarn-mscale"])
def test_scaled_rope_logits_match_transformers(tmp_path, scaling):
    """Linear and YaRN scaling (a long-context phase's rope_scaling) give transformers' logits on a
    tiny Llama, past the original context; import and export keep the settings."""
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx
    from hf_fixtures import hf_logits, make_tiny_hf_model

    from cpt_jax.hf import load_hf_params
    from cpt_jax.hf.config_map import model_config_to_hf_config
    from cpt_jax.model.params import abstract_model

    hf_dir = make_tiny_hf_model(tmp_path / "hf", "llama", rope_scaling=dict(scaling), rope_theta=1000.0,
                                tokenizer=False)
    cfg, params, _ = load_hf_params(hf_dir, None, None)
    assert cfg.rope_scaling.rope_type == scaling["rope_type"]
    tokens = np.random.default_rng(0).integers(3, 160, size=(2, 96))
    graphdef, _ = abstract_model(cfg)
    got = np.asarray(nnx.merge(graphdef, params)(jnp.asarray(tokens, jnp.int32), None, None))
    ref = hf_logits(hf_dir, tokens)
    assert np.abs(got - ref).max() <= 1e-4 and np.abs(ref).max() > 1e-2
    defaults = {"beta_fast": 32.0, "beta_slow": 1.0, "truncate": True} if scaling["rope_type"] == "yarn" else {}
    assert model_config_to_hf_config(cfg)["rope_scaling"] == {**defaults, **scaling}
