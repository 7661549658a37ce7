"""Experiments 7-10: findings of 2024-2025 (merging instead of decaying, LR path switching,
pretraining-data injection over many epochs, freezing the bottom layers), each on its own seeds'
trunks and judged by the seed-paired statistics of stats.py.

7 and 8 share one constant-LR CPT run per seed: its checkpoints are the merge inputs (7) and the
branch points of the decays (8).
"""

from __future__ import annotations

import numpy as np

from classic import result
from stats import NOT_IDENTIFIABLE, directional, interval, most, paired
from suite import Suite, start_end, task_start_end

from cpt_jax.data.config import SourceConfig
from cpt_jax.data.forecast import epoch_tokens

MARGIN = 0.01  # "stands in for" / "matches": no worse than 1% of the loss (non-inferiority)
CHANCE = 0.25  # four choices


def const_run(suite: Suite, seed: int):
    """A CPT phase on code at a constant LR (after warmup) from the seed's trunk, checkpointed
    every ckpt_every steps, all kept."""
    s = suite.size
    name = f"const-s{seed}"
    return suite.run(name, suite.plan(name, [{
        "name": "cpt-constant", "init": suite.trunk(seed), "carry": "params", "steps": s.cpt_steps,
        "mixture": {"code": 1.0}, "schedule": {"shape": "constant", "peak_lr": s.peak, "warmup_steps": s.warmup}}],
        seed, checkpoint={"every": s.ckpt_every, "keep_last": s.cpt_steps // s.ckpt_every + 2}),
        "7-8 constant-LR runs")


def decay_branch(suite: Suite, seed: int, at: int):
    """A decay branched off the constant run at step `at` (params, optimizer and data stream
    carried: the same tokens the constant run saw next), 1-sqrt to 10% over decay_steps."""
    s = suite.size
    name = f"decay-at{at}-s{seed}"
    return suite.run(name, suite.plan(name, [{
        "name": "decay", "init": f"ckpt:{const_run(suite, seed)}@{at}", "carry": "params+optimizer+data",
        "steps": s.decay_steps, "mixture": {"code": 1.0},
        "schedule": {"shape": "wsd", "peak_lr": s.peak, "warmup_steps": 0, "cooldown_steps": s.decay_steps,
                     "min_lr_ratio": 0.1}}], seed), "8 LR path switching")


def exp7_merge(suite: Suite) -> dict:
    s = suite.size
    n, c, k = s.cpt_steps, s.ckpt_every, s.merge_last
    steps = [n - i * c for i in reversed(range(k))]
    merged, const_end, decayed = [], [], []
    for seed in suite.seeds:
        run = const_run(suite, seed)
        m = suite.merge(f"merge-last{k}-s{seed}", run, steps, "7 merging vs decay")
        merged.append(suite.evaluate(f"merge-last{k}-s{seed}", m, f"const-s{seed}")["code"])
        const_end.append(start_end(run, "code")[1])
        decayed.append(start_end(decay_branch(suite, seed, n - s.decay_steps), "code")[1])
    merged, const_end, decayed = map(np.array, (merged, const_end, decayed))
    vs_last, vs_decay = paired(merged, const_end), interval((merged - decayed) / decayed)
    table = ["| final held-out code loss | mean ± half-width (per seed) |", "|---|---|",
             f"| last constant-LR checkpoint (step {n}) | {interval(const_end).fmt_plain()} |",
             f"| linear merge of steps {', '.join(map(str, steps))} | {interval(merged).fmt_plain()} |",
             f"| decayed over steps {n - s.decay_steps}-{n} (same tokens) | {interval(decayed).fmt_plain()} |",
             f"| merge minus last checkpoint | {vs_last.fmt()} |",
             f"| (merge - decayed) / decayed | {vs_decay.fmt()} |"]
    parts = [("the merge beats the last constant-LR checkpoint", directional(vs_last, -1)),
             (f"the merge stands in for the decay (no worse than {MARGIN:.0%})", directional(vs_decay, -1, MARGIN))]
    measured = (f"merge minus last checkpoint {vs_last.fmt()}; relative merge minus decayed {vs_decay.fmt()} "
                f"(negative: the merge is better)")
    return result(parts, table, measured, [vs_last, vs_decay])


def exp8_path_switching(suite: Suite) -> dict:
    s = suite.size
    n, c, d = s.cpt_steps, s.ckpt_every, s.decay_steps
    points = sorted({round(n / 3 / c) * c, round(2 * n / 3 / c) * c, n - d})
    table = ["| version (steps) | decay branched off the constant run | separate cosine run from the trunk | "
             "(branch - separate) / separate |", "|---|---|---|---|"]
    parts, ivs = [], []
    for at in points:
        length = at + d
        branch = np.array([start_end(decay_branch(suite, seed, at), "code")[1] for seed in suite.seeds])
        sep = np.array([start_end(suite.run(f"sep-{length}-s{seed}", suite.plan(f"sep-{length}-s{seed}", [{
            "name": "cpt-cosine", "init": suite.trunk(seed), "carry": "params", "steps": length,
            "mixture": {"code": 1.0}, "schedule": suite.cosine(s.peak)}], seed), "8 LR path switching"), "code")[1]
            for seed in suite.seeds])
        rel = interval((branch - sep) / sep)
        ivs.append(rel)
        table.append(f"| {length} | {interval(branch).fmt_plain()} | {interval(sep).fmt_plain()} | {rel.fmt()} |")
        parts.append((f"the {length}-step version matches its separate run (no worse than {MARGIN:.0%})",
                      directional(rel, -1, MARGIN)))
    branched, separate = n + len(points) * d, sum(at + d for at in points)
    table.append(f"| steps trained for all versions | {branched} | {separate} | |")
    measured = f"final held-out code loss; compute {branched} steps branched vs {separate} separate"
    return result(parts, table, measured, ivs)


def exp9_injection(suite: Suite) -> dict:
    s = suite.size
    sources = suite.sources("prose", "code", "code_small")
    epoch = epoch_tokens(SourceConfig(path=sources["code_small"]["path"]))
    runs = {}
    for share in (0.0, 0.01):
        mixture = {"code_small": 1.0 - share, "prose": share} if share else {"code_small": 1.0}
        runs[share] = [suite.run(f"inject{share:g}-s{seed}", suite.plan(f"inject{share:g}-s{seed}", [{
            "name": "cpt-small-domain", "init": suite.trunk(seed), "carry": "params", "steps": s.cpt_steps,
            "mixture": mixture, "schedule": suite.cosine(s.peak)}], seed, sources=sources), "9 data injection")
            for seed in suite.seeds]
    forget = {k: np.array([start_end(r, "prose")[1] - start_end(r, "prose")[0] for r in v]) for k, v in runs.items()}
    code = {k: np.array([start_end(r, "code")[1] for r in v]) for k, v in runs.items()}
    lower, removed, cost = paired(forget[0.01], forget[0.0]), interval(1 - forget[0.01] / forget[0.0]), \
        paired(code[0.01], code[0.0])
    epochs = s.cpt_steps * s.batch * s.seq_len / epoch
    table = ["| pretraining data injected | prose forgetting (end - start) | held-out code loss (full code split) |",
             "|---|---|---|"]
    table += [f"| {k:.0%} | {interval(forget[k]).fmt_plain()} | {interval(code[k]).fmt_plain()} |" for k in runs]
    table += [f"| 1% minus none | {lower.fmt()} | {cost.fmt()} |",
              f"| share of the seed's forgetting removed | {removed.fmt_plain(3)} | |"]
    parts = [("1% injection lowers forgetting", directional(lower, -1)),
             ("it prevents most (> half) of the forgetting", most(removed, forget[0.0], "injection"))]
    measured = (f"small domain: {epoch} tokens, seen {epochs:.1f} times in the phase; forgetting removed "
                f"{removed.fmt_plain(3)}; code-loss difference {cost.fmt()}")
    return result(parts, table, measured, [lower, removed])


def exp10_freeze(suite: Suite) -> dict:
    s = suite.size
    freeze = ["embed", f"layers[0:{s.freeze_layers}]"]
    runs = {}
    for label, extra in (("all layers", {}), ("bottom frozen", {"freeze": freeze})):
        runs[label] = [suite.run(f"deep-{label.split()[0]}-s{seed}", suite.plan(f"deep-{label.split()[0]}-s{seed}", [{
            "name": "cpt-code", "init": suite.trunk(seed, deep=True), "carry": "params", "steps": s.cpt_steps,
            "mixture": {"code": 1.0}, "schedule": suite.cosine(s.peak), **extra}], seed, deep=True,
            **suite.task_eval(True)), "10 freezing") for seed in suite.seeds]
    acc = {k: np.array([task_start_end(r, "prose_order") for r in v]) for k, v in runs.items()}
    prose = {k: np.array([start_end(r, "prose")[1] for r in v]) for k, v in runs.items()}
    code = {k: np.array([start_end(r, "code")[1] for r in v]) for k, v in runs.items()}
    trunk_acc = interval(acc["all layers"][:, 0])
    d_acc = paired(acc["bottom frozen"][:, 1], acc["all layers"][:, 1])
    d_prose, d_code = paired(prose["bottom frozen"], prose["all layers"]), paired(code["bottom frozen"], code["all layers"])
    table = ["| CPT on code | prose word-order accuracy (trunk: " + trunk_acc.fmt_plain(3) + ") | final prose loss | "
             "final code loss |", "|---|---|---|---|"]
    table += [f"| {k} | {interval(acc[k][:, 1]).fmt_plain(3)} | {interval(prose[k]).fmt_plain()} | "
              f"{interval(code[k]).fmt_plain()} |" for k in runs]
    table.append(f"| frozen minus all | {d_acc.fmt(3)} | {d_prose.fmt()} | {d_code.fmt()} |")
    above = trunk_acc.side(CHANCE) > 0
    parts = [("freezing keeps more old-domain task accuracy",
              directional(d_acc, +1) if above else
              f"{NOT_IDENTIFIABLE} (the trunk's accuracy {trunk_acc.fmt_plain(3)} is not above chance {CHANCE})"),
             ("freezing keeps the old-domain loss lower", directional(d_prose, -1))]
    measured = (f"{s.deep_layers}-layer model, frozen: {', '.join(freeze)}; trunk accuracy {trunk_acc.fmt_plain(3)} "
                f"(chance {CHANCE}); the new-domain cost of freezing {d_code.fmt()}")
    return result(parts, table, measured, [d_acc, d_prose])
