"""Fused attention kernels that ship with JAX, with memory linear in sequence length and packed
documents as segment ids (no [L, L] mask or bias is ever built):

- "splash": the Pallas TPU splash-attention kernel (causal mask AND same segment; grouped-query
  attention natively: its MHA mode maps query head i to kv head i // (H / K)).
- "pallas_gpu": the Pallas GPU (Triton) flash-attention kernel with segment ids. It wants as
  many kv heads as query heads, so kv heads are repeated ([B, L, H, D]: still linear in L).

Pallas kernels are not partitioned by XLA, so under a mesh each runs per shard (shard_map over
the batch and head axes the sharding rules give q, k and v). On CPU they run in Pallas
interpret mode: slow, for tests only; `attention: auto` never picks them there.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from cpt_jax.errors import ConfigError
from cpt_jax.sharding.rules import Sharder

Q_AXES = ("batch", "length", "act_heads", None)
KV_AXES = ("batch", "length", "act_kv_heads", None)
SEGMENT_AXES = ("batch", "length")
SPLASH_BLOCKS = (512, 256, 128)  # the kernel's lanes are 128 wide: blocks must be multiples of 128
# Triton tiles must fit an SM's shared memory (227 KiB per block on H100): 128 x 128 tiles overflow
# it for fp32 at head_dim 64 (backward) and 128 (forward), so only the forward's query block is
# 128 and every other block at most 64 (compiled for sm_90a in tests/accel at fp32 and bf16).
GPU_BLOCKS = (128, 64, 32, 16)


def block_size(length: int, candidates: tuple[int, ...], kernel: str) -> int:
    for b in candidates:
        if length % b == 0:
            return b
    raise ConfigError("model.attention", f"{kernel!r} needs a sequence length that is a multiple of "
                      f"{candidates[-1]}, got {length}; change the sequence length or choose another attention")


def _splash_kernel(heads: int, length: int, interpret: bool):
    """Built anew in each trace (the kernel precomputes which blocks the causal mask skips).
    Not cached: a kernel kept from an earlier trace holds that mask data as concrete arrays,
    which a later jit lifts into extra inputs of its executable (six more than the step takes,
    so `Compiled.input_shardings` fails: seen compiling two plans in one process for TPU)."""
    from jax.experimental.pallas.ops.tpu.splash_attention import (
        splash_attention_kernel as sk,
    )
    from jax.experimental.pallas.ops.tpu.splash_attention import (
        splash_attention_mask as sm,
    )

    b = block_size(length, SPLASH_BLOCKS, "splash")
    sizes = sk.BlockSizes(block_q=b, block_kv=b, block_kv_compute=b, block_q_dkv=b, block_kv_dkv=b,
                          block_kv_dkv_compute=b, block_q_dq=b, block_kv_dq=b)
    mask = sm.MultiHeadMask([sm.CausalMask((length, length)) for _ in range(heads)])
    return sk.make_splash_mha(mask, block_sizes=sizes, head_shards=1, q_seq_shards=1, interpret=interpret)


def splash(q, k, v, segment_ids, interpret: bool = False):
    """q: [B, L, H, D]; k, v: [B, L, K, D]; segment_ids: [B, L] (one device's shard)."""
    return splash_rows(_splash_kernel(q.shape[2], q.shape[1], interpret), q, k, v, segment_ids, segment_ids)


def splash_rows(kernel, q, k, v, q_segments, kv_segments):
    """A splash kernel over a batch: q [B, Lq, H, D], k, v [B, L, K, D], segment ids [B, Lq], [B, L]."""
    from jax.experimental.pallas.ops.tpu.splash_attention.splash_attention_kernel import (
        SegmentIds,
    )

    scale = q.shape[-1] ** -0.5

    def one_row(q, k, v, q_seg, kv_seg):  # the kernel takes [heads, length, head_dim] without a batch axis
        out = kernel((q * scale).astype(q.dtype).swapaxes(0, 1), k.swapaxes(0, 1), v.swapaxes(0, 1),
                     SegmentIds(q=q_seg, kv=kv_seg))
        return out.swapaxes(0, 1)

    return jax.vmap(one_row)(q, k, v, q_segments, kv_segments)


def pallas_gpu(q, k, v, segment_ids, interpret: bool = False):
    from jax.experimental.pallas.ops.gpu import attention as gpu_attention

    length = q.shape[1]
    big, small = (block_size(length, c, "pallas_gpu") for c in (GPU_BLOCKS, GPU_BLOCKS[1:]))
    sizes = gpu_attention.BlockSizes(block_q=big, block_k=small, block_q_dkv=small, block_kv_dkv=small,
                                     block_q_dq=small, block_kv_dq=small)
    group = q.shape[2] // k.shape[2]
    k, v = (jnp.repeat(x, group, axis=2) if group > 1 else x for x in (k, v))
    return gpu_attention.mha(q, k, v, segment_ids.astype(jnp.int32), sm_scale=q.shape[-1] ** -0.5, causal=True,
                             block_sizes=sizes, interpret=interpret)


KERNELS = {"splash": splash, "pallas_gpu": pallas_gpu}


def platform(sharder: Sharder | None = None) -> str:
    """The platform the step is compiled for: the mesh's devices' (compile-only TPU or GPU
    devices on a CPU host included), else JAX's default backend."""
    mesh = sharder.mesh if sharder is not None else None
    devices = getattr(mesh, "devices", None)
    if devices is not None and devices.size:
        return devices.flat[0].platform
    return jax.default_backend()


def fused_attention(name: str, q, k, v, segment_ids, sharder: Sharder | None = None,
                    interpret: bool | None = None):
    """Run kernel `name` on each device's shard (whole arrays without a mesh). Interpret mode
    only when the target is the CPU, so a TPU/GPU compile on a CPU host gets the real kernel."""
    if interpret is None:
        interpret = platform(sharder) == "cpu"
    kernel = functools.partial(KERNELS[name], interpret=interpret)
    if sharder is None or sharder.mesh is None:
        return kernel(q, k, v, segment_ids)
    q_spec, kv_spec, seg_spec = (sharder.named(a).spec for a in (Q_AXES, KV_AXES, SEGMENT_AXES))
    return jax.shard_map(kernel, mesh=sharder.mesh, in_specs=(q_spec, kv_spec, kv_spec, seg_spec),
                         out_specs=q_spec, check_vma=False)(q, k, v, segment_ids)
