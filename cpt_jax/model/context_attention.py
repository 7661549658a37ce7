"""Attention when each row's sequence is split over the `context` mesh axis.

All-gathered keys and values (MaxText's default context parallelism): each device keeps its own
queries (two chunks of the row in the load-balanced order of sharding/context.py), gathers the
row's keys, values and segment ids from the other devices, puts them back in natural order and
attends with the true positions of its queries. The gathered K/V of one layer is the memory
cost ([B, L, K, D] per device, K the kv heads: small with grouped-query attention); the score
work is the same on every device thanks to the load balancing. Ring attention (passing K/V
blocks around instead of gathering them) would save that memory at 131k tokens but is not
implemented.

Paths: "splash" runs the TPU kernel with a causal mask computed from the queries' true positions
(its mask info is sharded along the query sequence, one slice per device); "xla", "cudnn" and
"blocked" (CPU) use `jax.nn.dot_product_attention` with an explicit [Lq, L] mask per device.
"pallas_gpu" is refused: its kernel knows only the aligned causal mask (no query offsets).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from cpt_jax.errors import ConfigError
from cpt_jax.model.attention_kernels import (KV_AXES, Q_AXES, SEGMENT_AXES, SPLASH_BLOCKS, block_size, platform,
                                             splash_rows)
from cpt_jax.sharding.context import AXIS, balanced_order, context_size, restore
from cpt_jax.sharding.rules import Sharder


def gather_row(x: jax.Array, shards: int) -> jax.Array:
    """Inside shard_map: this device's part of the rows -> whole rows in natural order."""
    return restore(jax.lax.all_gather(x, AXIS, axis=1, tiled=True), shards)


def context_attention(q, k, v, segment_ids, implementation: str, sharder: Sharder) -> jax.Array:
    """q: [B, L, H, D], k, v: [B, L, K, D], segment_ids: [B, L], all in load-balanced order and
    split over `context`; the output is too."""
    mesh, shards = sharder.mesh, context_size(sharder.mesh)
    if implementation == "pallas_gpu":
        raise ConfigError("model.attention", "'pallas_gpu' cannot run with context parallelism (mesh.context > 1): "
                          "its kernel has no query offsets for the causal mask; use model.attention: xla or cudnn "
                          "on GPU, or mesh.context: 1")
    q_spec, kv_spec, seg_spec = (sharder.named(a).spec for a in (Q_AXES, KV_AXES, SEGMENT_AXES))
    length = q.shape[1]
    if implementation == "splash":
        heads = sharder.named(Q_AXES).shard_shape(q.shape)[2]
        kernel = _balanced_splash(heads, length, shards, platform(sharder) == "cpu")
        kernel_spec = kernel.manual_sharding_spec(NamedSharding(mesh, PartitionSpec(None, AXIS)))

        def local(kernel, q, k, v, seg):
            return splash_rows(kernel, q, gather_row(k, shards), gather_row(v, shards), seg, gather_row(seg, shards))

        return jax.shard_map(local, mesh=mesh, in_specs=(kernel_spec, q_spec, kv_spec, kv_spec, seg_spec),
                             out_specs=q_spec, check_vma=False)(kernel, q, k, v, segment_ids)
    dense = implementation if implementation in ("xla", "cudnn") else "xla"
    order = balanced_order(length, shards)

    def local(q, k, v, seg):
        kv_seg = gather_row(seg, shards)
        rows = q.shape[1]
        q_pos = jax.lax.dynamic_slice_in_dim(jnp.asarray(order), jax.lax.axis_index(AXIS) * rows, rows)
        causal = q_pos[:, None] >= jnp.arange(length, dtype=q_pos.dtype)[None, :]
        mask = causal[None] & (seg[:, :, None] == kv_seg[:, None, :])
        return jax.nn.dot_product_attention(q, gather_row(k, shards), gather_row(v, shards), mask=mask[:, None],
                                            implementation=dense)

    return jax.shard_map(local, mesh=mesh, in_specs=(q_spec, kv_spec, kv_spec, seg_spec), out_specs=q_spec,
                         check_vma=False)(q, k, v, segment_ids)


@functools.lru_cache(maxsize=8)
def _balanced_splash(heads: int, length: int, shards: int, interpret: bool):
    """The splash kernel for queries in load-balanced order against keys in natural order."""
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as sm

    class BalancedCausalMask(sm._ComputableMask):
        """Causal by the queries' true positions: q_sequence holds them, and the kernel computes
        the mask from it (sharded with the queries), so no [L, L] mask is ever stored."""

        def __init__(self):
            super().__init__((length, length), lambda q_ids, kv_ids: q_ids >= kv_ids)
            self.q_sequence = balanced_order(length, shards)

        def __getitem__(self, idx):
            """A block of the mask, for splash's block classification (empty, full, partial):
            blocks wholly below or above the diagonal without evaluating them (a 131k row has
            65k blocks of 512 x 512), the others as computed."""
            q_slice, kv_slice = idx
            rows = self.q_sequence[q_slice]
            kv_start, kv_stop = kv_slice.start or 0, self.shape[1] if kv_slice.stop is None else kv_slice.stop
            if rows.min() >= kv_stop - 1:
                return np.ones((len(rows), kv_stop - kv_start), np.bool_)
            if rows.max() < kv_start:
                return np.zeros((len(rows), kv_stop - kv_start), np.bool_)
            return super().__getitem__(idx)

        def __eq__(self, other):
            return isinstance(other, BalancedCausalMask) and other.shape == self.shape

        def __hash__(self):
            return hash((BalancedCausalMask, self.shape, shards))

    b = block_size(length // shards, SPLASH_BLOCKS, "splash")
    sizes = sk.BlockSizes(block_q=b, block_kv=b, block_kv_compute=b, block_q_dkv=b, block_kv_dkv=b,
                          block_kv_dkv_compute=b, block_q_dq=b, block_kv_dq=b)
    mask = sm.MultiHeadMask([BalancedCausalMask() for _ in range(heads)])
    with jax.ensure_compile_time_eval():  # concrete mask-info arrays: the cached kernel outlives this trace
        return sk.make_splash_mha(mask, block_sizes=sizes, head_shards=1, q_seq_shards=shards, interpret=interpret)
