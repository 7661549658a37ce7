"""Where a run's wall time goes, recorded as it trains so that `cpt-jax report` can say what share
of it produced the steps the run kept (goodput) and what the rest was spent on.

Categories (seconds on process 0, each measured around one part of the loop):
- startup: from `Trainer.run` to the first step of the invocation: run directory, restore, setup.
- compile: the first step of each compiled setup (XLA compiles it on that call; the step itself
  is a small part of it).
- step: every other train step, dispatch and wait (at most one step is in flight).
- data: reading, packing and placing the next batch.
- checkpoint: saving, and waiting for a save in flight.
- eval: held-out losses and downstream tasks.
- other: logging, stop agreement, hooks' bookkeeping: the rest of the loop's time.
A "time" row in metrics.jsonl holds each category's seconds since the row before, for the steps
`first_step`..`step` of one invocation (`session`). Time after the last row of a killed process is
not recorded (it is lost with the process); the report adds the steps it retrained to `lost`.
"""

from __future__ import annotations

import os
import time
import uuid
from contextlib import contextmanager
from typing import Iterator

CATEGORIES = ("startup", "compile", "step", "data", "checkpoint", "eval", "other")


class Clock:
    """Accumulates seconds per category between two `row()` calls of one invocation."""

    def __init__(self) -> None:
        self.session = f"{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.started = time.perf_counter()
        self.last = self.started
        self.seconds = dict.fromkeys(CATEGORIES, 0.0)
        self.first_step: int | None = None

    @contextmanager
    def measure(self, category: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[category] += time.perf_counter() - t0

    def mark_startup(self) -> None:
        """The invocation's first step begins now: everything before it was start-up."""
        self.seconds["startup"] += time.perf_counter() - self.last
        self.last = time.perf_counter()

    def stepped(self, step: int) -> None:
        if self.first_step is None:
            self.first_step = step

    def row(self, step: int) -> dict | None:
        """The "time" row for the steps since the last row (None when no step ran)."""
        now = time.perf_counter()
        if self.first_step is None and now - self.last < 1e-3:
            return None
        first = self.first_step if self.first_step is not None else step + 1  # time without steps (a final save)
        measured = sum(v for k, v in self.seconds.items() if k != "startup")
        elapsed = now - self.last
        seconds = {**self.seconds, "other": self.seconds["other"] + max(elapsed - measured, 0.0)}
        out = {"kind": "time", "step": step, "first_step": first, "session": self.session,
               "seconds": {k: round(v, 6) for k, v in seconds.items()}}
        self.seconds = dict.fromkeys(CATEGORIES, 0.0)
        self.last, self.first_step = now, None
        return out


def goodput(rows: list[dict]) -> dict:
    """Totals per category over every invocation of a run, with the steps a later invocation
    trained again (after a crash or preemption) moved from `step` to `lost`, and the share of
    wall time that trained steps the run kept."""
    times = [r for r in rows if r.get("kind") == "time"]
    sessions: list[str] = []
    for r in times:
        if r["session"] not in sessions:
            sessions.append(r["session"])
    # The last invocation that trained a step owns it; earlier trainings of it were lost.
    owner: dict[int, str] = {}
    for r in times:  # rows are in order of writing: later sessions come later
        for s in range(r["first_step"], r["step"] + 1):
            owner[s] = r["session"]
    totals = dict.fromkeys((*CATEGORIES, "lost"), 0.0)
    for r in times:
        sec = r["seconds"]
        n = r["step"] - r["first_step"] + 1
        lost = sum(owner[s] != r["session"] for s in range(r["first_step"], r["step"] + 1))
        for k in CATEGORIES:
            totals[k] += sec.get(k, 0.0)
        if not lost:
            continue
        moved = (sec.get("step", 0.0) + sec.get("compile", 0.0)) * lost / n
        totals["step"] -= sec.get("step", 0.0) * lost / n
        totals["compile"] -= sec.get("compile", 0.0) * lost / n
        totals["lost"] += moved
    wall = sum(totals.values())
    return {"sessions": len(sessions), "wall_s": wall, "seconds": totals,
            "goodput": totals["step"] / wall if wall > 0 else None,
            "retrained_steps": sum(1 for r in times for s in range(r["first_step"], r["step"] + 1)
                                   if owner[s] != r["session"])}


def format_goodput(g: dict) -> str:
    if not g["sessions"]:
        return "no timing recorded (the run predates goodput rows)\n"
    wall = g["wall_s"] or 1.0
    lines = [f"{g['sessions']} invocation(s), {g['wall_s']:.1f} s recorded; goodput (productive steps / wall): "
             f"{g['goodput']:.1%}; {g['retrained_steps']} step(s) trained again after a restart", "",
             "| category | seconds | share |", "|---|---|---|"]
    names = {"step": "productive steps", "lost": "lost to restarts (retrained steps)"}
    for k, v in g["seconds"].items():
        lines.append(f"| {names.get(k, k)} | {v:.2f} | {v / wall:.1%} |")
    return "\n".join(lines) + "\n"
