"""Divisibility checks before compiling (sharding.checks, train.mesh_fit): every size a mesh
splits, named by its config key, with a mesh of the same devices that fits; and the demo's mesh
on 1, 2, 4 and 8 devices. Pure shape arithmetic: nothing compiles."""

import copy
from pathlib import Path

import pytest

from cpt_jax.config.base import apply_overrides, from_dict
from cpt_jax.demo.config import DemoConfig
from cpt_jax.demo.run import plans
from cpt_jax.errors import ConfigError
from cpt_jax.sharding.checks import check_fits
from cpt_jax.train.config import RunConfig
from cpt_jax.train.mesh_fit import fitting_mesh, run_misfits

PLAN = {
    "run_dir": "/tmp/unused",
    "model": {"vocab_size": 96, "hidden_size": 32, "intermediate_size": 64, "num_layers": 2, "num_heads": 4,
              "num_kv_heads": 2, "max_position_embeddings": 64},
    "data": {"seq_len": 32, "global_batch_size": 24,
             "sources": {"general": {"kind": "synthetic", "seed": 1, "num_docs": 64, "eval_docs": 8}}},
    "phases": [{"name": "p", "init": "scratch", "steps": 4, "mixture": {"general": 1.0},
                "schedule": {"shape": "cosine", "peak_lr": 1e-3, "warmup_steps": 1}}],
}


def cfg(*overrides) -> RunConfig:
    return from_dict(RunConfig, apply_overrides(copy.deepcopy(PLAN), list(overrides)))


def check(run: RunConfig, data: int, fsdp: int, tensor: int) -> None:
    check_fits(data * fsdp * tensor, {"data": data, "fsdp": fsdp, "tensor": tensor}, run_misfits(run))


def test_the_issue_case_names_the_hidden_size_and_a_mesh_that_fits():
    with pytest.raises(ConfigError, match=r"model.hidden_size=32 does not split over mesh fsdp=6 .*"
                                          r"e.g. mesh.data=3 mesh.fsdp=2 mesh.tensor=1 on these 6 devices"):
        check(cfg(), 1, 6, 1)
    check(cfg(), 3, 2, 1)  # the suggestion fits


@pytest.mark.parametrize("overrides, mesh, words", [
    ((), (1, 2, 4), ["model.num_kv_heads=2", "tensor=4", "may not exceed num_kv_heads"]),
    (("model.num_heads=6", "model.num_kv_heads=6", "model.hidden_size=48"), (1, 1, 4),
     ["model.num_kv_heads=6", "(1 more size too)"]),  # heads that tensor does not divide: KV heads neither
    (("model.intermediate_size=63",), (1, 1, 2), ["model.intermediate_size=63"]),
    (("model.vocab_size=97",), (1, 1, 2), ["model.vocab_size=97"]),
    (("data.global_batch_size=12",), (1, 8, 1), ["data.global_batch_size=12"]),
    (("optimizer.grad_accum=4", "data.global_batch_size=48"), (1, 8, 1),
     ["data.global_batch_size / optimizer.grad_accum=12"]),
    (("eval.batch_size=6",), (1, 8, 1), ["eval.batch_size=6"]),
])
def test_each_split_size_is_checked(overrides, mesh, words):
    with pytest.raises(ConfigError) as err:
        check(cfg(*overrides), *mesh)
    for word in words:
        assert word in str(err.value)


def test_no_fitting_mesh_says_to_change_the_size():
    with pytest.raises(ConfigError, match="no split of these 7 devices fits; change data.global_batch_size"):
        check(cfg(), 1, 7, 1)


@pytest.mark.parametrize("devices", [1, 2, 4, 8])
def test_demo_plans_get_a_mesh_on_any_device_count(devices):
    """The demo's batch of 20 does not split over 8 devices: some go to tensor instead."""
    for plan in plans(DemoConfig(), Path("/tmp/demo")).values():
        mesh = fitting_mesh(from_dict(RunConfig, plan), devices)
        assert mesh is not None and mesh["data"] * mesh["fsdp"] * mesh["tensor"] == devices
        assert not run_misfits(from_dict(RunConfig, plan))(mesh)
    assert fitting_mesh(from_dict(RunConfig, plans(DemoConfig(), Path("/tmp/demo"))["pretrain"]), 8)["tensor"] == 2
