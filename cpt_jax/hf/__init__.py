"""Hugging Face interop: import upstream safetensors checkpoints, export CPT results."""

from cpt_jax.hf.config_map import (
    ARCHITECTURES,
    hf_config_to_model_config,
    model_config_to_hf_config,
)
from cpt_jax.hf.exporter import export_hf
from cpt_jax.hf.importer import import_hf, load_hf_params, read_hf_config

__all__ = ["ARCHITECTURES", "hf_config_to_model_config", "model_config_to_hf_config", "export_hf", "import_hf",
           "load_hf_params", "read_hf_config"]
