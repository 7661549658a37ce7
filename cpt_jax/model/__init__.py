"""Flax NNX decoder models (Llama 2/3, Mistral, Qwen2, Qwen3)."""

from cpt_jax.model.decoder import Decoder

__all__ = ["Decoder"]
