"""Per-device memory and FLOPs of a plan, counted from its shapes and shardings alone.

Parameters, optimizer state and the batch are exact: each array's shard on the most loaded
device (dimensions split over mesh axes, rounded up as XLA pads an uneven split). Temporaries
are a model, not a count: gradients, the update, saved activations for the backward pass (by
remat policy, with flash-style attention that stores no seq x seq matrix) and the logits.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import numpy as np
from jax.sharding import NamedSharding

from cpt_jax.data.pipeline import BATCH_KEYS
from cpt_jax.model.config import ModelConfig
from cpt_jax.train.config import RunConfig
from cpt_jax.train.setup import RunSetup


def shard_bytes(x: jax.ShapeDtypeStruct, sharding: NamedSharding) -> int:
    """Bytes of the largest shard of `x` under `sharding` (uneven splits rounded up)."""
    shape = list(x.shape)
    for dim, entry in enumerate(sharding.spec):
        if entry is None:
            continue
        axes = (entry,) if isinstance(entry, str) else entry
        shape[dim] = math.ceil(shape[dim] / math.prod(sharding.mesh.shape[a] for a in axes))
    return math.prod(shape) * np.dtype(x.dtype).itemsize


def tree_shard_bytes(tree: Any) -> int:
    """Sum of shard bytes over a tree of ShapeDtypeStructs that carry shardings."""
    return sum(shard_bytes(x, x.sharding) for x in jax.tree.leaves(tree))


def state_bytes(setup: RunSetup) -> dict[str, int]:
    """Exact per-device bytes of parameters, optimizer state and one global batch, from the
    run's own abstract train state (build_setup on an abstract mesh: no device is needed)."""
    cfg = setup.cfg
    rows = math.ceil(cfg.data.global_batch_size / setup.data_parallel)
    batch = len(BATCH_KEYS) * rows * cfg.data.seq_len * 4  # every int32 array the pipeline places
    return {"params": tree_shard_bytes(setup.abstract_params), "opt_state": tree_shard_bytes(setup.abstract_opt),
            "batch": batch}


def saved_width(m: ModelConfig, tensor: int) -> float:
    """Values per token per layer kept for the backward pass, by remat policy."""
    d, hd, f = m.hidden_size, m.dim_per_head, m.intermediate_size / tensor
    q, kv = m.num_heads * hd / tensor, m.kv_heads * hd / tensor
    everything = 4 * d + 3 * q + 3 * kv + 3 * f  # norms, residuals, q/k/v (+rope), attention out, MLP
    if m.remat == "full":
        return d  # the block input only; one block is recomputed at a time (added once below)
    if m.remat in ("dots", "dots_no_batch"):
        return 2 * d + 2 * q + 2 * kv + 2 * f  # matmul outputs
    return everything


def temporaries(cfg: RunConfig, mesh, params_bytes: int) -> dict[str, int]:
    """Modelled per-device temporaries of one step, by kind (see `live_temporaries` for how
    they add up)."""
    m = cfg.model
    tensor, dp = mesh.shape["tensor"], mesh.shape["data"] * mesh.shape["fsdp"]
    rows = math.ceil(cfg.data.global_batch_size / cfg.optimizer.grad_accum / dp)
    tokens = rows * cfg.data.seq_len  # of one micro-batch on one device
    act = np.dtype(m.dtype).itemsize
    width = m.num_layers * saved_width(m, tensor)
    if m.remat == "full":
        width += saved_width(dataclasses.replace(m, remat="none"), tensor)
    vocab = m.vocab_size / tensor
    out = {
        "activations": int(tokens * width * act),
        # fp32 logits and their gradient: what the TPU and GPU compilers keep of the [tokens, V]
        # buffers (the compute-dtype product is fused into its fp32 copy; --breakdown shows them)
        "logits": int(tokens * vocab * (4 + 4)),
        "gradients": params_bytes * (2 if cfg.optimizer.grad_accum > 1 else 1),  # (+ the accumulator)
        "update": params_bytes,  # the AdamW direction before it is applied
    }
    return out


def live_temporaries(t: dict[str, int]) -> int:
    """The modelled temporaries at the step's peak: the saved activations and the gradients
    (written from the start of the backward pass) are live together with either the logits
    (loss and its gradient) or the update (after the backward pass), not both. Calibrated on
    the compiled peaks of configs/estimate/ (BUILD.md, "Compiled for real targets")."""
    return t["activations"] + t["gradients"] + max(t["logits"], t["update"])


def step_flops(cfg: RunConfig) -> dict[str, float]:
    """Model FLOPs of one step (all devices): 6N + attention, plus the LM head's 6 d V. `cfg` is
    one phase's run (RunConfig.phase_run): its row length and batch."""
    m, tokens = cfg.model, cfg.data.global_batch_size * cfg.data.seq_len
    per_token = m.flops_per_token(cfg.data.seq_len) + 6.0 * m.hidden_size * m.vocab_size
    recompute = 2.0 * m.num_params(include_embeddings=False) if m.remat == "full" else 0.0
    return {"model_flops": per_token * tokens, "hardware_flops": (per_token + recompute) * tokens}
