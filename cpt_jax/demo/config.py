"""Sizes of the embedded demo; `--size` picks a preset, `key=value` overrides scale it."""

from __future__ import annotations

from dataclasses import dataclass

from cpt_jax.config.base import require


@dataclass(frozen=True)
class DemoConfig:
    vocab_size: int = 2048  # sentencepiece pieces, trained on both domains
    max_files: int = 0  # standard-library files to read (0: all)
    hidden_size: int = 128  # the tiny Llama's width
    intermediate_size: int = 384  # its MLP width
    num_layers: int = 4  # its depth
    num_heads: int = 4  # query heads
    num_kv_heads: int = 2  # key/value heads (GQA)
    seq_len: int = 128  # tokens per packed row
    batch_size: int = 20  # 20 rows: 5% replay is exactly one row per batch
    pretrain_steps: int = 300  # phase 0 (prose)
    cpt_steps: int = 200  # phase 1 (code), in each of the two variants
    replay: float = 0.05  # prose share of every phase-1 batch in the replay run
    pretrain_lr: float = 3.0e-3  # phase-0 peak LR (cosine to 10%)
    cpt_lr: float = 3.0e-3  # phase-1 re-warmed peak LR (cosine to 10%)
    warmup_steps: int = 20  # warmup (and re-warm) length
    eval_every: int = 50  # held-out eval cadence, both domains
    eval_batches: int = 4  # held-out batches per domain
    dense_first: int = 40  # evaluate densely over the first N steps of each phase (the stability gap) ...
    dense_every: int = 5  # ... every M steps
    task_items: int = 48  # cloze multiple-choice items per domain, made from held-out text (0: no tasks)
    sample_tokens: int = 48  # length of the text sample from the final model
    seed: int = 0  # init, data order and sampling

    def validate(self, path: str) -> None:
        for key in ("vocab_size", "hidden_size", "num_layers", "seq_len", "batch_size", "pretrain_steps",
                    "cpt_steps", "eval_every", "eval_batches"):
            require(getattr(self, key) > 0, path, key, "must be positive")
        require(0 < self.replay < 1, path, "replay", "must be in (0, 1)")
        for key in ("dense_first", "dense_every", "task_items"):
            require(getattr(self, key) >= 0, path, key, f"must be >= 0 (0 turns it off), got {getattr(self, key)}")
        require((self.dense_first > 0) == (self.dense_every > 0), path, "dense_every",
                "set dense_first and dense_every together (both 0 turns dense evaluation off)")
        require(round(self.replay * self.batch_size) >= 1, path, "batch_size",
                f"replay {self.replay} of {self.batch_size} rows rounds to 0 rows; raise batch_size")


PRESETS = {
    # The README's demo: about 5 minutes on 2 CPU cores (see README for the measured time).
    "default": {},
    # The test's: the same story on fewer files and steps.
    "test": {"max_files": 400, "vocab_size": 1024, "hidden_size": 64, "intermediate_size": 192,
             "num_layers": 2, "seq_len": 64, "pretrain_steps": 120, "cpt_steps": 100, "eval_every": 40,
             "eval_batches": 2, "sample_tokens": 16, "dense_first": 20, "dense_every": 10, "task_items": 12},
}
