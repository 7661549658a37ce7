"""The statistics behind every verdict of `make experiments`: seed-paired differences, their 95%
t-interval, and the verdict words a claim earns from it.

Each seed has its own trunk (init and data order), so the runs of one seed form a pair and the
seed-to-seed spread is the noise. A comparison is the per-seed difference A_s - B_s; its 95%
interval is mean +- t(0.975, n-1) * sd / sqrt(n) (t = 4.303 at three seeds). "Beyond noise" means
the interval excludes the threshold, and the half-width is the smallest effect the comparison
could have detected, so that "too few seeds to tell" is not read as "no effect".
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Sequence

# 97.5% quantiles of Student's t by degrees of freedom, used when scipy is missing.
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
        15: 2.131, 20: 2.086, 30: 2.042}

REPRODUCED = "reproduced"
CONTRADICTED = "contradicted"
NOT_IDENTIFIABLE = "not identifiable"
TOO_FEW = "not reproduced (too few seeds to tell)"
MOST = 0.5  # the papers' "most": more than half


def t975(df: int) -> float:
    """The 97.5% quantile of Student's t with `df` degrees of freedom (two-sided 95%)."""
    if df < 1:
        raise ValueError("a t-interval needs at least two values")
    try:
        from scipy.stats import t
    except ImportError:  # pragma: no cover - scipy is a cpt_jax dependency
        return T975[max(k for k in T975 if k <= df)]
    return float(t.ppf(0.975, df))


@dataclass(frozen=True)
class Interval:
    """Mean of per-seed values (or paired differences) and its 95% t-interval."""

    values: tuple[float, ...]
    mean: float
    half: float  # t * sd / sqrt(n): the smallest effect this comparison could detect

    @property
    def lo(self) -> float:
        return self.mean - self.half

    @property
    def hi(self) -> float:
        return self.mean + self.half

    def side(self, threshold: float = 0.0) -> int:
        """+1 when the whole interval lies above `threshold`, -1 below it, 0 when it straddles it."""
        return 1 if self.lo > threshold else -1 if self.hi < threshold else 0

    def fmt(self, digits: int = 4) -> str:
        return f"{self.mean:+.{digits}f} [{self.lo:+.{digits}f}, {self.hi:+.{digits}f}]"

    def fmt_plain(self, digits: int = 4) -> str:
        return f"{self.mean:.{digits}f} ± {self.half:.{digits}f}"


def interval(values: Iterable[float]) -> Interval:
    v = [float(x) for x in values]
    n = len(v)
    if n < 2:
        raise ValueError(f"a t-interval needs at least two seeds, got {n}")
    mean = sum(v) / n
    sd = math.sqrt(sum((x - mean) ** 2 for x in v) / (n - 1))
    return Interval(tuple(v), mean, t975(n - 1) * sd / math.sqrt(n))


def paired(a: Sequence[float], b: Sequence[float]) -> Interval:
    """The interval of the seed-paired differences a_s - b_s."""
    if len(a) != len(b):
        raise ValueError(f"paired values need one per seed on both sides, got {len(a)} and {len(b)}")
    return interval(x - y for x, y in zip(a, b))


def directional(iv: Interval, sign: int, threshold: float = 0.0) -> str:
    """The verdict on a claim that the quantity lies on the `sign` side (+1 above, -1 below) of
    `threshold`: reproduced when the interval is wholly on that side, contradicted when wholly on
    the other, otherwise too few seeds to tell."""
    if sign not in (1, -1):
        raise ValueError("sign is +1 (claim: above) or -1 (claim: below)")
    side = iv.side(threshold)
    return REPRODUCED if side == sign else CONTRADICTED if side == -sign else TOO_FEW


def equivalent(iv: Interval, margin: float) -> str:
    """The verdict on a claim that two things match within +-margin: reproduced when the interval
    of their difference lies inside the margin, contradicted when it lies wholly outside."""
    if iv.lo > -margin and iv.hi < margin:
        return REPRODUCED
    if iv.lo > margin or iv.hi < -margin:
        return CONTRADICTED
    return TOO_FEW


def _kind(verdict: str) -> str:
    for kind in (NOT_IDENTIFIABLE, CONTRADICTED, REPRODUCED, TOO_FEW):
        if verdict.startswith(kind):
            return kind
    raise ValueError(f"unknown verdict {verdict!r}")


def combine(parts: Sequence[tuple[str, str]]) -> str:
    """One verdict for a claim of several parts [(part, verdict)]: not identifiable or contradicted
    if any part is (naming it), reproduced only when every part is."""
    if not parts:
        raise ValueError("a claim needs at least one tested part")
    by: dict[str, list[str]] = {k: [] for k in (NOT_IDENTIFIABLE, CONTRADICTED, REPRODUCED, TOO_FEW)}
    for part, verdict in parts:
        kind = _kind(verdict)
        by[kind].append(part + verdict[len(kind):])
    if by[NOT_IDENTIFIABLE]:
        return f"{NOT_IDENTIFIABLE} ({'; '.join(by[NOT_IDENTIFIABLE])})"
    if by[CONTRADICTED]:
        rest = f"; reproduced: {'; '.join(by[REPRODUCED])}" if by[REPRODUCED] else ""
        return f"{CONTRADICTED} ({'; '.join(by[CONTRADICTED])}{rest})"
    if len(by[REPRODUCED]) == len(parts):
        return REPRODUCED
    if by[REPRODUCED]:
        return f"partly reproduced ({'; '.join(by[REPRODUCED])}; too few seeds to tell: {'; '.join(by[TOO_FEW])})"
    return TOO_FEW


def fit_verdict(degenerate: Sequence[str], within: bool | None, stated_error: float, spread: float) -> str:
    """A mixture-law claim for one source: not identifiable when the fit is degenerate
    (cpt_jax.report.mixture_law flags an exponent at 0 or a parameter at its bound) or when its
    stated error is at least half the spread of the measured loss across ratios (then any constant
    law would pass); else whether the held-out ratio was predicted within the stated error."""
    if degenerate:
        return NOT_IDENTIFIABLE + f" ({'; '.join(degenerate)})"
    if not stated_error < spread / 2:
        return NOT_IDENTIFIABLE + (f" (stated error {stated_error:.4f} >= half the spread of the loss across "
                                   f"ratios, {spread / 2:.4f}: any constant would pass)")
    return REPRODUCED if within else CONTRADICTED


def most(removed: Interval, baseline: Sequence[float], what: str) -> str:
    """The "removes most of the forgetting" part (share removed > half), not identifiable when the baseline
    did not forget beyond noise (there is nothing to remove, and the share is a ratio of noise)."""
    base = interval(baseline)
    if base.side() <= 0:
        return f"{NOT_IDENTIFIABLE} (the run without {what} did not forget beyond noise: {base.fmt_plain()})"
    return directional(removed, +1, MOST)


def detectable(intervals: Iterable[Interval]) -> float:
    """The smallest effect an experiment could detect: the widest half-width of its comparisons."""
    return max(iv.half for iv in intervals)
