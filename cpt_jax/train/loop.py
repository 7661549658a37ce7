"""The phase loop: start or resume a plan, train, evaluate every domain, checkpoint, stop cleanly.

Resume contract: a checkpoint taken after global step s holds everything the next step needs
(params, optimizer state, phase, step within it); the data stream and the LR are pure functions
of (phase, step), so a rerun of the same command continues bit-for-bit where the run stopped.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import signal
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jax
import numpy as np
import yaml

from cpt_jax.checkpoint.manager import RunCheckpointer
from cpt_jax.cli.errors import UserError
from cpt_jax.config.base import to_dict
from cpt_jax.config.run import RunConfig, check_mesh_batch
from cpt_jax.data import DataPipeline
from cpt_jax.data.pipeline import host_row_range, to_global_batch
from cpt_jax.distributed import processes_where
from cpt_jax.eval import heldout_losses
from cpt_jax.schedules import build_plan_schedule
from cpt_jax.sharding import make_mesh
from cpt_jax.train.init import phase_start_params
from cpt_jax.train.metrics import MetricsWriter, Progress
from cpt_jax.train.mfu import device_peak_flops
from cpt_jax.train.state import (TrainState, abstract_model, abstract_params, make_optimizer, new_train_state,
                                 param_shardings, train_state_shardings, with_shardings)
from cpt_jax.train.step import batch_sharding, jit_train_step, make_eval_step, make_train_step

# Config sections that may change between a run and its resumption (a different mesh or
# cadence does not change what is trained); everything else is "the plan".
RESUMABLE_CHANGES = ("mesh", "distributed", "log", "checkpoint", "eval", "run_dir")


class TrainingDiverged(RuntimeError):
    pass


def plan_hash(cfg: RunConfig) -> str:
    plan = {k: v for k, v in to_dict(cfg).items() if k not in RESUMABLE_CHANGES}
    return hashlib.sha256(json.dumps(plan, sort_keys=True).encode()).hexdigest()[:16]


def prepare_run_dir(cfg: RunConfig, force_new: bool, is_writer: bool) -> None:
    """Refuse to mix two plans in one run directory; --force-new moves the old run aside."""
    run_dir = Path(cfg.run_dir)
    saved = run_dir / "config.yaml"
    if saved.exists():
        old = yaml.safe_load(saved.read_text()) or {}
        if old.get("plan_hash") != plan_hash(cfg):
            if not force_new:
                raise UserError(f"{run_dir} holds a run of a different plan (model, data, phases or "
                                "optimizer changed); use another run_dir, or pass --force-new to move "
                                "the old run aside and start again")
            if is_writer:
                aside = run_dir / f"previous-{time.strftime('%Y%m%d-%H%M%S')}"
                aside.mkdir()
                for name in ("checkpoints", "metrics.jsonl", "tensorboard", "config.yaml"):
                    if (run_dir / name).exists():
                        shutil.move(str(run_dir / name), str(aside / name))
    if is_writer:
        run_dir.mkdir(parents=True, exist_ok=True)
        doc = {"plan_hash": plan_hash(cfg), "config": to_dict(cfg)}
        tmp = saved.with_suffix(".tmp")
        tmp.write_text(yaml.safe_dump(doc, sort_keys=False))
        tmp.replace(saved)


@contextmanager
def stop_requests():
    """SIGTERM/SIGINT set a flag; the loop finishes the step, saves and exits cleanly."""
    flag = {"signal": None}

    def handler(signum, _frame):
        flag["signal"] = signal.Signals(signum).name

    old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield flag
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def local_rows(batch: dict, sharding) -> dict:
    """The rows of a whole batch that this process's devices hold: not always 1/process_count
    of them (a mesh axis across processes that does not split the batch, e.g. tensor)."""
    rows, seq = next(iter(batch.values())).shape
    lo, hi = host_row_range(sharding, rows, seq)
    return {k: v[lo:hi] for k, v in batch.items()}


@dataclass
class Trainer:
    cfg: RunConfig
    force_new: bool = False
    progress: bool = True
    stop_after: int | None = None  # stop (as if preempted, without saving) after this global step
    summary: dict = field(default_factory=dict)

    def __post_init__(self):
        cfg = self.cfg
        self.process_index, self.process_count = jax.process_index(), jax.process_count()
        self.is_writer = self.process_index == 0
        self.mesh = make_mesh(cfg.mesh)
        check_mesh_batch(cfg, self.mesh.shape["data"] * self.mesh.shape["fsdp"])
        self.pipe = DataPipeline(cfg.data, vocab_size=cfg.model.vocab_size)
        self.pipe.check(vocab_size=cfg.model.vocab_size, tokenizer=cfg.tokenizer or None)
        self.steps = cfg.phase_steps()
        self.starts = cfg.phase_starts()
        self.schedule = build_plan_schedule([(p.name, p.schedule, n) for p, n in zip(cfg.phases, self.steps)])
        self.graphdef, _ = abstract_model(cfg.model, self.mesh)
        self.param_shardings = param_shardings(cfg.model, self.mesh)
        self.tx = make_optimizer(cfg.optimizer)
        self.abstract_params = with_shardings(abstract_params(cfg.model), self.param_shardings)
        self.shardings = train_state_shardings(self.tx, self.param_shardings, self.abstract_params, self.mesh)
        self.abstract_opt = with_shardings(jax.eval_shape(self.tx.init, self.abstract_params), self.shardings.opt_state)
        step_fn = make_train_step(self.graphdef, self.tx, self.schedule, cfg.optimizer, self.mesh)
        self.train_step = jit_train_step(step_fn, self.shardings, self.mesh)
        self.eval_step = make_eval_step(self.graphdef, self.param_shardings, self.mesh)
        self.batch_sharding = batch_sharding(self.mesh)
        self.flops_per_token = cfg.model.flops_per_token(cfg.data.seq_len)
        self.peak, self.peak_source = device_peak_flops()

    # ----------------------------------------------------------------- evaluation
    def evaluate(self, params, step: int, phase: int) -> dict[str, float]:
        cfg = self.cfg
        bs = cfg.eval.batch_size or cfg.data.global_batch_size
        results = heldout_losses(
            self.eval_step, params, self.pipe, cfg.eval.batches, bs,
            lambda b: to_global_batch(local_rows(b, self.batch_sharding), self.batch_sharding, bs))
        for source, r in results.items():
            self.writer.write({"kind": "eval", "step": step, "phase": phase, "phase_name": cfg.phases[phase].name,
                               "source": source, **r})
        self.writer.flush()
        return {source: r["loss"] for source, r in results.items()}

    # ----------------------------------------------------------------- checkpoints
    def save(self, state: TrainState, phase: int, phase_step: int, data_state: dict) -> None:
        step = int(state.step)
        meta = {"model": to_dict(self.cfg.model), "phase": phase, "phase_name": self.cfg.phases[phase].name,
                "phase_step": phase_step, "data": data_state, "seed": self.cfg.seed,
                "plan_hash": plan_hash(self.cfg), "source": self.source}
        try:
            self.ckpt.save(step, state.params, state.opt_state, meta)
        except OSError as e:
            last = self.ckpt.latest_step()
            raise UserError(f"saving checkpoint step {step} failed ({e}); the previous checkpoint "
                            f"(step {last}) is kept; free disk space and rerun to resume") from e

    def _flush_metrics(self, pending: list, phase: int, t0: float, tokens_since: float) -> None:
        """Fetch the device metrics of the last steps at once (no per-step sync), log them and
        stop on the first non-finite loss."""
        if not pending:
            return
        fetched = jax.device_get([m for _, _, m in pending])
        elapsed = max(time.perf_counter() - t0, 1e-9)
        tok_s = tokens_since / elapsed
        mfu = self.flops_per_token * tok_s / (self.peak * jax.device_count())
        for (step, phase_step, _), m in zip(pending, fetched):
            if not np.isfinite(m["loss"]):
                last = self.ckpt.latest_step()
                raise TrainingDiverged(f"non-finite loss ({m['loss']}) at step {step} (phase "
                                       f"{self.cfg.phases[phase].name!r}, step {phase_step} of it); the last "
                                       f"good checkpoint is step {last}: lower the LR or check the data, then "
                                       "resume from it")
            self.writer.write({"kind": "train", "step": step, "phase": phase, "phase_step": phase_step,
                               **{k: float(v) for k, v in m.items()}, "tokens_per_s": tok_s, "mfu": mfu})
        m = fetched[-1]
        self.bar.update(len(pending), {"phase": self.cfg.phases[phase].name, "loss": f"{m['loss']:.4f}",
                                       "lr": f"{m['lr']:.2e}", "tok/s": f"{tok_s:,.0f}", "mfu": f"{mfu:.1%}"})
        self.writer.flush()
        pending.clear()

    # ----------------------------------------------------------------- the run
    def run(self) -> dict:
        cfg = self.cfg
        prepare_run_dir(cfg, self.force_new, self.is_writer)
        self.ckpt = RunCheckpointer(cfg.run_dir, cfg.checkpoint)
        restored = self.ckpt.restore_latest_good(self.abstract_params, self.abstract_opt) if self.ckpt.steps() else None
        if restored is not None:
            params, opt_state, meta = restored
            state = TrainState(step=jax.device_put(np.int32(meta["step"]), self.shardings.step),
                               params=params, opt_state=opt_state)
            phase, phase_step = meta["phase"], meta["phase_step"]
            self.source = meta.get("source") or {}
            resume_point = (meta["step"], phase)
        else:
            state, phase, phase_step, resume_point = None, 0, 0, None
            self.source = {}  # the upstream model's HF metadata, once a phase imports one
        self.writer = MetricsWriter(cfg.run_dir, enabled=self.is_writer, tensorboard=cfg.log.tensorboard,
                                    resume_point=resume_point)
        total = sum(self.steps)
        self.bar = Progress(total, int(state.step) if state is not None else 0, self.progress and self.is_writer,
                            echo=self.is_writer)
        if restored is not None:
            self.bar.write(f"resuming {cfg.run_dir} at step {meta['step']} (phase {cfg.phases[phase].name!r}, "
                           f"step {phase_step}/{self.steps[phase]})")
        self.summary = {"run_dir": str(cfg.run_dir), "peak_flops_source": self.peak_source, "phases": []}
        try:
            with stop_requests() as stop:
                while phase < len(cfg.phases):
                    if phase_step >= self.steps[phase]:  # a finished phase: move on
                        phase, phase_step = phase + 1, 0
                        continue
                    if phase_step == 0:
                        state = self._enter_phase(phase, state)
                    state, phase_step, stopped = self._run_phase(phase, phase_step, state, stop)
                    if stopped:
                        return self.summary
            self.ckpt.wait()
            self.summary["final_step"] = int(state.step)
            return self.summary
        finally:
            self.bar.close()
            self.writer.close()
            self.ckpt.close()

    def _stop_requested(self, stop: dict, sync_point: bool) -> str | None:
        """Why to stop after this step, the same answer on every process. A signal reaches each
        process at a different step and saving is collective, so several processes agree at sync
        points (every log.every steps at the latest), where the host waits for the device anyway."""
        if self.process_count == 1:
            return f"{stop['signal']} received" if stop["signal"] else None
        if not sync_point:
            return None
        who = processes_where(stop["signal"] is not None)
        if not who:
            return None
        return f"{stop['signal']} received" if stop["signal"] else f"stop requested on process {who[0]}"

    def _enter_phase(self, phase: int, state: TrainState | None) -> TrainState:
        cfg = self.cfg
        pc = cfg.phases[phase]
        init = "previous" if (pc.init == "previous") else pc.init
        previous = state.params if state is not None else None
        params, source = phase_start_params(init, cfg.model, self.mesh, self.param_shardings, cfg.seed, previous,
                                            f"phases[{phase}].init")
        if source is not None:
            self.source = source
        keep_opt = init == "previous" and pc.carry == "params+optimizer" and state is not None
        if keep_opt:
            state = TrainState(step=state.step, params=params, opt_state=state.opt_state)
        else:
            state = new_train_state(self.tx, params, self.shardings, step=self.starts[phase])
        self.bar.write(f"phase {phase} {pc.name!r}: {self.steps[phase]} steps from {pc.init} "
                       f"({'params and optimizer' if keep_opt else 'params, fresh optimizer'})")
        self.evaluate(state.params, self.starts[phase], phase)
        return state

    def _run_phase(self, phase: int, phase_step: int, state: TrainState, stop: dict):
        cfg = self.cfg
        pc = cfg.phases[phase]
        n, start = self.steps[phase], self.starts[phase]
        # Each source's stream continues where the earlier phases left it (a pure function of
        # the plan), so replay never re-reads what phase 0 already trained on.
        start_tokens = self.pipe.phase_start_tokens([(p.mixture, n) for p, n in zip(cfg.phases, self.steps)], phase)
        it = self.pipe.train_iterator(pc.mixture, phase=phase, start_step=phase_step, start_tokens=start_tokens,
                                      row_range=host_row_range(self.batch_sharding, cfg.data.global_batch_size,
                                                               cfg.data.seq_len))
        if phase_step == 0:
            self.bar.write(f"mixture: {self.pipe.plan(pc.mixture).describe()}")
        pending: list = []
        t0, tokens_since = time.perf_counter(), 0.0
        rows = cfg.data.global_batch_size
        while phase_step < n:
            batch = to_global_batch(next(it), self.batch_sharding, rows)
            state, metrics = self.train_step(state, batch)
            if pending:
                # One step in flight at most: enough to overlap host work with the device, and it
                # bounds host memory (and avoids XLA:CPU collective stalls with fake devices).
                jax.block_until_ready(pending[-1][2])
            phase_step += 1
            step = start + phase_step
            pending.append((step, phase_step, metrics))
            tokens_since += rows * cfg.data.seq_len
            end = phase_step == n
            want_eval = end or step % cfg.eval.every == 0
            want_save = end or step % cfg.checkpoint.every == 0
            sync_point = want_eval or want_save or len(pending) >= cfg.log.every
            stopping = self._stop_requested(stop, sync_point)
            if sync_point or stopping:
                self._flush_metrics(pending, phase, t0, tokens_since)
                t0, tokens_since = time.perf_counter(), 0.0
            if want_eval:
                losses = self.evaluate(state.params, step, phase)
                self.bar.write(f"step {step} eval: " + ", ".join(f"{k} {v:.4f}" for k, v in losses.items()))
            if want_save or stopping:
                self.save(state, phase, phase_step, it.state())
            if stopping:
                self.ckpt.wait()
                self.bar.write(f"{stopping}: saved step {step}; rerun the same command to resume")
                self.summary["stopped_at"] = step
                return state, phase_step, True
            if self.stop_after is not None and step >= self.stop_after:
                self._flush_metrics(pending, phase, t0, tokens_since)  # logged, then "crashed"
                self.ckpt.wait()
                self.summary["stopped_at"] = step
                return state, phase_step, True
        self.summary["phases"].append({"phase": pc.name, "end_step": start + n, "data": it.state()})
        return state, phase_step, False


def train(cfg: RunConfig, **kwargs: Any) -> dict:
    return Trainer(cfg, **kwargs).run()
