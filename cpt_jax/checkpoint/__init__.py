"""Checkpoints: orbax run checkpoints (manager.py) and model checkpoints (params.py)."""

from cpt_jax.checkpoint.run_checkpoint import RunCheckpointer
from cpt_jax.checkpoint.model_checkpoint import load_model_checkpoint, read_meta, read_model_config, save_model_checkpoint

__all__ = ["RunCheckpointer", "load_model_checkpoint", "read_meta", "read_model_config", "save_model_checkpoint"]
