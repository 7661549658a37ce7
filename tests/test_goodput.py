"""Goodput: the loop records where its wall time goes, and the report splits it into productive
steps, compile, data, checkpoints, evals, start-up and steps lost to a restart."""

from __future__ import annotations

import copy

import pytest

from plan_fixtures import tiny_plan

from cpt_jax.config.base import apply_overrides, from_dict
from cpt_jax.report import write_report
from cpt_jax.train.config import RunConfig
from cpt_jax.train.goodput import CATEGORIES, goodput
from cpt_jax.train.loop import Trainer
from cpt_jax.train.metrics import read_jsonl

PHASES = [{"name": "p", "init": "scratch", "steps": 8, "mixture": {"a": 1.0},
           "schedule": {"shape": "constant", "peak_lr": 1e-3, "warmup_steps": 1}}]


def cfg_of(run_dir) -> RunConfig:
    data = copy.deepcopy(tiny_plan(PHASES, checkpoint_every=4))
    return from_dict(RunConfig, apply_overrides(data, [f"run_dir={run_dir}", "log.every=2"]))


@pytest.mark.slow  # over 20 s on CI's 2 cores: `make test-slow` runs it
def test_time_rows_cover_every_step_and_a_restart_is_counted_as_lost(tmp_path):
    run = tmp_path / "run"
    Trainer(cfg_of(run), progress=False, stop_after=6).run()  # "crashes" after step 6, last save at 4
    Trainer(cfg_of(run), progress=False).run()  # resumes at 4: steps 5 and 6 are trained twice
    rows = read_jsonl(run / "metrics.jsonl")
    times = [r for r in rows if r["kind"] == "time"]
    assert len({r["session"] for r in times}) == 2
    trained = sorted(s for r in times for s in range(r["first_step"], r["step"] + 1))
    assert trained == sorted([1, 2, 3, 4, 5, 6, 5, 6, 7, 8])
    for r in times:
        assert set(r["seconds"]) == set(CATEGORIES) and all(v >= 0 for v in r["seconds"].values())
    g = goodput(rows)
    assert g["sessions"] == 2 and g["retrained_steps"] == 2
    s = g["seconds"]
    assert s["lost"] > 0 and s["compile"] > 0 and s["startup"] > 0 and s["step"] > 0 and s["checkpoint"] > 0
    assert 0 < g["goodput"] < 1 and g["wall_s"] == pytest.approx(sum(s.values()))
    table = write_report([str(run)]).tables
    assert "Goodput of run" in table and "lost to restarts" in table and "2 invocation(s)" in table


def test_goodput_moves_only_retrained_steps():
    rows = [
        {"kind": "time", "session": "a", "first_step": 1, "step": 4, "seconds": {"step": 4.0, "compile": 2.0}},
        {"kind": "time", "session": "b", "first_step": 3, "step": 6, "seconds": {"step": 4.0, "startup": 1.0}},
    ]
    g = goodput(rows)
    # Steps 3 and 4 of session a were trained again by b: half of a's step and compile time is lost.
    assert g["seconds"]["lost"] == pytest.approx(3.0)
    assert g["seconds"]["step"] == pytest.approx(2.0 + 4.0) and g["seconds"]["compile"] == pytest.approx(1.0)
    assert g["goodput"] == pytest.approx(6.0 / 11.0)
