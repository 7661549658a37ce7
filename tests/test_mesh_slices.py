"""Meshes across slices / nodes, emulated with 8 fake CPU devices as 2 slices of 4: the layout,
the product rule's messages, a train step, and checkpoints moving between 1 and 2 slices."""

import jax
import numpy as np
import optax
import pytest

from cpt_jax.checkpoint.run_checkpoint import CheckpointConfig, RunCheckpointer
from cpt_jax.config.base import from_dict, to_dict
from cpt_jax.errors import ConfigError
from cpt_jax.model.params import (
    abstract_model,
    abstract_params,
    init_params,
    param_shardings,
    with_shardings,
)
from cpt_jax.sharding import MeshConfig, make_mesh
from cpt_jax.sharding.mesh import AXES, abstract_mesh
from cpt_jax.sharding.placement import batch_sharding
from cpt_jax.train.optimizer import OptimizerConfig, make_optimizer
from cpt_jax.train.state import new_train_state, train_state_shardings
from cpt_jax.train.step import jit_train_step, make_train_step

SINGLE = MeshConfig(data=1, fsdp=-1, tensor=1)
TWO_SLICES = MeshConfig(data=1, fsdp=-1, tensor=1, dcn_data=2)  # replicas across slices, fsdp inside
TWO_SLICES_FSDP = MeshConfig(data=1, fsdp=-1, tensor=2, dcn_fsdp=2)  # one fsdp axis spanning both


def slice_of(device_id: int) -> int:
    return device_id // 4  # emulation: devices 0-3 are slice 0, 4-7 slice 1


def test_two_slices_layout():
    mesh = make_mesh(TWO_SLICES)
    assert mesh.axis_names == AXES and dict(mesh.shape) == {"data": 2, "fsdp": 4, "context": 1, "tensor": 1}
    ids = np.vectorize(lambda d: d.id)(mesh.devices)
    for s in range(2):  # the outer (DCN) part of `data` selects the slice; inside it, one slice's devices
        assert {slice_of(i) for i in ids[s].ravel()} == {s}
        assert sorted(ids[s].ravel()) == list(range(4 * s, 4 * s + 4))

    mesh = make_mesh(TWO_SLICES_FSDP)
    assert dict(mesh.shape) == {"data": 1, "fsdp": 4, "context": 1, "tensor": 2}
    ids = np.vectorize(lambda d: d.id)(mesh.devices)[0]
    assert {slice_of(i) for i in ids[:2].ravel()} == {0} and {slice_of(i) for i in ids[2:].ravel()} == {1}
    assert abstract_mesh(TWO_SLICES, 256).shape == {"data": 2, "fsdp": 128, "context": 1, "tensor": 1}


def test_product_rule_messages():
    with pytest.raises(ConfigError, match=r"8 devices do not split into dcn_data=3 x dcn_fsdp=1 = 3 equal slices"):
        make_mesh(MeshConfig(dcn_data=3))
    with pytest.raises(ConfigError, match=r"but 4 are available per slice \(8 devices / 2 slices\)"):
        make_mesh(MeshConfig(data=1, fsdp=8, tensor=1, dcn_data=2))
    with pytest.raises(ConfigError, match="dcn_fsdp"):
        from_dict(MeshConfig, {"dcn_fsdp": 0}, "mesh")


def state_on(mesh_cfg, model_cfg, tx):
    mesh = make_mesh(mesh_cfg)
    shardings = param_shardings(model_cfg, mesh)
    abstract = with_shardings(abstract_params(model_cfg), shardings)
    return mesh, train_state_shardings(tx, shardings, abstract, mesh), abstract


@pytest.mark.slow  # over 20 s on CI's 2 cores: `make test-slow` runs it
def test_train_step_runs_on_two_slices(tiny_model_cfg):
    opt = OptimizerConfig()
    tx = make_optimizer(opt)
    rng = np.random.default_rng(0)
    batch = {"tokens": rng.integers(0, tiny_model_cfg.vocab_size, (8, 32)).astype(np.int32),
             "segment_ids": np.ones((8, 32), np.int32), "positions": np.tile(np.arange(32, dtype=np.int32), (8, 1))}
    losses = []
    for mesh_cfg in (SINGLE, TWO_SLICES):
        mesh, shardings, _ = state_on(mesh_cfg, tiny_model_cfg, tx)
        state = new_train_state(tx, init_params(tiny_model_cfg, mesh, 0), shardings)
        graphdef, _ = abstract_model(tiny_model_cfg, mesh)
        step = jit_train_step(make_train_step(graphdef, tx, optax.constant_schedule(1e-2), opt, mesh), shardings, mesh)
        b = jax.device_put(batch, batch_sharding(mesh))
        state, metrics = step(state, b)
        losses.append((float(metrics["loss"]), float(metrics["grad_norm"])))
    np.testing.assert_allclose(losses[1], losses[0], rtol=1e-5)  # the same math on both layouts


def test_checkpoint_moves_between_one_and_two_slices(tiny_model_cfg, tmp_path):
    tx = make_optimizer(OptimizerConfig())
    mesh1, shardings1, abstract1 = state_on(SINGLE, tiny_model_cfg, tx)
    state = new_train_state(tx, init_params(tiny_model_cfg, mesh1, 3), shardings1)
    reference = jax.device_get((state.params, state.opt_state))
    cfg = CheckpointConfig(async_save=False)

    ckpt = RunCheckpointer(tmp_path / "one", cfg)
    ckpt.save(1, state.params, state.opt_state, {"model": to_dict(tiny_model_cfg), "note": "single slice"})
    ckpt.close()

    _, shardings2, abstract2 = state_on(TWO_SLICES_FSDP, tiny_model_cfg, tx)
    opt2 = with_shardings(jax.eval_shape(tx.init, abstract2), shardings2.opt_state)
    ckpt = RunCheckpointer(tmp_path / "one", cfg)
    params, opt_state, meta = ckpt.restore(1, abstract2, opt2)
    ckpt.close()
    assert meta["note"] == "single slice"
    for x, s in zip(jax.tree.leaves(params), jax.tree.leaves(shardings2.params)):
        assert x.sharding == s
    q = params["layers"]["attn"]["q"] if "attn" in params["layers"] else params["layers"][0]["attn"]["q"]
    assert {d.id for d in q.sharding.mesh.devices.ravel()} == set(range(8))
    for a, b in zip(jax.tree.leaves(jax.device_get((params, opt_state))), jax.tree.leaves(reference)):
        np.testing.assert_array_equal(a, b)

    ckpt = RunCheckpointer(tmp_path / "two", cfg)  # and back: saved on 2 slices, restored on 1
    ckpt.save(2, params, opt_state, {"model": to_dict(tiny_model_cfg), "note": "two slices"})
    ckpt.close()
    opt1 = with_shardings(jax.eval_shape(tx.init, abstract1), shardings1.opt_state)
    ckpt = RunCheckpointer(tmp_path / "two", cfg)
    params1, opt_state1, _ = ckpt.restore(2, abstract1, opt1)
    ckpt.close()
    assert jax.tree.leaves(params1)[0].sharding.mesh.shape == mesh1.shape
    for a, b in zip(jax.tree.leaves(jax.device_get((params1, opt_state1))), jax.tree.leaves(reference)):
        np.testing.assert_array_equal(a, b)
