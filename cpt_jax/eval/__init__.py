"""Evaluation: held-out loss per domain (learning and forgetting)."""

from cpt_jax.eval.heldout import heldout_losses

__all__ = ["heldout_losses"]
