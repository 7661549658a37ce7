"""Data: prepare text into shards, pack documents into rows, mix sources at the requested ratios.

Heavy modules (grain, which imports jax) load on first use, so `prepare` workers start fast.
"""

from cpt_jax.data.config import DataConfig, SourceConfig
from cpt_jax.errors import DataError

_LAZY = {
    "DataPipeline": "cpt_jax.data.pipeline",
    "TrainIterator": "cpt_jax.data.pipeline",
    "MixturePlan": "cpt_jax.data.mixture",
    "plan_mixture": "cpt_jax.data.mixture",
    "PrepareOptions": "cpt_jax.data.prepare",
    "prepare": "cpt_jax.data.prepare",
    "sha256_file": "cpt_jax.data.hashing",
}

__all__ = ["DataConfig", "SourceConfig", "DataError", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'cpt_jax.data' has no attribute {name!r}")
