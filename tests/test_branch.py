"""Branches: a new run that starts from `ckpt:TRUNK@STEP` and carries params, optimizer and data,
so it continues the trunk's global steps, LR clock and data streams (a WSD cooldown off a stable
trunk). Tiny model on one device; the trunk is trained once per module."""

import copy
from pathlib import Path

import pytest
import yaml

from plan_fixtures import tiny_plan

from cpt_jax.config.base import apply_overrides, from_dict
from cpt_jax.errors import ConfigError, UserError
from cpt_jax.report import load_run, write_report
from cpt_jax.train.config import RunConfig
from cpt_jax.train.loop import Trainer
from cpt_jax.train.metrics import read_jsonl

pytestmark = pytest.mark.slow  # trunk and branch runs: `make test-slow` (and CI) runs it

MIXTURE = {"a": 0.3, "b": 0.7}  # 2.4 and 5.6 rows per batch: the row schedule must continue too
STABLE = {"shape": "constant", "peak_lr": 3e-3, "warmup_steps": 2}
COOLDOWN = {"shape": "linear", "peak_lr": 3e-3, "min_lr": 3e-4}
PLAN = tiny_plan([{"name": "stable", "init": "scratch", "steps": 8, "mixture": MIXTURE,
                "schedule": STABLE}], checkpoint_every=4)


def cfg_of(run_dir, phases=None, *overrides) -> RunConfig:
    data = copy.deepcopy(PLAN)
    if phases is not None:
        data["phases"] = phases
    return from_dict(RunConfig, apply_overrides(data, [f"run_dir={run_dir}", *overrides]))


def branch_phases(trunk, step, carry="params+optimizer+data", steps=3):
    return [{"name": "cooldown", "init": f"ckpt:{trunk}@{step}", "carry": carry, "steps": steps,
             "mixture": MIXTURE, "schedule": COOLDOWN}]


def train_rows(run_dir):
    return {r["step"]: r for r in read_jsonl(Path(run_dir) / "metrics.jsonl") if r["kind"] == "train"}


@pytest.fixture(scope="module")
def trunk(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("trunk")
    Trainer(cfg_of(run_dir), progress=False).run()
    return run_dir


def test_full_carry_branch_reproduces_the_trunks_next_loss_bit_for_bit(trunk, tmp_path):
    branch = tmp_path / "branch"
    Trainer(cfg_of(branch, branch_phases(trunk, 4)), progress=False).run()
    got, ref = train_rows(branch), train_rows(trunk)
    # Global steps continue from the branch point; the first logged loss is the trunk's at step 5
    # exactly (same params, same batch: only the LR of the update differs).
    assert sorted(got) == [5, 6, 7]
    assert got[5]["loss"] == ref[5]["loss"]
    assert got[6]["loss"] != ref[6]["loss"]  # the cooldown's LR made a different update at step 5
    # The branch's own schedule on the continued clock: its local step 0 at global step 4.
    assert got[5]["lr"] == pytest.approx(3e-3 + (3e-4 - 3e-3) / 3)
    assert got[7]["lr"] == pytest.approx(3e-4)
    # Where it came from: config.yaml and every checkpoint's meta.
    doc = yaml.safe_load((branch / "config.yaml").read_text())
    assert doc["branch"] == {"parent": str(Path(trunk).absolute()), "step": 4, "carry": "params+optimizer+data"}
    from cpt_jax.checkpoint.run_checkpoint import CheckpointConfig, RunCheckpointer
    ckpt = RunCheckpointer(branch, CheckpointConfig(), read_only=True)
    meta = ckpt.read_meta(7)
    ckpt.close()
    parent = RunCheckpointer(trunk, CheckpointConfig(), read_only=True)
    assert meta["branch"]["step"] == 4 and meta["branch"]["data"] == parent.read_meta(4)["data"]
    parent.close()
    # The trunk is untouched (read only) and report draws trunk and branch on one global-step axis.
    assert sorted(int(p.name) for p in (trunk / "checkpoints").iterdir() if p.name.isdigit()) == [4, 8]
    run = load_run(branch)
    assert run.boundaries == [(4, "cooldown")] and run.branch == (str(Path(trunk).absolute()), 4)
    report = write_report([str(trunk), str(branch)], tmp_path / "report", ["trunk", "cooldown@4"])
    assert (tmp_path / "report" / "compare.png").is_file() and "cooldown@4" in report.tables


def test_branch_resumes_after_a_crash_bit_identically(trunk, tmp_path):
    whole, crashed = tmp_path / "whole", tmp_path / "crashed"
    Trainer(cfg_of(whole, branch_phases(trunk, 4, steps=5)), progress=False).run()
    Trainer(cfg_of(crashed, branch_phases(trunk, 4, steps=5)), progress=False, stop_after=7).run()
    Trainer(cfg_of(crashed, branch_phases(trunk, 4, steps=5)), progress=False).run()
    assert {s: (r["loss"], r["lr"]) for s, r in train_rows(crashed).items()} == \
           {s: (r["loss"], r["lr"]) for s, r in train_rows(whole).items()}


def test_params_only_branch_starts_a_fresh_clock_and_fresh_streams(trunk, tmp_path):
    run_dir = tmp_path / "fresh"
    cfg = cfg_of(run_dir, branch_phases(trunk, 4, carry="params"))
    assert cfg.branch_point is None and cfg.phase_starts() == [0]
    Trainer(cfg, progress=False).run()
    assert sorted(train_rows(run_dir)) == [1, 2, 3]
    assert train_rows(run_dir)[1]["loss"] != train_rows(trunk)[5]["loss"]  # streams restarted at 0


@pytest.mark.parametrize("phase, message", [
    ({"init": "previous", "carry": "params+data"}, "always continues each source's stream"),
    ({"init": "ckpt:/x@3", "carry": "optimizer"}, "must include params"),
    ({"init": "ckpt:/x@3", "carry": "params+moments"}, "join params, optimizer and data"),
    ({"init": "ckpt:/x", "carry": "params+optimizer"}, r"ckpt:<run_dir>@<step>"),
    ({"init": "hf:/x", "carry": "params+optimizer"}, "has only parameters"),
    ({"init": "scratch", "carry": "params+data"}, "has only parameters"),
])
def test_carry_combinations_are_validated(tmp_path, phase, message):
    first = {"name": "p0", "init": "scratch", "steps": 2, "mixture": {"a": 1.0}, "schedule": STABLE}
    phases = [first, {"name": "p1", "steps": 2, "mixture": {"a": 1.0}, "schedule": STABLE, **phase}]
    with pytest.raises(ConfigError, match=message):
        cfg_of(tmp_path, phases)


def test_only_the_first_phase_carries_data_and_bad_parents_are_named(trunk, tmp_path):
    first = {"name": "p0", "init": "scratch", "steps": 2, "mixture": {"a": 1.0}, "schedule": STABLE}
    later = branch_phases(trunk, 4)[0]
    with pytest.raises(ConfigError, match=r"phases\[1\].carry'?: only the first phase can carry data"):
        cfg_of(tmp_path, [first, later])
    with pytest.raises(UserError, match=r"no (checkpoint )?step 5; it has 4, 8"):
        Trainer(cfg_of(tmp_path / "a", branch_phases(trunk, 5)), progress=False).run()
    with pytest.raises(UserError, match="set data.seed to the parent's"):
        Trainer(cfg_of(tmp_path / "b", branch_phases(trunk, 4), "data.seed=7"), progress=False).run()
