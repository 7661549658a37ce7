"""`make experiments`: reproduce the continual pre-training literature's findings at small scale on
CPU, and fit the replay ratio from a sweep. Writes experiments/RESULTS.md and its plots.

    python experiments/run_experiments.py                 # the full suite (about an hour on 2 cores)
    python experiments/run_experiments.py --quick         # a smoke run of the same code (minutes)
    python experiments/run_experiments.py --only 2 6      # some experiments (their runs are reused)

Every run is a plan (written to WORK/plans/*.yaml, rerunnable with `cpt-jax train`) trained by the
library itself; branches start from one shared trunk checkpoint (`init: ckpt:TRUNK@STEP`), so a
sweep costs only its branches. A finished run is not retrained when the suite is rerun. Each
point has two seeds (data order; init for scratch runs): the noise band of a point is half the
spread of its seeds, and a difference counts only when it exceeds the two bands added.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import corpora  # noqa: E402

from cpt_jax.config.base import from_dict  # noqa: E402
from cpt_jax.report import load_run, stability_gaps  # noqa: E402
from cpt_jax.report.mixture_law import fit_mixture, fit_to_dict, format_fit, plot_fit  # noqa: E402
from cpt_jax.train.config import RunConfig  # noqa: E402
from cpt_jax.train.loop import train  # noqa: E402

SEEDS = (0, 1)
RATIOS = (0.0, 0.01, 0.05, 0.10, 0.25, 0.50)
PEAKS = (0.0, 1e-3, 3e-3, 6e-3)  # 0: no re-warm (constant at the trunk's final LR)


@dataclass(frozen=True)
class Size:
    vocab: int = 2048
    hidden: int = 128
    intermediate: int = 384
    layers: int = 2
    heads: int = 4
    kv_heads: int = 2
    seq_len: int = 128
    batch: int = 20
    trunk_steps: int = 400
    cpt_steps: int = 150
    seq_phase_steps: int = 150  # experiment 4: each of three sequential domains
    peak: float = 3e-3
    warmup: int = 15
    eval_every: int = 25
    eval_batches: int = 2
    dense_first: int = 40  # evaluations every dense_every steps early in each phase (the stability gap)
    dense_every: int = 4
    max_files: int = 0


FULL = Size()
QUICK = Size(vocab=512, hidden=32, intermediate=64, layers=1, seq_len=64, batch=20, trunk_steps=40, cpt_steps=30,
             seq_phase_steps=30, warmup=5, eval_every=10, eval_batches=1, dense_first=10, dense_every=2,
             max_files=150)


@dataclass
class Suite:
    work: Path
    size: Size
    timings: dict[str, float] = field(default_factory=dict)  # training seconds per experiment
    charged: set[str] = field(default_factory=set)  # runs whose time is counted (by the first user)

    # ----------------------------------------------------------------- data and plans
    def prepare(self) -> None:
        from cpt_jax.data.prepare import PrepareOptions, prepare
        from cpt_jax.data.readers import ReadOptions
        from cpt_jax.data.tokenizer import train_sentencepiece

        data, corpus = self.work / "data", self.work / "corpus"
        if (data / "done").exists():
            self.timings["data"] = float((data / "done").read_text())
            return
        t = time.perf_counter()
        counts = corpora.build(corpus, max_files=self.size.max_files or None)
        print(f"[experiments] corpora: {counts}", flush=True)
        data.mkdir(parents=True, exist_ok=True)

        def lines():
            for domain in corpora.DOMAINS:
                with open(corpus / domain / "train.jsonl") as f:
                    for record in f:
                        yield from json.loads(record)["text"].splitlines()

        train_sentencepiece(lines(), data / "tokenizer.model", self.size.vocab)
        for domain in corpora.DOMAINS:
            prepare(PrepareOptions(inputs=(str(corpus / domain / "train.jsonl"),),
                                   eval_inputs=(str(corpus / domain / "heldout.jsonl"),), out=str(data / domain),
                                   tokenizer=str(data / "tokenizer.model"), read=ReadOptions(field="text"),
                                   eval_docs=0, workers=1, progress=False))
        self.timings["data"] = time.perf_counter() - t
        (data / "done").write_text(f"{self.timings['data']:.3f}\n")

    def plan(self, name: str, phases: list[dict], seed: int) -> dict:
        s, data = self.size, self.work / "data"
        return {
            "run_dir": str(self.work / "runs" / name), "tokenizer": str(data / "tokenizer.model"), "seed": seed,
            "model": {"family": "llama", "vocab_size": s.vocab, "hidden_size": s.hidden,
                      "intermediate_size": s.intermediate, "num_layers": s.layers, "num_heads": s.heads,
                      "num_kv_heads": s.kv_heads, "max_position_embeddings": max(s.seq_len, 128)},
            "data": {"seq_len": s.seq_len, "global_batch_size": s.batch, "seed": seed,
                     "sources": {d: {"kind": "prepared", "path": str(data / d)} for d in corpora.DOMAINS}},
            "mesh": {"data": 1, "fsdp": -1, "tensor": 1},
            "optimizer": {"weight_decay": 0.1, "grad_clip": 1.0},
            "checkpoint": {"every": 1000000, "keep_last": 1},
            "eval": {"every": s.eval_every, "batches": s.eval_batches, "dense_first": s.dense_first,
                     "dense_every": s.dense_every},
            "log": {"every": 25, "tensorboard": False},
            "phases": phases,
        }

    def run(self, name: str, plan: dict, experiment: str) -> Path:
        """Train `plan` (skipped when its run already finished); its time is charged to `experiment`."""
        plans = self.work / "plans"
        plans.mkdir(parents=True, exist_ok=True)
        (plans / f"{name}.yaml").write_text(yaml.safe_dump(plan, sort_keys=False))
        run_dir = Path(plan["run_dir"])
        cfg = from_dict(RunConfig, plan)
        done = run_dir / "done"
        if not done.exists():
            stamp = self.work / "trained_at"
            if not stamp.exists():
                stamp.write_text(commit() + "\n")
            t = time.perf_counter()
            print(f"[experiments] {experiment}: training {name} ({cfg.total_steps} steps)", flush=True)
            train(cfg, progress=False)
            done.write_text(f"{time.perf_counter() - t:.3f}\n")  # seconds, so a rerun can still report it
        if name not in self.charged:
            self.charged.add(name)
            self.timings[experiment] = self.timings.get(experiment, 0.0) + float(done.read_text())
        return run_dir

    def cosine(self, peak: float, warmup: int | None = None) -> dict:
        return {"shape": "cosine", "peak_lr": peak, "warmup_steps": self.size.warmup if warmup is None else warmup,
                "min_lr_ratio": 0.1}

    def trunk(self) -> str:
        s = self.size
        run_dir = self.run("trunk", self.plan("trunk", [{
            "name": "pretrain-prose", "init": "scratch", "steps": s.trunk_steps, "mixture": {"prose": 1.0},
            "schedule": self.cosine(s.peak, 2 * s.warmup)}], seed=0), "trunk")
        return f"ckpt:{run_dir}@{s.trunk_steps}"

    def branch(self, experiment: str, ratio: float, peak: float, seed: int) -> Path:
        """A CPT phase on code from the trunk: `ratio` prose replay, re-warm to `peak` (0: none)."""
        s = self.size
        if peak == 0.0:  # no re-warm: continue at the trunk's final LR (10% of its peak)
            schedule = {"shape": "constant", "peak_lr": 0.1 * s.peak, "warmup_steps": 0}
        else:
            schedule = self.cosine(peak)
        name = f"cpt-r{ratio:g}-p{peak:g}-s{seed}"
        mixture = {"code": 1.0 - ratio, "prose": ratio} if ratio else {"code": 1.0}
        return self.run(name, self.plan(name, [{
            "name": "cpt-code", "init": self.trunk(), "carry": "params", "steps": s.cpt_steps,
            "mixture": mixture, "schedule": schedule}], seed=seed), experiment)


# ----------------------------------------------------------------------------- measurements
def evals(run_dir: Path, source: str, phase: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    run = load_run(run_dir)
    rows = sorted((r["step"], r["loss"]) for r in run.evals if r["source"] == source
                  and (phase is None or r["phase"] == phase) and r.get("weights", "raw") == "raw")
    return np.array([r[0] for r in rows]), np.array([r[1] for r in rows])


def at_phase_step(run_dir: Path, source: str, phase_step: int) -> float:
    steps, losses = evals(run_dir, source)
    start = steps[0]
    return float(losses[np.argmin(np.abs(steps - (start + phase_step)))])


def start_end(run_dir: Path, source: str, phase: int | None = None) -> tuple[float, float]:
    _, losses = evals(run_dir, source, phase)
    return float(losses[0]), float(losses[-1])


def band(values) -> tuple[float, float]:
    """(mean, noise band = half the spread of the seeds)."""
    v = np.asarray(values, float)
    return float(v.mean()), float((v.max() - v.min()) / 2)


def differs(a: tuple[float, float], b: tuple[float, float]) -> int:
    """+1 if a > b beyond both noise bands, -1 if a < b beyond them, 0 inside the noise."""
    gap = a[0] - b[0]
    return 0 if abs(gap) <= a[1] + b[1] else (1 if gap > 0 else -1)


def fmt(mb: tuple[float, float]) -> str:
    return f"{mb[0]:.4f} ± {mb[1]:.4f}"


# ----------------------------------------------------------------------------- experiments
def exp1_rewarm(suite: Suite) -> dict:
    s = suite.size
    early = 2 * s.warmup  # just after the re-warm
    rows, curves = [], {}
    for peak in PEAKS:
        runs = [suite.branch("1 re-warming", 0.0, peak, seed) for seed in SEEDS]
        curves[peak] = runs[0]
        rows.append({"peak": peak,
                     "prose_early": band([at_phase_step(r, "prose", early) for r in runs]),
                     "code_early": band([at_phase_step(r, "code", early) for r in runs]),
                     "code_end": band([start_end(r, "code")[1] for r in runs]),
                     "prose_end": band([start_end(r, "prose")[1] for r in runs])})
    none = rows[0]
    old_up = [r["peak"] for r in rows[1:] if differs(r["prose_early"], none["prose_early"]) > 0]
    new_up = [r["peak"] for r in rows[1:] if differs(r["code_early"], none["code_early"]) > 0]
    better_end = [r["peak"] for r in rows[1:] if differs(r["code_end"], none["code_end"]) < 0]
    lower_mean = [r["peak"] for r in rows[1:] if r["code_end"][0] < none["code_end"][0]]
    if old_up and new_up and better_end:
        verdict = "reproduced"
    elif old_up and (better_end or lower_mean):
        verdict = "partly reproduced" + ("" if better_end else " (final new-domain gain inside the noise)")
    elif not old_up and not better_end:
        verdict = "not reproduced"
    else:
        verdict = "inconclusive"
    table = ["| peak LR | prose loss at step %d | code loss at step %d | final code loss | final prose loss |" % (early, early),
             "|---|---|---|---|---|"]
    for r in rows:
        label = "none (constant %.0e)" % (0.1 * s.peak) if r["peak"] == 0 else f"{r['peak']:.0e}"
        table.append(f"| {label} | {fmt(r['prose_early'])} | {fmt(r['code_early'])} | {fmt(r['code_end'])} | "
                     f"{fmt(r['prose_end'])} |")
    plot_curves(curves, suite.work / "plots" / "exp1_rewarm.png", lambda p: f"peak {p:g}" if p else "no re-warm",
                "1. re-warming: held-out loss over the CPT phase (seed 0)")
    measured = (f"re-warm peaks that raised the old-domain (prose) loss at step {early} beyond noise: {old_up or 'none'}; "
                f"that raised the new-domain (code) loss: {new_up or 'none'}; with a final code loss lower than no "
                f"re-warm beyond noise: {better_end or 'none'}, lower in the mean: {lower_mean or 'none'}")
    return {"verdict": verdict, "table": table, "measured": measured, "plot": "exp1_rewarm.png"}


def exp2_replay(suite: Suite) -> dict:
    rows, runs_by_ratio = [], {}
    for ratio in RATIOS:
        runs = [suite.branch("2 replay sweep", ratio, suite.size.peak, seed) for seed in SEEDS]
        runs_by_ratio[ratio] = runs
        forget = [start_end(r, "prose")[1] - start_end(r, "prose")[0] for r in runs]
        rows.append({"ratio": ratio, "forgetting": band(forget), "code_end": band([start_end(r, "code")[1] for r in runs])})
    base = rows[0]
    cut = {r["ratio"]: 1 - r["forgetting"][0] / base["forgetting"][0] if base["forgetting"][0] > 0 else 0.0 for r in rows}
    knee = next((r["ratio"] for r in rows[1:] if cut[r["ratio"]] >= 0.5), None)
    five = next(r for r in rows if r["ratio"] == 0.05)
    cost_ok = differs(five["code_end"], base["code_end"]) <= 0 or five["code_end"][0] - base["code_end"][0] < 0.02
    verdict = "reproduced" if cut[0.05] >= 0.3 and cost_ok else "not reproduced" if cut[0.05] < 0.1 else "inconclusive"
    table = ["| replay | prose forgetting (end - start) | share of no-replay forgetting removed | final code loss |",
             "|---|---|---|---|"]
    for r in rows:
        table.append(f"| {r['ratio']:.0%} | {fmt(r['forgetting'])} | {cut[r['ratio']]:.0%} | {fmt(r['code_end'])} |")
    plot_frontier(rows, suite.work / "plots" / "exp2_frontier.png")
    measured = (f"5% replay removes {cut[0.05]:.0%} of the forgetting at a code-loss cost of "
                f"{five['code_end'][0] - base['code_end'][0]:+.4f}; the knee (first ratio removing half the "
                f"forgetting) is {knee if knee is not None else 'beyond 50%'}")
    return {"verdict": verdict, "table": table, "measured": measured, "plot": "exp2_frontier.png",
            "runs": runs_by_ratio}


def exp3_union(suite: Suite, replay_runs: dict) -> dict:
    s = suite.size
    ratio = 0.05
    total = s.trunk_steps + s.cpt_steps
    prose_share = (s.trunk_steps + ratio * s.cpt_steps) / total
    union = []
    for seed in SEEDS:
        name = f"union-s{seed}"
        union.append(suite.run(name, suite.plan(name, [{
            "name": "union", "init": "scratch", "steps": total, "mixture": {"prose": prose_share, "code": 1 - prose_share},
            "schedule": suite.cosine(s.peak, 2 * s.warmup)}], seed=seed), "3 CPT vs union"))
    cpt = replay_runs[ratio]
    res = {}
    for source in ("prose", "code"):
        res[source] = (band([start_end(r, source)[1] for r in cpt]), band([start_end(r, source)[1] for r in union]))
    close = all(differs(a, b) == 0 or abs(a[0] - b[0]) / b[0] < 0.03 for a, b in res.values())
    verdict = "reproduced" if close else "not reproduced"
    table = ["| final held-out loss | re-warm + re-decay + 5% replay (from the trunk) | union from scratch |", "|---|---|---|"]
    table += [f"| {src} | {fmt(a)} | {fmt(b)} |" for src, (a, b) in res.items()]
    table += [f"| steps trained (given the trunk) | {s.cpt_steps} | {total} |"]
    measured = ("CPT matches the union run within noise or 3% on both domains" if close else
                "the losses differ beyond noise and 3%: " + ", ".join(f"{k} {a[0]:.4f} vs {b[0]:.4f}" for k, (a, b) in res.items()))
    return {"verdict": verdict, "table": table, "measured": measured + f"; compute: {s.cpt_steps} vs {total} steps"}


def exp4_schedules(suite: Suite) -> dict:
    s = suite.size
    domains = list(corpora.DOMAINS)
    n = s.seq_phase_steps
    anneal = max(2, n // 8)

    def start(i: int) -> dict:  # phase 0 from scratch; later phases keep params and optimizer
        return {"init": "scratch"} if i == 0 else {"init": "previous", "carry": "params+optimizer"}
    plans = {
        "repeated cosine": [{"name": f"{d}", **start(i), "steps": n, "mixture": {d: 1.0}, "schedule": suite.cosine(s.peak)}
                            for i, d in enumerate(domains)],
        "infinite": [{"name": f"{d}", **start(i), "steps": n, "mixture": {d: 1.0},
                      "schedule": ({"shape": "infinite", "peak_lr": s.peak, "warmup_steps": s.warmup,
                                    "cooldown_steps": max(2, n // 4), "constant_lr": s.peak / 3,
                                    "anneal_steps": anneal, "min_lr_ratio": 0.1} if i == 0 else
                                   {"shape": "infinite", "peak_lr": s.peak / 3, "warmup_steps": 0, "cooldown_steps": 0,
                                    "constant_lr": s.peak / 3, "anneal_steps": anneal, "min_lr": 0.1 * s.peak})}
                     for i, d in enumerate(domains)],
    }
    results = {}
    for label, phases in plans.items():
        runs = [suite.run(f"seq-{label.replace(' ', '-')}-s{seed}", suite.plan(
            f"seq-{label.replace(' ', '-')}-s{seed}", phases, seed), "4 infinite vs cosine") for seed in SEEDS]
        per_phase = []
        for phase in range(len(domains)):
            avgs = [np.mean([start_end(r, d, phase)[1] for d in domains]) for r in runs]
            per_phase.append(band(avgs))
        results[label] = per_phase
    final = differs(results["infinite"][-1], results["repeated cosine"][-1])
    verdict = "reproduced" if final < 0 else "not reproduced" if final > 0 else "inconclusive"
    table = ["| schedule | " + " | ".join(f"after {d}" for d in domains) + " |", "|---|" + "---|" * len(domains)]
    table += [f"| {label} | " + " | ".join(fmt(v) for v in per) + " |" for label, per in results.items()]
    measured = (f"average held-out loss over the three domains after the last phase: infinite "
                f"{fmt(results['infinite'][-1])}, repeated cosine {fmt(results['repeated cosine'][-1])}")
    return {"verdict": verdict, "table": table, "measured": measured}


def gap(run_dir: Path, source: str) -> dict:
    """The report's stability gap of the run's (one) phase for `source`, in steps of the phase."""
    g = next(g for g in stability_gaps(load_run(run_dir)) if g.source == source)
    return {"rise": g.gap, "worst_step": g.worst_step - g.start_step,
            "recovered": None if g.recovered_step is None else g.recovered_step - g.start_step}


def exp5_gap(suite: Suite) -> dict:
    conditions = {"no replay, peak 3e-3": (0.0, suite.size.peak), "5% replay, peak 3e-3": (0.05, suite.size.peak),
                  "no replay, peak 1e-3": (0.0, 1e-3)}
    rows, curves = {}, {}
    for label, (ratio, peak) in conditions.items():
        runs = [suite.branch("5 stability gap", ratio, peak, seed) for seed in SEEDS]
        curves[label] = runs[0]
        g = [gap(r, "prose") for r in runs]
        rows[label] = {"rise": band([x["rise"] for x in g]), "worst": [x["worst_step"] for x in g],
                       "recovered": [x["recovered"] for x in g]}
    base = rows["no replay, peak 3e-3"]["rise"]
    replay_helps = differs(rows["5% replay, peak 3e-3"]["rise"], base) < 0
    small_helps = differs(rows["no replay, peak 1e-3"]["rise"], base) < 0
    recovered = any(x is not None for r in rows.values() for x in r["recovered"])
    if replay_helps and small_helps:
        verdict = "reproduced" if recovered else "partly reproduced (the dip and what shrinks it; no recovery in the phase)"
    else:
        verdict = "partly reproduced" if replay_helps or small_helps else "not reproduced"
    table = ["| condition | worst rise of held-out prose loss | at phase step (per seed) | back at start value (per seed) |",
             "|---|---|---|---|"]
    for label, r in rows.items():
        rec = ", ".join("not recovered" if x is None else str(x) for x in r["recovered"])
        table.append(f"| {label} | {fmt(r['rise'])} | {', '.join(map(str, r['worst']))} | {rec} |")
    plot_curves(curves, suite.work / "plots" / "exp5_gap.png", str, "5. stability gap: the old domain early in the phase",
                sources=("prose",), first=6 * suite.size.warmup)
    measured = (f"replay lowers the rise beyond noise: {replay_helps}; a smaller peak lowers it: {small_helps}; the "
                f"old-domain loss came back to its phase-start value within the phase: {recovered}")
    return {"verdict": verdict, "table": table, "measured": measured, "plot": "exp5_gap.png"}


def exp6_fit(suite: Suite, replay_runs: dict) -> dict:
    runs = [load_run(r) for rs in replay_runs.values() for r in rs]
    no_replay = np.mean([start_end(r, "prose")[1] - start_end(r, "prose")[0] for r in replay_runs[0.0]])
    budget = float(no_replay / 2)
    fit = fit_mixture(runs, "prose", holdout=0.10, budget=budget)
    plot_fit(fit, suite.work / "plots" / "exp6_fit.png")
    (suite.work / "fit_mixture.json").write_text(json.dumps(fit_to_dict(fit), indent=2))
    within = all(fit.holdout[s]["within"] for s in fit.fits)
    verdict = "reproduced" if within else "not reproduced"
    return {"verdict": verdict, "table": format_fit(fit).splitlines(),
            "measured": f"held-out 10% predicted within the stated error for both sources: {within}; budget "
                        f"{budget:.4f} (half the no-replay forgetting)", "plot": "exp6_fit.png"}


# ----------------------------------------------------------------------------- plots
def plot_curves(curves: dict, out: Path, label, title: str, sources=("prose", "code"), first: int | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.parent.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, len(sources), figsize=(5 * len(sources), 4), squeeze=False)
    for ax, source in zip(axes[0], sources):
        for key, run_dir in curves.items():
            steps, losses = evals(run_dir, source)
            x = steps - steps[0]
            keep = x <= first if first else slice(None)
            ax.plot(x[keep], losses[keep], marker="o", markersize=2, label=label(key))
        ax.set_title(f"held-out {source}")
        ax.set_xlabel("step in the CPT phase")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def plot_frontier(rows: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6, 4.5))
    x = [r["forgetting"][0] for r in rows]
    y = [r["code_end"][0] for r in rows]
    ax.errorbar(x, y, xerr=[r["forgetting"][1] for r in rows], yerr=[r["code_end"][1] for r in rows], marker="o")
    for r in rows:
        ax.annotate(f"{r['ratio']:.0%}", (r["forgetting"][0], r["code_end"][0]), fontsize=8,
                    textcoords="offset points", xytext=(4, 4))
    ax.set_xlabel("forgetting: rise of held-out prose loss")
    ax.set_ylabel("final held-out code loss")
    ax.set_title("2. learning-forgetting frontier over replay ratios")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


# ----------------------------------------------------------------------------- report
CLAIMS = {
    "1": ("Re-warming", "Gupta et al. 2023, Continual Pre-Training of Large Language Models: How to (re)warm your "
          "model?", "re-warming first raises the loss on old and new data; in the longer run the new-domain loss "
          "ends lower than without re-warming"),
    "2": ("Replay ratio sweep", "Ibrahim et al. 2024, Simple and Scalable Strategies to Continually Pre-train LLMs",
          "a small replay share (5% for a weak shift, 25% for a strong one) removes most forgetting at little cost "
          "to the new domain"),
    "3": ("CPT vs retraining on the union", "Ibrahim et al. 2024 (same paper)", "re-warm + re-decay + replay "
          "matches retraining from scratch on the union of the data, at a fraction of the compute"),
    "4": ("Infinite vs repeated cosine", "Singh et al. 2025, Beyond Cosine Decay: On the effectiveness of Infinite "
          "Learning Rate Schedule for Continual Pre-training", "over sequential domains, the infinite schedule "
          "gives a lower average held-out loss than repeating cosine cycles"),
    "5": ("Stability gap", "Guo et al. 2024, Efficient Continual Pre-training by Mitigating the Stability Gap",
          "at a phase start the loss first worsens, then recovers; replay and a smaller peak LR shrink the dip"),
    "6": ("Replay ratio from small runs", "D-CPT law (Que et al. 2024) / CMR (Gu et al. 2024) family",
          "a mixture law fitted on a sweep predicts a held-out ratio within its own stated error and gives the "
          "smallest replay ratio within a forgetting budget"),
}


def commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def trained_at(suite: Suite) -> str:
    stamp = suite.work / "trained_at"
    return stamp.read_text().strip() if stamp.exists() else commit()


def write_results(suite: Suite, results: dict, out: Path, argv: list[str], wall: float, quick: bool) -> None:
    import shutil

    plots = out / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    for png in (suite.work / "plots").glob("*.png"):
        if png.resolve() != (plots / png.name).resolve():
            shutil.copy2(png, plots / png.name)
    s = suite.size
    lines = ["# Experiments: the continual pre-training literature, reproduced at small scale", "",
             f"Generated by `python experiments/run_experiments.py {' '.join(argv)}` (`make experiments`); runs "
             f"trained at commit {trained_at(suite)}, this report written at commit {commit()}, on {platform.node()} ({platform.processor() or platform.machine()}, "
             f"{__import__('os').cpu_count()} cores), {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; "
             f"total compute {sum(suite.timings.values()) / 60:.1f} min (data and every run; this invocation's wall "
             f"time {wall / 60:.1f} min)." + (" **QUICK smoke run: sizes too small to mean anything.**"
                                                        if quick else ""), "",
             f"Setup: a {s.layers}-layer Llama (hidden {s.hidden}, {s.heads} heads, GQA {s.kv_heads}), sentencepiece "
             f"{s.vocab}, rows of {s.seq_len} tokens, batch {s.batch}; domains from the Python installation: prose "
             "(stdlib docstrings), code (stdlib source without docstrings), reference (pydoc's language-reference "
             f"topics). A trunk pretrains on prose for {s.trunk_steps} steps (cosine, peak {s.peak:g}); CPT branches "
             f"start from its last checkpoint and train {s.cpt_steps} steps on code. Seeds {list(SEEDS)} (data order; "
             "init too for scratch runs); `a ± b` is the mean and half the seeds' spread; a difference counts when it "
             "exceeds both bands added. Plans of every run: `experiments/work/plans/*.yaml`.", "",
             "| # | experiment | claim | verdict | runtime |", "|---|---|---|---|---|"]
    for key, res in results.items():
        name, _, claim = CLAIMS[key]
        runtime = f"{res['runtime'] / 60:.1f} min" if res.get("runtime") else "reuses the runs of 1 and 2"
        lines.append(f"| {key} | {name} | {claim} | **{res['verdict']}** | {runtime} |")
    for key, res in results.items():
        name, paper, claim = CLAIMS[key]
        lines += ["", f"## {key}. {name}", "", f"Paper: {paper}.", "", f"Claim: {claim}.", "", *res["table"], "",
                  f"Measured: {res['measured']}.", "", f"Verdict: **{res['verdict']}**."]
        if res.get("plot"):
            lines += ["", f"![{name}](plots/{res['plot']})"]
    lines += ["", "## Runtime per experiment (training time charged to the experiment that first needed a run)", ""]
    lines += [f"- {k}: {v / 60:.1f} min" for k, v in suite.timings.items()]
    (out / "RESULTS.md").write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run of the suite")
    parser.add_argument("--work", default=None, help="runs and data (default: experiments/work, or work-quick)")
    parser.add_argument("--out", default=None, help="RESULTS.md and plots (default: experiments/, or WORK)")
    parser.add_argument("--only", nargs="*", default=None, help="experiment numbers to run (default: all)")
    args = parser.parse_args(argv)
    work = Path(args.work or HERE / ("work-quick" if args.quick else "work")).absolute()
    out = Path(args.out or (work if args.quick else HERE)).absolute()
    suite = Suite(work, QUICK if args.quick else FULL)
    t0 = time.perf_counter()
    suite.prepare()
    suite.trunk()
    wanted = set(args.only or CLAIMS)
    results = {}

    def timed(key, fn, *a):
        before = dict(suite.timings)
        res = fn(suite, *a)
        res["runtime"] = sum(suite.timings.values()) - sum(before.values())
        results[key] = res

    replay = None
    for key, fn in (("1", exp1_rewarm), ("2", exp2_replay), ("3", exp3_union), ("4", exp4_schedules),
                    ("5", exp5_gap), ("6", exp6_fit)):
        if key not in wanted:
            continue
        if key in ("3", "6") and replay is None:
            replay = exp2_replay(suite)["runs"]
        if key in ("3", "6"):
            timed(key, fn, replay)
        else:
            timed(key, fn)
            if key == "2":
                replay = results["2"]["runs"]
    for res in results.values():
        res.pop("runs", None)
    write_results(suite, dict(sorted(results.items())), out, argv, time.perf_counter() - t0, args.quick)
    print(f"[experiments] wrote {out / 'RESULTS.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
