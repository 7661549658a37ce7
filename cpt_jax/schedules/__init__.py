"""Learning-rate schedules: per-phase shapes composed into one schedule of the global step."""

from cpt_jax.schedules.config import ScheduleConfig
from cpt_jax.schedules.plan import (
    PhasePlan,
    Segment,
    build_phase_schedule,
    build_plan_schedule,
    key_points,
    lr_at,
    phase_segments,
    plan_phases,
)

__all__ = [
    "PhasePlan",
    "ScheduleConfig",
    "Segment",
    "build_phase_schedule",
    "build_plan_schedule",
    "key_points",
    "lr_at",
    "phase_segments",
    "plan_phases",
]
