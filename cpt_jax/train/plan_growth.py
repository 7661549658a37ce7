"""Plans that grow: which plan changes a run directory accepts when the run resumes.

A run directory is a run of the phases it has started. Phases not started yet may be appended,
changed or dropped (continual learners add phases as new data arrives); a started phase may not
change, except that the phase in progress (or the last, finished one) may change its budget when
that leaves the LR of every step it already trained unchanged: an `infinite` schedule lengthened
while in its constant stretch. Everything outside `phases` (model, data, optimizer, seed, ...)
is the plan's base and may not change at all (the resumable sections aside).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cpt_jax.checkpoint.model_checkpoint import read_meta
from cpt_jax.config.base import fingerprint, from_dict, to_dict
from cpt_jax.errors import ConfigError, UserError
from cpt_jax.schedules import lr_at
from cpt_jax.storage import as_path
from cpt_jax.train.config import RESUMABLE_CHANGES, RunConfig, plan_dict, plan_fingerprint

BUDGET = ("steps", "tokens")


def phase_fingerprints(cfg: RunConfig) -> list[str]:
    """One fingerprint per phase (recorded in config.yaml): an unchanged phase has the same one."""
    return [fingerprint(p, ignore=("mesh",)) for p in cfg.phases]  # a mesh is not what a phase trains


def trained_progress(run_dir: str | Path) -> tuple[int, int] | None:
    """(phase, steps done in it) of the newest readable checkpoint of a run directory; None
    when it holds none (then no phase has started)."""
    directory = as_path(run_dir) / "checkpoints"
    steps = sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit()) if directory.is_dir() else []
    for step in reversed(steps):
        try:
            meta = read_meta(run_dir, step)
            return int(meta["phase"]), int(meta["phase_step"])
        except Exception:  # noqa: BLE001 - a damaged step: the one before tells (restore skips it too)
            continue
    return None


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        out.update(_flat(v, f"{key}.") if isinstance(v, dict) and v else {key: v})
    return out


def _refuse(run_dir, why: str) -> UserError:
    return UserError(f"{run_dir} holds a run of a different plan: {why}; only phases not started yet may "
                     "change or be appended. Use another run_dir, or pass --force-new to move the old run "
                     "aside and start again")


def check_plan_change(run_dir: str | Path, recorded: dict, cfg: RunConfig,
                      progress: tuple[int, int] | None) -> None:
    """Raise UserError unless `cfg` continues the plan recorded in config.yaml (`recorded`),
    given the run's progress (see trained_progress)."""
    try:
        old = from_dict(RunConfig, recorded["config"])
    except (ConfigError, KeyError, TypeError):
        old = None  # written by another version of cpt_jax: only the whole plan can be compared
    if old is None:
        if recorded.get("plan_hash") != plan_fingerprint(cfg):
            raise _refuse(run_dir, "model, data, phases or optimizer changed")
        return
    new_d, old_d = plan_dict(cfg), plan_dict(old)
    base = [k for k in new_d if k not in (*RESUMABLE_CHANGES, "phases") and new_d[k] != old_d.get(k)]
    if base:
        raise _refuse(run_dir, f"{', '.join(base)} changed")
    if progress is None:
        return
    current, done = progress
    hashes, new_hashes = recorded.get("phase_hashes") or [], phase_fingerprints(cfg)
    for i in range(min(current + 1, len(old.phases))):
        if i < len(hashes) and i < len(new_hashes) and hashes[i] == new_hashes[i]:
            continue
        _check_started_phase(run_dir, old, cfg, i, current, done)


def _check_started_phase(run_dir, old: RunConfig, cfg: RunConfig, i: int, current: int, done: int) -> None:
    name = old.phases[i].name
    where = f"phase {name!r} (phases[{i}]) has started"
    if i >= len(cfg.phases):
        raise _refuse(run_dir, f"{where} and cannot be removed")
    before, after = _flat(to_dict(old.phases[i])), _flat(to_dict(cfg.phases[i]))
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    fields = [k for k in changed if k not in BUDGET]
    if fields:
        k = fields[0]
        raise _refuse(run_dir, f"{where}: its {k} cannot change ({before.get(k)!r} -> {after.get(k)!r})")
    if not changed:
        return
    if i < current:
        raise _refuse(run_dir, f"{where} and finished, and the phase after it has started: its budget "
                               f"({', '.join(changed)}) cannot change")
    steps = cfg.phase_steps()[i]
    if steps < done:
        raise _refuse(run_dir, f"{where} and trained {done} steps: its budget cannot shrink to {steps} steps")
    _check_trained_lr(run_dir, old, cfg, i, done, where)


def _check_trained_lr(run_dir, old: RunConfig, cfg: RunConfig, i: int, done: int, where: str) -> None:
    """The new budget must leave the LR of the `done` trained steps of phase i as it was."""
    def lrs(c: RunConfig) -> np.ndarray:
        specs = [(p.name, p.schedule, n) for p, n in zip(c.phases, c.phase_steps())]
        start = c.phase_starts()[i] - c.base_step
        return lr_at(specs, np.arange(start, start + done))

    was, now = lrs(old), lrs(cfg)
    moved = np.flatnonzero(~np.isclose(was, now, rtol=1e-6, atol=0.0))
    if moved.size:
        k = int(moved[0])
        step = old.phase_starts()[i] + k + 1
        raise _refuse(run_dir, f"{where}: its new budget changes the LR of step {step}, already trained "
                               f"({was[k]:.6g} -> {now[k]:.6g}); a phase can only be lengthened while its "
                               "trained steps keep their LR (an infinite schedule in its constant stretch)")
