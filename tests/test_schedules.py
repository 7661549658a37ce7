"""LR schedules: closed forms at segment edges, plan composition, properties, errors, CLI."""

import dataclasses
import inspect
import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cpt_jax.config.base import ConfigError, from_dict, to_dict
from cpt_jax.schedules import (ScheduleConfig, build_phase_schedule, build_plan_schedule, key_points, lr_at,
                               plan_phases)

PROPS = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def cfg(**kw) -> ScheduleConfig:
    return from_dict(ScheduleConfig, kw, "schedule")


def curve(sched: ScheduleConfig, n: int) -> np.ndarray:
    return lr_at([("p", sched, n)], np.arange(n))


def close(actual, expected, atol=1e-9):
    np.testing.assert_allclose(np.asarray(actual, np.float64), np.asarray(expected, np.float64),
                               rtol=2e-6, atol=atol)


# Reference transitions written out independently of the library: value at progress u from x to y.
REF = {
    "linear": lambda x, y, u: x + (y - x) * u,
    "cosine": lambda x, y, u: y + (x - y) * (1 + np.cos(np.pi * u)) / 2,
    "1-sqrt": lambda x, y, u: y + (x - y) * (1 - np.sqrt(u)),
    "inv-sqrt": lambda x, y, u, a=10.0: x + (y - x) * (1 - 1 / np.sqrt(1 + a * u)) / (1 - 1 / np.sqrt(1 + a)),
    "exponential": lambda x, y, u: x * (y / x) ** u,
}


# ---------------------------------------------------------------------------- closed forms
def test_warmup_step_zero_is_peak_over_warmup_and_last_warmup_step_is_peak():
    lrs = curve(cfg(shape="constant", peak_lr=1.0, warmup_steps=4), 7)
    close(lrs, [0.25, 0.5, 0.75, 1.0, 1.0, 1.0, 1.0])


def test_warmup_from_a_number_and_cosine_warmup():
    w, a, p = 5, 0.2, 1.0
    lrs = curve(cfg(shape="constant", peak_lr=p, warmup_steps=w, warmup_from=a, warmup_shape="cosine"), 8)
    i = np.arange(w)
    close(lrs[:w], a + (p - a) * (1 - np.cos(np.pi * (i + 1) / w)) / 2)
    close(lrs[w:], p)
    close(lrs[0], a + (p - a) * (1 - math.cos(math.pi / w)) / 2)  # first update already moves


@pytest.mark.parametrize("shape", ["cosine", "linear"])
def test_decay_after_warmup_ends_exactly_at_floor(shape):
    n, w, p, f = 12, 3, 2.0, 0.2
    lrs = curve(cfg(shape=shape, peak_lr=p, warmup_steps=w, min_lr=f), n)
    close(lrs[:w], p * (np.arange(w) + 1) / w)
    u = (np.arange(w, n) + 1 - w) / (n - w)
    close(lrs[w:], REF[shape](p, f, u))
    close(lrs[w - 1], p)  # peak on the last warmup step
    assert lrs[w] < p  # the decay starts right after
    close(lrs[-1], f)  # and reaches the floor on the phase's last step


def test_cosine_without_warmup_and_min_lr_ratio_default():
    n, p = 10, 1.0
    lrs = curve(cfg(peak_lr=p), n)  # shape cosine, floor 0.1 * peak by default
    close(lrs, REF["cosine"](p, 0.1 * p, (np.arange(n) + 1) / n))


@pytest.mark.parametrize("shape", ["linear", "cosine", "1-sqrt", "inv-sqrt", "exponential"])
def test_wsd_cooldown_shapes(shape):
    n, w, c, p, f = 20, 4, 6, 1.0, 0.05
    lrs = curve(cfg(shape="wsd", peak_lr=p, warmup_steps=w, cooldown_steps=c, cooldown_shape=shape, min_lr=f), n)
    close(lrs[:w], p * (np.arange(w) + 1) / w)
    close(lrs[w:n - c], p)  # stable through the step before the cooldown
    u = (np.arange(n - c, n) + 1 - (n - c)) / c
    close(lrs[n - c:], REF[shape](p, f, u))
    close(lrs[-1], f)


def test_wsd_cooldown_fraction_and_default():
    n = 50
    a = curve(cfg(shape="wsd", peak_lr=1.0, cooldown_fraction=0.3, min_lr=0.0), n)
    assert np.all(a[:35] == 1.0) and a[35] < 1.0  # 0.3 * 50 = 15 cooldown steps
    b = curve(cfg(shape="wsd", peak_lr=1.0, min_lr=0.0), n)  # default 20%: 10 steps
    assert np.all(b[:40] == 1.0) and b[40] < 1.0
    close(b[40:], 1 - np.sqrt((np.arange(1, 11)) / 10))  # default wsd cooldown shape is 1-sqrt


def test_warmup_fraction_rounds_to_nearest_step_at_least_one():
    lrs = curve(cfg(shape="constant", peak_lr=1.0, warmup_fraction=0.1), 95)  # 9.5 -> 10 steps
    close(lrs[:3], [0.1, 0.2, 0.3])
    lrs = curve(cfg(shape="constant", peak_lr=1.0, warmup_fraction=0.01), 20)  # 0.2 -> at least 1
    close(lrs[:2], [1.0, 1.0])


@pytest.mark.parametrize("cool", ["cosine", "inv-sqrt"])
@pytest.mark.parametrize("anneal", ["cosine", "exponential", "linear"])
def test_infinite_schedule(cool, anneal):
    n, w, c, a, p, k, f = 40, 5, 10, 6, 1.0, 0.4, 0.01
    s = cfg(shape="infinite", peak_lr=p, warmup_steps=w, cooldown_steps=c, cooldown_shape=cool,
            constant_lr=k, anneal_steps=a, anneal_shape=anneal, min_lr=f)
    lrs = curve(s, n)
    close(lrs[:w], p * (np.arange(w) + 1) / w)
    close(lrs[w:w + c], REF[cool](p, k, (np.arange(c) + 1) / c))
    close(lrs[w + c - 1:n - a], k)  # constant from the end of the cooldown to the anneal
    close(lrs[n - a:], REF[anneal](k, f, (np.arange(a) + 1) / a))  # anneal = the last `a` steps
    close(lrs[-1], f)


def test_infinite_continues_across_phases_and_anneals_at_the_end():
    k = 3e-4
    first = cfg(shape="infinite", peak_lr=1e-3, warmup_steps=10, cooldown_steps=20, constant_lr=k)
    middle = cfg(shape="infinite", peak_lr=1e-3, cooldown_steps=0, constant_lr=k)
    last = cfg(shape="infinite", peak_lr=1e-3, cooldown_steps=0, constant_lr=k, anneal_steps=15, min_lr=1e-5)
    lrs = lr_at([("a", first, 50), ("b", middle, 40), ("c", last, 30)], np.arange(120))
    close(lrs[29:105], k)  # one unbroken constant stretch across two boundaries
    assert np.all(np.diff(lrs[105:]) < 0)
    close(lrs[-1], 1e-5)


def test_repeated_cosine_rewarms_from_previous_end():
    c1 = cfg(peak_lr=1.0, warmup_steps=5, min_lr=0.1)
    c2 = cfg(peak_lr=0.5, warmup_steps=4, min_lr=0.05, warmup_from="previous")
    c3 = cfg(peak_lr=0.25, warmup_steps=4, min_lr=0.0, warmup_from="previous")
    lrs = lr_at([("a", c1, 20), ("b", c2, 20), ("c", c3, 20)], np.arange(60))
    close(lrs[19], 0.1)
    close(lrs[20:24], 0.1 + (0.5 - 0.1) * (np.arange(4) + 1) / 4)  # re-warm 0.1 -> 0.5
    close(lrs[39], 0.05)
    close(lrs[40], 0.05 + (0.25 - 0.05) / 4)
    close(lrs[59], 0.0)


def test_rewarm_from_higher_start_goes_down_to_new_peak():
    hi = cfg(shape="constant", peak_lr=1.0)
    lo = cfg(shape="cosine", peak_lr=0.4, warmup_steps=3, warmup_from="previous", min_lr=0.0)
    lrs = lr_at([("hi", hi, 5), ("lo", lo, 10)], np.arange(15))
    close(lrs[5:8], [0.8, 0.6, 0.4])


def test_plan_is_phase_schedules_at_local_steps_and_holds_after_the_end():
    specs = [("a", cfg(shape="wsd", peak_lr=1.0, warmup_steps=3, cooldown_steps=4), 10),
             ("b", cfg(peak_lr=0.5, warmup_steps=2, warmup_from="previous"), 7)]
    plan = build_plan_schedule(specs)
    pa = build_phase_schedule(specs[0][1], 10, None, "phases[0].schedule")
    pb = build_phase_schedule(specs[1][1], 7, float(pa(9)), "phases[1].schedule")
    for s in range(17):
        expected = pa(s) if s < 10 else pb(s - 10)
        assert float(plan(s)) == pytest.approx(float(expected), rel=1e-6)
    assert float(plan(17)) == pytest.approx(float(plan(16)))
    assert float(plan(1000)) == pytest.approx(0.05, rel=1e-6)


def test_jit_matches_eager_and_accepts_int32_steps():
    specs = [("a", cfg(shape="wsd", peak_lr=1e-3, warmup_steps=7, cooldown_shape="1-sqrt"), 30),
             ("b", cfg(shape="infinite", peak_lr=5e-4, warmup_steps=3, warmup_from="previous", constant_lr=2e-4,
                       cooldown_steps=5, cooldown_shape="inv-sqrt", anneal_steps=4, anneal_shape="exponential",
                       min_lr=1e-5), 20)]
    sched = build_plan_schedule(specs)
    jitted = jax.jit(sched)
    for s in [0, 1, 6, 7, 23, 29, 30, 31, 37, 45, 49]:
        eager = float(sched(s))
        assert float(jitted(jnp.int32(s))) == pytest.approx(eager, rel=1e-6, abs=0)
    steps = jnp.arange(50, dtype=jnp.int32)
    np.testing.assert_allclose(jitted(steps), lr_at(specs, np.arange(50)), rtol=1e-6)


def test_key_points_table():
    specs = [("pre", cfg(shape="wsd", peak_lr=1.0, warmup_steps=4, cooldown_steps=5, min_lr=0.1,
                         cooldown_shape="linear"), 20),
             ("cpt", cfg(peak_lr=0.5, warmup_steps=2, warmup_from="previous", min_lr=0.05), 10)]
    pts = key_points(specs, tokens_per_step=1000)
    assert [(p["phase"], p["step"], p["what"]) for p in pts] == [
        ("pre", 0, "start"), ("pre", 3, "peak"), ("pre", 15, "cooldown start"), ("pre", 19, "end"),
        ("cpt", 20, "start"), ("cpt", 21, "peak"), ("cpt", 29, "end")]
    close([p["lr"] for p in pts], [0.25, 1.0, 1.0 - 0.9 / 5, 0.1, 0.1 + 0.4 / 2, 0.5, 0.05])
    assert [p["tokens"] for p in pts] == [p["step"] * 1000 for p in pts]
    assert "tokens" not in key_points(specs)[0]
    merged = key_points([("x", cfg(shape="constant", peak_lr=1.0, warmup_steps=1), 1)])
    assert [(p["step"], p["what"]) for p in merged] == [(0, "start / peak / end")]


def test_infinite_key_points():
    s = cfg(shape="infinite", peak_lr=1.0, warmup_steps=2, cooldown_steps=3, constant_lr=0.5, anneal_steps=4)
    assert [(p["step"], p["what"]) for p in key_points([("i", s, 15)])] == [
        (0, "start"), (1, "peak"), (2, "cooldown start"), (5, "constant start"), (11, "anneal start"), (14, "end")]


# ---------------------------------------------------------------------------- properties
@st.composite
def phase(draw, previous_ok: bool):
    n = draw(st.integers(1, 300))
    shape = draw(st.sampled_from(["constant", "cosine", "linear", "wsd", "infinite"]))
    peak = draw(st.floats(1e-5, 1.0))
    kw = dict(shape=shape, peak_lr=peak)
    budget = n - (1 if shape in ("cosine", "linear") else 0)
    warm = draw(st.integers(0, budget))
    if warm:
        kw["warmup_steps"] = warm
        kw["warmup_shape"] = draw(st.sampled_from(["linear", "cosine"]))
        kw["warmup_from"] = draw(st.sampled_from(["previous"] if previous_ok else [0.0]) | st.floats(0, 2 * peak)
                                 | st.just(0.0))
    budget -= warm
    if shape != "constant":
        kw["min_lr_ratio"] = draw(st.floats(0.01, 1.0))
    if shape == "wsd" and budget:
        kw["cooldown_steps"] = draw(st.integers(1, budget))
        kw["cooldown_shape"] = draw(st.sampled_from(["linear", "cosine", "1-sqrt", "inv-sqrt", "exponential"]))
    elif shape == "wsd":
        return draw(phase(previous_ok))
    if shape == "infinite":
        if warm and not budget:  # a warmup needs a cooldown after it (see ScheduleConfig)
            return draw(phase(previous_ok))
        kw["cooldown_steps"] = cool = draw(st.integers(1 if warm else 0, budget))
        kw["anneal_steps"] = draw(st.integers(0, budget - cool))
        kw["constant_lr"] = peak * draw(st.floats(kw["min_lr_ratio"], 1.0))
        kw["cooldown_shape"] = draw(st.sampled_from(["cosine", "inv-sqrt"]))
        kw["anneal_shape"] = draw(st.sampled_from(["linear", "cosine", "1-sqrt", "exponential"]))
    return (f"p{n}", cfg(**kw), n)


def _segments_of(specs):
    for plan, (_, sched, _) in zip(plan_phases(specs), specs):
        offset = plan.start
        for seg in plan.segments:
            yield plan, sched, seg, offset
            offset += seg.steps


@PROPS
@given(st.lists(st.booleans(), min_size=1, max_size=3).flatmap(
    lambda flags: st.tuples(*[phase(previous_ok=i > 0) for i in range(len(flags))])))
def test_properties_of_random_plans(specs):
    specs = list(specs)
    total = sum(n for *_, n in specs)
    lrs = lr_at(specs, np.arange(total))
    tol = 1e-6
    assert np.all(np.isfinite(lrs)) and np.all(lrs >= 0)
    previous_end = None
    for plan, (_, sched, n) in zip(plan_phases(specs), specs):
        seg_lrs = lrs[plan.start:plan.start + n]
        begin = previous_end if sched.warmup_from == "previous" else float(sched.warmup_from)
        # bounded by the peak, or by the start of a re-warm from above the peak
        assert seg_lrs.max() <= max(sched.peak_lr, begin) * (1 + tol)
        previous_end = plan.end_lr
        # the last step uses the phase's final LR (up to float32 rounding, relative to the peak)
        close(seg_lrs[-1], plan.end_lr, atol=1e-6 * max(sched.peak_lr, begin))
    for plan, sched, seg, offset in _segments_of(specs):
        part = lrs[offset:offset + seg.steps]
        before = lrs[offset - 1] if offset > plan.start else seg.start_lr
        part = np.concatenate([[before], part])  # includes the value the segment starts from
        slack = tol * max(sched.peak_lr, seg.start_lr)
        if seg.end_lr >= seg.start_lr:
            assert np.all(np.diff(part) >= -slack), (seg, part)
        else:
            assert np.all(np.diff(part) <= slack), (seg, part)
        if seg.kind in ("warmup", "decay", "cooldown", "anneal"):
            lo, hi = sorted((seg.start_lr, seg.end_lr))
            assert np.all((part >= lo - slack) & (part <= hi + slack))
    # continuity promised by `warmup_from: previous`: the boundary step moves by at most one
    # warmup increment (pi/2 times that at the cosine warmup's steepest point)
    plans = plan_phases(specs)
    for prev, plan, (_, sched, _) in zip(plans, plans[1:], specs[1:]):
        if sched.warmup_from == "previous":
            w = plan.segments[0].steps
            jump = abs(lrs[plan.start] - lrs[plan.start - 1])
            assert jump <= abs(sched.peak_lr - prev.end_lr) * (math.pi / 2) / w * (1 + 1e-5) + 1e-9


@settings(max_examples=25, deadline=None)  # each example compiles: keep the count small
@given(phase(previous_ok=False), st.integers(0, 400))
def test_jit_equals_eager_anywhere(spec, step):
    sched = build_plan_schedule([spec])
    # XLA may fold x / n into x * (1 / n) under jit: equal up to float32 rounding of the peak
    ulps = 4 * float(np.finfo(np.float32).eps) * max(spec[1].peak_lr, float(spec[1].warmup_from))
    assert float(jax.jit(sched)(jnp.int32(step))) == pytest.approx(float(sched(step)), rel=1e-6, abs=ulps)


# ---------------------------------------------------------------------------- errors
@pytest.mark.parametrize("kw, key, words", [
    ({"peak_lr": 0.0}, "peak_lr", "must be a positive number"),
    ({"peak_lr": float("nan")}, "peak_lr", "must be a positive number"),
    ({"peak_lr": 1.0, "shape": "cosin"}, "shape", "did you mean 'cosine'"),
    ({"peak_lr": 1.0, "shape": "wsd", "cooldown_shape": "1-sqr"}, "cooldown_shape", "did you mean '1-sqrt'"),
    ({"peak_lr": 1.0, "warmup_shape": "cosin"}, "warmup_shape", "did you mean 'cosine'"),
    ({"peak_lr": 1.0, "min_lr": 2.0}, "min_lr", "above peak_lr"),
    ({"peak_lr": 1.0, "min_lr_ratio": 1.5}, "min_lr_ratio", "[0, 1]"),
    ({"peak_lr": 1.0, "min_lr": 0.1, "min_lr_ratio": 0.1}, "min_lr_ratio", "not both"),
    ({"peak_lr": 1.0, "warmup_steps": -1}, "warmup_steps", ">= 0"),
    ({"peak_lr": 1.0, "warmup_steps": 2, "warmup_fraction": 0.1}, "warmup_fraction", "not both"),
    ({"peak_lr": 1.0, "warmup_fraction": 1.0}, "warmup_fraction", "[0, 1)"),
    ({"peak_lr": 1.0, "warmup_steps": 3, "warmup_from": -1.0}, "warmup_from", ">= 0"),
    ({"peak_lr": 1.0, "warmup_steps": 3, "warmup_from": "prev"}, "warmup_from", "'previous'"),
    ({"peak_lr": 1.0, "warmup_from": "previous"}, "warmup_from", "without a warmup"),
    ({"peak_lr": 1.0, "shape": "wsd", "cooldown_steps": 0}, "cooldown_steps", "must be positive"),
    ({"peak_lr": 1.0, "shape": "wsd", "cooldown_fraction": 0.0}, "cooldown_fraction", "(0, 1]"),
    ({"peak_lr": 1.0, "cooldown_steps": 5}, "cooldown_steps", "not used by shape 'cosine'"),
    ({"peak_lr": 1.0, "shape": "constant", "min_lr": 0.1}, "min_lr", "not used by shape 'constant'"),
    ({"peak_lr": 1.0, "anneal_steps": 5}, "anneal_steps", "only shape 'infinite'"),
    ({"peak_lr": 1.0, "shape": "infinite", "cooldown_steps": 3}, "constant_lr", "needs the LR"),
    ({"peak_lr": 1.0, "shape": "infinite", "constant_lr": 2.0, "cooldown_steps": 3}, "constant_lr", "above peak_lr"),
    ({"peak_lr": 1.0, "shape": "infinite", "constant_lr": 0.01, "cooldown_steps": 3}, "constant_lr", "below the floor"),
    ({"peak_lr": 1.0, "shape": "infinite", "constant_lr": 0.5}, "cooldown_steps", "needs cooldown_steps"),
    ({"peak_lr": 1.0, "shape": "infinite", "constant_lr": 0.5, "cooldown_steps": -2}, "cooldown_steps", ">= 0"),
    ({"peak_lr": 1.0, "shape": "infinite", "constant_lr": 0.5, "cooldown_steps": 0, "warmup_steps": 5},
     "cooldown_steps", "would jump"),
    ({"peak_lr": 1.0, "shape": "infinite", "constant_lr": 0.5, "cooldown_steps": 2, "anneal_steps": -1},
     "anneal_steps", ">= 0"),
    ({"peak_lr": 1.0, "shape": "infinite", "constant_lr": 0.5, "cooldown_steps": 2, "anneal_steps": 3,
      "min_lr": 0.0, "anneal_shape": "exponential"}, "anneal_shape", "cannot reach a floor of 0"),
    ({"peak_lr": 1.0, "shape": "wsd", "min_lr": 0.0, "cooldown_shape": "exponential"},
     "cooldown_shape", "cannot reach a floor of 0"),
    ({"peak_lr": 1.0, "inv_sqrt_alpha": 0.0}, "inv_sqrt_alpha", "must be positive"),
    ({"peak_lr": 1.0, "cooldown": 3}, "cooldown", "unknown key"),
])
def test_bad_config_names_the_key(kw, key, words):
    with pytest.raises(ConfigError) as err:
        from_dict(ScheduleConfig, kw, "phases[2].schedule")
    assert err.value.key == f"phases[2].schedule.{key}", str(err.value)
    assert words in str(err.value)


GOOD = cfg(peak_lr=1.0, warmup_steps=5)


@pytest.mark.parametrize("kw, steps, key, words", [
    ({"shape": "wsd", "warmup_steps": 30, "cooldown_steps": 80}, 100, "cooldown_steps", "do not fit"),
    ({"shape": "wsd", "warmup_fraction": 0.5, "cooldown_fraction": 0.6}, 100, "cooldown_fraction", "do not fit"),
    ({"shape": "infinite", "constant_lr": 0.5, "cooldown_steps": 50, "anneal_steps": 51}, 100, "anneal_steps",
     "do not fit"),
    ({"shape": "infinite", "constant_lr": 0.5, "warmup_steps": 60, "cooldown_steps": 50}, 100, "cooldown_steps",
     "do not fit"),
    ({"shape": "constant", "warmup_steps": 101}, 100, "warmup_steps", "longer than"),
    ({"warmup_steps": 100}, 100, "warmup_steps", "no step for the cosine decay"),
    ({"shape": "linear", "warmup_fraction": 0.99}, 10, "warmup_fraction", "no step for the linear decay"),
])
def test_budget_errors_name_phase_and_key(kw, steps, key, words):
    bad = cfg(peak_lr=1.0, **kw)
    with pytest.raises(ConfigError) as err:
        build_plan_schedule([("base", GOOD, 50), ("domain", bad, steps)])
    assert err.value.key == f"phases[1].schedule.{key}", str(err.value)
    assert words in str(err.value) and "'domain'" in str(err.value) and f"{steps} steps" in str(err.value)


def test_previous_in_first_phase_is_an_error():
    with pytest.raises(ConfigError) as err:
        build_plan_schedule([("first", cfg(peak_lr=1.0, warmup_steps=3, warmup_from="previous"), 10)])
    assert err.value.key == "phases[0].schedule.warmup_from"


def test_config_round_trips_and_docstring_documents_every_key():
    c = cfg(shape="infinite", peak_lr=1e-3, warmup_steps=3, warmup_from="previous", constant_lr=1e-4,
            cooldown_fraction=0.1, anneal_steps=7)
    assert from_dict(ScheduleConfig, to_dict(c)) == c
    keys_section = inspect.cleandoc(ScheduleConfig.__doc__).split("Keys (YAML) and defaults:\n")[1]
    entries = re.split(r"\n(?=  [a-z_]+: )", keys_section.strip("\n"))
    documented = {re.match(r"  ([a-z_]+): ", e).group(1): e for e in entries}
    assert set(documented) == {f.name for f in dataclasses.fields(ScheduleConfig)}
    for name, entry in documented.items():
        assert "Default" in entry or "Required" in entry, name


# ---------------------------------------------------------------------------- plot and CLI
PLAN_YAML = """\
run_dir: {run_dir}
model: {{vocab_size: 64, hidden_size: 32, intermediate_size: 64, num_layers: 1, num_heads: 4}}
data: {{seq_len: 16, global_batch_size: 8, sources: {{a: {{kind: synthetic}}}}}}
phases:
  - name: pretrain
    init: scratch
    steps: 100
    mixture: {{a: 1.0}}
    schedule: {{shape: wsd, peak_lr: 3.0e-4, warmup_steps: 10, cooldown_fraction: 0.2, min_lr: 3.0e-5}}
  - name: domain
    tokens: 10000
    mixture: {{a: 1.0}}
    schedule: {{peak_lr: 1.0e-4, warmup_steps: 5, warmup_from: previous, min_lr_ratio: 0.1}}
"""


def _write_plan(tmp_path):
    path = tmp_path / "plan.yaml"
    path.write_text(PLAN_YAML.format(run_dir=tmp_path / "run"))
    return path


def test_cli_prints_table_and_writes_png(tmp_path, capsys):
    from cpt_jax.cli.main import main

    out = tmp_path / "figs" / "lr.png"
    assert main(["schedule", str(_write_plan(tmp_path)), "--plot", str(out)]) == 0
    printed = capsys.readouterr().out
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    assert sorted(p.name for p in out.parent.iterdir()) == ["lr.png"]  # no temp file left behind
    # domain: 10000 tokens / 128 per step -> 79 steps; the last row is the plan's final LR
    assert "2 phase(s), 179 steps" in printed
    lines = [line.split() for line in printed.splitlines()]
    assert lines[1] == ["phase", "step", "tokens", "lr", "what"]
    rows = {(row[0], row[-1]): row for row in lines[3:]}
    assert rows[("pretrain", "peak")][1:4] == ["9", "1,152", "3.0000e-04"]
    assert rows[("domain", "end")][1:4] == ["178", "22,784", "1.0000e-05"]
    start = rows[("domain", "start")]
    assert float(start[3]) == pytest.approx(3e-5 + (1e-4 - 3e-5) / 5, rel=1e-4)


def test_cli_override_error_names_phase_key(tmp_path, capsys):
    from cpt_jax.cli.main import main

    rc = main(["schedule", str(_write_plan(tmp_path)), "phases.1.schedule.warmup_steps=500"])
    err = capsys.readouterr().err
    assert rc == 2 and "phases[1].schedule.warmup_steps" in err and "Traceback" not in err


def test_plot_long_plan_is_sampled(tmp_path):
    from cpt_jax.schedules.plot import plot_plan

    specs = [("long", cfg(shape="wsd", peak_lr=1e-3, warmup_steps=2000), 1_000_000),
             ("more", cfg(peak_lr=5e-4, warmup_steps=1000, warmup_from="previous"), 500_000)]
    out = plot_plan(specs, tmp_path / "long.png", tokens_per_step=4_194_304)
    assert out.read_bytes()[:4] == b"\x89PNG"
