"""Context parallelism: rows split over the `context` mesh axis compute what one device does.

Logits and gradients of the loss equal the unsharded model's on 8 fake CPU devices, for context
2, 4 and 8 (alone and beside data / fsdp / tensor), with packed documents whose boundaries fall
inside and across the devices' chunks, and grouped-query attention (the tiny model's default).
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from cpt_jax.errors import ConfigError
from cpt_jax.model.params import abstract_model, init_params
from cpt_jax.sharding import MeshConfig, make_mesh
from cpt_jax.sharding.context import balanced_order, reorder, restore
from cpt_jax.sharding.placement import batch_sharding
from cpt_jax.train.step import _forward_sums


def packed_rows(rows: int, length: int, vocab: int, seed: int = 0) -> dict:
    """Documents of random lengths packed back to back, ending in padding: boundaries fall
    anywhere, so documents cross the chunks each device holds."""
    rng = np.random.default_rng(seed)
    seg = np.zeros((rows, length), np.int32)
    pos = np.zeros((rows, length), np.int32)
    for r in range(rows):
        start, doc = 0, 1
        while start < length - 3:
            n = int(rng.integers(3, length // 2))
            end = min(start + n, length - 3)
            seg[r, start:end], pos[r, start:end] = doc, np.arange(end - start)
            start, doc = end, doc + 1
    return {"tokens": rng.integers(0, vocab, (rows, length)).astype(np.int32), "segment_ids": seg, "positions": pos}


def test_reorder_is_the_balanced_permutation():
    x = jnp.arange(2 * 16).reshape(2, 16)
    order = balanced_order(16, 4)
    np.testing.assert_array_equal(reorder(x, 4)[0], order)
    np.testing.assert_array_equal(order[:4], [0, 1, 14, 15])  # device 0: the first and the last chunk
    np.testing.assert_array_equal(restore(reorder(x, 4), 4), x)


def loss_and_grads(model_cfg, mesh_cfg, batch, devices=None):
    """(loss with z-loss, its gradients, the logits in natural order), one compiled program."""
    mesh = make_mesh(mesh_cfg, devices)
    graphdef, _ = abstract_model(model_cfg, mesh)
    params = init_params(model_cfg, mesh, seed=0)
    placed = jax.device_put({k: jnp.asarray(v) for k, v in batch.items()}, batch_sharding(mesh))

    def objective(params, batch):
        sums = _forward_sums(graphdef, params, batch, 1e-4)
        logits = nnx.merge(graphdef, params)(batch["tokens"], batch["positions"], batch["segment_ids"])
        return (sums["nll_sum"] + sums["z_sum"]) / sums["tokens"], logits

    (loss, logits), grads = jax.jit(jax.value_and_grad(objective, has_aux=True))(params, placed)
    return jax.device_get((loss, grads, logits))


@functools.lru_cache(maxsize=4)
def reference(model_cfg, rows, length, seed):
    """The unsharded model on one device (shared by the tests of one configuration)."""
    return loss_and_grads(model_cfg, MeshConfig(1, 1, 1), packed_rows(rows, length, model_cfg.vocab_size, seed),
                          jax.devices()[:1])


SLOW = pytest.mark.slow  # over 30 s each on 2 cores: `make test-slow`; the mixed mesh stays in `make test`


@pytest.mark.parametrize("mesh_cfg", [pytest.param(MeshConfig(data=1, fsdp=4, context=2), marks=SLOW),
                                      pytest.param(MeshConfig(data=2, fsdp=1, context=4), marks=SLOW),
                                      pytest.param(MeshConfig(data=1, fsdp=1, context=8), marks=SLOW),
                                      MeshConfig(data=1, fsdp=2, context=2, tensor=2)],
                         ids=["fsdp4-cp2", "data2-cp4", "cp8", "fsdp2-cp2-tp2"])
def test_context_parallel_equals_unsharded(tiny_model_cfg, mesh_cfg):
    cfg = dataclasses.replace(tiny_model_cfg, remat="full")
    want_loss, want_grads, want_logits = reference(cfg, 4, 64, 0)
    loss, grads, logits = loss_and_grads(cfg, mesh_cfg, packed_rows(4, 64, cfg.vocab_size))
    np.testing.assert_allclose(logits, want_logits, atol=2e-5, rtol=2e-5)
    np.testing.assert_allclose(loss, want_loss, rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=2e-6, rtol=2e-4), grads, want_grads)


def test_context_parallel_with_the_head_in_chunks_and_vocabulary_tiles(tiny_model_cfg):
    """The LM head's custom VJP (chunks of 8, 4 strided vocabulary tiles) on a context-parallel
    mesh with the vocabulary over `tensor` equals the unsharded full-logits model."""
    cfg = dataclasses.replace(tiny_model_cfg, remat="full")
    want_loss, want_grads, _ = reference(cfg, 4, 64, 0)
    tiled = dataclasses.replace(cfg, logits_chunk=8, logits_vocab_tiles=4)
    loss, grads, _ = loss_and_grads(tiled, MeshConfig(data=1, fsdp=2, context=2, tensor=2),
                                    packed_rows(4, 64, cfg.vocab_size))
    np.testing.assert_allclose(loss, want_loss, rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=2e-6, rtol=2e-4), grads, want_grads)


def test_unrolled_layers_and_mha(tiny_model_cfg):
    cfg = dataclasses.replace(tiny_model_cfg, scan_layers=False, num_kv_heads=4, num_layers=1)
    want = reference(cfg, 2, 32, 1)
    got = loss_and_grads(cfg, MeshConfig(data=1, fsdp=2, context=4), packed_rows(2, 32, cfg.vocab_size, 1))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=2e-5, rtol=2e-4), got, want)


@pytest.mark.slow
def test_splash_kernel_with_context(tiny_model_cfg):
    """The TPU kernel (Pallas interpret mode on CPU) with its mask info sharded along the queries."""
    cfg = dataclasses.replace(tiny_model_cfg, attention="splash", num_layers=1)
    want = reference(dataclasses.replace(cfg, attention="xla"), 1, 256, 2)
    got = loss_and_grads(cfg, MeshConfig(data=1, fsdp=1, context=2), packed_rows(1, 256, cfg.vocab_size, 2),
                         jax.devices()[:2])
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-3), got, want)


def test_pallas_gpu_with_context_is_refused():
    from cpt_jax.model.attention import attend
    from cpt_jax.sharding.rules import Sharder

    q = jnp.zeros((1, 32, 2, 8))
    sharder = Sharder(make_mesh(MeshConfig(data=1, fsdp=1, context=2), jax.devices()[:2]))
    with pytest.raises(ConfigError, match="pallas_gpu.*context"):
        attend(q, q, q, jnp.ones((1, 32), jnp.int32), "pallas_gpu", sharder)


@pytest.mark.slow
def test_a_phase_switches_context_parallelism_on_from_the_cli(tmp_path):
    """Phase 'long' doubles the row length on mesh fsdp=4 x context=2 (phase 'short' ran on
    fsdp=8): the state moves onto the new mesh, a run stopped inside the long phase resumes from
    its checkpoint onto that mesh, and every step's loss equals the same plan on one fsdp mesh."""
    import yaml
    from plan_fixtures import tiny_plan

    from cpt_jax.cli.main import main
    from cpt_jax.config.base import from_dict
    from cpt_jax.train.config import RunConfig
    from cpt_jax.train.loop import Trainer
    from cpt_jax.train.metrics import read_jsonl

    schedule = {"shape": "constant", "peak_lr": 3e-3, "warmup_steps": 1}
    phases = [{"name": "short", "init": "scratch", "steps": 3, "mixture": {"a": 1.0}, "schedule": schedule},
              {"name": "long", "steps": 3, "mixture": {"a": 1.0}, "seq_len": 32, "schedule": schedule,
               "mesh": {"fsdp": 4, "context": 2}}]
    plan = {**tiny_plan(phases, checkpoint_every=2), "run_dir": str(tmp_path / "cp")}
    plain = {**plan, "run_dir": str(tmp_path / "plain"), "phases": [phases[0], {**phases[1], "mesh": None}]}

    def losses(run_dir):
        return {r["step"]: r["loss"] for r in read_jsonl(run_dir / "metrics.jsonl") if r["kind"] == "train"}

    Trainer(from_dict(RunConfig, plan), progress=False, stop_after=5).run()  # "crashes" after step 5
    (tmp_path / "plan.yaml").write_text(yaml.safe_dump(plan))
    assert main(["train", str(tmp_path / "plan.yaml"), "--no-progress"]) == 0  # resumes at step 4
    Trainer(from_dict(RunConfig, plain), progress=False).run()
    got, want = losses(tmp_path / "cp"), losses(tmp_path / "plain")
    assert sorted(got) == list(range(1, 7))
    np.testing.assert_allclose([got[s] for s in range(1, 7)], [want[s] for s in range(1, 7)], rtol=2e-5)


def test_row_length_must_split_into_chunks(tiny_model_cfg):
    from plan_fixtures import tiny_plan

    from cpt_jax.config.base import from_dict
    from cpt_jax.train.config import RunConfig
    from cpt_jax.train.setup import build_setup

    plan = tiny_plan([{"name": "p", "init": "scratch", "steps": 1, "mixture": {"a": 1.0},
                       "schedule": {"shape": "constant", "peak_lr": 1e-3}}], checkpoint_every=1)
    plan.update(run_dir="unused", mesh={"fsdp": 2, "context": 4}, data={**plan["data"], "seq_len": 20})
    with pytest.raises(ConfigError, match="2 x 4 equal chunks"):
        build_setup(from_dict(RunConfig, plan))


def test_long_context_plan_splits_its_long_rows():
    from pathlib import Path

    from cpt_jax.train.config import load_run_config

    cfg = load_run_config(Path(__file__).resolve().parents[1] / "configs" / "long_context.yaml")
    assert [cfg.phase_run(i).mesh.context for i in range(3)] == [1, 2, 2]  # from the phase that sets it on
