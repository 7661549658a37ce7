"""The LM head applied chunk by chunk (model.logits_chunk): the same loss, z-loss, per-source sums
and gradients as the full [B, L, V] logits, on every mesh and with gradient accumulation, and a
compiled train step whose temporaries no longer hold the full logits."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from cpt_jax.errors import ConfigError
from cpt_jax.model.config import ModelConfig
from cpt_jax.model.lm_head import auto_chunk, auto_tiles, scores_from_logits, token_scores
from cpt_jax.model.params import abstract_model, init_params
from cpt_jax.sharding import MeshConfig, make_mesh
from cpt_jax.sharding.placement import batch_sharding
from cpt_jax.train.loss import loss_sums, model_loss_sums
from cpt_jax.train.optimizer import OptimizerConfig, make_optimizer
from cpt_jax.train.state import TrainState, new_train_state, train_state_shardings
from cpt_jax.train.step import jit_train_step, make_train_step

from test_train_step import packed_batch


@pytest.fixture(scope="module")
def tiny_model_cfg_module():
    return ModelConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4,
                       num_kv_heads=2, max_position_embeddings=128)


def _batch(rows=8, length=32, vocab=128):
    batch = packed_batch(rows=rows, length=length, vocab=vocab)
    batch["segment_ids"][3, -9:] = 0  # more padding, crossing a chunk boundary
    batch["source_ids"] = np.repeat(np.arange(rows, dtype=np.int32)[:, None] % 3, length, axis=1)
    return batch


def _loss_and_grads(cfg, mesh_cfg, batch, chunked: bool, z_loss=1e-3):
    mesh = make_mesh(mesh_cfg, jax.devices()[:1] if mesh_cfg == MeshConfig(1, 1, 1) else None)
    graphdef, _ = abstract_model(cfg, mesh)
    params = init_params(cfg, mesh, seed=0)

    def objective(p, b):
        model = nnx.merge(graphdef, p)
        if chunked:
            sums = model_loss_sums(model, b, z_loss, num_sources=3)
        else:
            sums = loss_sums(model(b["tokens"], b["positions"], b["segment_ids"]), b, z_loss, num_sources=3)
        return sums["nll_sum"] + sums["z_sum"], sums

    (_, sums), grads = jax.jit(jax.value_and_grad(objective, has_aux=True))(
        params, jax.device_put(batch, batch_sharding(mesh)))
    return jax.device_get(sums), jax.device_get(grads)


def _assert_same(a, b, rtol, atol, grad_tol=None):
    (sa, ga), (sb, gb) = a, b
    for k in ("nll_sum", "z_sum", "tokens", "source_nll", "source_tokens"):
        np.testing.assert_allclose(sa[k], sb[k], rtol=rtol, atol=atol, err_msg=k)
    for x, y in zip(jax.tree.leaves(ga), jax.tree.leaves(gb)):
        np.testing.assert_allclose(x, y, rtol=grad_tol or rtol, atol=grad_tol or atol)


@pytest.fixture(scope="module")
def full_untied(tiny_model_cfg_module):
    """The full-logits loss sums and gradients on one device: the reference."""
    return _loss_and_grads(tiny_model_cfg_module, MeshConfig(1, 1, 1), _batch(), chunked=False)


@pytest.mark.parametrize("chunk,tiles,mesh_cfg", [(5, 3, MeshConfig(1, 1, 1)), (8, 4, MeshConfig(1, 4, 2)),
                                                  (None, None, MeshConfig(2, 2, 2))],
                         ids=["chunk5-3tiles_padded-1dev", "chunk8-4tiles-vocab_over_tensor2", "auto-2x2x2"])
def test_chunked_loss_and_grads_equal_full_logits_fp32(tiny_model_cfg_module, full_untied, chunk, tiles, mesh_cfg):
    """z-loss, per-source sums, padding crossing a chunk and a vocabulary tile (128 ids in 3
    tiles); strided vocabulary tiles of a vocabulary sharded over `tensor`, head sharded over fsdp."""
    cfg = dataclasses.replace(tiny_model_cfg_module, logits_chunk=chunk, logits_vocab_tiles=tiles)
    got = _loss_and_grads(cfg, mesh_cfg, _batch(), chunked=True)
    assert got[0]["z_sum"] > 0 and np.all(got[0]["source_tokens"] > 0)
    _assert_same(got, full_untied, rtol=1e-5, atol=1e-5)


def test_chunked_equals_full_with_a_tied_head(tiny_model_cfg):
    cfg = dataclasses.replace(tiny_model_cfg, tie_embeddings=True, logits_chunk=8)
    full = _loss_and_grads(cfg, MeshConfig(1, 1, 1), _batch(), chunked=False)
    _assert_same(_loss_and_grads(cfg, MeshConfig(1, 1, 1), _batch(), chunked=True), full, rtol=1e-5, atol=1e-5)


def test_chunked_equals_full_in_bfloat16(tiny_model_cfg):
    cfg = dataclasses.replace(tiny_model_cfg, dtype="bfloat16", logits_chunk=8)
    batch = _batch()
    full = _loss_and_grads(cfg, MeshConfig(1, 1, 1), batch, chunked=False)
    got = _loss_and_grads(cfg, MeshConfig(1, 1, 1), batch, chunked=True)
    # fp32 logits and sums agree closely; gradients back through bf16 layers differ by a bf16
    # rounding or two (2^-7 relative) where a chunk's backward rounds differently.
    _assert_same(got, full, rtol=1e-4, atol=1e-4, grad_tol=2 ** -6)


def _train_step(cfg, mesh_cfg, opt):
    mesh = make_mesh(mesh_cfg)
    graphdef, _ = abstract_model(cfg, mesh)
    params = init_params(cfg, mesh, seed=0)
    tx = make_optimizer(opt)
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params)
    st_sh = train_state_shardings(tx, jax.tree.map(lambda x: x.sharding, params), abstract, mesh)
    step = jit_train_step(make_train_step(graphdef, tx, optax.constant_schedule(1e-2), opt, mesh, 3), st_sh, mesh)
    return mesh, new_train_state(tx, params, st_sh), step


@pytest.mark.slow  # over 20 s on CI's 2 cores: `make test-slow` runs it
def test_train_step_with_grad_accumulation_equals_full_logits(tiny_model_cfg):
    batch = _batch(rows=16)
    opt = OptimizerConfig(grad_accum=2, z_loss=1e-3)
    out = []
    for chunk in (0, 8):
        mesh, state, step = _train_step(dataclasses.replace(tiny_model_cfg, logits_chunk=chunk), MeshConfig(2, 2, 2),
                                        opt)
        state, metrics = step(state, jax.device_put(batch, batch_sharding(mesh)))
        out.append((jax.device_get(metrics), jax.device_get(state.params)))
    (m0, p0), (m1, p1) = out
    for k in ("loss", "z_loss", "tokens", "grad_norm", "source_nll", "source_tokens"):
        np.testing.assert_allclose(m1[k], m0[k], rtol=1e-5, err_msg=k)
    for a, b in zip(jax.tree.leaves(p0), jax.tree.leaves(p1)):
        np.testing.assert_allclose(a, b, atol=1e-4)  # Adam's update at 1% of its size, as in test_train_step


def test_vocab_tiles_give_the_full_scores_and_the_first_argmax():
    """Online logsumexp, target logit and first argmax across strided, padded vocabulary tiles and
    padded chunks (ties between tiles included), without a model: the pure function."""
    keys = jax.random.split(jax.random.key(0), 3)
    hidden = jax.random.normal(keys[0], (2, 37, 16))
    head = jnp.round(jax.random.normal(keys[1], (16, 101)) * 2) / 4  # coarse values: tied maxima occur
    hidden = jnp.round(hidden)
    targets = jax.random.randint(keys[2], (2, 37), 0, 101)
    full = token_scores(hidden, head, targets, 0, 1, greedy=True)
    logits = hidden @ head
    assert bool(jnp.any(jnp.sum(logits == jnp.max(logits, -1, keepdims=True), -1) > 1))  # ties exist
    for chunk, tiles in ((5, 1), (0, 4), (8, 3), (40, 7), (5, 101)):
        got = token_scores(hidden, head, targets, chunk, tiles, greedy=True)
        np.testing.assert_allclose(got["log_z"], full["log_z"], rtol=1e-6, atol=1e-5)
        np.testing.assert_allclose(got["target"], full["target"], rtol=1e-6, atol=1e-5)
        assert np.array_equal(got["greedy"], full["greedy"]), (chunk, tiles)

    def loss(h, w, chunk, tiles):
        s = token_scores(h, w, targets, chunk, tiles)
        return jnp.sum(1.3 * s["log_z"] - s["target"] + 1e-2 * s["log_z"] ** 2)

    want = jax.grad(loss, argnums=(0, 1))(hidden, head, 0, 1)
    for chunk, tiles in ((0, 4), (8, 3)):
        for got, ref in zip(jax.grad(loss, argnums=(0, 1))(hidden, head, chunk, tiles), want):
            np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)


def test_auto_tiles_keep_one_head_tile_under_the_budget():
    assert auto_tiles(4096, 128256) == 16  # Llama 3 8B: 4096 x 8016 x 4 B = 131 MB per tile
    assert auto_tiles(8192, 128256) == 32  # 70B
    assert auto_tiles(64, 128) == 1


def test_greedy_is_the_first_argmax():
    logits = jnp.asarray([[0.0, 2.0, 2.0, 1.0], [3.0, 0.0, 0.0, 3.0], [0.0, 0.0, 0.0, 5.0]])
    for target, want in (([1, 0, 3], [True, True, True]), ([2, 3, 2], [False, False, False])):
        got = scores_from_logits(logits, jnp.asarray(target), greedy=True)["greedy"]
        assert np.asarray(got).tolist() == want
    np.testing.assert_allclose(scores_from_logits(logits, jnp.asarray([1, 0, 3]))["target"], [2.0, 3.0, 5.0])


def test_auto_chunk_fits_the_budget():
    assert auto_chunk(1, 128256, 8192) == 512  # Llama 3, one row per device: 256 MiB of fp32 logits
    assert auto_chunk(8, 49152, 8192) == 128
    assert auto_chunk(1, 128, 64) == 64  # never longer than the row
    assert auto_chunk(4096, 128256, 8192) == 16  # never below MIN_AUTO_CHUNK


def test_logits_chunk_and_tiles_are_validated():
    with pytest.raises(ConfigError, match="logits_chunk"):
        ModelConfig(logits_chunk=-1).validate("model")
    with pytest.raises(ConfigError, match="logits_vocab_tiles"):
        ModelConfig(logits_vocab_tiles=0).validate("model")


def _temp_bytes(cfg, rows, length):
    """Compiled temporaries of the train step (XLA:CPU, one device), compiled only."""
    mesh = make_mesh(MeshConfig(1, 1, 1), jax.devices()[:1])
    graphdef, abstract = abstract_model(cfg, mesh)
    params = jax.tree.map(lambda v: jax.ShapeDtypeStruct(v.shape, v.dtype), nnx.to_pure_dict(abstract))
    opt = OptimizerConfig()
    tx = make_optimizer(opt)
    shardings = jax.tree.map(lambda _: jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()), params)
    st_sh = train_state_shardings(tx, shardings, params, mesh)
    state = TrainState(step=jax.ShapeDtypeStruct((), jnp.int32), params=params, opt_state=jax.eval_shape(tx.init, params),
                       ema=None)
    step = jit_train_step(make_train_step(graphdef, tx, optax.constant_schedule(1e-3), opt, mesh), st_sh, mesh)
    batch = {k: jax.ShapeDtypeStruct((rows, length), jnp.int32) for k in ("tokens", "positions", "segment_ids")}
    return step.lower(state, batch).compile().memory_analysis().temp_size_in_bytes


def test_compiled_train_step_no_longer_holds_the_full_logits():
    """Vocabulary 32k, rows of 512: the full fp32 logits are 4 x 512 x 32000 x 4 B = 262 MB, and
    the step holds several copies of them; in chunks of 64 positions, a few chunks' (33 MB each)."""
    cfg = ModelConfig(vocab_size=32000, hidden_size=64, intermediate_size=128, num_layers=1, num_heads=4,
                      max_position_embeddings=512)
    rows, length = 4, 512
    full = _temp_bytes(dataclasses.replace(cfg, logits_chunk=0), rows, length)
    chunked = _temp_bytes(dataclasses.replace(cfg, logits_chunk=64), rows, length)
    logits = rows * length * cfg.vocab_size * 4
    assert full > 2 * logits, full  # the full path keeps the logits and their gradient
    assert chunked < full - 2 * logits and chunked < logits, (full, chunked)


@pytest.mark.slow
def test_vocab_tiles_hold_one_tile_of_the_head_and_of_its_gradient(tmp_path):
    """fsdp 8 on 8 CPU devices, a head of 256 x 16384 (16.8 MB in fp32) larger than the logits of
    a chunk: in 8 vocabulary tiles the step holds one tile of the gathered head and of its fp32
    gradient, not the whole of either (XLA:CPU's temporaries, measured 19.2 MB vs 73.8 MB for one
    tile and 48.4 MB for the full logits, 2026-12-02)."""
    from cpt_jax.estimate.step import compile_step
    from cpt_jax.train.config import load_run_config

    plan = tmp_path / "plan.yaml"
    plan.write_text(f"run_dir: {tmp_path}/run\n"
                    "model: {vocab_size: 16384, hidden_size: 256, intermediate_size: 512, num_layers: 1, "
                    "num_heads: 4, max_position_embeddings: 64, logits_chunk: 16}\n"
                    "data: {seq_len: 64, global_batch_size: 8, sources: {s: {kind: synthetic}}}\n"
                    "mesh: {data: 1, fsdp: 8, tensor: 1}\n"
                    "phases: [{name: a, init: scratch, steps: 1, mixture: {s: 1.0}, schedule: {peak_lr: 1.0e-3}}]\n")
    temps = {}
    for tiles in (1, 8):
        cfg = load_run_config(plan, [f"model.logits_vocab_tiles={tiles}"])
        temps[tiles] = compile_step(cfg, make_mesh(cfg.mesh))["memory"]["temporaries"]
    head = 256 * 16384 * 4
    assert temps[8] < temps[1] - 2 * head and temps[8] < 1.5 * head, temps
