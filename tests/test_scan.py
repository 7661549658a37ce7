"""Scanned layers (model.scan_layers): the same function as the unrolled stack, and checkpoints
of either layout load, resume and export in the other."""

import copy
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from cpt_jax.checkpoint.model_checkpoint import (
    load_model_checkpoint,
    save_model_checkpoint,
)
from cpt_jax.config.base import apply_overrides, from_dict
from cpt_jax.model.config import ModelConfig
from cpt_jax.model.params import (
    abstract_model,
    abstract_params,
    check_compatible,
    init_params,
    layer_param,
    param_shardings,
    stack_layers,
    to_layout,
    unstack_layers,
)
from cpt_jax.sharding import MeshConfig, make_mesh
from cpt_jax.train.config import RunConfig
from cpt_jax.train.loop import Trainer
from cpt_jax.train.metrics import read_jsonl

BASE = dict(vocab_size=96, hidden_size=32, intermediate_size=48, num_layers=3, num_heads=4, num_kv_heads=2,
            max_position_embeddings=64)
FAMILIES = {
    "llama": dict(family="llama"),
    "qwen2": dict(family="qwen2", qkv_bias=True, tie_embeddings=True),
    "qwen3": dict(family="qwen3", qk_norm=True, head_dim=16),
}


def cfg_of(scan: bool, **extra) -> ModelConfig:
    return ModelConfig(**{**BASE, **extra, "scan_layers": scan})


def random_unrolled(cfg: ModelConfig, seed: int = 0) -> dict:
    """Unrolled params with non-trivial norms and biases (init sets them to 1 and 0)."""
    params = nnx.to_pure_dict(nnx.state(_decoder(cfg)))
    keys = iter(jax.random.split(jax.random.key(seed), len(jax.tree.leaves(params))))
    return jax.tree.map(lambda x: x + 0.1 * jax.random.normal(next(keys), x.shape, x.dtype), params)


def _decoder(cfg):
    from cpt_jax.model import Decoder

    return Decoder(dataclasses.replace(cfg, scan_layers=False), nnx.Rngs(0))


def packed_batch(cfg, seed=0):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, cfg.vocab_size, (2, 24))
    segments = np.repeat([[1] * 9 + [2] * 10 + [3] * 5], 2, axis=0)
    positions = np.concatenate([np.arange(9), np.arange(10), np.arange(5)])[None].repeat(2, 0)
    return tuple(jnp.asarray(a, jnp.int32) for a in (tokens, positions, segments))


def logits_and_grads(cfg, params, batch):
    graphdef, _ = abstract_model(cfg)

    def loss(p):
        logits = nnx.merge(graphdef, p)(*batch)
        return jnp.mean(jax.nn.log_softmax(logits)[..., 0] ** 2), logits

    (_, logits), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
    return logits, grads


CASES = [(fam, "none") for fam in FAMILIES] + [("llama", r) for r in ("full", "dots", "dots_no_batch")]


@pytest.mark.parametrize("family,remat", CASES, ids=[f"{f}-{r}" for f, r in CASES])
def test_scanned_equals_unrolled_logits_and_grads(family, remat):
    extra = {**FAMILIES[family], "remat": remat}
    unrolled_cfg, scanned_cfg = cfg_of(False, **extra), cfg_of(True, **extra)
    params = random_unrolled(unrolled_cfg)
    batch = packed_batch(unrolled_cfg)
    logits_u, grads_u = logits_and_grads(unrolled_cfg, params, batch)
    logits_s, grads_s = logits_and_grads(scanned_cfg, stack_layers(params), batch)
    np.testing.assert_allclose(logits_s, logits_u, atol=1e-5, rtol=1e-5)
    flat_u = jax.tree_util.tree_flatten_with_path(grads_u)[0]
    flat_s = dict(jax.tree_util.tree_flatten_with_path(unstack_layers(grads_s))[0])
    assert len(flat_u) == len(flat_s)
    for path, g in flat_u:
        np.testing.assert_allclose(flat_s[path], g, atol=1e-5, rtol=1e-5, err_msg=jax.tree_util.keystr(path))
    assert max(float(jnp.abs(g).max()) for _, g in flat_u) > 1e-3  # the gradients are not all zero


@pytest.mark.parametrize("unroll,remat", [(1, "none"), (2, "none"), (0, "none"), (2, "dots")])
def test_every_scan_unroll_is_the_same_function(unroll, remat):
    """A loop of one block (the deep-model default), two blocks with a remainder (3 layers), and
    no loop (the shallow-model default) compute what the unrolled stack does."""
    unrolled_cfg = cfg_of(False, remat=remat)
    scanned_cfg = cfg_of(True, remat=remat, scan_unroll=unroll)
    params = random_unrolled(unrolled_cfg)
    batch = packed_batch(unrolled_cfg)
    logits_u, grads_u = logits_and_grads(unrolled_cfg, params, batch)
    logits_s, grads_s = logits_and_grads(scanned_cfg, stack_layers(params), batch)
    np.testing.assert_allclose(logits_s, logits_u, atol=1e-5, rtol=1e-5)
    jax.tree.map(lambda s, u: np.testing.assert_allclose(s, u, atol=1e-5, rtol=1e-5), unstack_layers(grads_s), grads_u)


def test_scan_unroll_default_unrolls_only_shallow_models():
    assert ModelConfig(num_layers=4).layers_per_scan_iteration == 4
    assert ModelConfig(num_layers=5).layers_per_scan_iteration == 1
    assert ModelConfig(num_layers=32, scan_unroll=0).layers_per_scan_iteration == 32
    assert ModelConfig(num_layers=2, scan_unroll=1).layers_per_scan_iteration == 1


def test_layouts_convert_both_ways_and_address_layers():
    cfg = cfg_of(False, **FAMILIES["qwen2"])
    params = random_unrolled(cfg)
    stacked = stack_layers(params)
    assert jax.tree.map(lambda x: x.shape, stacked) == jax.tree.map(lambda x: x.shape, abstract_params(
        dataclasses.replace(cfg, scan_layers=True)))
    back = unstack_layers(stacked)
    jax.tree.map(np.testing.assert_array_equal, back, params)
    np.testing.assert_array_equal(layer_param(stacked, 2, ("attn", "q_bias")), params["layers"][2]["attn"]["q_bias"])
    np.testing.assert_array_equal(layer_param(params, 1, ("mlp", "up")), stacked["layers"]["mlp"]["up"][1])
    # Optimizer-state-like trees: every parameter tree inside is converted, the rest kept.
    state = (jnp.int32(3), {"mu": params, "nu": params}, ())
    converted = to_layout(state, scanned=True)
    assert converted[0] == 3 and converted[2] == ()
    assert converted[1]["mu"]["layers"]["attn"]["q"].shape == (3, 32, 4, 8)


def test_stacked_params_shard_like_their_layers():
    mesh = make_mesh(MeshConfig(data=1, fsdp=4, tensor=2))
    shardings = param_shardings(cfg_of(True), mesh)
    assert shardings["layers"]["attn"]["q"].spec == P(None, "fsdp", "tensor", None)
    assert shardings["layers"]["mlp"]["down"].spec == P(None, "tensor", "fsdp")
    unrolled = param_shardings(cfg_of(False), mesh)
    assert unrolled["layers"][0]["attn"]["q"].spec == P("fsdp", "tensor", None)
    params = init_params(cfg_of(True), mesh, seed=0)
    assert params["layers"]["mlp"]["gate"].sharding.spec == P(None, "fsdp", "tensor")
    # Different random layers, not one layer repeated.
    gate = np.asarray(params["layers"]["mlp"]["gate"])
    assert np.abs(gate[0] - gate[1]).max() > 1e-3


def test_layout_is_not_a_model_difference():
    check_compatible(cfg_of(False), cfg_of(True), "test")
    check_compatible(cfg_of(True), cfg_of(False), "test")


@pytest.mark.parametrize("saved_scan", [False, True], ids=["unrolled-to-scanned", "scanned-to-unrolled"])
def test_model_checkpoint_loads_in_the_other_layout(tmp_path, saved_scan):
    saved_cfg = cfg_of(saved_scan)
    params = random_unrolled(saved_cfg)
    save_model_checkpoint(tmp_path / "ckpt", to_layout(params, saved_scan), saved_cfg, {})
    mesh = make_mesh(MeshConfig(data=1, fsdp=8, tensor=1))
    want_cfg = cfg_of(not saved_scan)
    loaded, loaded_cfg, _ = load_model_checkpoint(tmp_path / "ckpt", shardings=param_shardings(want_cfg, mesh))
    assert loaded_cfg.scan_layers is (not saved_scan)
    jax.tree.map(np.testing.assert_array_equal, loaded, to_layout(params, not saved_scan))
    q = loaded["layers"]["attn"]["q"] if not saved_scan else loaded["layers"][0]["attn"]["q"]
    assert q.sharding.spec == (P(None, "fsdp", None, None) if not saved_scan else P("fsdp", None, None))


def test_checkpoint_without_scan_flag_is_read_as_unrolled(tmp_path):
    """Checkpoints written before scan_layers existed hold an unrolled tree and no such key."""
    cfg = cfg_of(False)
    params = random_unrolled(cfg)
    save_model_checkpoint(tmp_path / "old", params, cfg, {})
    meta_dir = next((tmp_path / "old").glob("0/meta"))
    import json

    for f in meta_dir.rglob("*.json"):
        meta = json.loads(f.read_text())
        if "model" in meta:
            del meta["model"]["scan_layers"]
            f.write_text(json.dumps(meta))
    loaded, loaded_cfg, _ = load_model_checkpoint(tmp_path / "old")
    assert loaded_cfg.scan_layers is False
    jax.tree.map(np.testing.assert_array_equal, loaded, params)


PLAN = {
    "model": {"vocab_size": 96, "hidden_size": 32, "intermediate_size": 64, "num_layers": 2, "num_heads": 4,
              "num_kv_heads": 2, "max_position_embeddings": 64},
    "data": {"seq_len": 32, "global_batch_size": 8,
             "sources": {"general": {"kind": "synthetic", "seed": 1, "num_docs": 64, "eval_docs": 8}}},
    "mesh": {"data": 1, "fsdp": 8, "tensor": 1},
    "checkpoint": {"every": 1, "keep_last": 3, "async_save": False},
    "eval": {"every": 100, "batches": 1},
    "log": {"every": 1, "tensorboard": False},
    "phases": [{"name": "pretrain", "init": "scratch", "steps": 3, "mixture": {"general": 1.0},
                "schedule": {"shape": "cosine", "peak_lr": 3e-3, "warmup_steps": 1}}],
}


def run_cfg(run_dir, scan: bool) -> RunConfig:
    data = apply_overrides(copy.deepcopy(PLAN), [f"run_dir={run_dir}", f"model.scan_layers={str(scan).lower()}"])
    return from_dict(RunConfig, data)


def train_losses(run_dir):
    return {r["step"]: r["loss"] for r in read_jsonl(run_dir / "metrics.jsonl") if r["kind"] == "train"}


@pytest.mark.slow  # over 20 s on CI's 2 cores: `make test-slow` runs it
def test_run_resumes_in_the_other_layout_both_ways(tmp_path):
    """Step 1 unrolled, step 2 resumed scanned, step 3 resumed unrolled again: the losses match an
    uninterrupted unrolled run, so params and Adam moments survive both conversions (a scratch
    init differs between layouts, so the reference starts in the layout the run started in)."""
    ref = tmp_path / "ref"
    Trainer(run_cfg(ref, False), progress=False).run()
    run = tmp_path / "run"
    for scan, stop in ((False, 1), (True, 2), (False, None)):
        Trainer(run_cfg(run, scan), progress=False, stop_after=stop).run()
        assert max(train_losses(run)) == (stop or 3)
    got, want = train_losses(run), train_losses(ref)
    assert sorted(got) == [1, 2, 3]
    np.testing.assert_allclose([got[s] for s in (1, 2, 3)], [want[s] for s in (1, 2, 3)], rtol=1e-5)
