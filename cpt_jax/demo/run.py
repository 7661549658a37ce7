"""The embedded demo: a complete continual pre-training story on CPU, with real text.

corpus -> tokenizer -> prepared shards -> phase 0: pretrain on prose -> phase 1 twice from the
same phase-0 checkpoint: code with 5% prose replay (re-warmed), and code alone -> report
(held-out table, learning/forgetting curves, LR plot) -> HF export -> a text sample.
Every plan is written as YAML under OUT/plans, so each step can be rerun with `cpt-jax train`.
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path

import yaml

from cpt_jax.config.base import from_dict, to_dict
from cpt_jax.demo.config import DemoConfig
from cpt_jax.demo.corpus import build_corpus
from cpt_jax.demo.tasks import write_cloze_tasks
from cpt_jax.errors import UserError
from cpt_jax.train.config import RunConfig


def _log(msg: str) -> None:
    print(f"[demo] {msg}", flush=True)


def _plan(cfg: DemoConfig, out: Path, name: str, phases: list[dict]) -> dict:
    return {
        "run_dir": str(out / "runs" / name),
        "tokenizer": str(out / "data" / "tokenizer.model"),
        "seed": cfg.seed,
        "model": {"family": "llama", "vocab_size": cfg.vocab_size, "hidden_size": cfg.hidden_size,
                  "intermediate_size": cfg.intermediate_size, "num_layers": cfg.num_layers,
                  "num_heads": cfg.num_heads, "num_kv_heads": cfg.num_kv_heads,
                  "max_position_embeddings": max(cfg.seq_len, 128), "rope_theta": 10000.0},
        "data": {"seq_len": cfg.seq_len, "global_batch_size": cfg.batch_size, "seed": cfg.seed,
                 "sources": {d: {"kind": "prepared", "path": str(out / "data" / d)} for d in ("prose", "code")}},
        "mesh": {"data": 1, "fsdp": -1, "tensor": 1},
        "optimizer": {"weight_decay": 0.1, "grad_clip": 1.0},
        "checkpoint": {"every": max(cfg.pretrain_steps, cfg.cpt_steps), "keep_last": 2},
        "eval": {"every": cfg.eval_every, "batches": cfg.eval_batches, "dense_first": cfg.dense_first,
                 "dense_every": cfg.dense_every,
                 "tasks": [{"name": f"{d}-cloze", "path": str(out / "tasks" / f"{d}_cloze.jsonl")}
                           for d in ("prose", "code") if cfg.task_items]},
        "log": {"every": 10, "tensorboard": True},
        "phases": phases,
    }


def plans(cfg: DemoConfig, out: Path) -> dict[str, dict]:
    pretrain_dir = out / "runs" / "pretrain"
    start = f"ckpt:{pretrain_dir}@{cfg.pretrain_steps}"
    # Re-warm to the new peak, then cosine to a 10% floor: the recipe of "Simple and Scalable
    # Strategies to Continually Pre-train LLMs" (re-warm + re-decay + replay).
    cpt_schedule = {"shape": "cosine", "peak_lr": cfg.cpt_lr, "warmup_steps": cfg.warmup_steps, "min_lr_ratio": 0.1}
    return {
        "pretrain": _plan(cfg, out, "pretrain", [{
            "name": "pretrain-prose", "init": "scratch", "steps": cfg.pretrain_steps, "mixture": {"prose": 1.0},
            "schedule": {"shape": "cosine", "peak_lr": cfg.pretrain_lr, "warmup_steps": cfg.warmup_steps,
                         "min_lr_ratio": 0.1}}]),
        "replay": _plan(cfg, out, "replay", [{
            "name": "cpt-code-replay", "init": start, "carry": "params", "steps": cfg.cpt_steps,
            "mixture": {"code": 1.0 - cfg.replay, "prose": cfg.replay}, "schedule": cpt_schedule}]),
        "no-replay": _plan(cfg, out, "no-replay", [{
            "name": "cpt-code-only", "init": start, "carry": "params", "steps": cfg.cpt_steps,
            "mixture": {"code": 1.0}, "schedule": cpt_schedule}]),
    }


def prepare_data(cfg: DemoConfig, out: Path) -> dict:
    from cpt_jax.data.prepare import PrepareOptions, prepare
    from cpt_jax.data.readers import ReadOptions
    from cpt_jax.data.tokenizer import train_sentencepiece

    corpus_dir = out / "corpus"
    counts = build_corpus(corpus_dir, max_files=cfg.max_files or None)
    _log(f"corpus from the standard library: {counts}")
    if cfg.task_items:
        tasks = write_cloze_tasks(corpus_dir, out / "tasks", ("prose", "code"), seed=cfg.seed, limit=cfg.task_items)
        _log(f"cloze multiple-choice tasks from held-out text: {', '.join(map(str, tasks.values()))}")
    data = out / "data"
    data.mkdir(parents=True, exist_ok=True)
    tokenizer = data / "tokenizer.model"
    if not tokenizer.exists():
        def lines():  # both domains' training text, one line at a time; never the held-out files
            for domain in ("prose", "code"):
                with open(corpus_dir / domain / "train.jsonl") as f:
                    for record in f:
                        yield from json.loads(record)["text"].splitlines()
        train_sentencepiece(lines(), tokenizer, cfg.vocab_size)
        _log(f"trained a {cfg.vocab_size}-piece sentencepiece tokenizer on both domains")
    manifests = {}
    for domain in ("prose", "code"):
        manifests[domain] = prepare(PrepareOptions(
            inputs=(str(corpus_dir / domain / "train.jsonl"),), eval_inputs=(str(corpus_dir / domain / "heldout.jsonl"),),
            out=str(data / domain), tokenizer=str(tokenizer), read=ReadOptions(field="text"), eval_docs=0,
            workers=1, progress=False))
    return manifests


def export_and_sample(cfg: DemoConfig, out: Path, run_dir: Path) -> str:
    import jax
    import sentencepiece as spm

    from cpt_jax.checkpoint.model_checkpoint import load_model_checkpoint
    from cpt_jax.hf import export_hf
    from cpt_jax.model.generate import sample
    from cpt_jax.model.params import abstract_model

    hf_dir = out / "hf_model"
    export_hf(run_dir, hf_dir, overwrite=True, tokenizer_file=out / "data" / "tokenizer.model")
    _log(f"exported the final model to {hf_dir} (loads with transformers.AutoModelForCausalLM)")
    params, model_cfg, _ = load_model_checkpoint(run_dir)
    graphdef, _ = abstract_model(model_cfg)
    sp = spm.SentencePieceProcessor(model_file=str(out / "data" / "tokenizer.model"))
    prompt = "def read_config(path):"
    new = sample(graphdef, jax.device_get(params), sp.encode(prompt), cfg.sample_tokens, length=cfg.seq_len,
                 temperature=0.7, seed=cfg.seed, eos_id=sp.eos_id())
    return prompt + sp.decode(new)


def write_report(cfg: DemoConfig, out: Path, run_cfgs: dict[str, RunConfig], sample_text: str, timings: dict) -> Path:
    from cpt_jax.demo.figures import plot_story
    from cpt_jax.report import data_table, load_run, phase_table, plot_run, stability_table
    from cpt_jax.schedules.plot import plot_plan

    report = out / "report"
    report.mkdir(parents=True, exist_ok=True)
    runs = {name: load_run(rc.run_dir, name) for name, rc in run_cfgs.items()}
    plot_story(runs["pretrain"], [runs["replay"], runs["no-replay"]], report / "learning_forgetting.png")
    for name in ("replay", "no-replay"):  # per-source train loss, held-out loss and task accuracy
        plot_run(runs[name], report / f"curves-{name}.png")
    # The LR of the replay story as one plan: pretrain, then the re-warmed CPT phase.
    story = copy.deepcopy(to_dict(run_cfgs["pretrain"]))
    story["phases"] += [dict(to_dict(run_cfgs["replay"])["phases"][0], init="previous")]
    story_cfg = from_dict(RunConfig, story)
    plot_plan([(p.name, p.schedule, n) for p, n in zip(story_cfg.phases, story_cfg.phase_steps())],
              report / "lr.png", tokens_per_step=story_cfg.tokens_per_step)
    forgetting = forgetting_summary(runs)
    text = ["# cpt_jax demo: continual pre-training on CPU", "",
            "Phase 0 pretrains a tiny Llama on English prose (standard-library docstrings); phase 1 continues "
            f"on Python code twice from the same phase-0 checkpoint: with {cfg.replay:.0%} prose replay and "
            "re-warming, and without replay.", "",
            "## Held-out loss per domain, at the start and end of each phase", "",
            phase_table(list(runs.values())), "",
            "## Forgetting of prose in phase 1 (held-out prose loss, end minus start)", "",
            *(f"- {name}: {v:+.4f}" for name, v in forgetting.items()), "",
            "## Downstream tasks (cloze multiple choice from held-out text, lm-eval's acc / acc_norm)", "",
            task_table(list(runs.values())), "",
            "## Stability gap: the worst held-out loss after each phase start, and when it recovered", "",
            stability_table(list(runs.values())), "",
            "## Data: requested and realised shares of rows, epochs of each source seen", "",
            data_table(list(runs.values())), "",
            "## Files", "",
            "- `learning_forgetting.png`: held-out loss of both domains over all phases",
            "- `lr.png`: the learning rate of the replay story",
            "- `curves-replay.png`, `curves-no-replay.png`: per-source train loss, LR, held-out loss, task accuracy", "- `../hf_model/`: the final model in Hugging Face format",
            "- `../plans/*.yaml`: the plans, rerunnable with `cpt-jax train`", "",
            "## Sample from the final model (replay run)", "", "```", sample_text, "```", "",
            "## Time", "", *(f"- {k}: {v:.1f} s" for k, v in timings.items()), ""]
    (report / "README.md").write_text("\n".join(text))
    (report / "summary.json").write_text(json.dumps({"forgetting": forgetting, "timings": timings,
                                                     "final": final_losses(runs)}, indent=2))
    return report


def task_table(runs) -> str:
    """Per run and task: acc and acc_norm at the first and last evaluation of each phase."""
    lines = ["| run | phase | task | acc (start) | acc (end) | acc_norm (start) | acc_norm (end) |",
             "|---|---|---|---|---|---|---|"]
    for run in runs:
        for index, phase in enumerate(run.config.phases):
            for task in run.task_names:
                rows = sorted((r["step"], r) for r in run.tasks if r["task"] == task and r["phase"] == index)
                if rows:
                    first, last = rows[0][1], rows[-1][1]
                    lines.append(f"| {run.label} | {phase.name} | {task} | {first['acc']:.3f} | {last['acc']:.3f} | "
                                 f"{first['acc_norm']:.3f} | {last['acc_norm']:.3f} |")
    return "\n".join(lines) + "\n"


def final_losses(runs) -> dict[str, dict[str, float]]:
    out = {}
    for name, run in runs.items():
        last = max(r["step"] for r in run.evals)
        out[name] = {r["source"]: r["loss"] for r in run.evals if r["step"] == last}
    return out


def forgetting_summary(runs) -> dict[str, float]:
    """Rise of held-out prose loss over phase 1, per CPT run (lower is less forgetting)."""
    out = {}
    for name in ("replay", "no-replay"):
        prose = sorted((r["step"], r["loss"]) for r in runs[name].evals if r["source"] == "prose")
        out[name] = prose[-1][1] - prose[0][1]
    return out


def with_fitting_mesh(plan: dict) -> dict:
    """The plan on a mesh of this machine's devices that its batch and model divide (the demo
    runs on 1, 2, 4, 8, ... devices: 20 rows do not split over 8, so some go to tensor)."""
    import jax

    from cpt_jax.train.mesh_fit import fitting_mesh

    n = jax.device_count()
    mesh = fitting_mesh(from_dict(RunConfig, plan), n)
    if mesh is None:
        raise UserError(f"the demo's batch and model split over no mesh of {n} devices; run it with fewer "
                        "devices (e.g. --cpu-devices 4) or a batch_size that a divisor of the device count divides")
    return {**plan, "mesh": mesh}


def run_demo(cfg: DemoConfig, out: str | Path, progress: bool = True) -> Path:
    from cpt_jax import host_memory
    from cpt_jax.train.loop import train

    host_memory.apply(None)  # as the demo's plans ask (keep_host_memory: null), before JAX starts its threads
    out = Path(out).absolute()
    timings: dict[str, float] = {}
    t = time.perf_counter()
    prepare_data(cfg, out)
    timings["corpus, tokenizer and shards"] = time.perf_counter() - t
    plan_dir = out / "plans"
    plan_dir.mkdir(parents=True, exist_ok=True)
    run_cfgs = {}
    for name, plan in plans(cfg, out).items():
        plan = with_fitting_mesh(plan)
        (plan_dir / f"{name}.yaml").write_text(yaml.safe_dump(plan, sort_keys=False))
        run_cfgs[name] = from_dict(RunConfig, plan)
        t = time.perf_counter()
        _log(f"training '{name}' ({run_cfgs[name].phases[0].name}, {run_cfgs[name].total_steps} steps)")
        train(run_cfgs[name], progress=progress)
        timings[f"train {name}"] = time.perf_counter() - t
    t = time.perf_counter()
    sample_text = export_and_sample(cfg, out, Path(run_cfgs["replay"].run_dir))
    timings["export and sample"] = time.perf_counter() - t
    report = write_report(cfg, out, run_cfgs, sample_text, timings)
    _log(f"report: {report / 'README.md'}")
    print((report / "README.md").read_text())
    return report
