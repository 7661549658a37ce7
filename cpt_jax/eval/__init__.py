"""Evaluation of runs, checkpoints and HF folders: held-out loss per source and downstream tasks."""

from cpt_jax.eval.evaluate import evaluate
from cpt_jax.eval.table import format_results

__all__ = ["evaluate", "format_results"]
