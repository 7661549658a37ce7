"""Per-phase learning-rate schedule config: one `schedule:` block per phase of the plan."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Optional, Union

from cpt_jax.config.base import fail, require

ShapeName = Literal["constant", "cosine", "linear", "wsd", "infinite"]
WarmupShape = Literal["linear", "cosine"]
TransitionShape = Literal["linear", "cosine", "1-sqrt", "inv-sqrt", "exponential"]

DEFAULT_MIN_LR_RATIO = 0.1
DEFAULT_WSD_COOLDOWN_FRACTION = 0.2
DEFAULT_COOLDOWN_SHAPE = {"wsd": "1-sqrt", "infinite": "cosine"}

# Optional keys that only mean something for some shapes: setting one elsewhere is an error, so a
# `cooldown_steps` under `shape: cosine` does not silently do nothing.
_USED_BY = {
    "min_lr": ("cosine", "linear", "wsd", "infinite"),
    "min_lr_ratio": ("cosine", "linear", "wsd", "infinite"),
    "cooldown_steps": ("wsd", "infinite"),
    "cooldown_fraction": ("wsd", "infinite"),
    "cooldown_shape": ("wsd", "infinite"),
    "constant_lr": ("infinite",),
}


@dataclass(frozen=True)
class ScheduleConfig:
    """The learning rate of one phase, as a function of the step within the phase.

    Step semantics (the same for every shape): a phase of N steps is a continuous curve f(t) on
    t in [0, N] made of segments (warmup, stable, decay/cooldown, constant, anneal), and the update
    at local step i (0-based) uses lr = f(i + 1), the curve at the END of that step. So a warmup
    of W steps from a to the peak P gives a + (P - a) * (i + 1) / W: the first update already
    moves (never a wasted lr-0 step) and the last warmup step (i = W - 1) uses exactly P; the
    last step of a phase (i = N - 1) uses exactly the phase's final LR (the floor, after a decay).
    `warmup_from: previous` starts the next phase's curve at that final LR.

    Shapes (W warmup, C cooldown, A anneal steps; F = floor; every segment ends where the next
    begins, so f is continuous inside a phase):
      constant  warmup to P, then P.
      cosine    warmup to P, then F + (P - F) * (1 + cos(pi * u)) / 2 over the remaining N - W.
      linear    warmup to P, then P + (F - P) * u over the remaining N - W.
      wsd       warmup to P, P until the last C steps, then a cooldown from P to F.
      infinite  warmup to P, cooldown from P to constant_lr over C, constant_lr for the open
                middle, then (if A > 0) an anneal to F over the last A steps of the phase
                (Ibrahim et al. 2024, "Simple and Scalable Strategies to Continually Pre-train
                LLMs"). Later phases continue it with warmup 0 and cooldown_steps 0.
    (u in [0, 1] is the progress through the segment.) Transition shapes for cooldown/anneal,
    from x to y:
      linear       x + (y - x) * u
      cosine       y + (x - y) * (1 + cos(pi * u)) / 2
      1-sqrt       y + (x - y) * (1 - sqrt(u))                 (Hägele et al. 2024)
      inv-sqrt     x + (y - x) * h(u) / h(1), h(u) = 1 - 1 / sqrt(1 + alpha * u)
      exponential  x * (y / x) ** u                             (needs x, y > 0)
    Repeated cosine (one cycle per phase) is a cosine phase after a cosine phase, each with a
    warmup; `warmup_from: previous` re-warms from where the last cycle ended.

    Keys (YAML) and defaults:
      shape: constant | cosine | linear | wsd | infinite. Default: cosine.
      peak_lr: the LR the warmup reaches (the stable LR of constant/wsd). Required.
      warmup_steps: warmup length in steps; 0 = none. Default: 0 (unless warmup_fraction is set).
      warmup_fraction: warmup length as a fraction of the phase, in [0, 1); rounded to the nearest
        step, at least 1 step when > 0. Give warmup_steps or warmup_fraction, not both. Default: unset.
      warmup_shape: linear | cosine (a + (P - a) * (1 - cos(pi * u)) / 2). Default: linear.
      warmup_from: the LR the warmup starts from: a number >= 0, or "previous" (the LR of the
        previous phase's last step, for a continuous re-warm). Default: 0.0.
      min_lr: the floor that decays end at. Give min_lr or min_lr_ratio, not both. Default: unset.
      min_lr_ratio: the floor as a fraction of peak_lr, in [0, 1]. Default: 0.1 when min_lr is unset.
      cooldown_steps: wsd: cooldown length (> 0); infinite: length of the cooldown from peak_lr to
        constant_lr (0 = no cooldown, for the phases that continue it: they start at constant_lr, or
        warm up to it with peak_lr = constant_lr). Default: unset.
      cooldown_fraction: the cooldown length as a fraction of the phase (wsd: (0, 1]; infinite:
        [0, 1)); rounded like warmup_fraction. Default: 0.2 for wsd when cooldown_steps is unset;
        infinite requires one of the two.
      cooldown_shape: linear | cosine | 1-sqrt | inv-sqrt | exponential.
        Default: 1-sqrt for wsd, cosine for infinite.
      constant_lr: infinite only: the LR of the open constant stretch, in [floor, peak_lr]. Required
        for infinite.
      anneal_steps: infinite only: the anneal to the floor occupies the last anneal_steps steps of
        the phase; 0 = no anneal (the phase ends at constant_lr). Default: 0.
      anneal_shape: infinite only: linear | cosine | 1-sqrt | inv-sqrt | exponential
        (exponential is the paper's choice). Default: cosine.
      inv_sqrt_alpha: alpha of the inv-sqrt transition; larger drops faster early. Default: 10.0.
    """

    peak_lr: float
    shape: ShapeName = "cosine"
    warmup_steps: Optional[int] = None
    warmup_fraction: Optional[float] = None
    warmup_shape: WarmupShape = "linear"
    warmup_from: Union[float, Literal["previous"]] = 0.0
    min_lr: Optional[float] = None
    min_lr_ratio: Optional[float] = None
    cooldown_steps: Optional[int] = None
    cooldown_fraction: Optional[float] = None
    cooldown_shape: Optional[TransitionShape] = None
    constant_lr: Optional[float] = None
    anneal_steps: int = 0
    anneal_shape: TransitionShape = "cosine"
    inv_sqrt_alpha: float = 10.0

    # ------------------------------------------------------------------ derived values
    @property
    def floor(self) -> float:
        if self.min_lr is not None:
            return self.min_lr
        ratio = DEFAULT_MIN_LR_RATIO if self.min_lr_ratio is None else self.min_lr_ratio
        return self.peak_lr * ratio

    @property
    def resolved_cooldown_shape(self) -> str:
        return self.cooldown_shape or DEFAULT_COOLDOWN_SHAPE.get(self.shape, "linear")

    # ------------------------------------------------------------------ validation
    def validate(self, path: str) -> None:
        """Rules that need no phase length; `plan.py` checks lengths against the phase budget."""
        require(math.isfinite(self.peak_lr) and self.peak_lr > 0, path, "peak_lr",
                f"must be a positive number, got {self.peak_lr}")
        for key, used_by in _USED_BY.items():
            if getattr(self, key) is not None and self.shape not in used_by:
                fail(path, key, f"is not used by shape {self.shape!r} (only by {', '.join(used_by)}); "
                                "remove it or change shape")
        if self.shape != "infinite":
            require(self.anneal_steps == 0, path, "anneal_steps",
                    "only shape 'infinite' anneals; remove it or set shape: infinite")
        for a, b in (("warmup_steps", "warmup_fraction"), ("min_lr", "min_lr_ratio"),
                     ("cooldown_steps", "cooldown_fraction")):
            if getattr(self, a) is not None and getattr(self, b) is not None:
                fail(path, b, f"give {a} or {b}, not both")
        self._validate_warmup(path)
        self._validate_floor(path)
        if self.shape == "wsd":
            self._validate_wsd(path)
        if self.shape == "infinite":
            self._validate_infinite(path)
        require(self.inv_sqrt_alpha > 0, path, "inv_sqrt_alpha", f"must be positive, got {self.inv_sqrt_alpha}")

    def _validate_warmup(self, path: str) -> None:
        if self.warmup_steps is not None:
            require(self.warmup_steps >= 0, path, "warmup_steps", f"must be >= 0, got {self.warmup_steps}")
        if self.warmup_fraction is not None:
            require(0 <= self.warmup_fraction < 1, path, "warmup_fraction",
                    f"must be in [0, 1), got {self.warmup_fraction}")
        if self.warmup_from != "previous":
            require(self.warmup_from >= 0, path, "warmup_from",
                    f"must be a number >= 0 or 'previous', got {self.warmup_from}")
        if not (self.warmup_steps or self.warmup_fraction) and self.warmup_from != 0.0:
            fail(path, "warmup_from", "has no effect without a warmup; set warmup_steps (or warmup_fraction)")

    def _validate_floor(self, path: str) -> None:
        if self.min_lr is not None:
            require(self.min_lr >= 0, path, "min_lr", f"must be >= 0, got {self.min_lr}")
            require(self.min_lr <= self.peak_lr, path, "min_lr",
                    f"the floor {self.min_lr} is above peak_lr {self.peak_lr}; lower it")
        if self.min_lr_ratio is not None:
            require(0 <= self.min_lr_ratio <= 1, path, "min_lr_ratio",
                    f"must be in [0, 1] (floor = ratio * peak_lr), got {self.min_lr_ratio}")

    def _validate_wsd(self, path: str) -> None:
        if self.cooldown_steps is not None:
            require(self.cooldown_steps > 0, path, "cooldown_steps",
                    f"must be positive for wsd, got {self.cooldown_steps} (shape: constant has no cooldown)")
        if self.cooldown_fraction is not None:
            require(0 < self.cooldown_fraction <= 1, path, "cooldown_fraction",
                    f"must be in (0, 1] for wsd, got {self.cooldown_fraction}")
        if self.resolved_cooldown_shape == "exponential":
            require(self.floor > 0, path, "cooldown_shape",
                    "exponential decay cannot reach a floor of 0; set min_lr > 0 or another cooldown_shape")

    def _validate_infinite(self, path: str) -> None:
        if self.constant_lr is None:
            fail(path, "constant_lr", "shape 'infinite' needs the LR of its constant stretch")
        require(self.constant_lr <= self.peak_lr, path, "constant_lr",
                f"{self.constant_lr} is above peak_lr {self.peak_lr}; lower it")
        require(self.constant_lr >= self.floor, path, "constant_lr",
                f"{self.constant_lr} is below the floor {self.floor}; raise it or lower min_lr")
        require(self.constant_lr > 0, path, "constant_lr", "must be positive")
        if self.cooldown_steps is None and self.cooldown_fraction is None:
            fail(path, "cooldown_steps", "shape 'infinite' needs cooldown_steps (or cooldown_fraction): "
                                         "the steps from peak_lr down to constant_lr (0 to start at constant_lr)")
        if self.cooldown_steps is not None:
            require(self.cooldown_steps >= 0, path, "cooldown_steps", f"must be >= 0, got {self.cooldown_steps}")
        if self.cooldown_fraction is not None:
            require(0 <= self.cooldown_fraction < 1, path, "cooldown_fraction",
                    f"must be in [0, 1) for infinite, got {self.cooldown_fraction}")
        no_cooldown = not (self.cooldown_steps or self.cooldown_fraction)
        if no_cooldown and (self.warmup_steps or self.warmup_fraction) and self.constant_lr != self.peak_lr:
            fail(path, "cooldown_steps", f"a warmup to peak_lr {self.peak_lr} with no cooldown would jump to "
                                         f"constant_lr {self.constant_lr}; set cooldown_steps > 0, or peak_lr "
                                         "equal to constant_lr to re-warm straight to the constant stretch")
        require(self.anneal_steps >= 0, path, "anneal_steps", f"must be >= 0, got {self.anneal_steps}")
        if self.anneal_shape == "exponential" and self.anneal_steps > 0:
            require(self.floor > 0, path, "anneal_shape",
                    "exponential decay cannot reach a floor of 0; set min_lr > 0 or another anneal_shape")

