"""Callbacks with a cadence, in the spirit of Levanter's `add_hook(fn, every=N)`: the phase loop
runs the step and asks which hooks are due; logging, evaluation and checkpointing live in hooks."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class StepInfo:
    """Where the loop is after a step (what a hook needs to decide and to act)."""

    step: int  # global step just completed
    phase: int
    phase_step: int  # steps done in this phase
    phase_end: bool  # the phase's last step
    stopping: bool  # a stop was agreed: every hook that must not lose work runs now


@dataclass(frozen=True)
class Hook:
    name: str
    fn: Callable[[StepInfo], None]
    every: int = 0  # run when step % every == 0 (0: never by cadence)
    at_phase_end: bool = True  # also run after a phase's last step
    on_stop: bool = False  # also run when the loop stops early (e.g. save before exiting)
    due_fn: Callable[[StepInfo], bool] | None = None  # extra cadence (e.g. dense evals early in a phase)

    def due(self, info: StepInfo) -> bool:
        return ((self.every > 0 and info.step % self.every == 0) or (self.at_phase_end and info.phase_end)
                or (self.on_stop and info.stopping) or (self.due_fn is not None and self.due_fn(info)))


class Hooks:
    def __init__(self) -> None:
        self._hooks: list[Hook] = []

    def add(self, name: str, fn: Callable[[StepInfo], None], *, every: int = 0, at_phase_end: bool = True,
            on_stop: bool = False, due: Callable[[StepInfo], bool] | None = None) -> None:
        """Hooks run in the order they were added (log before eval before checkpoint)."""
        self._hooks.append(Hook(name, fn, every, at_phase_end, on_stop, due))

    def due(self, info: StepInfo) -> list[Hook]:
        return [h for h in self._hooks if h.due(info)]
