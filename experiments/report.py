"""RESULTS.md of `make experiments`: per experiment the claim, paper, setup, table, measurement,
the smallest effect it could detect, the verdict of each tested part and of the claim, and its
runtime; then every run it used with the commit (clean or dirty) that trained it."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import time
from pathlib import Path

from suite import Suite

CLAIMS = {
    "1": ("Re-warming", "Gupta et al. 2023, Continual Pre-Training of Large Language Models: How to (re)warm your "
          "model? (arXiv 2308.04014)", "re-warming first raises the loss on old and new data; in the longer run the "
          "new-domain loss ends lower than without re-warming",
          "CPT on code from each seed's trunk, re-warmed (cosine) to 1e-3, 3e-3 (the trunk's own peak, the tested "
          "comparison) or 6e-3, against no re-warm (constant at the trunk's final LR)"),
    "2": ("Replay ratio sweep", "Ibrahim et al. 2024, Simple and Scalable Strategies to Continually Pre-train LLMs "
          "(arXiv 2403.08763)", "a small replay share (5% for a weak shift, 25% for a strong one) removes most "
          "forgetting at little cost to the new domain",
          "CPT on code with 0-50% prose replay, re-warmed to 3e-3; prose -> code is a strong shift, so the 25% "
          "figure is tested; 'most' = more than half; 'little cost' = final code loss within 1% of no replay"),
    "3": ("CPT vs retraining on the union", "Ibrahim et al. 2024 (same paper)", "re-warm + re-decay + replay "
          "matches retraining from scratch on the union of the data, at a fraction of the compute",
          "the 5% replay branch of experiment 2 against a scratch run of trunk + CPT steps on the same prose/code "
          "totals, same seed; 'matches' = relative difference within ±3%"),
    "4": ("Infinite vs repeated cosine", "Singh et al. 2025, Beyond Cosine Decay: On the effectiveness of Infinite "
          "Learning Rate Schedule for Continual Pre-training (arXiv 2503.02844)", "over sequential domains, the "
          "infinite schedule gives a lower average held-out loss than repeating cosine cycles",
          "three sequential phases (prose, code, reference) from scratch: one cosine cycle per phase vs one "
          "infinite schedule (warmup, cooldown, constant, a short anneal at each phase end)"),
    "5": ("Stability gap", "Guo et al. 2024, Efficient Continual Pre-training by Mitigating the Stability Gap "
          "(arXiv 2406.14833)", "at a phase start the old-domain loss first worsens, then recovers; replay and a "
          "smaller peak LR shrink the dip",
          "dense held-out evals early in the CPT phases of experiments 1-2 (no replay at 3e-3, 5% replay at 3e-3, "
          "no replay at 1e-3)"),
    "6": ("Replay ratio from small runs", "D-CPT law (Que et al. 2024, arXiv 2406.01375) / CMR (Gu et al. 2024, "
          "arXiv 2407.17467) family", "a mixture law fitted on a sweep predicts a held-out ratio within its own "
          "stated error and gives the smallest replay ratio within a forgetting budget",
          "`cpt-jax fit-mixture`'s law fitted on experiment 2's runs (all seeds), 10% held out"),
    "7": ("Merging instead of decaying", "WSM (arXiv 2507.17634); pre-training model averaging (arXiv 2505.12082)",
          "averaging the last checkpoints of a constant-LR phase stands in for the decay phase (and can beat it)",
          "CPT on code at a constant LR from each seed's trunk; a linear merge (`cpt-jax merge`, equal weights) of "
          "its last checkpoints against a 1-sqrt decay over the same last steps, branched off the same run (same "
          "tokens); 'stands in' = no worse than 1%"),
    "8": ("LR path switching", "Wang et al., EMNLP 2024, A Simple and Effective LR Path Switching Method "
          "(arXiv 2410.04103)", "decays branched off one constant-LR trunk give model versions as good as separate "
          "runs of the same lengths, at a fraction of the compute",
          "decays branched off experiment 7's constant-LR run at three points, against separate cosine runs from "
          "the trunk of the same lengths; 'as good' = no worse than 1%"),
    "9": ("Pretraining-data injection", "Bethune et al., ICML 2025, Scaling Laws for Forgetting during Finetuning "
          "with Pretraining Data Injection (arXiv 2502.06042)", "injecting 1% of pretraining data into many-epoch "
          "finetuning on a small domain prevents (most of) the forgetting of the pretraining domain",
          "CPT from each seed's trunk on a small code subset repeated for many epochs, 1% prose injected vs none"),
    "10": ("Freezing the bottom layers", "Zheng et al., ICLR 2025, Spurious Forgetting in Continual Learning of "
           "Language Models (arXiv 2501.13453)", "freezing the bottom layers keeps far more of the old ability than "
           "training all layers",
           "an 8-layer trunk per seed pretrained on prose; CPT on code with all layers vs the embeddings and bottom "
           "half frozen (`freeze`); old ability = held-out prose loss and a 4-way prose word-order task "
           "(experiments/tasks.py: the true next six words of a held-out prose document vs three other orders of "
           "them, scored by cpt_jax.tasks)"),
}


def commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def write(suite: Suite, results: dict, out: Path, plots_dir: Path, argv: list[str], wall: float, quick: bool) -> Path:
    plots_dir.mkdir(parents=True, exist_ok=True)
    for png in (suite.work / "plots").glob("*.png"):
        shutil.copy2(png, plots_dir / png.name)
    rel = os.path.relpath(plots_dir, out.parent)
    s = suite.size
    codes = sorted({(r["commit"], r["clean"]) for r in suite.used.values()})
    lines = [f"# Experiments: the continual pre-training literature, reproduced at small scale"
             f"{' (QUICK smoke size)' if quick else ''}", ""]
    if set(results) != set(CLAIMS):
        lines += [f"**Partial report (`--only`): experiments {', '.join(results)} only.**", ""]
    if quick:
        lines += ["**QUICK smoke run (`--quick`): tiny sizes that check the code paths end to end; the numbers and "
                  "verdicts mean nothing about the claims.** The full-size results are experiments/RESULTS.md.", ""]
    lines += [f"Generated by `python experiments/run_experiments.py {' '.join(argv)}` at commit {commit()} (code of "
              f"this invocation: {suite.source.label()}), {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, on "
              f"{platform.node()} ({platform.machine()}, {os.cpu_count()} cores). Runs used were trained at: "
              + ", ".join(f"{c} ({'clean' if k else 'dirty'})" for c, k in codes) + " (every run below). Training "
              f"compute {sum(suite.timings.values()) / 60:.1f} min (data and every run used); this invocation's wall "
              f"time {wall / 60:.1f} min.", "",
              f"Setup: a {s.layers}-layer Llama (hidden {s.hidden}, {s.heads} heads, GQA {s.kv_heads}; experiment 10: "
              f"{s.deep_layers} layers, hidden {s.deep_hidden}), sentencepiece {s.vocab}, rows of {s.seq_len} tokens, "
              f"batch {s.batch}; domains from the Python installation: prose (stdlib docstrings), code (stdlib source "
              "without docstrings), reference (pydoc's language-reference topics). Each seed "
              f"{list(suite.seeds)} has its own trunk (init and data order) pretrained on prose for {s.trunk_steps} "
              f"steps (cosine, peak {s.peak:g}); CPT phases of {s.cpt_steps} steps start from the trunk of their seed. "
              "A comparison is the seed-paired difference: `m [lo, hi]` is its mean and 95% t-interval "
              f"(t = 4.303 at {len(suite.seeds)} seeds); `m ± h` is a mean over seeds and the interval's half-width. "
              "A part of a claim is *reproduced* when the interval lies wholly on the claim's side of its threshold, "
              "*contradicted* when wholly on the other side, *not reproduced (too few seeds to tell)* when it "
              "straddles it, *not identifiable* when a fit is degenerate; a claim is reproduced only when every part "
              "is. 'Smallest detectable effect' is the widest half-width of the experiment's comparisons: an effect "
              "smaller than it cannot be told from noise at this number of seeds.", "",
              "| # | experiment | claim | verdict | smallest detectable effect | runtime |", "|---|---|---|---|---|---|"]
    for key, res in results.items():
        name, _, claim, _ = CLAIMS[key]
        runtime = f"{res['runtime'] / 60:.1f} min" if res.get("runtime") else "reuses earlier runs"
        lines.append(f"| {key} | {name} | {claim} | **{res['verdict']}** | {res['detectable']:.4f} | {runtime} |")
    for key, res in results.items():
        name, paper, claim, setup = CLAIMS[key]
        lines += ["", f"## {key}. {name}", "", f"Paper: {paper}.", "", f"Claim: {claim}.", "", f"Setup: {setup}.", "",
                  *res["table"], "", f"Measured: {res['measured']}.", "",
                  f"Smallest detectable effect: {res['detectable']:.4f} (the widest half-width of its comparisons).",
                  "", "Tested parts:", *[f"- {part}: {verdict}" for part, verdict in res["parts"]], "",
                  f"Verdict: **{res['verdict']}**.", "",
                  f"Runtime: {res['runtime'] / 60:.1f} min of training first charged to it."]
        if res.get("plot"):
            lines += ["", f"![{name}]({rel}/{res['plot']})"]
    lines += ["", "## Runtime (training time charged to whatever first needed a run)", ""]
    lines += [f"- {k}: {v / 60:.1f} min wall, {suite.cpu.get(k, 0.0) / 60:.1f} min CPU" for k, v in suite.timings.items()]
    lines += ["", f"Total: {sum(suite.timings.values()) / 60:.1f} min wall, {sum(suite.cpu.values()) / 60:.1f} min CPU "
              "(the process's CPU time over all its threads: on a shared host the wall time includes waiting for "
              "the cores; for this CPU-bound work the CPU time is close to, and on 2 cores above, the wall time of an idle "
              "host)."]
    lines += ["", "## Every run used, and the code that trained it", "",
              "Runs are cached by a hash of (plan, cpt_jax source tree and uncommitted diff, parent runs' keys); a "
              "change to any of these retrains the run (experiments/cache.py).", "",
              "| run | first used by | trained at commit | tree | wall min | CPU min |", "|---|---|---|---|---|---|"]
    for name, r in sorted(suite.used.items()):
        tree = "clean" if r["clean"] else f"dirty (diff {r['diff'][:8]})"
        cpu = "-" if r.get("cpu_seconds") is None else f"{r['cpu_seconds'] / 60:.2f}"
        lines.append(f"| {name} | {r['experiment']} | {r['commit']} | {tree} | {r['seconds'] / 60:.2f} | {cpu} |")
    out.write_text("\n".join(lines) + "\n")
    return out

