"""The replay ratio from small runs: fit a mixture law to a sweep, check it on a held-out ratio, and
recommend the smallest replay ratio whose forgetting stays within a budget.

The law is the ratio term of the D-CPT law (Que et al., 2024, "D-CPT Law: Domain-specific Continual
Pre-Training Scaling Law for Large Language Models"), which the CMR work (Gu et al., 2024, "CMR
Scaling Law: Predicting Critical Mixture Ratios for Continual Pre-training of Language Models")
also builds on: at fixed model size and token budget, a domain's held-out loss falls as a power of
its share x of the data,

    L(x) = E + C / (x + eps)^gamma,

fitted per source (the replayed source with x = r, the new domain with x = 1 - r). Each run of the
sweep is one point (a branch or run per ratio; several seeds give repeated points). No peer stack
ships this, and the fit is small enough to write directly on scipy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import curve_fit

from cpt_jax.errors import UserError
from cpt_jax.report.runs import RunRecord

EPS = 0.01  # keeps a source with no rows at a finite (forgotten) loss; fixed so 3 parameters fit 4+ ratios
GAMMA_MAX = 5.0  # upper bound of the exponent in the fit
# A fitted parameter this close to a bound (relative to the loss scale) is "at" it: the data did not
# pin it down, so the law is a constant or a step and its predictions say nothing about other ratios.
AT_BOUND = 1e-3


def law(x, e, c, gamma):
    return e + c / np.power(np.asarray(x, dtype=np.float64) + EPS, gamma)


@dataclass(frozen=True)
class SweepPoint:
    run: str
    ratio: float  # share of the replayed source in the phase's mixture
    start: dict[str, float]  # held-out loss per source when the phase started
    end: dict[str, float]  # ... and when it ended


@dataclass(frozen=True)
class SourceFit:
    source: str
    params: tuple[float, float, float]  # E, C, gamma
    rmse: float  # of the fit on its own points
    loo_rmse: float  # leave-one-ratio-out prediction error over the fitted ratios: the stated error
    degenerate: tuple[str, ...] = ()  # why the law is not identifiable from these points (empty: it is)

    @property
    def identifiable(self) -> bool:
        return not self.degenerate

    def predict(self, share: float | np.ndarray) -> np.ndarray:
        return law(share, *self.params)


@dataclass
class MixtureFit:
    replay: str
    new: str
    points: list[SweepPoint]
    fits: dict[str, SourceFit]
    holdout: dict | None = None  # {ratio, source: {measured, predicted, error, stated_error, within}}
    recommendation: dict = field(default_factory=dict)

    @property
    def identifiable(self) -> bool:
        return all(f.identifiable for f in self.fits.values())

    def share(self, source: str, ratio):
        return ratio if source == self.replay else 1.0 - np.asarray(ratio)


def sweep_points(runs: list[RunRecord], replay: str, phase: int = -1) -> list[SweepPoint]:
    """One point per run: the replay ratio of its `phase` and the held-out losses at that phase's
    first and last evaluation."""
    points = []
    for run in runs:
        phases = run.config.phases
        index = phase if phase >= 0 else len(phases) + phase
        if not 0 <= index < len(phases):
            raise UserError(f"{run.path}: has no phase {phase}; pass --phase with an index below {len(phases)}")
        mixture = phases[index].mixture
        total = sum(mixture.values())
        ratio = mixture.get(replay, 0.0) / total
        rows = [r for r in run.evals if r.get("phase") == index and r.get("weights", "raw") == "raw"]
        if not rows:
            raise UserError(f"{run.path}: no held-out evaluations in phase {phases[index].name!r}; "
                            "train it (evaluations run at phase start and end)")
        first, last = min(r["step"] for r in rows), max(r["step"] for r in rows)
        start = {r["source"]: r["loss"] for r in rows if r["step"] == first}
        end = {r["source"]: r["loss"] for r in rows if r["step"] == last}
        if replay not in end:
            raise UserError(f"{run.path}: no held-out loss for source {replay!r}; its sources are "
                            f"{', '.join(sorted(end))}")
        points.append(SweepPoint(str(run.path), ratio, start, end))
    return points


def _e_bounds(y: np.ndarray) -> tuple[float, float]:
    return 0.0, max(float(np.min(y)), 1e-6)


def _fit(x: np.ndarray, y: np.ndarray) -> tuple[float, float, float]:
    lo, hi = _e_bounds(y)
    p0 = (max(hi - 0.1, lo), 0.1, 0.5)
    params, _ = curve_fit(law, x, y, p0=p0, bounds=([lo, 0.0, 0.0], [hi, np.inf, GAMMA_MAX]), maxfev=20000)
    return tuple(float(p) for p in params)


def degeneracies(params: tuple[float, float, float], y: np.ndarray) -> tuple[str, ...]:
    """Why a fit is not identifiable: an exponent at 0 (a constant law), or a parameter at the bound
    the fit imposed (the optimum lies outside what the law can express)."""
    e, c, gamma = params
    lo, hi = _e_bounds(y)
    scale = max(float(np.max(np.abs(y))), 1.0)
    out = []
    if gamma <= AT_BOUND:
        out.append(f"gamma = {gamma:.3g} (at 0: a constant law)")
    elif gamma >= GAMMA_MAX - AT_BOUND:
        out.append(f"gamma = {gamma:.3g} (at its bound {GAMMA_MAX})")
    if c <= AT_BOUND * scale:
        out.append(f"C = {c:.3g} (at 0: a constant law)")
    if e <= lo + AT_BOUND * scale:
        out.append(f"E = {e:.4g} (at its bound 0)")
    elif e >= hi - AT_BOUND * scale:
        out.append(f"E = {e:.4g} (at its bound, the lowest measured loss {hi:.4g})")
    return tuple(out)


def _fit_source(source: str, x: np.ndarray, y: np.ndarray) -> SourceFit:
    params = _fit(x, y)
    rmse = float(np.sqrt(np.mean((law(x, *params) - y) ** 2)))
    errors = []
    for held in np.unique(x):
        keep = x != held
        if len(np.unique(x[keep])) < 3:
            continue
        p = _fit(x[keep], y[keep])
        errors.extend(law(x[~keep], *p) - y[~keep])
    loo = float(np.sqrt(np.mean(np.square(errors)))) if errors else math.nan
    return SourceFit(source, params, rmse, loo, degeneracies(params, y))


def fit_mixture(runs: list[RunRecord], replay: str, *, holdout: float | None = None, budget: float = 0.1,
                phase: int = -1) -> MixtureFit:
    """Fit each source's loss against its share; with `holdout`, leave the runs at that ratio out
    of the fit and report the prediction for them against the stated error (the fit's
    leave-one-ratio-out error); recommend the smallest ratio whose predicted forgetting of `replay`
    (end minus start loss of the phase) is at most `budget`. A source whose fit is degenerate
    (`SourceFit.degenerate`) gets no prediction and, if it is `replay`, no recommendation."""
    points = sweep_points(runs, replay, phase)
    sources = sorted(set.intersection(*(set(p.end) for p in points)))
    news = [s for s in sources if s != replay]
    if not news:
        raise UserError(f"the runs evaluate only {replay!r}; the sweep needs the new domain's held-out loss too")
    new = news[0]
    ratios = np.array([p.ratio for p in points])
    fitted = np.ones(len(points), bool) if holdout is None else ~np.isclose(ratios, holdout)
    if holdout is not None and fitted.all():
        raise UserError(f"no run has replay ratio {holdout}; the sweep has {', '.join(map(str, sorted(set(ratios))))}")
    if len(np.unique(ratios[fitted])) < 4:
        raise UserError(f"the fit needs runs at 4 or more replay ratios besides the held-out one; got "
                        f"{', '.join(map(str, sorted(set(ratios[fitted]))))}: add runs of the sweep")
    result = MixtureFit(replay, new, points, {})
    for source in (replay, new):
        share = result.share(source, ratios)
        y = np.array([p.end[source] for p in points])
        result.fits[source] = _fit_source(source, share[fitted], y[fitted])
    if holdout is not None:
        result.holdout = {"ratio": holdout}
        for source, f in result.fits.items():
            measured = float(np.mean([p.end[source] for p, h in zip(points, ~fitted) if h]))
            if not f.identifiable:
                result.holdout[source] = {"measured": measured, "predicted": None, "error": None,
                                          "stated_error": f.loo_rmse, "within": None}
                continue
            predicted = float(f.predict(result.share(source, holdout)))
            stated = f.loo_rmse
            result.holdout[source] = {"measured": measured, "predicted": predicted,
                                      "error": abs(predicted - measured), "stated_error": stated,
                                      "within": abs(predicted - measured) <= stated}
    start = float(np.mean([p.start[replay] for p in points if replay in p.start]))
    result.recommendation = {"budget": budget, "start_loss": start, "ratio": None, "new_domain_loss": None}
    if result.fits[replay].identifiable:
        grid = np.linspace(0.0, 1.0, 1001)
        ok = np.flatnonzero(result.fits[replay].predict(grid) - start <= budget)
        if ok.size:
            result.recommendation["ratio"] = float(grid[ok[0]])
            if result.fits[new].identifiable:
                result.recommendation["new_domain_loss"] = float(result.fits[new].predict(1.0 - grid[ok[0]]))
    return result


def format_fit(fit: MixtureFit) -> str:
    lines = [f"{len(fit.points)} runs, replay source {fit.replay!r}, new domain {fit.new!r}",
             "", "| source | E | C | gamma | fit rmse | leave-one-ratio-out rmse |", "|---|---|---|---|---|---|"]
    for f in fit.fits.values():
        e, c, g = f.params
        lines.append(f"| {f.source} | {e:.4f} | {c:.4f} | {g:.3f} | {f.rmse:.4f} | {f.loo_rmse:.4f} |")
    for f in fit.fits.values():
        if not f.identifiable:
            lines.append(f"{f.source}: the law is not identifiable from these runs ({'; '.join(f.degenerate)}): "
                         "no prediction; add runs at more distinct ratios, longer phases or more seeds")
    if fit.holdout:
        lines += ["", f"held-out ratio {fit.holdout['ratio']}:", "| source | measured | predicted | error | "
                  "stated error | within |", "|---|---|---|---|---|---|"]
        for source in fit.fits:
            h = fit.holdout[source]
            if h["predicted"] is None:
                lines.append(f"| {source} | {h['measured']:.4f} | not identifiable | - | {h['stated_error']:.4f} | - |")
                continue
            lines.append(f"| {source} | {h['measured']:.4f} | {h['predicted']:.4f} | {h['error']:.4f} | "
                         f"{h['stated_error']:.4f} | {'yes' if h['within'] else 'no'} |")
    rec = fit.recommendation
    lines.append("")
    if not fit.fits[fit.replay].identifiable:
        lines.append(f"no recommendation: the law of {fit.replay!r} is not identifiable")
    elif rec["ratio"] is None:
        lines.append(f"no replay ratio keeps forgetting of {fit.replay!r} within {rec['budget']} (phase-start "
                     f"loss {rec['start_loss']:.4f}); raise the budget")
    else:
        new_loss = ("not identifiable" if rec["new_domain_loss"] is None else f"{rec['new_domain_loss']:.4f}")
        lines.append(f"smallest replay ratio with forgetting <= {rec['budget']}: {rec['ratio']:.3f} (predicted "
                     f"{fit.new} loss {new_loss})")
    return "\n".join(lines)


def plot_fit(fit: MixtureFit, out) -> None:
    """Measured end-of-phase losses per replay ratio and the fitted laws, one panel per source."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grid = np.linspace(0.0, 1.0, 201)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, source in zip(axes, (fit.replay, fit.new)):
        ax.scatter([p.ratio for p in fit.points], [p.end[source] for p in fit.points], s=14, label="runs")
        f = fit.fits[source]
        ax.plot(grid, f.predict(fit.share(source, grid)), color="tab:orange",
                linestyle="-" if f.identifiable else ":",
                label="fitted law" if f.identifiable else "fit (not identifiable)")
        if fit.holdout and fit.holdout[source]["predicted"] is not None:
            ax.scatter([fit.holdout["ratio"]], [fit.holdout[source]["predicted"]], marker="x", color="red",
                       label="prediction (held out)")
        ax.set_xlabel(f"replay ratio of {fit.replay}")
        ax.set_ylabel(f"held-out loss: {source}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    rec = fit.recommendation
    if rec["ratio"] is not None:
        for ax in axes:
            ax.axvline(rec["ratio"], color="grey", linestyle="--", linewidth=0.8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def fit_to_dict(fit: MixtureFit) -> dict:
    return {"replay": fit.replay, "new": fit.new, "identifiable": fit.identifiable,
            "points": [{"run": p.run, "ratio": p.ratio, "start": p.start, "end": p.end} for p in fit.points],
            "fits": {s: {"E": f.params[0], "C": f.params[1], "gamma": f.params[2], "eps": EPS, "rmse": f.rmse,
                         "loo_rmse": f.loo_rmse, "identifiable": f.identifiable, "degenerate": list(f.degenerate)}
                     for s, f in fit.fits.items()},
            "holdout": fit.holdout, "recommendation": fit.recommendation}
