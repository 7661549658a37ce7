"""The suite's runs: data, plans, per-seed trunks, branches and merges, trained by the library
itself and cached by code and plan (cache.py); plus the measurements read back from the runs.

Every seed has its own trunk (init and data order): the runs of one seed are a pair, and the
spread across seeds is the noise every comparison is judged against (stats.py).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import inspect
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

import cache
import corpora
import tasks

from cpt_jax.config.base import from_dict
from cpt_jax.data.config import SourceConfig
from cpt_jax.data.forecast import epoch_tokens
from cpt_jax.report import load_run
from cpt_jax.train.config import RunConfig

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SEEDS = (0, 1, 2)


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
    ckpt_every: int = 10  # experiments 7-8: checkpoints of the constant-LR run (merge inputs, branch points)
    merge_last: int = 4  # experiment 7: checkpoints averaged
    decay_steps: int = 30  # experiments 7-8: length of a decay branch
    small_epochs: int = 16  # experiment 9: epochs over the small domain in one CPT phase
    deep_layers: int = 8  # experiment 10's model
    deep_hidden: int = 96  # narrower than the 2-layer model so that 8 layers fit the two-hour budget
    deep_intermediate: int = 256
    deep_trunk_steps: int = 400
    freeze_layers: int = 4  # experiment 10: bottom blocks frozen (with the embeddings)
    task_items: int = 200  # experiment 10: items of the old domain's word-order task


FULL = Size()
QUICK = Size(vocab=512, hidden=32, intermediate=64, layers=1, seq_len=64, batch=20, trunk_steps=40, cpt_steps=30,
             seq_phase_steps=30, warmup=5, eval_every=10, eval_batches=1, dense_first=10, dense_every=2,
             max_files=150, ckpt_every=2, merge_last=4, decay_steps=6, small_epochs=8, deep_hidden=32,
             deep_intermediate=64, deep_trunk_steps=40, freeze_layers=4, task_items=48)


@dataclass
class Suite:
    work: Path
    size: Size
    seeds: tuple[int, ...] = SEEDS
    source: cache.SourceId = field(default_factory=lambda: cache.source_id(REPO))
    timings: dict[str, float] = field(default_factory=dict)  # training seconds charged per experiment
    cpu: dict[str, float] = field(default_factory=dict)  # ... and their CPU seconds (all threads)
    used: dict[str, dict] = field(default_factory=dict)  # run name -> its cache record (the report's provenance)
    keys: dict[str, str] = field(default_factory=dict)  # run/merge directory -> its cache key

    # ----------------------------------------------------------------- data
    def __post_init__(self) -> None:
        s = self.size
        ident = json.dumps([s.vocab, s.max_files, s.small_epochs, s.seq_len, s.batch, s.cpt_steps, self.source.tree,
                            self.source.diff, (HERE / "corpora.py").read_text(), inspect.getsource(Suite.prepare)])
        self.data = self.work / f"data-{hashlib.sha256(ident.encode()).hexdigest()[:12]}"
        task = json.dumps([str(self.data), s.task_items, (HERE / "tasks.py").read_text()])
        self.task_path = self.work / f"tasks-{hashlib.sha256(task.encode()).hexdigest()[:12]}" / "prose_order.jsonl"

    def prepare(self) -> None:
        from cpt_jax.data.prepare import PrepareOptions, prepare
        from cpt_jax.data.readers import ReadOptions
        from cpt_jax.data.tokenizer import train_sentencepiece

        data, corpus = self.data, self.data / "corpus"
        if (data / "done").exists():
            self.timings["data"] = float((data / "done").read_text())
            return
        if data.exists():
            shutil.rmtree(data)
        t = time.perf_counter()
        counts = corpora.build(corpus, max_files=self.size.max_files or None)
        print(f"[experiments] corpora: {counts}", flush=True)
        s = self.size

        def lines():
            for domain in corpora.DOMAINS:
                with open(corpus / domain / "train.jsonl") as f:
                    for record in f:
                        yield from json.loads(record)["text"].splitlines()

        train_sentencepiece(lines(), data / "tokenizer.model", s.vocab)

        def prep(domain: str) -> None:
            prepare(PrepareOptions(inputs=(str(corpus / domain / "train.jsonl"),),
                                   eval_inputs=(str(corpus / domain / "heldout.jsonl"),), out=str(data / domain),
                                   tokenizer=str(data / "tokenizer.model"), read=ReadOptions(field="text"),
                                   eval_docs=0, workers=1, progress=False))
        for domain in corpora.DOMAINS:
            prep(domain)
        # Experiment 9's small domain: enough code documents for one CPT phase to see it small_epochs times,
        # sized with the code domain's measured characters per token.
        chars = sum(len(json.loads(x)["text"]) for x in open(corpus / "code" / "train.jsonl"))
        per_token = chars / epoch_tokens(SourceConfig(path=str(data / "code")))
        corpora.small_subset(corpus / "code", corpus / "code_small",
                             chars=int(per_token * s.cpt_steps * s.batch * s.seq_len / s.small_epochs))
        prep("code_small")
        self.timings["data"] = time.perf_counter() - t
        (data / "done").write_text(f"{self.timings['data']:.3f}\n")

    def task(self) -> Path:
        """Experiment 10's word-order task of the prose held-out split (tasks.py)."""
        if not self.task_path.exists():
            tasks.word_order_task(self.data / "corpus" / "prose" / "heldout.jsonl", self.task_path, self.size.task_items)
        return self.task_path

    def sources(self, *names: str) -> dict:
        return {d: {"kind": "prepared", "path": str(self.data / d)} for d in (names or corpora.DOMAINS)}

    # ----------------------------------------------------------------- plans and runs
    def model(self, deep: bool = False) -> dict:
        s = self.size
        return {"family": "llama", "vocab_size": s.vocab, "hidden_size": s.deep_hidden if deep else s.hidden,
                "intermediate_size": s.deep_intermediate if deep else s.intermediate,
                "num_layers": s.deep_layers if deep else s.layers, "num_heads": s.heads, "num_kv_heads": s.kv_heads,
                "max_position_embeddings": max(s.seq_len, 128)}

    def plan(self, name: str, phases: list[dict], seed: int, *, deep: bool = False, sources: dict | None = None,
             eval: dict | None = None, checkpoint: dict | None = None) -> dict:
        s = self.size
        return {
            "run_dir": str(self.work / "runs" / name), "tokenizer": str(self.data / "tokenizer.model"), "seed": seed,
            "model": self.model(deep),
            "data": {"seq_len": s.seq_len, "global_batch_size": s.batch, "seed": seed,
                     "sources": sources or self.sources()},
            "mesh": {"data": 1, "fsdp": -1, "tensor": 1},
            "optimizer": {"weight_decay": 0.1, "grad_clip": 1.0},
            "checkpoint": {"every": 1000000, "keep_last": 1, **(checkpoint or {})},
            "eval": {"every": s.eval_every, "batches": s.eval_batches, "dense_first": s.dense_first,
                     "dense_every": s.dense_every, **(eval or {})},
            "log": {"every": 25, "tensorboard": False},
            "phases": phases,
        }

    def _parents(self, plan: dict) -> dict[str, str]:
        from cpt_jax.checkpoint.model_checkpoint import parse_ckpt_ref

        parents = {}
        for phase in plan["phases"]:
            if phase.get("init", "").startswith("ckpt:"):
                ref = str(Path(parse_ckpt_ref(phase["init"][5:])[0]).absolute())
                parents[ref] = self.keys.get(ref) or (cache.read_record(Path(ref)) or {}).get("key", "missing")
        return parents

    @contextlib.contextmanager
    def _lock(self, name: str):
        """Workers of `run_experiments.py --jobs 2` share some runs (the trunks): the first that
        needs one makes it while the other waits, then finds it cached."""
        path = self.work / "locks" / f"{name}.lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            yield

    def _cached(self, name: str, out: Path, key: str, experiment: str, make) -> Path:
        """`out` made by `make()` unless a record with `key` says it is already there."""
        with self._lock(name):
            return self._cached_locked(name, out, key, experiment, make)

    def _cached_locked(self, name: str, out: Path, key: str, experiment: str, make) -> Path:
        record = cache.read_record(out)
        if record is None or record.get("key") != key:
            if out.exists():
                print(f"[experiments] {name}: no finished run of this code and plan: retraining", flush=True)
                shutil.rmtree(out)
            t, cpu = time.perf_counter(), time.process_time()
            make()
            record = cache.write_record(out, key, self.source, time.perf_counter() - t, time.process_time() - cpu)
        self.keys[str(out.absolute())] = key
        if name not in self.used:
            self.used[name] = {**record, "experiment": experiment}
            self.timings[experiment] = self.timings.get(experiment, 0.0) + float(record["seconds"])
            self.cpu[experiment] = self.cpu.get(experiment, 0.0) + float(record.get("cpu_seconds") or 0.0)
        return out

    def run(self, name: str, plan: dict, experiment: str) -> Path:
        """Train `plan` unless a run of the same plan, code and parents is cached; its time is
        charged to `experiment` (the first that needs it)."""
        from cpt_jax.train.loop import train

        plans = self.work / "plans"
        plans.mkdir(parents=True, exist_ok=True)
        tmp = plans / f".{name}.yaml.{os.getpid()}"  # a parallel worker may be reading it
        tmp.write_text(yaml.safe_dump(plan, sort_keys=False))
        os.replace(tmp, plans / f"{name}.yaml")
        cfg = from_dict(RunConfig, plan)
        key = cache.run_key(plan, self.source, self._parents(plan))

        def make():
            print(f"[experiments] {experiment}: training {name} ({cfg.total_steps} steps)", flush=True)
            summary = train(cfg, progress=False)
            if "stopped_at" in summary:  # SIGTERM/preemption: saved, not finished; never cache it as done
                raise SystemExit(f"[experiments] {name} stopped at step {summary['stopped_at']}; rerun to train it again")
        return self._cached(name, Path(plan["run_dir"]), key, experiment, make)

    def merge(self, name: str, run_dir: Path, steps: list[int], experiment: str) -> Path:
        """A linear merge (equal weights, `cpt-jax merge`'s library path) of `run_dir`'s checkpoints
        at `steps`, as a cpt_jax model checkpoint."""
        from cpt_jax.surgery.merge import merge_from_recipe

        out = self.work / "merged" / name
        recipe = {"merge_method": "linear", "dtype": "float32",
                  "models": [{"model": f"ckpt:{run_dir}@{st}", "parameters": {"weight": 1.0}} for st in steps]}
        key = cache.run_key(recipe, self.source, {str(run_dir.absolute()): self.keys[str(run_dir.absolute())]})

        def make():
            print(f"[experiments] {experiment}: merging {name} (steps {steps})", flush=True)
            path = self.work / "merged" / f"{name}.yaml"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(yaml.safe_dump(recipe, sort_keys=False))
            merge_from_recipe(path, out, fmt="cpt_jax", overwrite=True, progress=False)
        return self._cached(name, out, key, experiment, make)

    def evaluate(self, name: str, target: Path, plan_of: str) -> dict[str, float]:
        """Held-out loss per source of a checkpoint, under the plan of run `plan_of` (cached beside it)."""
        from cpt_jax.eval.evaluate import evaluate

        path = target / "experiment_eval.json"
        key = self.keys[str(target.absolute())] + plan_of
        with self._lock(f"eval-{target.name}"):
            if path.exists() and json.loads(path.read_text()).get("key") == key:
                return json.loads(path.read_text())["heldout"]
            res = evaluate(str(target), plan=str(self.work / "plans" / f"{plan_of}.yaml"))
            heldout = {k: float(v["loss"]) for k, v in res["heldout"].items()}
            path.write_text(json.dumps({"key": key, "heldout": heldout}))
        return heldout

    # ----------------------------------------------------------------- the runs every experiment shares
    def cosine(self, peak: float, warmup: int | None = None) -> dict:
        return {"shape": "cosine", "peak_lr": peak, "warmup_steps": self.size.warmup if warmup is None else warmup,
                "min_lr_ratio": 0.1}

    def trunk(self, seed: int, deep: bool = False) -> str:
        """`ckpt:` of seed `seed`'s trunk: prose pretraining from its own init and data order."""
        s = self.size
        name = f"trunk{'-deep' if deep else ''}-s{seed}"
        steps = s.deep_trunk_steps if deep else s.trunk_steps
        run_dir = self.run(name, self.plan(name, [{
            "name": "pretrain-prose", "init": "scratch", "steps": steps, "mixture": {"prose": 1.0},
            "schedule": self.cosine(s.peak, 2 * s.warmup)}], seed=seed, deep=deep, **self.task_eval(deep)),
            "trunks" + (" (8-layer, experiment 10)" if deep else ""))
        return f"ckpt:{run_dir}@{steps}"

    def task_eval(self, deep: bool) -> dict:
        """Experiment 10's plans score the old domain's word-order task at every eval (start and end only)."""
        if not deep:
            return {}
        return {"eval": {"every": 1000000, "dense_first": 0, "dense_every": 0,
                         "tasks": [{"name": "prose_order", "path": str(self.task())}]}}

    def branch(self, experiment: str, ratio: float, peak: float, seed: int) -> Path:
        """A CPT phase on code from the trunk of `seed`: `ratio` prose replay, re-warm to `peak` (0: none)."""
        s = self.size
        if peak == 0.0:  # no re-warm: continue at the trunk's final LR (10% of its peak)
            schedule = {"shape": "constant", "peak_lr": 0.1 * s.peak, "warmup_steps": 0}
        else:
            schedule = self.cosine(peak)
        name = f"cpt-r{ratio:g}-p{peak:g}-s{seed}"
        mixture = {"code": 1.0 - ratio, "prose": ratio} if ratio else {"code": 1.0}
        return self.run(name, self.plan(name, [{
            "name": "cpt-code", "init": self.trunk(seed), "carry": "params", "steps": s.cpt_steps,
            "mixture": mixture, "schedule": schedule}], seed=seed), experiment)


# ----------------------------------------------------------------------------- measurements
def evals(run_dir: Path, source: str, phase: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    run = load_run(run_dir)
    rows = sorted((r["step"], r["loss"]) for r in run.evals if r["source"] == source
                  and (phase is None or r["phase"] == phase) and r.get("weights", "raw") == "raw")
    return np.array([r[0] for r in rows]), np.array([r[1] for r in rows])


def at_phase_step(run_dir: Path, source: str, phase_step: int) -> float:
    steps, losses = evals(run_dir, source)
    return float(losses[np.argmin(np.abs(steps - (steps[0] + phase_step)))])


def start_end(run_dir: Path, source: str, phase: int | None = None) -> tuple[float, float]:
    _, losses = evals(run_dir, source, phase)
    return float(losses[0]), float(losses[-1])


def task_start_end(run_dir: Path, task: str, metric: str = "acc") -> tuple[float, float]:
    _, values = load_run(run_dir).task_curve(task, metric)
    return float(values[0]), float(values[-1])


def replace(size: Size, **kw) -> Size:
    return dataclasses.replace(size, **kw)
