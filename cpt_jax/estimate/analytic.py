"""Per-device memory and FLOPs of a plan, counted from its shapes and shardings alone.

Parameters, optimizer state and the batch are exact: each array's shard on the most loaded
device (dimensions split over mesh axes, rounded up as XLA pads an uneven split). Temporaries
are a model, not a count: gradients, the update, saved activations for the backward pass (by
remat policy, with flash-style attention that stores no seq x seq matrix), the blocks FSDP has
gathered and the LM head's buffers of one vocabulary tile; two counts per compiler
(`compiler_counts`) are fitted to the targets' compiled peaks.
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
from cpt_jax.model.decoder import logits_tiling
from cpt_jax.sharding.rules import Sharder
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


def compiler_counts(device: str) -> tuple[int, int]:
    """(blocks FSDP holds gathered at once, copies of one block's working set) per device, as
    fitted to the targets' compiled peaks (BUILD.md, "Compiled for real targets"; refitted with
    the vocabulary-tiled head, the same counts): NVIDIA GPUs (XLA:GPU) 1 and 1; TPU v5p, a
    megacore chip (two TensorCores on one HBM), 2 and 2; other TPUs (v6e) and unknown devices 2
    and 1."""
    if device.startswith("NVIDIA"):
        return 1, 1
    return 2, 2 if "v5p" in device else 1


def layer_params(m: ModelConfig) -> int:
    """Parameters of one transformer block (what FSDP gathers per layer)."""
    return (m.num_params(include_embeddings=False) - m.hidden_size) // m.num_layers


def head_tile(cfg: RunConfig, mesh) -> tuple[int, int]:
    """(positions, vocabulary columns) per device of the LM head's logits that exist at once: one
    chunk of one vocabulary tile, as the model's own rule (decoder.logits_tiling) cuts them on
    `mesh` for one micro-batch; the whole row when it is not chunked."""
    m, length = cfg.model, cfg.data.seq_len
    rows = math.ceil(cfg.data.global_batch_size / cfg.optimizer.grad_accum)
    chunk, tiles = logits_tiling(m, Sharder(mesh), rows, length)
    vocab = math.ceil(m.vocab_size / mesh.shape["tensor"])
    return (length if chunk <= 0 or chunk >= length else chunk), math.ceil(vocab / tiles)


def temporaries(cfg: RunConfig, mesh, params_bytes: int, device: str = "") -> dict[str, int]:
    """Modelled per-device temporaries of one step on `device` (a DeviceKind name), by kind (see
    `live_temporaries` for how they add up)."""
    m = cfg.model
    tensor, fsdp = mesh.shape["tensor"], mesh.shape["fsdp"]
    dp = mesh.shape["data"] * fsdp
    rows = math.ceil(cfg.data.global_batch_size / cfg.optimizer.grad_accum / dp)
    tokens = rows * cfg.data.seq_len  # of one micro-batch on one device
    act = np.dtype(m.dtype).itemsize
    blocks, working_sets = compiler_counts(device)
    block = saved_width(dataclasses.replace(m, remat="none"), tensor)
    positions, columns = head_tile(cfg, mesh)
    return {
        # kept for the backward pass, every layer (by remat policy)
        "activations": int(tokens * m.num_layers * saved_width(m, tensor) * act),
        # remat full: the values of the one block being recomputed, held `working_sets` times
        "recomputed_block": int(tokens * working_sets * block * act) if m.remat == "full" else 0,
        # the LM head's backward pass, one vocabulary tile at a time: fp32 logits and their gradient
        # of one chunk of the tile (the compilers fuse the compute-dtype product into its fp32 copy)
        # and the tile of the head gathered in the compute dtype with its fp32 gradient
        "lm_head": rows * positions * columns * (4 + 4) + m.hidden_size * columns * (act + 4),
        # the fp32 gradient of the hidden states that every tile adds into: zero-filled early, it is
        # live through the layers' loop too (XLA:GPU's live ranges put it at the peak)
        "hidden_grad": tokens * m.hidden_size * 4,
        # fp32, in the parameters' sharding; with grad_accum the micro-batches add into it in place
        "gradients": params_bytes,
        "update": params_bytes,  # the AdamW direction before it is applied
        # FSDP: a block's weights gathered in the compute dtype and its fp32 gradient before the
        # reduce-scatter, for `blocks` blocks at once
        "fsdp_layers": blocks * int(layer_params(m) / tensor * (act + 4)) if fsdp > 1 else 0,
    }


LIVE = ("activations + gradients + hidden_grad + the larger of recomputed_block + fsdp_layers + update "
        "and lm_head")


def live_temporaries(t: dict[str, int]) -> int:
    """The modelled temporaries at the step's peak (LIVE), the larger of two moments. In the layers'
    loop the saved activations, the gradients and the head's hidden-state gradient are live with
    the block being recomputed and the blocks FSDP has gathered, and (as fitted) one more
    parameter-sized fp32 buffer, the update's. The LM head runs between the layers' forward and
    backward passes: its tile's buffers are live with the saved activations and the gradients only
    (on XLA:GPU the small calibration plan's compiled temporaries stay the same whatever the head's
    chunk and tiles). Calibrated on the compiled peaks of configs/estimate/ (BUILD.md, "Compiled
    for real targets")."""
    layers = t["recomputed_block"] + t["fsdp_layers"] + t["update"]
    return t["activations"] + t["gradients"] + t["hidden_grad"] + max(layers, t["lm_head"])


def step_flops(cfg: RunConfig) -> dict[str, float]:
    """Model FLOPs of one step (all devices): 6N + attention, plus the LM head's 6 d V. `cfg` is
    one phase's run (RunConfig.phase_run): its row length and batch."""
    m, tokens = cfg.model, cfg.data.global_batch_size * cfg.data.seq_len
    per_token = m.flops_per_token(cfg.data.seq_len) + 6.0 * m.hidden_size * m.vocab_size
    recompute = 2.0 * m.num_params(include_embeddings=False) if m.remat == "full" else 0.0
    return {"model_flops": per_token * tokens, "hardware_flops": (per_token + recompute) * tokens}
