"""`profile:` a jax.profiler trace of chosen training steps, written into the run directory.

The trace of each process goes to <run_dir>/profile/process-<i>/ (distinct on every process, even
several on one host): TensorBoard's profile plugin reads it (`tensorboard --logdir RUN/profile`),
and Perfetto (ui.perfetto.dev) opens the perfetto_trace.json.gz beside it. The loop runs it as a
hook: tracing starts after global step `start_step` (past compilation) and stops once step
start_step + steps has finished on the device. With a bucket run_dir (gs://, s3://) the profiler
writes into a local folder (jax.profiler writes only local files), uploaded when the trace ends.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal

import jax

from cpt_jax.config.base import require
from cpt_jax.storage import as_path, is_remote, upload_tree
from cpt_jax.train.hooks import StepInfo


@dataclass(frozen=True)
class ProfileConfig:
    """A jax.profiler trace of steps start_step+1 .. start_step+steps (global), written to
    <run_dir>/profile/process-<i>/: `tensorboard --logdir RUN/profile` (profile plugin) or
    Perfetto on its perfetto_trace.json.gz. A run resumed at or past start_step is not traced."""

    start_step: int = 0  # trace the steps after this global step (>= 1: the first step compiles) ...
    steps: int = 0  # ... this many of them (0: no trace)
    processes: Literal["first", "all"] = "first"  # which processes write a trace (each its own folder)

    def validate(self, path: str) -> None:
        require(self.steps >= 0, path, "steps", f"must be >= 0, got {self.steps}")
        require(self.start_step >= 0, path, "start_step", f"must be >= 0, got {self.start_step}")
        if self.steps:
            require(self.start_step >= 1, path, "start_step", f"must be >= 1 (the first step compiles: e.g. 5), "
                                                              f"got {self.start_step}")


class StepProfiler:
    """Two hooks: `start` after step start_step, `stop` after the window's last step (or an early
    stop within it); `close` ends a trace the run left open (an error, or a shorter run)."""

    def __init__(self, cfg: ProfileConfig, run_dir: str | Path, process_index: int, log: Callable[[str], None]):
        self.cfg, self.log = cfg, log
        self.enabled = cfg.steps > 0 and (cfg.processes == "all" or process_index == 0)
        self.dir = as_path(run_dir) / "profile" / f"process-{process_index}"
        self._local: Path | None = None  # where jax.profiler writes when self.dir is in a bucket
        self.window = False  # between start_step and its end: the same on every process
        self.tracing = False  # this process writes a trace now

    @property
    def end(self) -> int:
        return self.cfg.start_step + self.cfg.steps

    def note_resume(self, step: int) -> None:
        if self.enabled and step >= self.cfg.start_step:
            self.log(f"profile: not traced, this run resumed at step {step} >= profile.start_step="
                     f"{self.cfg.start_step}")

    # Due hooks are the loop's sync points: both answers are the same on every process.
    def start_due(self, info: StepInfo) -> bool:
        return self.cfg.steps > 0 and not self.window and info.step == self.cfg.start_step and not info.stopping

    def stop_due(self, info: StepInfo) -> bool:
        return self.window and (info.step >= self.end or info.stopping)

    def start(self, info: StepInfo) -> None:
        self.window = True
        if self.enabled:
            if is_remote(self.dir):
                self._local = Path(tempfile.mkdtemp(prefix="cpt-jax-profile-"))
            else:
                self.dir.mkdir(parents=True, exist_ok=True)
            jax.profiler.start_trace(str(self._local or self.dir), create_perfetto_trace=True)
            self.tracing = True
            self.log(f"profile: tracing steps {info.step + 1}-{self.end} into {self.dir}")

    def stop(self, info: StepInfo, state: Any) -> None:
        self.window = False
        if self.tracing:
            jax.block_until_ready(state)  # the traced steps' device work, not only their dispatch
            self.close()
            self.log(f"profile: wrote the trace of steps {self.cfg.start_step + 1}-{info.step} to {self.dir} "
                     f"(tensorboard --logdir {self.dir.parent}; Perfetto: perfetto_trace.json.gz)")

    def close(self) -> None:
        """End the trace (it is written now); the run's end calls it too, e.g. after an error."""
        if self.tracing:
            self.tracing = False
            jax.profiler.stop_trace()
            if self._local is not None:
                local, self._local = self._local, None
                try:
                    upload_tree(local, self.dir, replace=False)  # an earlier trace stays
                finally:
                    shutil.rmtree(local, ignore_errors=True)
