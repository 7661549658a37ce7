"""Weight EMA (optimizer.ema_decay): the update against numpy, evaluation beside the raw weights,
checkpoint round trip (a crash and resume), a later phase started from it, and export-hf --ema."""

import copy

import jax
import numpy as np
import pytest

from cpt_jax.checkpoint.run_checkpoint import CheckpointConfig, RunCheckpointer
from cpt_jax.config.base import apply_overrides, from_dict
from cpt_jax.errors import ConfigError
from cpt_jax.model.params import init_params
from cpt_jax.train.config import RunConfig
from cpt_jax.train.loop import Trainer
from cpt_jax.train.metrics import read_jsonl
from cpt_jax.train.setup import build_setup
from cpt_jax.train.state import new_train_state

SCHEDULE = {"shape": "constant", "peak_lr": 1e-2, "warmup_steps": 1}
PLAN = {
    "model": {"vocab_size": 64, "hidden_size": 16, "intermediate_size": 32, "num_layers": 1, "num_heads": 2,
              "num_kv_heads": 1, "max_position_embeddings": 64},
    "data": {"seq_len": 16, "global_batch_size": 8,
             "sources": {"a": {"kind": "synthetic", "seed": 1, "num_docs": 64, "eval_docs": 4}}},
    "mesh": {"data": 1, "fsdp": 8, "tensor": 1},
    "optimizer": {"ema_decay": 0.75},
    "checkpoint": {"every": 2, "keep_last": 10, "async_save": False},
    "eval": {"every": 100, "batches": 1},
    "log": {"every": 1, "tensorboard": False, "progress": False},
    "phases": [{"name": "train", "init": "scratch", "steps": 4, "mixture": {"a": 1.0}, "schedule": SCHEDULE},
               {"name": "from-ema", "steps": 2, "from_ema": True, "mixture": {"a": 1.0}, "schedule": SCHEDULE}],
}


def cfg_of(run_dir, *overrides) -> RunConfig:
    return from_dict(RunConfig, apply_overrides(copy.deepcopy(PLAN), [f"run_dir={run_dir}", *overrides]))


def host(tree):
    return jax.tree.map(lambda x: np.asarray(jax.device_get(x)), tree)


def test_ema_update_matches_numpy(tmp_path):
    cfg = cfg_of(tmp_path)
    setup = build_setup(cfg)
    state = new_train_state(setup.tx, init_params(cfg.model, setup.mesh, 0), setup.shardings)
    params = [host(state.params)]
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(host(state.ema)), jax.tree.leaves(params[0])))
    it = setup.pipe.train_iterator({"a": 1.0}, start_tokens={})
    for _ in range(3):
        state, _ = setup.train_step(state, next(it))
        params.append(host(state.params))
    expected = params[0]
    for p in params[1:]:
        expected = jax.tree.map(lambda e, x: np.float32(0.75) * e + np.float32(0.25) * x, expected, p)
    got = host(state.ema)
    for e, g in zip(jax.tree.leaves(expected), jax.tree.leaves(got)):
        np.testing.assert_allclose(g, e, rtol=1e-6, atol=1e-7)
    assert not np.allclose(jax.tree.leaves(got)[0], jax.tree.leaves(params[-1])[0])  # it lags the raw weights


@pytest.mark.slow  # over 20 s on CI's 2 cores: `make test-slow` runs it
def test_ema_is_evaluated_saved_resumed_started_from_and_exported(tmp_path):
    whole, crashed = tmp_path / "whole", tmp_path / "crashed"
    Trainer(cfg_of(whole), progress=False).run()
    Trainer(cfg_of(crashed), progress=False, stop_after=3).run()  # resumes from step 2's params + EMA
    Trainer(cfg_of(crashed), progress=False).run()
    setup = build_setup(cfg_of(whole))

    def saved(run_dir, step):
        ckpt = RunCheckpointer(run_dir, CheckpointConfig(), read_only=True)
        try:
            return host(ckpt.restore(step, setup.abstract_params, None)[0]), \
                host(ckpt.restore_ema(step, setup.abstract_params))
        finally:
            ckpt.close()

    for step in (4, 6):
        (p_whole, e_whole), (p_crashed, e_crashed) = saved(whole, step), saved(crashed, step)
        assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(e_whole), jax.tree.leaves(e_crashed)))
        assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(p_whole), jax.tree.leaves(p_crashed)))
    # Evaluated beside the raw weights; the second phase starts from the first one's EMA.
    evals = [r for r in read_jsonl(whole / "metrics.jsonl") if r["kind"] == "eval"]
    by = {(r["step"], r["phase"], r.get("weights", "raw")): r["loss"] for r in evals}
    assert by[(4, 0, "ema")] != by[(4, 0, "raw")]
    assert by[(4, 1, "raw")] == pytest.approx(by[(4, 0, "ema")], rel=1e-6)
    # A new run can start from a run checkpoint's EMA too.
    other = tmp_path / "other"
    Trainer(cfg_of(other, f"phases.0.init=ckpt:{whole}@4", "phases.0.from_ema=true", "phases.0.steps=1",
                   "phases.0.carry=params", "phases.1.steps=1"), progress=False).run()
    start = {r["source"]: r["loss"] for r in read_jsonl(other / "metrics.jsonl")
             if r["kind"] == "eval" and r["step"] == 0 and "weights" not in r}
    assert start["a"] == pytest.approx(by[(4, 0, "ema")], rel=1e-6)
    # export-hf --ema writes the EMA, not the raw weights.
    from safetensors.numpy import load_file

    from cpt_jax.hf import export_hf
    export_hf(whole, tmp_path / "hf-ema", ema=True, step=4)
    export_hf(whole, tmp_path / "hf-raw", step=4)
    ema_w = load_file(str(tmp_path / "hf-ema" / "model.safetensors"))["model.embed_tokens.weight"]
    raw_w = load_file(str(tmp_path / "hf-raw" / "model.safetensors"))["model.embed_tokens.weight"]
    _, e4 = saved(whole, 4)
    np.testing.assert_array_equal(ema_w, e4["embed"])
    assert not np.array_equal(ema_w, raw_w)


def test_from_ema_needs_an_ema(tmp_path):
    with pytest.raises(ConfigError, match=r"phases\[1\].from_ema'?: the run keeps no weight EMA"):
        cfg_of(tmp_path, "optimizer.ema_decay=0.0")
    with pytest.raises(ConfigError, match="ema_decay'?: must be in \\[0, 1\\)"):
        cfg_of(tmp_path, "optimizer.ema_decay=1.0")
