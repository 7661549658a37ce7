"""The phase loop: start or resume a plan, train, evaluate every domain, checkpoint, stop cleanly.

Resume contract: a checkpoint taken after global step s holds everything the next step needs
(params, optimizer state, phase, step within it, data offsets); the data stream and the LR are
pure functions of (phase, step), so a rerun of the same command continues bit-for-bit where the
run stopped.

Reading order: `Trainer.run` (restore, then phases), `_run_phase` (the step loop), then the hooks
it calls: `_log`, `_evaluate`, `_save`.
"""

from __future__ import annotations

import os
import signal
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import jax
import numpy as np

from cpt_jax.checkpoint.run_checkpoint import RunCheckpointer, check_checkpoint_location
from cpt_jax.config.base import to_dict
from cpt_jax.distributed import processes_where
from cpt_jax.errors import TrainingDiverged
from cpt_jax.sharding.placement import host_row_range, to_global_batch
from cpt_jax.storage import absolute, check_reachable
from cpt_jax.train.config import RunConfig, load_run_config, plan_fingerprint
from cpt_jax.train.hooks import Hooks, StepInfo
from cpt_jax.train.launch import launch
from cpt_jax.train.loss import per_source_losses
from cpt_jax.train.metrics import MetricsWriter, Progress
from cpt_jax.train.mfu import device_peak_flops
from cpt_jax.train.phase_init import (carried_stream_state, check_start_points, phase_start_params,
                                      run_checkpoint_start)
from cpt_jax.train.profile import StepProfiler
from cpt_jax.train.run_dir import check_fresh_start, holds_checkpoints, prepare_run_dir
from cpt_jax.train.setup import RunSetup, build_setup
from cpt_jax.train.freeze import carry_opt_state
from cpt_jax.train.goodput import Clock
from cpt_jax.train.state import TrainState, init_opt_state, new_train_state, start_ema
from cpt_jax.train.task_eval import TaskEvaluator, task_rows


@contextmanager
def stop_requests(preemption_service: bool = False):
    """SIGTERM/SIGINT set a flag; the loop finishes the step, saves and exits cleanly.

    preemption_service (several processes): SIGTERM is left to JAX's preemption notifier, which
    jax.distributed installed; the hosts agree on the step to save through its sync point, which
    the loop asks at every step (`_stop_requested`)."""
    flag = {"signal": None}

    def handler(signum, _frame):
        flag["signal"] = signal.Signals(signum).name

    caught = (signal.SIGINT,) if preemption_service else (signal.SIGTERM, signal.SIGINT)
    old = {s: signal.signal(s, handler) for s in caught}
    try:
        yield flag
    finally:
        for s, h in old.items():
            signal.signal(s, h)


@dataclass
class LoopState:
    """The loop's mutable state, in one place: what a checkpoint saves and a resume restores."""

    train: TrainState | None = None
    phase: int = 0
    phase_step: int = 0  # steps done in the current phase
    source: dict = field(default_factory=dict)  # the upstream model's HF metadata, carried to export
    branch: dict = field(default_factory=dict)  # a branch's parent, step and stream offsets there (else {})
    data: Any = None  # the current phase's data iterator; its state() goes into checkpoints


@dataclass
class PendingMetrics:
    """Device metrics of steps not yet fetched: fetching once per log interval avoids a host sync
    per step."""

    steps: list = field(default_factory=list)  # (step, phase_step, device metrics)
    t0: float = field(default_factory=time.perf_counter)
    tokens: float = 0.0

    def reset(self) -> None:
        self.steps.clear()
        self.t0, self.tokens = time.perf_counter(), 0.0


class Trainer:
    def __init__(self, cfg: RunConfig, force_new: bool = False, progress: bool = True,
                 stop_after: int | None = None):
        """stop_after: stop (as if preempted, without saving) after this global step."""
        self.cfg, self.force_new, self.progress, self.stop_after = cfg, force_new, progress, stop_after
        # Where the wall time goes (train/goodput.py): started first, so that building the setups
        # below counts as start-up.
        self.clock = Clock()
        self._setups: dict[str, RunSetup] = {}  # one per distinct (model, data) of the phases
        self._start_states: dict[int, dict] = {}  # data iterator state at step 0 of each phase
        self._task_evaluators: dict[int, TaskEvaluator | None] = {}  # per setup, built on first use
        self._use_phase(0)
        self._task_evaluator()  # bad task files or a missing tokenizer stop here, before the run dir is touched
        self.process_count = jax.process_count()
        self.is_writer = jax.process_index() == 0
        self.peak, self.peak_source = device_peak_flops()
        # The run's sinks: opened by run(), closed when it returns or fails.
        self.ckpt: RunCheckpointer | None = None
        self.writer: MetricsWriter | None = None
        self.bar: Progress | None = None
        self.profiler = StepProfiler(cfg.profile, cfg.run_dir, jax.process_index(), lambda line: self.bar.write(line))
        self.summary: dict = {}
        self._stepped: set[int] = set()  # setups whose train step has compiled (ran once)

    def _setup_for(self, phase: int) -> RunSetup:
        """The setup of `phase` (its row length, batch, RoPE settings and mesh); phases that share
        them share one setup (and its compiled steps), phases on the same mesh one mesh."""
        run = self.cfg.phase_run(phase)
        key = repr((run.model, run.data, run.optimizer.freeze, run.mesh))
        if key not in self._setups:
            mesh = next((s.mesh for s in self._setups.values() if s.cfg.mesh == run.mesh), None)
            self._setups[key] = build_setup(self.cfg, mesh, phase)
        return self._setups[key]

    def _use_phase(self, phase: int) -> None:
        self.setup = self._setup_for(phase)
        self.flops_per_token = self.setup.cfg.model.flops_per_token(self.setup.cfg.data.seq_len)

    def _phase_start_state(self, loop: LoopState, phase: int) -> dict:
        """The data iterator state at step 0 of `phase`: where the phase before left each source
        (with its own row length and batch), or for phase 0 the start of every stream or, in a
        branch that carries data, the parent's position at the branch point. A pure function of
        the plan (and the branch point), so a resume at any step finds the same batches."""
        if phase not in self._start_states:
            if phase == 0:
                mixture = self.cfg.phases[0].mixture
                parent = loop.branch.get("data")
                if parent:  # the same mixture continues the parent's row schedule exactly
                    same = _normalised(parent["mixture"]) == _normalised(mixture)
                    state = {**parent, "step": parent["step"] if same else 0}
                else:
                    state = self._setup_for(0).pipe.train_iterator(mixture, phase=0, start_tokens={}).state()
            else:
                before = self._phase_start_state(loop, phase - 1)
                pipe = self._setup_for(phase - 1).pipe
                state = pipe.resume(before, mixture=self.cfg.phases[phase - 1].mixture,
                                    skip=self.setup.steps[phase - 1]).state()
                state["step"] = 0
            self._start_states[phase] = {**state, "phase": phase}
        return self._start_states[phase]

    # ----------------------------------------------------------------- the run
    def run(self) -> dict:
        cfg, setup = self.cfg, self.setup
        check_checkpoint_location(cfg.run_dir)
        check_reachable(cfg.run_dir)  # a wrong endpoint: one error line, before the run reads anything there
        if self.force_new or not holds_checkpoints(cfg.run_dir):  # a fresh start: its inputs exist?
            check_start_points([p.init for p in cfg.phases])
        prepare_run_dir(cfg, self.force_new, self.is_writer)
        self.ckpt = RunCheckpointer(cfg.run_dir, cfg.checkpoint)
        try:
            loop = self._restore()
        except BaseException:
            self.ckpt.close()
            raise
        self._use_phase(min(loop.phase, len(cfg.phases) - 1))
        resume_point = (int(loop.train.step), loop.phase) if loop.train is not None else None
        self.writer = MetricsWriter(cfg.run_dir, enabled=self.is_writer, tensorboard=cfg.log.tensorboard,
                                    resume_point=resume_point,
                                    wandb_project=cfg.log.wandb_project if cfg.log.wandb else None,
                                    wandb_mode=cfg.log.wandb_mode, wandb_config=to_dict(cfg))
        self.bar = Progress(cfg.base_step + sum(setup.steps), resume_point[0] if resume_point else cfg.base_step,
                            self.progress and cfg.log.progress and self.is_writer, echo=self.is_writer)
        if resume_point:
            self.bar.write(f"resuming {cfg.run_dir} at step {resume_point[0]} (phase "
                           f"{cfg.phases[loop.phase].name!r}, step {loop.phase_step}/{setup.steps[loop.phase]})")
            self.profiler.note_resume(resume_point[0])
        self.summary = {"run_dir": str(cfg.run_dir), "peak_flops_source": self.peak_source, "phases": []}
        try:
            with stop_requests(preemption_service=self.process_count > 1) as stop:
                while loop.phase < len(cfg.phases):
                    if loop.phase_step >= setup.steps[loop.phase]:  # a finished phase: move on
                        loop.phase, loop.phase_step = loop.phase + 1, 0
                        continue
                    self._use_phase(loop.phase)
                    if loop.train is not None:  # a phase with its own mesh: the state moves onto it
                        loop.train = _onto(loop.train, self.setup.shardings)
                    if loop.phase_step == 0:
                        self._enter_phase(loop)
                        loop.train = _onto(loop.train, self.setup.shardings)
                    if self._run_phase(loop, stop):
                        return self.summary
            with self.clock.measure("checkpoint"):
                self.ckpt.wait()
            self.summary["final_step"] = int(loop.train.step)
            return self.summary
        finally:
            if loop.train is not None:
                self._write_time(int(loop.train.step))
            self.profiler.close()
            self.bar.close()
            self.writer.close()
            self.ckpt.close()

    def _restore(self) -> LoopState:
        """The newest restorable checkpoint; a fresh start only where no checkpoint exists."""
        if not self.ckpt.steps():
            check_fresh_start(self.cfg.run_dir)
            return LoopState()
        # The optimizer state has the shape of the saved phase's trainable view (its freeze).
        try:
            saved_phase = self.ckpt.read_meta(self.ckpt.latest_step())["phase"]
            self.setup = self._setup_for(min(saved_phase, len(self.cfg.phases) - 1))
        except Exception:  # noqa: BLE001 - a damaged step: restore_latest_good reports it and moves it aside
            pass
        restored = self.ckpt.restore_latest_good(self.setup.abstract_params, self.setup.abstract_opt)
        if restored is None:  # every step was damaged (now in corrupt-checkpoints/)
            check_fresh_start(self.cfg.run_dir)
        params, opt_state, meta = restored
        step = jax.device_put(np.int32(meta["step"]), self.setup.shardings.step)
        ema = self.ckpt.restore_ema(meta["step"], self.setup.abstract_params) if self.setup.shardings.ema else None
        ema = start_ema(params, self.setup.shardings, ema)
        return LoopState(train=TrainState(step=step, params=params, opt_state=opt_state, ema=ema), phase=meta["phase"],
                         phase_step=meta["phase_step"], source=meta.get("source") or {},
                         branch=meta.get("branch") or {})

    def _enter_phase(self, loop: LoopState) -> None:
        cfg, setup = self.cfg, self.setup
        pc = cfg.phases[loop.phase]
        where = f"phases[{loop.phase}].init"
        opt_state = ema = None
        if pc.init.startswith("ckpt:") and (pc.carried & {"optimizer", "data"} or pc.from_ema):
            params, opt_state, meta = run_checkpoint_start(pc.init, pc.carried, setup.cfg.model, setup.abstract_params,
                                                           setup.abstract_opt, where, from_ema=pc.from_ema)
            loop.source = meta.get("source") or {}
            if loop.phase == 0 and cfg.branch_point:  # a branch: where it came from (and its streams)
                parent, at = cfg.branch_point
                data = carried_stream_state(meta, parent, cfg.data, where) if "data" in pc.carried else None
                loop.branch = {"parent": str(absolute(parent)), "step": at, "carry": sorted(pc.carried),
                               **({"data": data} if data else {})}
        else:
            previous = None
            if loop.train is not None:
                previous = loop.train.ema if pc.from_ema else loop.train.params
            params, source = phase_start_params(pc.init, setup.cfg.model, setup.mesh, setup.param_shardings, cfg.seed,
                                                previous, where)
            if source is not None:
                loop.source = source
            if pc.init == "previous" and "optimizer" in pc.carried and loop.train is not None:
                opt_state = self._carried_opt_state(loop)
                ema = None if pc.from_ema else loop.train.ema  # the EMA goes on with the optimizer
        if opt_state is not None:
            step = jax.device_put(np.int32(setup.starts[loop.phase]), setup.shardings.step)
            loop.train = TrainState(step=step, params=params, opt_state=opt_state,
                                    ema=start_ema(params, setup.shardings, ema))
        else:
            loop.train = new_train_state(setup.tx, params, setup.shardings, step=setup.starts[loop.phase],
                                         freeze=setup.freeze)
        self.bar.write(f"phase {loop.phase} {pc.name!r}: {setup.steps[loop.phase]} steps from {pc.init} "
                       f"(carry {'+'.join(p for p in ('params', 'optimizer', 'data') if p in pc.carried)})")
        with self.clock.measure("eval"):
            self._evaluate(loop, setup.starts[loop.phase])

    def _carried_opt_state(self, loop: LoopState) -> Any:
        """The optimizer state a phase carries from the phase before; where the phase freezes
        differently, parameters that start training now start with fresh moments (said so)."""
        before = self._setup_for(loop.phase - 1).freeze
        if before == self.setup.freeze:
            return loop.train.opt_state
        fresh = init_opt_state(self.setup.tx, loop.train.params, self.setup.shardings, self.setup.freeze)
        opt_state, restarted = carry_opt_state(loop.train.opt_state, fresh)
        frozen = ", ".join(self.setup.freeze.describe()) or "nothing"
        self.bar.write(f"phase {loop.phase}: freeze changed (frozen now: {frozen}); {restarted} optimizer state "
                       "tensors start afresh for the parameters that start training, the rest carry on")
        return opt_state

    def _hooks(self, loop: LoopState, pending: PendingMetrics) -> Hooks:
        cfg = self.cfg
        hooks = Hooks()
        hooks.add("profile stop", lambda info: self.profiler.stop(info, loop.train), at_phase_end=False,
                  due=self.profiler.stop_due)  # first, and its start last: the trace holds the steps alone
        hooks.add("log", lambda info: self._log(loop, pending), on_stop=True,
                  due=lambda info: len(pending.steps) >= cfg.log.every)
        hooks.add("eval", lambda info: self._evaluate(loop, info.step, announce=True), every=cfg.eval.every,
                  due=lambda info: cfg.eval.due(info.phase_step, info.step))  # dense early in a phase
        hooks.add("checkpoint", lambda info: self._save(loop), every=cfg.checkpoint.every, on_stop=True)
        hooks.add("profile start", self.profiler.start, at_phase_end=False, due=self.profiler.start_due)
        return hooks

    def _run_phase(self, loop: LoopState, stop: dict) -> bool:
        """Train the current phase to its end; True when the run stopped early."""
        setup = self.setup
        cfg = setup.cfg  # the run as this phase sees it (its row length and batch)
        pc = cfg.phases[loop.phase]
        n, start, rows = setup.steps[loop.phase], setup.starts[loop.phase], cfg.data.global_batch_size
        # Each source's stream continues where the earlier phases (or a branch's parent) left
        # it, so replay never re-reads what phase 0 already trained on.
        loop.data = it = setup.pipe.resume(self._phase_start_state(loop, loop.phase), mixture=pc.mixture,
                                           skip=loop.phase_step,
                                           row_range=host_row_range(setup.batch_sharding, rows, cfg.data.seq_len))
        if loop.phase_step == 0:
            self.bar.write(f"mixture: {setup.pipe.plan(pc.mixture).describe()}")
        pending = PendingMetrics()
        hooks = self._hooks(loop, pending)
        clock = self.clock
        while loop.phase_step < n:
            if not self._stepped:
                clock.mark_startup()
            with clock.measure("data"):
                batch = to_global_batch(next(it), setup.batch_sharding, rows)
            with clock.measure("step" if id(setup) in self._stepped else "compile"):
                loop.train, metrics = setup.train_step(loop.train, batch)
                if pending.steps:
                    # One step in flight at most: enough to overlap host work with the device, and it
                    # bounds host memory (and avoids XLA:CPU collective stalls with fake devices).
                    jax.block_until_ready(pending.steps[-1][2])
            self._stepped.add(id(setup))
            self.ckpt.check()  # a background save that failed (disk full) stops the run here
            loop.phase_step += 1
            step = start + loop.phase_step
            clock.stepped(step)
            pending.steps.append((step, loop.phase_step, metrics))
            pending.tokens += rows * cfg.data.seq_len
            info = StepInfo(step=step, phase=loop.phase, phase_step=loop.phase_step, phase_end=loop.phase_step == n,
                            stopping=False)
            due = hooks.due(info)
            # Due hooks are sync points: every process reaches them at the same step, so a stop
            # request is agreed there (at the log cadence at the latest).
            why = self._stop_requested(stop, bool(due), step)
            if why:
                info = StepInfo(**{**info.__dict__, "stopping": True})
                due = hooks.due(info)
            if due:  # metrics first: no checkpoint or eval of a state whose loss was non-finite
                self._log(loop, pending)
            for hook in due:
                with clock.measure(hook.name if hook.name in ("eval", "checkpoint") else "other"):
                    hook.fn(info)
            if why:
                with clock.measure("checkpoint"):
                    self.ckpt.wait()
                self.bar.write(f"{why}: saved step {step}; rerun the same command to resume")
                self.summary["stopped_at"] = step
                return True
            if self.stop_after is not None and step >= self.stop_after:
                self._log(loop, pending)  # logged, then "crashed" without saving
                self.ckpt.wait()
                self.summary["stopped_at"] = step
                return True
        asked, seen = _normalised(pc.mixture), it.consumption()
        self.bar.write(f"phase {pc.name!r} trained on: " + ", ".join(
            f"{src} {share:.2%} of rows (asked {asked.get(src, 0.0):.2%}, "
            f"{seen.get(src, {}).get('epochs', 0.0):.2f} epochs seen)" for src, share in it.realised().items()))
        self.summary["phases"].append({"phase": pc.name, "end_step": start + n, "data": it.state()})
        return False

    def _stop_requested(self, stop: dict, sync_point: bool, step: int) -> str | None:
        """Why to stop after this step, the same answer on every process. A signal reaches each
        process at a different step and saving is collective. SIGTERM (preemption) is agreed at
        every step through JAX's preemption sync point: the hosts stop together at most two
        steps after the notice, whatever log.every is. SIGINT (Ctrl-C) is agreed at sync points
        (every log.every steps at the latest), where the host waits for the device anyway."""
        if self.process_count == 1:
            return f"{stop['signal']} received" if stop["signal"] else None
        from jax.experimental import multihost_utils

        if multihost_utils.reached_preemption_sync_point(step):  # cheap: a local flag until a notice
            return "preemption notice (SIGTERM) agreed by all processes"
        if not sync_point:
            return None
        who = processes_where(stop["signal"] is not None)
        if not who:
            return None
        return f"{stop['signal']} received" if stop["signal"] else f"stop requested on process {who[0]}"

    # ----------------------------------------------------------------- hooks
    def _log(self, loop: LoopState, pending: PendingMetrics) -> None:
        """Fetch the device metrics of the last steps at once, log them and stop on the first
        non-finite loss (before any checkpoint of that state is written)."""
        if not pending.steps:
            return
        fetched = jax.device_get([m for _, _, m in pending.steps])
        tok_s = pending.tokens / max(time.perf_counter() - pending.t0, 1e-9)
        mfu = self.flops_per_token * tok_s / (self.peak * jax.device_count())
        name = self.cfg.phases[loop.phase].name
        names = self.setup.pipe.source_names
        # What the data was: share of rows and epochs of each source so far (after the last step).
        data = {**{f"share/{n}": v for n, v in loop.data.realised().items()},
                **{f"epochs/{n}": c["epochs"] for n, c in loop.data.consumption().items()}}
        for i, ((step, phase_step, _), m) in enumerate(zip(pending.steps, fetched)):
            if not np.isfinite(m["loss"]):
                raise TrainingDiverged(f"non-finite loss ({m['loss']}) at step {step} (phase {name!r}, step "
                                       f"{phase_step} of it); the last good checkpoint is step "
                                       f"{self.ckpt.latest_step()}: lower the LR or check the data, then resume "
                                       "from it")
            scalars = {k: float(v) for k, v in m.items() if np.ndim(v) == 0}
            self.writer.write({"kind": "train", "step": step, "phase": loop.phase, "phase_step": phase_step,
                               **scalars, **per_source_losses(m, names), "tokens_per_s": tok_s, "mfu": mfu,
                               **(data if i == len(fetched) - 1 else {})})
        m = fetched[-1]
        self.bar.update(len(pending.steps), {"phase": name, "loss": f"{m['loss']:.4f}", "lr": f"{m['lr']:.2e}",
                                             "tok/s": f"{tok_s:,.0f}", "mfu": f"{mfu:.1%}"})
        self._write_time(pending.steps[-1][0])
        self.writer.flush()
        pending.reset()

    def _write_time(self, step: int) -> None:
        row = self.clock.row(step)
        if row is not None and self.writer is not None:
            self.writer.write(row)

    def _evaluate(self, loop: LoopState, step: int, announce: bool = False) -> dict[str, float]:
        results = self.setup.heldout(loop.train.params)
        for source, r in results.items():
            self.writer.write({"kind": "eval", "step": step, "phase": loop.phase,
                               "phase_name": self.cfg.phases[loop.phase].name, "source": source, **r})
        if loop.train.ema is not None:  # the weight EMA beside the raw weights
            for source, r in self.setup.heldout(loop.train.ema).items():
                self.writer.write({"kind": "eval", "step": step, "phase": loop.phase, "weights": "ema",
                                   "phase_name": self.cfg.phases[loop.phase].name, "source": source, **r})
        tasks = self._task_evaluator()
        if tasks is not None:  # downstream tasks beside held-out loss (eval.tasks)
            for row in task_rows(tasks(loop.train.params), step=step, phase=loop.phase,
                                 phase_name=self.cfg.phases[loop.phase].name):
                self.writer.write(row)
        self.writer.flush()
        losses = {source: r["loss"] for source, r in results.items()}
        if announce:
            epochs = ", ".join(f"{n} {c['epochs']:.2f}" for n, c in loop.data.consumption().items())
            self.bar.write(f"step {step} eval: " + ", ".join(f"{k} {v:.4f}" for k, v in losses.items())
                           + f" | epochs seen: {epochs}")
        return losses

    def _task_evaluator(self) -> TaskEvaluator | None:
        """One per setup (the rows follow the phase's row length); None without eval.tasks."""
        key = id(self.setup)
        if key not in self._task_evaluators:
            s = self.setup
            self._task_evaluators[key] = TaskEvaluator.for_run(s.cfg, s.graphdef, s.param_shardings, s.mesh)
        return self._task_evaluators[key]

    def _save(self, loop: LoopState) -> None:
        cfg = self.cfg
        step = int(loop.train.step)
        meta = {"model": to_dict(self.setup.cfg.model), "phase": loop.phase, "phase_name": cfg.phases[loop.phase].name,
                "phase_step": loop.phase_step, "data": loop.data.state(), "seed": cfg.seed,
                "plan_hash": plan_fingerprint(cfg), "source": loop.source, "branch": loop.branch}
        # A refused write (disk full, read-only) raises CheckpointError naming the step and the fix.
        self.ckpt.save(step, loop.train.params, loop.train.opt_state, meta, ema=loop.train.ema)


def train(cfg: RunConfig, force_new: bool = False, **kwargs: Any) -> dict:
    """Train or resume `cfg`: every training path (cpt-jax train, the demo, a library caller) ends
    here, so every key acts the same on each (host memory, jax.distributed: see launch)."""
    cfg = launch(cfg, force_new=force_new)
    return Trainer(cfg, force_new=force_new, **kwargs).run()


def run_plan(plan: str | os.PathLike, overrides: list[str] | None = None, *, force_new: bool = False,
             progress: bool = True) -> dict:
    """`cpt-jax train`: load the plan and train or resume it."""
    return train(load_run_config(plan, overrides), force_new=force_new, progress=progress)


def _onto(state: TrainState, shardings: TrainState) -> TrainState:
    """The state on another mesh's shardings (arrays already there stay; moved ones free their
    old buffers, so a phase switch does not hold two copies of the state). An optimizer state
    of another freeze view stays until the phase entry has carried it into this phase's view."""
    def move(tree, target):
        return jax.tree.map(lambda x, s: x if x.sharding == s else jax.device_put(x, s, donate=True), tree, target)

    if jax.tree.structure(state.opt_state) == jax.tree.structure(shardings.opt_state):
        return move(state, shardings)
    return state.replace(step=move(state.step, shardings.step), params=move(state.params, shardings.params),
                         ema=move(state.ema, shardings.ema))


def _normalised(mixture: dict) -> dict:
    total = sum(mixture.values())
    return {n: w / total for n, w in mixture.items() if w > 0}
