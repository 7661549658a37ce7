"""cpt_jax: continual pre-training of decoder LLMs in JAX/Flax."""

__version__ = "0.1.0"
