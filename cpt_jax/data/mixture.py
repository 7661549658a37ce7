"""Mixture plans: exactly how many rows of each source every global batch holds, and where.

Counts come from largest-remainder rounding of batch_size * weight (95/5 at batch 64 gives 61/3),
the same in every batch, so the ratio is exact per batch, not only on average. A positive weight
that rounds to zero rows is refused rather than silently dropped. Rows of a source are spread
evenly over the batch (row i of a source with c rows sits near (i + 1/2) / c of the way through),
so each host's contiguous slice and each gradient-accumulation micro-batch gets a fair share.
Sources are ordered by name, so the plan does not depend on how the mixture was written.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Iterable, Mapping

from cpt_jax.data.errors import DataError


@dataclass(frozen=True)
class MixturePlan:
    names: tuple[str, ...]  # sources with a positive weight, sorted
    weights: tuple[float, ...]  # normalised to sum 1
    counts: tuple[int, ...]  # rows per global batch
    order: tuple[int, ...]  # for each batch row: index into names
    slot: tuple[int, ...]  # for each batch row: its rank among that source's rows in the batch

    @property
    def batch_size(self) -> int:
        return len(self.order)

    def rows(self, name: str) -> int:
        return self.counts[self.names.index(name)] if name in self.names else 0

    def realised(self) -> dict[str, float]:
        return {n: c / self.batch_size for n, c in zip(self.names, self.counts)}

    def describe(self) -> dict[str, dict]:
        return {n: {"weight": w, "rows": c, "realised": c / self.batch_size}
                for n, w, c in zip(self.names, self.weights, self.counts)}


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
    total = sum(mixture.values())
    if total <= 0:
        raise DataError("mixture weights must sum to a positive number")
    names = tuple(sorted(n for n, w in mixture.items() if w > 0))
    weights = [Fraction(mixture[n]) / Fraction(total) for n in names]
    counts = largest_remainder(weights, batch_size)
    starved = [n for n, c in zip(names, counts) if c == 0]
    if starved:
        raise DataError(f"mixture weight of {', '.join(starved)} gives 0 of {batch_size} rows per batch; the "
                        f"smallest nonzero share at global_batch_size {batch_size} is 1/{batch_size} "
                        f"({100 / batch_size:.2f}%): raise the weight or the batch size, or set it to 0")
    order = interleave(counts)
    seen = [0] * len(names)
    slot = []
    for k in order:
        slot.append(seen[k])
        seen[k] += 1
    return MixturePlan(names, tuple(float(w) for w in weights), tuple(counts), tuple(order), tuple(slot))


def largest_remainder(weights: list[Fraction], total: int) -> list[int]:
    """Integer counts summing to total, each the floor or ceiling of its exact quota; the leftover
    rows go to the largest remainders (ties: earlier source)."""
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
