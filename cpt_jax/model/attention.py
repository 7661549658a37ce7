"""The attention core: softmax(q k^T / sqrt(d)) v, causal within each packed document.

Paths. "splash" (TPU) and "pallas_gpu" (GPU) are fused Pallas kernels with segment ids, memory
linear in L (attention_kernels.py). `jax.nn.dot_product_attention` ("xla", "cudnn") gets
`is_causal` plus a dense [B, 1, L, L] mask that keeps packed documents apart: jax 0.10's public
API has no segment ids or sequence offsets, so cuDNN cannot skip that mask.
"blocked" is written here because XLA:CPU has no fused attention: the XLA path materialises the
whole fp32 score matrix, computes the masked upper triangle too, and autodiff adds several more
full passes over it in the backward (profiled in benchmarks/RESULTS.md). "blocked" works on
query blocks, each against only the keys up to its diagonal (about half the work for causal
attention), and has a hand-written backward that recomputes the probabilities from the saved
log-sum-exp instead of storing them, the flash-attention recipe. "auto" picks "blocked" on CPU,
"splash" on TPU and "pallas_gpu" on GPU (AUTO). With the row split over the `context` mesh axis,
context_attention.py gathers keys and values first.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from cpt_jax.model.attention_kernels import KERNELS, fused_attention, platform
from cpt_jax.model.context_attention import context_attention
from cpt_jax.sharding.rules import Sharder

# Query rows per block. 64, 128 and 256 measured within noise of each other on CPU at L=512;
# 128 keeps a block's scores ([B, H, 128, L] fp32) inside a 32 MiB L3 for typical CPU batches.
BLOCK = 128
_MASKED = -1e30  # finite: exp(_MASKED - max) is exactly 0 and never NaN


AUTO = {"cpu": "blocked", "tpu": "splash", "gpu": "pallas_gpu", "cuda": "pallas_gpu", "rocm": "xla"}


def resolve(implementation: str, backend: str | None = None) -> str:
    """The path `implementation` means on `backend` (default: jax's default backend)."""
    if implementation != "auto":
        return implementation
    return AUTO.get(backend or jax.default_backend(), "xla")


def attend(q: jax.Array, k: jax.Array, v: jax.Array, segment_ids: jax.Array, implementation: str,
           sharder: Sharder | None = None) -> jax.Array:
    """q: [B, L, H, D]; k, v: [B, L, K, D] with K dividing H (grouped-query); segment_ids: [B, L].

    Causality is by index within the row, and a token only sees tokens of its own segment.
    Every token sees itself, so no row is fully masked. `sharder` places the fused kernels'
    per-device calls under a mesh; when it splits the length (context parallelism), the inputs
    are in its load-balanced order (sharding/context.py).
    """
    implementation = resolve(implementation, platform(sharder))
    if sharder is not None and sharder.is_split("length"):
        return context_attention(q, k, v, segment_ids, implementation, sharder)
    if implementation == "blocked":
        return _blocked(q, k, v, segment_ids)
    if implementation in KERNELS:
        return fused_attention(implementation, q, k, v, segment_ids, sharder)
    # Causality as a flag, not in the mask, so that a fused kernel (cuDNN) can use its causal
    # mask type and skip blocks; the mask only separates packed documents.
    same_doc = (segment_ids[:, :, None] == segment_ids[:, None, :])[:, None]  # [B, 1, L, L]
    return jax.nn.dot_product_attention(q, k, v, mask=same_doc, is_causal=True, implementation=implementation)


def _blocked(q, k, v, segment_ids):
    """Layout change to [B, K, G, L, D] so every einsum below is a plain batched matmul."""
    b, length, h, d = q.shape
    kv = k.shape[2]
    qt = q.reshape(b, length, kv, h // kv, d).transpose(0, 2, 3, 1, 4)
    out = _flash(qt, k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3), segment_ids)
    return out.transpose(0, 3, 1, 2, 4).reshape(b, length, h, d)


def _spans(length: int) -> list[tuple[int, int]]:
    return [(start, min(start + BLOCK, length)) for start in range(0, length, BLOCK)]


def _masked_scores(q_block, k, segment_ids, start: int, end: int):
    """fp32 scores of queries [start, end) against keys [0, end), masked to -1e30."""
    s = jnp.einsum("bkgqd,bksd->bkgqs", q_block, k[:, :, :end], preferred_element_type=jnp.float32)
    s = s * (q_block.shape[-1] ** -0.5)
    causal = (np.arange(start, end)[:, None] >= np.arange(end)[None, :])  # a trace-time constant
    same_doc = segment_ids[:, start:end, None] == segment_ids[:, None, :end]
    return jnp.where((causal[None] & same_doc)[:, None, None], s, _MASKED)


@jax.custom_vjp
def _flash(q, k, v, segment_ids):
    return _flash_forward(q, k, v, segment_ids)[0]


def _flash_forward(q, k, v, segment_ids):
    outs, lses = [], []
    for start, end in _spans(q.shape[3]):
        s = _masked_scores(q[:, :, :, start:end], k, segment_ids, start, end)
        top = jnp.max(s, axis=-1, keepdims=True)
        p = jnp.exp(s - top)
        total = jnp.sum(p, axis=-1, keepdims=True)
        o = jnp.einsum("bkgqs,bksd->bkgqd", p.astype(v.dtype), v[:, :, :end], preferred_element_type=jnp.float32)
        outs.append((o / total).astype(q.dtype))
        lses.append(top + jnp.log(total))
    out = jnp.concatenate(outs, axis=3)
    return out, (q, k, v, segment_ids, out, jnp.concatenate(lses, axis=3))


def _flash_backward(residuals, d_out):
    q, k, v, segment_ids, out, lse = residuals
    f32 = functools.partial(jnp.einsum, preferred_element_type=jnp.float32)
    # sum_j p_ij dp_ij = sum_d dO_id O_id: the softmax backward without a pass over the scores.
    delta = jnp.sum(d_out.astype(jnp.float32) * out.astype(jnp.float32), axis=-1, keepdims=True)
    scale = q.shape[-1] ** -0.5
    dq_blocks = []
    dk = jnp.zeros(k.shape, jnp.float32)
    dv = jnp.zeros(v.shape, jnp.float32)
    for start, end in _spans(q.shape[3]):
        q_block, do_block = q[:, :, :, start:end], d_out[:, :, :, start:end]
        p = jnp.exp(_masked_scores(q_block, k, segment_ids, start, end) - lse[:, :, :, start:end])
        dv = dv.at[:, :, :end].add(f32("bkgqs,bkgqd->bksd", p, do_block))
        dp = f32("bkgqd,bksd->bkgqs", do_block, v[:, :, :end])
        ds = p * (dp - delta[:, :, :, start:end]) * scale
        dq_blocks.append(f32("bkgqs,bksd->bkgqd", ds, k[:, :, :end]))
        dk = dk.at[:, :, :end].add(f32("bkgqs,bkgqd->bksd", ds, q_block))
    dq = jnp.concatenate(dq_blocks, axis=3)
    no_grad = np.zeros(segment_ids.shape, jax.dtypes.float0)  # integer input: no cotangent
    return dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype), no_grad


_flash.defvjp(_flash_forward, _flash_backward)
