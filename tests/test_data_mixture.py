"""Mixture plans: per-batch counts within one row of the quota, cumulative counts within one row of
the requested share after every step, even interleaving, and refusal of bad weights."""

import math
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cpt_jax.errors import DataError
from cpt_jax.data.mixture import plan_mixture

KNOWN = ("new", "replay", "code", "math")


def test_five_percent_replay_at_batch_64_trains_exactly_five_percent():
    plan = plan_mixture({"new": 0.95, "replay": 0.05}, 64, KNOWN)
    per_batch = [dict(zip(plan.names, plan.counts(s))) for s in range(200)]
    assert {c["replay"] for c in per_batch} == {3, 4}
    assert sum(c["replay"] for c in per_batch) == 640 and sum(c["new"] for c in per_batch) == 12160
    assert dict(zip(plan.names, plan.cumulative(200))) == {"new": 12160, "replay": 640}
    assert plan.realised(200) == {"new": 0.95, "replay": 0.05}
    d = plan.describe(200)["replay"]
    assert (d["requested"], d["rows_per_batch"], d["realised"], d["rows"]) == (0.05, "3-4", 0.05, 640)


@pytest.mark.parametrize("mixture, batch, steps, rows", [
    ({"new": 0.99, "replay": 0.01}, 64, 100, {"new": 6336, "replay": 64}),  # 0.64 rows per batch
    ({"new": 0.93, "replay": 0.07}, 32, 25, {"new": 744, "replay": 56}),
    ({"new": 0.99, "replay": 0.01}, 16, 100, {"new": 1584, "replay": 16}),  # below 1/batch: every ~6th batch
    ({"new": 1, "replay": 1, "code": 1}, 8, 3, {"code": 8, "new": 8, "replay": 8}),
])
def test_cumulative_rows_are_exact_when_the_quota_is_whole(mixture, batch, steps, rows):
    plan = plan_mixture(mixture, batch, KNOWN)
    assert dict(zip(plan.names, plan.cumulative(steps))) == rows
    assert sum(sum(plan.counts(s)) for s in range(steps)) == batch * steps


@settings(max_examples=150, deadline=None)
@given(st.lists(st.integers(1, 1000), min_size=1, max_size=4), st.integers(1, 128), st.integers(0, 10**9))
def test_counts_stay_within_one_row_of_the_quota_every_step_and_in_total(raw, batch, far):
    mixture = dict(zip(KNOWN, raw))
    total = sum(raw)
    plan = plan_mixture(mixture, batch, KNOWN)
    quotas = [Fraction(mixture[n] * batch, total) for n in plan.names]
    prev = [0] * len(plan.names)
    for s in list(range(1, 60)) + [far + 1]:
        cum = plan.cumulative(s)
        if s == far + 1:
            prev = plan.cumulative(far)
        assert sum(cum) == batch * s
        for k, quota in enumerate(quotas):
            assert abs(cum[k] - quota * s) < 1, (plan.names[k], s)
            count = plan.counts(s - 1)[k]
            assert math.floor(quota) <= count <= math.ceil(quota)
            assert cum[k] - prev[k] == count
        prev = cum


def test_a_plan_is_a_pure_function_of_the_step():
    a = plan_mixture({"new": 0.5, "replay": 0.3, "code": 0.2}, 10, KNOWN)
    b = plan_mixture({"code": 2, "replay": 3, "new": 5}, 10, KNOWN)  # order and scale do not matter
    for s in (0, 1, 7, 123456789):
        assert a.counts(s) == b.counts(s) and a.cumulative(s) == b.cumulative(s) and a.layout(s) == b.layout(s)


@pytest.mark.parametrize("batch, hosts", [(64, 4), (32, 2), (60, 3)])
def test_every_host_slice_gets_a_fair_share(batch, hosts):
    plan = plan_mixture({"new": 0.9, "replay": 0.1}, batch, KNOWN)
    per = batch // hosts
    for step in range(12):
        order, _ = plan.layout(step)
        for k, count in enumerate(plan.counts(step)):
            for h in range(hosts):
                got = order[h * per:(h + 1) * per].count(k)
                assert abs(got - count / hosts) <= 1, (step, k, h, got)


def test_slots_number_each_sources_rows():
    plan = plan_mixture({"new": 0.75, "replay": 0.25}, 8, KNOWN)
    order, slot = plan.layout(0)
    for k, count in enumerate(plan.counts(0)):
        assert [s for o, s in zip(order, slot) if o == k] == list(range(count))
    assert plan.realised(5) == {"new": 0.75, "replay": 0.25}


def test_weights_with_a_long_period_are_rounded_to_a_fine_grid():
    plan = plan_mixture({"new": 0.123456789, "replay": 0.876543211}, 64, KNOWN)
    assert plan.period <= 10_000
    assert abs(plan.weights[0] - 0.123456789) <= 1e-4 and plan.requested[0] == pytest.approx(0.123456789)
    assert abs(plan.cumulative(10_000)[0] - plan.weights[0] * 64 * 10_000) < 1
    rare = plan_mixture({"new": 19996, "replay": 1}, 1, KNOWN)  # exact period 19997: one schedule pass
    assert rare.period == 19997 and rare.cumulative(19997 * 3 + 5) == (19996 * 3 + 5, 3)


@pytest.mark.parametrize("mixture, words", [
    ({}, "empty"),
    ({"new": 0.0, "replay": 0.0}, "sum to a positive"),
    ({"new": 1.0, "replay": -0.1}, ">= 0"),
    ({"new": float("nan")}, "finite"),
    ({"new": 1.0, "wiki": 0.5}, "unknown source(s) wiki"),
])
def test_bad_mixtures(mixture, words):
    with pytest.raises(DataError) as err:
        plan_mixture(mixture, 16, KNOWN)
    assert words in str(err.value)
