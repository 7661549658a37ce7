"""Plans that grow: appending phases to a run in progress or finished, lengthening an infinite
schedule in its constant stretch, and refusing changes to phases that have started."""

import copy
from pathlib import Path

import pytest
import yaml

from cpt_jax.config.base import apply_overrides, from_dict
from cpt_jax.errors import UserError
from cpt_jax.train.config import RunConfig
from cpt_jax.train.loop import Trainer
from cpt_jax.train.metrics import read_jsonl
from cpt_jax.train.plan_growth import check_plan_change, phase_fingerprints

INFINITE = {"shape": "infinite", "peak_lr": 3e-3, "warmup_steps": 2, "cooldown_steps": 2, "constant_lr": 1e-3}
ANNEAL = {"shape": "linear", "peak_lr": 1e-3, "min_lr": 1e-4}
PLAN = {
    "model": {"vocab_size": 64, "hidden_size": 16, "intermediate_size": 32, "num_layers": 1, "num_heads": 2,
              "num_kv_heads": 1, "max_position_embeddings": 64},
    "data": {"seq_len": 16, "global_batch_size": 8,
             "sources": {"a": {"kind": "synthetic", "seed": 1, "num_docs": 64, "eval_docs": 4},
                         "b": {"kind": "synthetic", "seed": 2, "num_docs": 64, "eval_docs": 4}}},
    "mesh": {"data": 1, "fsdp": 8, "tensor": 1},
    "checkpoint": {"every": 3, "keep_last": 10, "async_save": False},
    "eval": {"every": 100, "batches": 1},
    "log": {"every": 1, "tensorboard": False, "progress": False},
    "phases": [{"name": "open", "init": "scratch", "steps": 6, "mixture": {"a": 1.0}, "schedule": INFINITE}],
}
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
    with pytest.raises(UserError, match=r"phase 'anneal' \(phases\[1\]\) has started: its mixture.b cannot change"):
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
