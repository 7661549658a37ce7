"""The per-tensor math of MergeKit's merge methods, on host numpy arrays (float32 work dtype).

Semantics follow mergekit 0.1.5 (merge_methods/linear.py, generalized_task_arithmetic.py,
slerp.py, sparsify.py), which the parity tests run side by side:
- linear: sum_i w_i x_i, divided by sum_i w_i when `normalize`.
- task arithmetic family: deltas d_i = x_i - base, each sparsified (ties: keep the top
  `density` fraction by magnitude; dare: keep each entry with probability `density`), optionally
  rescaled to the delta's L1 norm (`rescale`), times w_i; ties/dare_ties keep, per entry, only the
  deltas whose sign agrees with the sign of their sum; the mix is divided by the weights that
  contributed when `normalize`, times `lambda`, added to base.
- slerp: spherical interpolation of the whole flattened tensor from base (t=0) to the other
  model (t=1), linear when the two are nearly collinear.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

import numpy as np

WORK = np.float32


def linear(tensors: Iterable[np.ndarray], weights: Sequence[float], normalize: bool) -> np.ndarray:
    """`tensors` may be a generator: each is read, added and dropped before the next."""
    out = None
    for x, w in zip(tensors, weights):
        term = np.multiply(x, WORK(w), dtype=WORK)
        del x
        if out is None:
            out = term
        else:
            out += term
    if normalize:
        out /= WORK(sum(weights))
    return out


def magnitude_mask(delta: np.ndarray, density: float) -> np.ndarray:
    """The top max(1, int(density * n)) entries by |delta| (TIES's trimming, per tensor); of
    equal magnitudes at the cut the earlier entries are kept, as a stable sort keeps them."""
    if density >= 1:
        return np.ones(delta.shape, bool)
    if density <= 0 or delta.size == 0:
        return np.zeros(delta.shape, bool)
    n = delta.size
    k = max(1, int(density * n))
    magnitude = np.abs(delta).reshape(-1)
    cut = np.partition(magnitude, n - k)[n - k]  # the k-th largest magnitude, in O(n)
    mask = magnitude > cut
    ties = np.flatnonzero(magnitude == cut)[: k - int(mask.sum())]
    mask[ties] = True
    return mask.reshape(delta.shape)


def random_mask(shape: tuple[int, ...], density: float, rng: np.random.Generator) -> np.ndarray:
    """Each entry kept with probability `density` (DARE's drop-and-rescale draw)."""
    if density >= 1:
        return np.ones(shape, bool)
    return rng.random(shape, dtype=np.float32) < density


def rescale_l1(delta: np.ndarray, mask: np.ndarray, eps: float = 1e-7) -> np.ndarray:
    """delta * mask, scaled back to delta's L1 norm (MergeKit's `rescale`; about 1/density)."""
    masked = np.where(mask, delta, WORK(0))
    before, after = np.abs(delta).sum(dtype=np.float64), np.abs(masked).sum(dtype=np.float64)
    if before < eps or after < eps:
        return masked
    return masked * WORK(before / after)


def tensor_rng(seed: int, tensor_name: str) -> np.random.Generator:
    """A generator derived from (seed, tensor name) alone, so masks do not depend on the order
    or the set of tensors merged."""
    digest = hashlib.sha256(tensor_name.encode()).digest()
    return np.random.default_rng([seed, *np.frombuffer(digest[:16], np.uint32).tolist()])


def _sparse_delta(x: np.ndarray, base: np.ndarray, density: float, sparsify: str | None, rescale: bool,
                  rng: np.random.Generator | None) -> np.ndarray:
    delta = np.subtract(x, base, dtype=WORK)
    if sparsify is None or density >= 1:
        return delta
    mask = magnitude_mask(delta, density) if sparsify == "magnitude" else random_mask(delta.shape, density, rng)
    return rescale_l1(delta, mask) if rescale else np.where(mask, delta, WORK(0))


def task_arithmetic(base: np.ndarray, others: Iterable[np.ndarray], weights: Sequence[float],
                    densities: Sequence[float], *, sparsify: str | None, consensus: bool, rescale: bool,
                    normalize: bool, lam: float, rng: np.random.Generator | None = None) -> np.ndarray:
    """`sparsify`: None, "magnitude" (ties) or "random" (dare, drawing from `rng` model by model).
    `others` may be a generator; without sign consensus each delta is added and dropped before
    the next model is read, with it the (weighted) deltas are kept until the vote."""
    base = np.asarray(base, WORK)
    deltas = []
    mixed = np.zeros(base.shape, WORK)
    for x, w, density in zip(others, weights, densities):
        delta = _sparse_delta(x, base, density, sparsify, rescale, rng)
        del x
        delta *= WORK(w)
        if consensus:
            deltas.append(delta)
        else:
            mixed += delta
        del delta
    if not weights:
        return base
    if consensus:
        majority = np.where(sum(deltas) >= 0, WORK(1), WORK(-1))
        divisor = np.zeros(base.shape, WORK)
        for delta, w in zip(deltas, weights):
            agree = np.sign(delta) == majority
            mixed += np.where(agree, delta, WORK(0))
            divisor += np.where(agree, WORK(w), WORK(0))
        divisor[divisor == 0] = 1
    else:
        total = WORK(sum(WORK(w) for w in weights))
        divisor = total if abs(total) >= 1e-8 else WORK(1)
    del deltas
    if normalize:
        mixed /= divisor
    if lam != 1:
        mixed *= WORK(lam)
    mixed += base
    return mixed


def slerp(t: float, v0: np.ndarray, v1: np.ndarray, dot_threshold: float = 0.9995, eps: float = 1e-8) -> np.ndarray:
    a, b = np.asarray(v0, WORK), np.asarray(v1, WORK)
    if a.size == 0:
        return a
    na = np.linalg.norm(a.reshape(-1).astype(np.float64))
    nb = np.linalg.norm(b.reshape(-1).astype(np.float64))
    na, nb = (na if na > eps else 1.0), (nb if nb > eps else 1.0)
    dot = float(np.clip(np.dot(a.reshape(-1).astype(np.float64), b.reshape(-1).astype(np.float64)) / (na * nb), -1, 1))
    if abs(dot) > dot_threshold:
        ca, cb = 1 - t, t
    else:
        theta = np.arccos(dot)
        ca, cb = np.sin((1 - t) * theta) / np.sin(theta), np.sin(t * theta) / np.sin(theta)
    return WORK(ca) * a + WORK(cb) * b
