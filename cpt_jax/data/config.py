"""Data sources and the training-time pipeline settings.

A source is either a directory written by `cpt-jax prepare` ('prepared') or a generator of
deterministic documents with learnable structure ('synthetic', for smoke runs and tests).
Phases mix sources by name with weights (the phase plan's `mixture`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from cpt_jax.config.base import fail, join, require


SYNTHETIC_ONLY = ("vocab_size", "num_docs", "eval_docs", "min_len", "max_len", "seed")


@dataclass(frozen=True)
class SourceConfig:
    kind: Literal["prepared", "synthetic"] = "prepared"  # files from `cpt-jax prepare`, or generated documents
    path: str = ""  # prepared: the directory written by `cpt-jax prepare`
    # synthetic only: documents are a pure function of (seed, index).
    vocab_size: int = 0  # 0: the model's vocab_size (given to DataPipeline)
    num_docs: int = 4096  # synthetic: training documents
    eval_docs: int = 64  # synthetic: held-out documents
    min_len: int = 16  # tokens per document, EOS included
    max_len: int = 256  # synthetic: longest document
    seed: int = 0  # synthetic: content seed

    def validate(self, path: str) -> None:
        if self.kind == "prepared":
            require(bool(self.path), path, "path", "set the directory written by `cpt-jax prepare`")
            # Keys only synthetic sources read would be silently ignored: refuse them.
            default = SourceConfig()
            for key in SYNTHETIC_ONLY:
                require(getattr(self, key) == getattr(default, key), path, key,
                        "only synthetic sources read it (a prepared source's documents come from its files); remove it")
            return
        require(self.vocab_size == 0 or self.vocab_size >= 8, path, "vocab_size",
                f"synthetic sources need vocab_size >= 8 (or 0 for the model's), got {self.vocab_size}")
        require(self.num_docs >= 1, path, "num_docs", "must be >= 1")
        require(self.eval_docs >= 0, path, "eval_docs", "must be >= 0")
        require(self.min_len >= 2, path, "min_len", "must be >= 2 (one token plus EOS)")
        require(self.max_len >= self.min_len, path, "max_len", f"must be >= min_len={self.min_len}")


@dataclass(frozen=True)
class DataConfig:
    sources: dict[str, SourceConfig] = field(default_factory=dict)  # name -> source; phases mix them by name
    seq_len: int = 128  # tokens per packed row
    global_batch_size: int = 8  # rows per optimizer step, over all hosts
    seed: int = 0  # shuffling seed; the content of synthetic sources has its own seed
    workers: int = 0  # grain worker processes (0: load in the training process)
    read_threads: int = 2  # threads per process materialising packed rows
    prefetch: int = 8  # batches buffered ahead per process
    max_epochs_warning: float = 4.0  # `cpt-jax schedule` warns when a source would be repeated more often

    def validate(self, path: str) -> None:
        require(bool(self.sources), path, "sources", "define at least one named source")
        for name in self.sources:
            if not name or not name.replace("_", "").replace("-", "").replace(".", "").isalnum():
                fail(join(path, "sources"), name, "source names may use letters, digits, '_', '-' and '.'")
        require(self.seq_len > 0, path, "seq_len", f"must be positive, got {self.seq_len}")
        require(self.seq_len >= 2, path, "seq_len", "must be >= 2: a row needs a token and its target")
        require(self.global_batch_size >= 1, path, "global_batch_size", "must be >= 1")
        require(self.workers >= 0, path, "workers", "must be >= 0")
        require(self.read_threads >= 1, path, "read_threads", "must be >= 1")
        require(self.prefetch >= 1, path, "prefetch", "must be >= 1")
        require(self.max_epochs_warning > 0, path, "max_epochs_warning",
                f"must be > 0 (epochs of a source before a warning), got {self.max_epochs_warning}")
