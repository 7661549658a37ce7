"""A tiny two-source plan on 8 fake devices for the phase, branch and growth tests."""

from __future__ import annotations


def tiny_plan(phases: list[dict], checkpoint_every: int) -> dict:
    """Synthetic sources `a` and `b`, a 1-layer model, fsdp=8, synchronous checkpoints, every
    step logged: small enough that a test trains several runs in seconds."""
    return {
        "model": {"vocab_size": 64, "hidden_size": 16, "intermediate_size": 32, "num_layers": 1, "num_heads": 2,
                  "num_kv_heads": 1, "max_position_embeddings": 64},
        "data": {"seq_len": 16, "global_batch_size": 8,
                 "sources": {"a": {"kind": "synthetic", "seed": 1, "num_docs": 64, "eval_docs": 4},
                             "b": {"kind": "synthetic", "seed": 2, "num_docs": 64, "eval_docs": 4}}},
        "mesh": {"data": 1, "fsdp": 8, "tensor": 1},
        "checkpoint": {"every": checkpoint_every, "keep_last": 10, "async_save": False},
        "eval": {"every": 100, "batches": 1},
        "log": {"every": 1, "tensorboard": False, "progress": False},
        "phases": phases,
    }
