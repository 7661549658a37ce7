"""The statistics and the run cache behind `make experiments` (experiments/stats.py, cache.py):
every verdict path, the t-interval, degenerate fits, and cache keys that follow code and plan."""

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))

import cache  # noqa: E402
import stats  # noqa: E402
from stats import CONTRADICTED, NOT_IDENTIFIABLE, REPRODUCED, TOO_FEW  # noqa: E402

from cpt_jax.report.mixture_law import degeneracies  # noqa: E402


def test_t_quantile_and_interval():
    assert stats.t975(2) == pytest.approx(4.303, abs=1e-3)
    assert stats.t975(9) == pytest.approx(stats.T975[9], abs=1e-3)
    iv = stats.interval([1.0, 2.0, 3.0])  # sd 1
    assert iv.mean == 2.0 and iv.half == pytest.approx(4.303 / math.sqrt(3), abs=1e-3)
    assert (iv.lo, iv.hi) == pytest.approx((2 - iv.half, 2 + iv.half))
    d = stats.paired([5.0, 6.0, 7.5], [4.0, 4.0, 4.0])  # diffs 1, 2, 3.5
    assert d.values == (1.0, 2.0, 3.5) and d.mean == pytest.approx(6.5 / 3)
    with pytest.raises(ValueError):
        stats.interval([1.0])
    with pytest.raises(ValueError):
        stats.paired([1.0, 2.0], [1.0, 2.0, 3.0])


def test_directional_verdicts_follow_the_claims_side():
    up = stats.interval([0.30, 0.32, 0.31])  # wholly above 0
    down = stats.interval([-0.30, -0.32, -0.31])
    straddle = stats.interval([-0.2, 0.1, 0.3])
    assert stats.directional(up, +1) == REPRODUCED
    assert stats.directional(up, -1) == CONTRADICTED  # beyond noise the other way
    assert stats.directional(down, -1) == REPRODUCED
    assert stats.directional(down, +1) == CONTRADICTED
    assert stats.directional(straddle, +1) == TOO_FEW and stats.directional(straddle, -1) == TOO_FEW
    # "most" = more than half: a share of 30% beyond noise contradicts "most", 47% ± a lot cannot tell
    assert stats.directional(stats.interval([0.29, 0.30, 0.31]), +1, stats.MOST) == CONTRADICTED
    assert stats.directional(stats.interval([0.40, 0.47, 0.55]), +1, stats.MOST) == TOO_FEW
    assert stats.directional(stats.interval([0.80, 0.81, 0.83]), +1, stats.MOST) == REPRODUCED
    with pytest.raises(ValueError):
        stats.directional(up, 0)


def test_equivalence_within_a_margin():
    assert stats.equivalent(stats.interval([0.001, -0.002, 0.0]), 0.03) == REPRODUCED
    assert stats.equivalent(stats.interval([0.12, 0.13, 0.14]), 0.03) == CONTRADICTED
    assert stats.equivalent(stats.interval([-0.02, 0.01, 0.05]), 0.03) == TOO_FEW


def test_combined_verdicts():
    assert stats.combine([("a", REPRODUCED), ("b", REPRODUCED)]) == REPRODUCED
    assert stats.combine([("a", TOO_FEW), ("b", TOO_FEW)]) == TOO_FEW
    assert stats.combine([("a", REPRODUCED), ("b", TOO_FEW)]) == "partly reproduced (a; too few seeds to tell: b)"
    assert stats.combine([("a", REPRODUCED), ("b", CONTRADICTED)]) == "contradicted (b; reproduced: a)"
    assert stats.combine([("a", CONTRADICTED), ("b", NOT_IDENTIFIABLE + " (gamma = 0)")]) == \
        "not identifiable (b (gamma = 0))"
    with pytest.raises(ValueError):
        stats.combine([])
    with pytest.raises(ValueError):
        stats.combine([("a", "inconclusive")])


def test_degenerate_fit_is_not_identifiable():
    y = np.array([3.90, 3.92, 3.91, 3.93])
    constant = degeneracies((3.7, 0.19, 0.0), y)  # gamma at 0: the law is a constant
    assert constant and stats.fit_verdict(constant, True, 0.01, 0.5).startswith(NOT_IDENTIFIABLE)
    at_bound = degeneracies((0.0, 3.9, 0.05), y)  # E on its lower bound
    assert at_bound and stats.fit_verdict(at_bound, True, 0.01, 0.5).startswith(NOT_IDENTIFIABLE)
    # a well-posed fit whose stated error is wider than half the spread: any constant would pass
    assert stats.fit_verdict((), True, 0.089, 0.042).startswith(NOT_IDENTIFIABLE)
    assert stats.fit_verdict((), True, 0.01, 0.5) == REPRODUCED
    assert stats.fit_verdict((), False, 0.01, 0.5) == CONTRADICTED


def test_most_needs_forgetting_to_remove():
    removed = stats.interval([0.80, 0.82, 0.81])
    assert stats.most(removed, [0.8, 0.9, 0.85], "replay") == REPRODUCED
    assert stats.most(stats.interval([0.30, 0.31, 0.29]), [0.8, 0.9, 0.85], "replay") == CONTRADICTED
    # the baseline did not forget beyond noise: a share of it removed is a ratio of noise
    assert stats.most(removed, [-0.12, 0.05, -0.2], "injection").startswith(NOT_IDENTIFIABLE)


def test_word_order_task(tmp_path):
    import json

    import tasks

    words = [f"w{i}" for i in range(200)]
    heldout = tmp_path / "heldout.jsonl"
    heldout.write_text("".join(json.dumps({"text": " ".join(words[k:k + 70])}) + "\n" for k in range(0, 120, 10))
                       + json.dumps({"text": "too short"}) + "\n")
    out = tmp_path / "t" / "order.jsonl"
    assert tasks.word_order_task(heldout, out, items=20) == 20
    for row in map(json.loads, out.read_text().splitlines()):
        gold = row["choices"][row["gold"]].split()
        ctx = row["context"].split()
        assert len(ctx) == 24 and gold == words[int(ctx[-1][1:]) + 1:int(ctx[-1][1:]) + 7]  # the true next words
        assert len(set(row["choices"])) == 4 and all(sorted(c.split()) == sorted(gold) for c in row["choices"])


def test_detectable_effect_is_the_widest_half_width():
    a, b = stats.interval([1.0, 2.0, 3.0]), stats.interval([1.0, 1.1, 1.2])
    assert stats.detectable([a, b]) == a.half


def _git(repo, *args):
    subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True)


def test_cache_key_follows_code_plan_and_parents(tmp_path):
    repo = tmp_path / "repo"
    (repo / "cpt_jax").mkdir(parents=True)
    (repo / "cpt_jax" / "a.py").write_text("x = 1\n")
    (repo / "README").write_text("r\n")
    _git(repo, "init", "-q")
    _git(repo, "-c", "user.email=t@t", "-c", "user.name=t", "add", ".")
    _git(repo, "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "one")
    plan = {"phases": [{"steps": 10}], "seed": 0}
    clean = cache.source_id(repo)
    assert clean.clean and clean.diff == "" and len(clean.tree) == 40
    key = cache.run_key(plan, clean)
    assert cache.run_key(dict(plan), cache.source_id(repo)) == key  # stable
    assert cache.run_key({**plan, "seed": 1}, clean) != key  # plan
    assert cache.run_key(plan, clean, {"/runs/trunk": "k2"}) != cache.run_key(plan, clean, {"/runs/trunk": "k1"})

    (repo / "README").write_text("outside the package\n")  # does not touch cpt_jax: same code
    assert cache.run_key(plan, cache.source_id(repo)) == key
    (repo / "cpt_jax" / "a.py").write_text("x = 2\n")  # uncommitted change: dirty, new key
    dirty = cache.source_id(repo)
    assert not dirty.clean and "dirty" in dirty.label() and cache.run_key(plan, dirty) != key
    (repo / "cpt_jax" / "a.py").write_text("x = 3\n")
    assert cache.run_key(plan, cache.source_id(repo)) != cache.run_key(plan, dirty)
    _git(repo, "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qam", "two")  # committed: clean, new tree
    committed = cache.source_id(repo)
    assert committed.clean and committed.tree != clean.tree and cache.run_key(plan, committed) != key
    (repo / "cpt_jax" / "new.py").write_text("y = 1\n")  # an untracked module counts too
    assert not cache.source_id(repo).clean


def test_cache_record_round_trip(tmp_path):
    sid = cache.SourceId("t" * 40, "abc1234", True)
    cache.write_record(tmp_path, "k", sid, 12.5, 20.0)
    assert cache.read_record(tmp_path) == {"key": "k", "seconds": 12.5, "cpu_seconds": 20.0, "tree": "t" * 40, "commit": "abc1234",
                                           "clean": True, "diff": ""}
    assert cache.read_record(tmp_path / "missing") is None
