"""Freezing (optimizer.freeze and a phase's freeze): frozen parameters come out bit-identical, hold
no optimizer state, a phase that unfreezes starts their moments afresh and says so, and a run
resumed inside a frozen phase ends exactly where the straight run does."""

from __future__ import annotations

import copy
import shutil

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from plan_fixtures import tiny_plan

from cpt_jax.config.base import apply_overrides, from_dict
from cpt_jax.errors import ConfigError
from cpt_jax.model.config import ModelConfig
from cpt_jax.model.params import abstract_params
from cpt_jax.train.config import RunConfig
from cpt_jax.train.freeze import build_freeze
from cpt_jax.train.loop import Trainer

SCHEDULE = {"shape": "constant", "peak_lr": 3e-3, "warmup_steps": 1}
PHASES = [
    {"name": "pre", "init": "scratch", "steps": 4, "mixture": {"a": 1.0}, "schedule": SCHEDULE},
    {"name": "frozen", "steps": 4, "mixture": {"b": 1.0}, "schedule": SCHEDULE, "freeze": ["embed", "layers[0:2]"]},
    {"name": "thaw", "steps": 2, "mixture": {"b": 1.0}, "schedule": SCHEDULE, "freeze": []},
]


def cfg_of(run_dir, scan: bool = True) -> RunConfig:
    data = copy.deepcopy(tiny_plan(PHASES, checkpoint_every=2))
    data["model"]["num_layers"] = 3
    return from_dict(RunConfig, apply_overrides(data, [f"run_dir={run_dir}", f"model.scan_layers={str(scan).lower()}"]))


def saved(run_dir, step: int, item: str):
    return ocp.PyTreeCheckpointer().restore(str(run_dir / "checkpoints" / str(step) / item))


def block(tree, i: int, scan: bool):
    layers = tree["layers"]
    return jax.tree.map(lambda x: np.asarray(x)[i], layers) if scan else layers[str(i)]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """{scan: (run_dir, what the run printed)}, each layout trained once for the module."""
    out = {}

    def get(scan: bool, capfd):
        if scan not in out:
            run = tmp_path_factory.mktemp("run") / "run"
            Trainer(cfg_of(run, scan), progress=False).run()
            out[scan] = run, "".join(capfd.readouterr())
        return out[scan]
    return get


@pytest.mark.parametrize("scan", [True, pytest.param(False, marks=pytest.mark.slow)])  # unrolled: make test-slow
def test_frozen_parameters_do_not_move_and_hold_no_optimizer_state(trained, scan, capfd):
    run, printed = trained(scan, capfd)
    start, end = saved(run, 4, "params"), saved(run, 8, "params")
    np.testing.assert_array_equal(start["embed"], end["embed"])
    for i in (0, 1):
        jax.tree.map(np.testing.assert_array_equal, block(start, i, scan), block(end, i, scan))
    moved = jax.tree.leaves(jax.tree.map(lambda a, b: bool(np.any(a != b)), block(start, 2, scan), block(end, 2, scan)))
    assert all(moved) and np.any(start["lm_head"] != end["lm_head"])
    # The frozen phase's optimizer state: nothing for embed, block 2 only for the layers.
    opt = saved(run, 6, "opt_state")
    names = {jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(opt)[0]}
    assert not any("'embed'" in n for n in names) and any("'lm_head'" in n for n in names)
    mu_q = [x for p, x in jax.tree_util.tree_flatten_with_path(opt)[0]
            if "'q'" in jax.tree_util.keystr(p) and "mu" in jax.tree_util.keystr(p)]
    if scan:
        assert [x.shape[0] for x in mu_q] == [1]  # the stacked moments hold block 2 alone
    else:
        assert len(mu_q) == 1
    # Thawing restarts the moments of what starts training, and says so; embed trains again.
    assert "freeze changed (frozen now: nothing)" in printed and "start afresh" in printed
    assert np.any(saved(run, 10, "params")["embed"] != end["embed"])


def test_a_run_resumed_inside_a_frozen_phase_ends_where_the_straight_run_does(trained, tmp_path, capfd):
    straight, _ = trained(True, capfd)
    resumed = tmp_path / "resumed"
    shutil.copytree(straight, resumed)
    for step in (8, 10):  # as if the run had stopped at step 6, inside the frozen phase
        shutil.rmtree(resumed / "checkpoints" / str(step))
    Trainer(cfg_of(resumed), progress=False).run()
    jax.tree.map(np.testing.assert_array_equal, saved(straight, 10, "params"), saved(resumed, 10, "params"))


def test_freeze_entries_are_checked_against_the_model():
    cfg = ModelConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_layers=4, num_heads=2, num_kv_heads=1,
                      max_position_embeddings=64)
    params = abstract_params(cfg)
    plan = build_freeze(["layers[:2].mlp.*", "final_norm"], params, 4).plan
    assert {str(v) for v in plan.values()} == {"None", "frozen", "(2, 4)"}
    for entries, message in [(["embeddings"], "matches no parameter"),
                             (["layers[1:3]"], "must be contiguous"),
                             (["layers[7:9]"], "selects no block"),
                             (["layers[0:2"], "layer range is written"),
                             (["*"], "nothing would train")]:
        with pytest.raises(ConfigError, match=message):
            build_freeze(entries, params, 4)
