"""A multi-phase plan as ONE learning-rate schedule of the global step.

Phase p covers global steps [start_p, start_p + steps_p); the update at global step s (0-based)
uses lr = schedule(s), and within a phase the step semantics of `ScheduleConfig` apply. Because
the LR is a pure function of the global step, resuming at any step gives the same LR as an
uninterrupted run, and a phase boundary changes the LR exactly as the plan says.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import jax.numpy as jnp
import numpy as np
import optax

from cpt_jax.config.base import ConfigError, fail, join
from cpt_jax.schedules import shapes
from cpt_jax.schedules.config import DEFAULT_WSD_COOLDOWN_FRACTION, ScheduleConfig

PhaseSpec = tuple[str, ScheduleConfig, int]  # (name, schedule, steps)


@dataclass(frozen=True)
class Segment:
    """One piece of a phase's curve: `steps` long, from `start_lr` to `end_lr`."""

    kind: str  # warmup | stable | decay | cooldown | constant | anneal
    steps: int
    start_lr: float
    end_lr: float
    shape: str  # a transition shape, or "constant"

    def schedule(self, inv_sqrt_alpha: float) -> optax.Schedule:
        if self.shape == "constant":
            return shapes.constant(self.start_lr)
        return shapes.transition(self.shape, self.start_lr, self.end_lr, self.steps, inv_sqrt_alpha)


@dataclass(frozen=True)
class PhasePlan:
    name: str
    path: str  # e.g. "phases[1].schedule", for error messages
    start: int  # first global step
    steps: int
    segments: tuple[Segment, ...]

    @property
    def end_lr(self) -> float:
        """The LR of the phase's last step (what `warmup_from: previous` continues from)."""
        return self.segments[-1].end_lr


def _length(cfg: ScheduleConfig, key: str, num_steps: int, default_fraction: float | None = None) -> int:
    steps = getattr(cfg, f"{key}_steps")
    if steps is not None:
        return steps
    fraction = getattr(cfg, f"{key}_fraction")
    fraction = default_fraction if fraction is None else fraction
    if not fraction:
        return 0
    return max(1, int(fraction * num_steps + 0.5))  # nearest step, at least one


def _key(cfg: ScheduleConfig, key: str) -> str:
    """The config key the user set for a length (steps or fraction), to name it in errors."""
    return f"{key}_fraction" if getattr(cfg, f"{key}_fraction") is not None else f"{key}_steps"


def phase_segments(cfg: ScheduleConfig, num_steps: int, start_lr: Optional[float], path: str,
                   phase_name: str = "") -> tuple[Segment, ...]:
    """Resolve a phase's config against its step budget; errors name `path` and the phase."""
    where = f"phase {phase_name!r} ({num_steps} steps)" if phase_name else f"the phase ({num_steps} steps)"
    if num_steps <= 0:
        raise ConfigError(path, f"{where} needs a positive number of steps")
    peak, floor = cfg.peak_lr, cfg.floor
    if cfg.warmup_from == "previous":
        if start_lr is None:
            fail(path, "warmup_from", "'previous' needs a previous phase; the first phase warms up from a number")
        begin = float(start_lr)
    else:
        begin = float(cfg.warmup_from)

    warmup = _length(cfg, "warmup", num_steps)
    if warmup > num_steps:
        fail(path, _key(cfg, "warmup"), f"warmup of {warmup} steps is longer than {where}; shorten it")
    segments = [Segment("warmup", warmup, begin, peak, cfg.warmup_shape)] if warmup else []
    rest = num_steps - warmup

    def need(used: int, key: str, what: str) -> None:
        if used > num_steps:
            fail(path, key, f"{what} = {used} steps do not fit in {where}; shorten them")

    if cfg.shape == "constant":
        segments.append(Segment("stable", rest, peak, peak, "constant"))
    elif cfg.shape in ("cosine", "linear"):
        if rest == 0:
            fail(path, _key(cfg, "warmup"), f"warmup of {warmup} steps leaves no step for the {cfg.shape} "
                                            f"decay in {where}; shorten the warmup")
        segments.append(Segment("decay", rest, peak, floor, cfg.shape))
    elif cfg.shape == "wsd":
        cooldown = _length(cfg, "cooldown", num_steps, DEFAULT_WSD_COOLDOWN_FRACTION)
        need(warmup + cooldown, _key(cfg, "cooldown"), f"warmup ({warmup}) + cooldown ({cooldown})")
        segments.append(Segment("stable", rest - cooldown, peak, peak, "constant"))
        segments.append(Segment("cooldown", cooldown, peak, floor, cfg.resolved_cooldown_shape))
    elif cfg.shape == "infinite":
        level = cfg.constant_lr
        cooldown = _length(cfg, "cooldown", num_steps)
        need(warmup + cooldown, _key(cfg, "cooldown"), f"warmup ({warmup}) + cooldown ({cooldown})")
        anneal = cfg.anneal_steps
        need(warmup + cooldown + anneal, "anneal_steps",
             f"warmup ({warmup}) + cooldown ({cooldown}) + anneal ({anneal})")
        segments.append(Segment("cooldown", cooldown, peak, level, cfg.resolved_cooldown_shape))
        segments.append(Segment("constant", rest - cooldown - anneal, level, level, "constant"))
        segments.append(Segment("anneal", anneal, level, floor, cfg.anneal_shape))
    else:  # the config's Literal rules this out; kept so a new shape cannot pass silently
        fail(path, "shape", f"unknown shape {cfg.shape!r}")
    return tuple(s for s in segments if s.steps > 0)


def _phase_schedule(segments: Sequence[Segment], inv_sqrt_alpha: float) -> optax.Schedule:
    curve = shapes.join([s.schedule(inv_sqrt_alpha) for s in segments], [s.steps for s in segments])
    # The update at local step i uses the curve at the end of that step (see ScheduleConfig).
    return lambda step: curve(step + 1)


def build_phase_schedule(cfg: ScheduleConfig, num_steps: int, start_lr: Optional[float], path: str,
                         phase_name: str = "") -> optax.Schedule:
    """lr as a function of the step within one phase; `start_lr` is the previous phase's last LR
    (None for the first phase), used by `warmup_from: previous`."""
    return _phase_schedule(phase_segments(cfg, num_steps, start_lr, path, phase_name), cfg.inv_sqrt_alpha)


def plan_phases(phases: Sequence[PhaseSpec]) -> list[PhasePlan]:
    if not phases:
        raise ConfigError("phases", "the plan needs at least one phase")
    plans, start, previous = [], 0, None
    for i, (name, cfg, steps) in enumerate(phases):
        path = join(join("phases", i), "schedule")
        segments = phase_segments(cfg, steps, previous, path, name)
        plans.append(PhasePlan(name, path, start, steps, segments))
        start += steps
        previous = plans[-1].end_lr
    return plans


def build_plan_schedule(phases: Sequence[PhaseSpec]) -> optax.Schedule:
    """lr as a function of the global step for phases given as (name, schedule, steps)."""
    plans = plan_phases(phases)
    per_phase = [_phase_schedule(p.segments, cfg.inv_sqrt_alpha) for p, (_, cfg, _) in zip(plans, phases)]
    return shapes.join(per_phase, [p.steps for p in plans])


def lr_at(phases: Sequence[PhaseSpec], steps) -> np.ndarray:
    """The plan's LR at the given global steps, as float64 numpy (for tables and plots)."""
    schedule = build_plan_schedule(phases)
    steps = np.asarray(steps, np.int64).reshape(-1)
    # Pad to a power of two: eager jnp ops compile once per shape, so a few sizes serve all calls.
    padded = np.zeros(max(16, 1 << int(len(steps) - 1).bit_length()), np.int32)
    padded[:len(steps)] = steps
    return np.asarray(schedule(jnp.asarray(padded)), np.float64)[:len(steps)]


_POINT_AT_SEGMENT_START = {"cooldown": "cooldown start", "constant": "constant start", "anneal": "anneal start"}


def key_points(phases: Sequence[PhaseSpec], tokens_per_step: int | Sequence[int] | None = None) -> list[dict]:
    """Start, peak, cooldown/constant/anneal starts and end of each phase, in step order.

    Each point: {'phase', 'step' (global), 'lr' (used by that step), 'what'} plus 'tokens'
    (tokens consumed before that step) when tokens_per_step is given: one number for the whole
    plan, or one per phase (phases with their own batch size or row length).
    Points of one phase that fall on the same step are merged ('start / peak').
    """
    points: list[tuple[str, int, str]] = []
    plans = plan_phases(phases)
    per_phase = [tokens_per_step] * len(plans) if isinstance(tokens_per_step, int) else tokens_per_step
    before, phase_of = [0], {}  # tokens before each phase starts; phase index of each point
    for plan, t in zip(plans, per_phase or []):
        before.append(before[-1] + plan.steps * t)
    for i, plan in enumerate(plans):
        local: dict[int, list[str]] = {0: ["start"]}
        offset = 0
        for seg in plan.segments:
            if seg.kind == "warmup":
                local.setdefault(seg.steps - 1, []).append("peak")
            elif seg.kind in _POINT_AT_SEGMENT_START:
                local.setdefault(offset, []).append(_POINT_AT_SEGMENT_START[seg.kind])
            offset += seg.steps
        local.setdefault(plan.steps - 1, []).append("end")
        for k, what in sorted(local.items()):
            phase_of[len(points)] = i
            points.append((plan.name, plan.start + k, " / ".join(what)))
    lrs = lr_at(phases, [step for _, step, _ in points])
    out = []
    for j, ((name, step, what), lr) in enumerate(zip(points, lrs)):
        row = {"phase": name, "step": step, "lr": float(lr), "what": what}
        if per_phase is not None:
            i = phase_of[j]
            row["tokens"] = before[i] + (step - plans[i].start) * per_phase[i]
        out.append(row)
    return out
