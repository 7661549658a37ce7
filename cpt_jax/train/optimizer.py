"""AdamW without the learning rate (the phase schedules own it), and its config."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Optional

import jax
import optax

from cpt_jax.config.base import require


@dataclass(frozen=True)
class OptimizerConfig:
    """AdamW with global-norm clipping. The learning rate comes from the phase schedules."""

    weight_decay: float = 0.1  # decoupled (AdamW); matrices only unless decay_norms_and_biases
    b1: float = 0.9  # Adam first-moment decay
    b2: float = 0.95  # Adam second-moment decay
    eps: float = 1e-8  # Adam epsilon
    grad_clip: float = 1.0  # max global gradient norm; 0 disables clipping
    z_loss: float = 0.0  # weight of log(Z)^2, keeps logits from drifting (PaLM)
    grad_accum: int = 1  # micro-batches per step; the global batch is split evenly
    ema_decay: float = 0.0  # keep an EMA of the weights (e.g. 0.999), evaluated and saved beside them; 0: off
    mu_dtype: Optional[Literal["bfloat16", "float32"]] = None  # Adam's first moment stored in this dtype (bfloat16 halves it); null: the parameters' dtype. The second moment stays in the parameters' dtype
    decay_norms_and_biases: bool = False  # also decay norm scales and biases (matched by name)
    # Frozen tensors get no gradient, no update and no optimizer state (train/freeze.py).
    freeze: list[str] = field(default_factory=list)  # globs without the layer index (embed, layers.attn.*) and block ranges (layers[0:4], layers[:2].mlp.*)

    def validate(self, path: str) -> None:
        require(self.weight_decay >= 0, path, "weight_decay", "must be >= 0")
        require(0 <= self.b1 < 1, path, "b1", "must be in [0, 1)")
        require(0 <= self.b2 < 1, path, "b2", "must be in [0, 1)")
        require(self.eps > 0, path, "eps", "must be positive")
        require(self.grad_clip >= 0, path, "grad_clip", "must be >= 0 (0 disables clipping)")
        require(self.z_loss >= 0, path, "z_loss", "must be >= 0")
        require(self.grad_accum >= 1, path, "grad_accum", "must be >= 1")
        require(0 <= self.ema_decay < 1, path, "ema_decay", f"must be in [0, 1) (0: off), got {self.ema_decay}")
        from cpt_jax.train.freeze import parse_entry  # the syntax now; what the names match, at setup

        for entry in self.freeze:
            parse_entry(entry, f"{path}.freeze" if path else "freeze")


def is_norm_or_bias(path: tuple) -> bool:
    """A norm scale or a bias, by name (a Qwen2 q/k/v bias is [heads, head_dim], 2-D, and its
    stacked form 3-D: the number of dimensions cannot tell)."""
    names = [str(getattr(k, "key", getattr(k, "name", ""))) for k in path]
    return any("norm" in n for n in names) or (bool(names) and "bias" in names[-1])


def weight_mask(params: Any) -> Any:
    """True where weight decay applies: every parameter but norm scales and biases."""
    return jax.tree_util.tree_map_with_path(lambda path, _: not is_norm_or_bias(path), params)


def make_optimizer(cfg: OptimizerConfig) -> optax.GradientTransformation:
    """AdamW direction without the learning rate.

    The step multiplies by lr = schedule(global_step) itself, instead of letting optax count
    steps: the schedule stays a function of the global step even when a new phase resets the
    optimizer state (carry: params), so the LR is continuous exactly as the plan says.
    """
    decay_mask = None
    if not cfg.decay_norms_and_biases:
        decay_mask = weight_mask  # every weight, no bias or norm scale, in either layer layout
    parts = []
    if cfg.grad_clip > 0:
        parts.append(optax.clip_by_global_norm(cfg.grad_clip))
    parts.append(optax.scale_by_adam(b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, mu_dtype=cfg.mu_dtype))
    if cfg.weight_decay > 0:
        parts.append(optax.add_decayed_weights(cfg.weight_decay, mask=decay_mask))
    return optax.chain(*parts)
