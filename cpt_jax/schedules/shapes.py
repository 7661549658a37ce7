"""Transitions between two learning rates, as optax schedules of a segment-local count.

Each `transition(shape, start, end, steps)` gives `start` at count 0, `end` at count `steps` and
holds `end` after; counts below 0 give `start`. Formulas are in `ScheduleConfig`'s docstring.
"""

from __future__ import annotations

import itertools
from typing import Callable, Sequence

import jax.numpy as jnp
import optax


def _progress(count, steps: int):
    return jnp.clip(jnp.asarray(count, jnp.float32) / float(steps), 0.0, 1.0)


def _eased(start: float, end: float, steps: int, ease: Callable) -> optax.Schedule:
    """start + (end - start) * ease(u), ease(0) = 0, ease(1) = 1."""
    return lambda count: start + (end - start) * ease(_progress(count, steps))


def _clamped(schedule: optax.Schedule) -> optax.Schedule:
    return lambda count: schedule(jnp.maximum(count, 0))


def transition(shape: str, start: float, end: float, steps: int, inv_sqrt_alpha: float = 10.0) -> optax.Schedule:
    """`start` -> `end` over `steps` with the given shape (linear, cosine, 1-sqrt, inv-sqrt, exponential)."""
    if steps <= 0:
        raise ValueError(f"a transition needs steps > 0, got {steps}")
    if shape == "linear":
        return optax.linear_schedule(start, end, steps)
    if shape == "cosine":
        # optax's cosine decays init_value to alpha * init_value; shifting by `end` makes it a
        # cosine from `start` to `end` in either direction (so it is also the cosine warmup).
        decay = optax.cosine_decay_schedule(start - end, steps)
        return _clamped(lambda count: end + decay(count))
    if shape == "exponential":
        if start <= 0 or end <= 0:
            raise ValueError(f"an exponential transition needs positive endpoints, got {start} -> {end}")
        return _clamped(optax.exponential_decay(start, steps, end / start, end_value=end))
    # optax has no 1-sqrt (Hägele et al. 2024) or normalised inverse-sqrt (Ibrahim et al. 2024)
    # transition between two given values, so these two are written here.
    if shape == "1-sqrt":
        return _eased(start, end, steps, jnp.sqrt)
    if shape == "inv-sqrt":
        h1 = 1.0 - 1.0 / (1.0 + inv_sqrt_alpha) ** 0.5
        return _eased(start, end, steps, lambda u: (1.0 - 1.0 / jnp.sqrt(1.0 + inv_sqrt_alpha * u)) / h1)
    raise ValueError(f"unknown transition shape {shape!r}")


def constant(value: float) -> optax.Schedule:
    # Not optax.constant_schedule: it returns the bare scalar, and a phase that is one constant
    # segment must still give one LR per step when called on an array of steps.
    return lambda count: jnp.full(jnp.shape(count), value, jnp.float32)


def join(schedules: Sequence[optax.Schedule], lengths: Sequence[int]) -> optax.Schedule:
    """Segments back to back: segment k sees its own count, starting at 0 where it begins."""
    if len(schedules) == 1:
        return schedules[0]
    return optax.join_schedules(list(schedules), list(itertools.accumulate(lengths[:-1])))
