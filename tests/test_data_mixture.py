"""Mixture plans: exact per-batch counts, even interleaving, and refusal of bad weights."""

import math
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cpt_jax.data.errors import DataError
from cpt_jax.data.mixture import plan_mixture

KNOWN = ("new", "replay", "code")


@pytest.mark.parametrize("mixture, batch, expected", [
    ({"new": 0.95, "replay": 0.05}, 64, {"new": 61, "replay": 3}),
    ({"new": 0.99, "replay": 0.01}, 64, {"new": 63, "replay": 1}),
    ({"new": 0.5, "replay": 0.5}, 6, {"new": 3, "replay": 3}),
    ({"new": 1, "replay": 1, "code": 1}, 8, {"code": 3, "new": 3, "replay": 2}),  # ties: first name wins
    ({"new": 95, "replay": 5}, 20, {"new": 19, "replay": 1}),  # unnormalised weights
    ({"new": 0.7, "replay": 0.3, "code": 0.0}, 10, {"new": 7, "replay": 3}),
])
def test_counts(mixture, batch, expected):
    plan = plan_mixture(mixture, batch, KNOWN)
    assert dict(zip(plan.names, plan.counts)) == expected
    assert sorted(plan.order) == sorted(i for i, c in enumerate(plan.counts) for _ in range(c))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(1, 1000), min_size=1, max_size=3), st.integers(1, 256))
def test_counts_are_floor_or_ceil_of_quota(raw, batch):
    mixture = dict(zip(KNOWN, raw))
    total = sum(raw)
    try:
        plan = plan_mixture(mixture, batch, KNOWN)
    except DataError as e:
        assert "0 of" in str(e)  # only refused when some positive weight rounds to no rows
        assert any(Fraction(w * batch, total) < 1 for w in raw)
        return
    assert sum(plan.counts) == batch
    for name, count in zip(plan.names, plan.counts):
        quota = Fraction(mixture[name] * batch, total)
        assert math.floor(quota) <= count <= math.ceil(quota)


@pytest.mark.parametrize("batch, hosts", [(64, 4), (32, 2), (60, 3)])
def test_every_host_slice_gets_a_fair_share(batch, hosts):
    plan = plan_mixture({"new": 0.9, "replay": 0.1}, batch, KNOWN)
    per = batch // hosts
    for k, count in enumerate(plan.counts):
        for h in range(hosts):
            got = plan.order[h * per:(h + 1) * per].count(k)
            assert abs(got - count / hosts) <= 1, (k, h, got)


def test_slots_number_each_sources_rows():
    plan = plan_mixture({"new": 0.75, "replay": 0.25}, 8, KNOWN)
    for k, count in enumerate(plan.counts):
        assert [s for o, s in zip(plan.order, plan.slot) if o == k] == list(range(count))
    assert plan.realised() == {"new": 0.75, "replay": 0.25}


@pytest.mark.parametrize("mixture, words", [
    ({}, "empty"),
    ({"new": 0.0, "replay": 0.0}, "sum to a positive"),
    ({"new": 1.0, "replay": -0.1}, ">= 0"),
    ({"new": float("nan")}, "finite"),
    ({"new": 1.0, "wiki": 0.5}, "unknown source(s) wiki"),
    ({"new": 0.99, "replay": 0.01}, "0 of 16 rows"),
])
def test_bad_mixtures(mixture, words):
    with pytest.raises(DataError, match=None) as err:
        plan_mixture(mixture, 16, KNOWN)
    assert words in str(err.value)
