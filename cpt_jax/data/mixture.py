"""Mixture plans: how many rows of each source global batch `step` holds, and where.

Source k has quota q_k = batch_size * w_k rows per batch. Every batch gives it floor(q_k) rows plus,
in some batches, one extra row; the r_k = q_k - floor(q_k) extras per batch (they sum to a whole
number R) are scheduled like R processors shared by tasks of rates r_k, with the PD2 Pfair rule
(Anderson & Srinivasan): after every step s, source k has had floor(r_k s) or ceil(r_k s) extras.
Hence, for every step s and source k:

- batch s holds floor(q_k) or ceil(q_k) rows of k (counts vary by at most one row), summing to
  batch_size;
- batches 0..s-1 hold within one row of q_k * s rows of k (|rows - q_k s| < 1), exactly q_k s when
  that is whole: 5% replay at batch 64 gives 3 or 4 rows per batch and 640 of 12800 over 200 steps.

Weights are exact fractions (0.05 is 1/20), so the schedule repeats with period D, the common
denominator of the r_k; one period is computed once and tiled, so the rows before any step cost
O(#sources). Weights whose period would exceed MAX_PERIOD are first rounded to multiples of
1/QUANTUM (describe() shows requested and planned weights). A share below 1/batch_size is
realised over several batches. Rows of a source are spread evenly over each batch (row i of c sits
near (i + 1/2) / c of the way through), so every host slice and gradient-accumulation micro-batch
gets a fair share. Sources are ordered by name, so the plan does not depend on how the mixture
was written.
"""

from __future__ import annotations

import functools
import math
from fractions import Fraction
from typing import Iterable, Mapping

import numpy as np

from cpt_jax.errors import DataError

MAX_PERIOD = 20_000  # steps in one tiled period of the extra-row schedule
QUANTUM = 10_000  # weights are rounded to multiples of 1/QUANTUM when the exact period is longer


class MixturePlan:
    """Rows per source for every step of a phase: a pure function of (weights, batch size, step)."""

    def __init__(self, names: tuple[str, ...], requested: tuple[Fraction, ...], weights: tuple[Fraction, ...],
                 batch_size: int):
        self.names = names  # sources with a positive weight, sorted
        self.requested = tuple(float(w) for w in requested)  # normalised to sum 1, as asked
        self.weights = tuple(float(w) for w in weights)  # what the schedule realises in the long run
        self.batch_size = batch_size
        quotas = [w * batch_size for w in weights]
        self.base = tuple(math.floor(q) for q in quotas)  # rows every batch
        fractions = [q - b for q, b in zip(quotas, self.base)]
        self.period = math.lcm(*(f.denominator for f in fractions))
        self.extra_per_period = tuple(int(f * self.period) for f in fractions)
        self._table = _extra_schedule(self.extra_per_period, self.period)  # [period + 1, K] cumulative extras
        self._layouts: dict[tuple[int, ...], tuple[tuple[int, ...], tuple[int, ...]]] = {}

    def cumulative(self, step: int) -> tuple[int, ...]:
        """Rows of each source in batches 0..step-1 (O(#sources) for any step)."""
        whole, rest = divmod(int(step), self.period)
        return tuple(b * step + whole * e + int(t)
                     for b, e, t in zip(self.base, self.extra_per_period, self._table[rest]))

    def counts(self, step: int) -> tuple[int, ...]:
        """Rows of each source in batch `step`."""
        rest = int(step) % self.period
        return tuple(b + int(d) for b, d in zip(self.base, self._table[rest + 1] - self._table[rest]))

    def layout(self, step: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """(source index of each batch row, that row's rank among its source's rows) for batch `step`."""
        counts = self.counts(step)
        if counts not in self._layouts:
            order = interleave(list(counts))
            seen, slot = [0] * len(counts), []
            for k in order:
                slot.append(seen[k])
                seen[k] += 1
            self._layouts[counts] = (tuple(order), tuple(slot))
        return self._layouts[counts]

    def rows_before(self, name: str, step: int) -> int:
        return self.cumulative(step)[self.names.index(name)] if name in self.names else 0

    def realised(self, steps: int) -> dict[str, float]:
        """Share of the rows of batches 0..steps-1 that each source got."""
        done = self.cumulative(steps)
        return {n: c / (self.batch_size * steps) if steps else 0.0 for n, c in zip(self.names, done)}

    def describe(self, steps: int | None = None) -> dict[str, dict]:
        """Per source: requested and planned weight, rows per batch, and (given steps) the realised
        share and rows over batches 0..steps-1."""
        out = {}
        realised = self.realised(steps) if steps else {}
        done = self.cumulative(steps) if steps else ()
        for k, n in enumerate(self.names):
            lo = self.base[k]
            hi = lo + (self.extra_per_period[k] > 0)
            out[n] = {"requested": self.requested[k], "weight": self.weights[k],
                      "rows_per_batch": f"{lo}" if lo == hi else f"{lo}-{hi}"}
            if steps:
                out[n].update(realised=realised[n], rows=done[k])
        return out


def plan_mixture(mixture: Mapping[str, float], batch_size: int, known: Iterable[str]) -> MixturePlan:
    known = set(known)
    if not mixture:
        raise DataError("the mixture is empty; give at least one source with a positive weight")
    unknown = sorted(set(mixture) - known)
    if unknown:
        raise DataError(f"mixture names unknown source(s) {', '.join(unknown)}; data.sources defines "
                        f"{', '.join(sorted(known)) or 'none'}")
    for name, w in mixture.items():
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w < 0:
            raise DataError(f"mixture weight of '{name}' must be a finite number >= 0, got {w!r}")
    if batch_size < 1:
        raise DataError(f"global_batch_size must be >= 1, got {batch_size}")
    exact = {n: _fraction(w) for n, w in mixture.items()}
    total = sum(exact.values())
    if total <= 0:
        raise DataError("mixture weights must sum to a positive number")
    names = tuple(sorted(n for n, w in exact.items() if w > 0))
    return _plan(names, tuple(exact[n] / total for n in names), batch_size)


@functools.lru_cache(maxsize=64)
def _plan(names: tuple[str, ...], requested: tuple[Fraction, ...], batch_size: int) -> MixturePlan:
    weights = requested
    fractions = [w * batch_size - math.floor(w * batch_size) for w in weights]
    if math.lcm(*(f.denominator for f in fractions)) > MAX_PERIOD:
        units = largest_remainder(list(weights), QUANTUM)
        units = _keep_positive(units)
        weights = tuple(Fraction(u, QUANTUM) for u in units)
    return MixturePlan(names, requested, weights, batch_size)


def _fraction(w: float) -> Fraction:
    """The weight as written (0.05 -> 1/20), not its binary float value."""
    return Fraction(w) if isinstance(w, int) else Fraction(repr(float(w)))


def _keep_positive(units: list[int]) -> list[int]:
    """Every source with a positive weight keeps at least one unit (taken from the largest)."""
    units = list(units)
    for k, u in enumerate(units):
        if u == 0:
            units[units.index(max(units))] -= 1
            units[k] = 1
    return units


def largest_remainder(weights: list[Fraction], total: int) -> list[int]:
    """Integer counts summing to total, each the floor or ceiling of its exact quota; the leftover
    units go to the largest remainders (ties: earlier source)."""
    quotas = [w * total for w in weights]
    counts = [math.floor(q) for q in quotas]
    by_remainder = sorted(range(len(quotas)), key=lambda k: (-(quotas[k] - counts[k]), k))
    for k in by_remainder[: total - sum(counts)]:
        counts[k] += 1
    return counts


def interleave(counts: list[int]) -> list[int]:
    """Source index per row, each source's rows evenly spread (exact rational keys, ties by index)."""
    keys = [(Fraction(2 * i + 1, 2 * c), k) for k, c in enumerate(counts) for i in range(c)]
    return [k for _, k in sorted(keys)]


def _extra_schedule(extra: tuple[int, ...], period: int) -> np.ndarray:
    """[period + 1, K] extras given to each source before each step of one period (PD2 Pfair).

    Source k is a task of weight e_k / period; its j-th extra (j >= 1) must be given in a step t
    with floor((j-1) p / e) <= t < ceil(j p / e). Each step serves the R = sum(e) / period tasks of
    highest priority among those whose next extra is released: earlier deadline first, then the
    b-bit (windows that overlap the next one first), then for heavy tasks the later group
    deadline; PD2 is optimal at full utilisation, so every window is met.
    """
    K = len(extra)
    table = np.zeros((period + 1, K), np.int64)
    chairs, rem = divmod(sum(extra), period)
    assert rem == 0, "extras must sum to whole rows per batch"
    groups = [_group_deadlines(e, period) if 2 * e >= period else None for e in extra]
    given = [0] * K
    for t in range(period):
        ready = []
        for k, e in enumerate(extra):
            j = given[k] + 1
            if e and j <= e and (j - 1) * period // e <= t:
                deadline = -(-j * period // e)
                b = int(j * period % e != 0)
                ready.append((deadline, -b, -(groups[k][j] if groups[k] else 0), k))
        ready.sort()
        if len(ready) < chairs or any(d <= t + 1 for d, *_ in ready[chairs:]):
            raise AssertionError(f"PD2 schedule infeasible at step {t} for extras {extra}/{period}")
        for *_, k in ready[:chairs]:
            given[k] += 1
        table[t + 1] = given
    return table


def _group_deadlines(e: int, period: int) -> list[int]:
    """PD2 group deadlines of subtasks 1..e (index 0 unused) of a heavy task (e / period >= 1/2):
    for subtask i, the earliest t >= d(i) with t = d(k) and b(k) = 0, or t + 1 = d(k) and a window
    of length 3, for some k >= i. One backward pass over the subtasks."""
    out = [0] * (e + 1)
    later = math.inf  # earliest such time among subtasks k > i (all of them are >= d(i))
    for i in range(e, 0, -1):
        d = -(-i * period // e)
        whole = i * period % e == 0
        out[i] = int(min(d if whole else math.inf, later))
        if whole:
            later = min(later, d)
        if d - (i - 1) * period // e == 3:
            later = min(later, d - 1)
    return out
