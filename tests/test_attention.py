"""The hand-written blocked attention (forward and custom backward) against jax's reference."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cpt_jax.model import attention
from cpt_jax.model.attention import attend


def _inputs(b, length, heads, kv_heads, dim, dtype, seed=0):
    rng = np.random.default_rng(seed)
    q, k, v = (jnp.asarray(rng.standard_normal((b, length, h, dim)), dtype) for h in (heads, kv_heads, kv_heads))
    # Packed rows: sorted segment ids give several documents per row, padding (0) first in row 0.
    segments = jnp.asarray(np.sort(rng.integers(0, 4, (b, length)), axis=1), jnp.int32)
    weights = jnp.asarray(rng.standard_normal((b, length, heads, dim)), jnp.float32)
    return q, k, v, segments, weights


def _loss(implementation, segments, weights):
    return lambda q, k, v: jnp.sum(attend(q, k, v, segments, implementation).astype(jnp.float32) * weights)


@pytest.mark.parametrize("length,block", [(300, 128), (96, 32), (64, 128)])  # ragged last block; one block
@pytest.mark.parametrize("heads,kv_heads", [(4, 4), (4, 2), (6, 1)])
def test_blocked_matches_xla_forward_and_gradients(monkeypatch, length, block, heads, kv_heads):
    monkeypatch.setattr(attention, "BLOCK", block)
    q, k, v, segments, weights = _inputs(2, length, heads, kv_heads, 16, jnp.float32)
    ref = attend(q, k, v, segments, "xla")
    out = attend(q, k, v, segments, "blocked")
    np.testing.assert_allclose(out, ref, atol=2e-6, rtol=1e-5)
    grads = jax.grad(_loss("blocked", segments, weights), argnums=(0, 1, 2))(q, k, v)
    ref_grads = jax.grad(_loss("xla", segments, weights), argnums=(0, 1, 2))(q, k, v)
    for name, g, r in zip("qkv", grads, ref_grads):
        np.testing.assert_allclose(g, r, atol=2e-5, rtol=1e-4, err_msg=f"d{name}")


def test_blocked_bf16_is_close_to_fp32():
    q, k, v, segments, _ = _inputs(2, 200, 4, 2, 32, jnp.float32, seed=1)
    ref = attend(q, k, v, segments, "blocked")
    out = attend(*(x.astype(jnp.bfloat16) for x in (q, k, v)), segments, "blocked")
    assert out.dtype == jnp.bfloat16
    np.testing.assert_allclose(out.astype(jnp.float32), ref, atol=5e-2)


def test_auto_is_blocked_on_cpu_and_jittable(monkeypatch):
    q, k, v, segments, _ = _inputs(1, 130, 2, 2, 8, jnp.float32)
    auto = jax.jit(lambda *a: attend(*a, "auto"))(q, k, v, segments)
    np.testing.assert_allclose(auto, attend(q, k, v, segments, "blocked"), atol=1e-6)
    calls = []
    monkeypatch.setattr(attention, "_blocked", lambda *a: calls.append(a) or a[0])
    attend(q, k, v, segments, "auto")
    assert len(calls) == (jax.default_backend() == "cpu")


# The fused Pallas kernels (TPU splash, GPU flash) run here in Pallas interpret mode: the same
# kernel code, executed by XLA:CPU. Shapes are small because the interpreter is slow; splash
# needs 128-wide blocks, so its rows are 256 long (two blocks, the causal skip is exercised).
FUSED = {"splash": 256, "pallas_gpu": 96}  # several blocks each: 2 x 128 and 3 x 32


def _close(got, want, dtype, err_msg=""):
    """fp32: elementwise; bf16 (8-bit mantissa): within 2% of the largest reference value."""
    got = np.asarray(got.astype(jnp.float32))
    if dtype == jnp.float32:
        np.testing.assert_allclose(got, want, atol=5e-5, rtol=1e-4, err_msg=err_msg)
    else:
        assert np.abs(got - np.asarray(want)).max() <= 0.02 * np.abs(want).max(), err_msg


@pytest.mark.parametrize("kernel", list(FUSED))
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["fp32", "bf16"])
def test_fused_kernel_matches_xla_forward_and_gradients(kernel, dtype):
    """Grouped-query (2 query heads on 1 kv head), packed rows with padding, interpret mode."""
    q, k, v, segments, weights = _inputs(1, FUSED[kernel], 2, 1, 16, jnp.float32, seed=2)
    low = tuple(x.astype(dtype) for x in (q, k, v))
    out = attend(*low, segments, kernel)
    grads = jax.grad(_loss(kernel, segments, weights), argnums=(0, 1, 2))(*low)
    assert out.dtype == dtype and all(g.dtype == dtype for g in grads)
    _close(out, attend(q, k, v, segments, "xla"), dtype)
    ref_grads = jax.grad(_loss("xla", segments, weights), argnums=(0, 1, 2))(q, k, v)
    for name, g, r in zip("qkv", grads, ref_grads):
        _close(g, r, dtype, err_msg=f"d{name}")


def test_fused_kernel_runs_per_shard_under_a_mesh():
    """Batch over data, heads over tensor: shard_map gives each device its rows and heads."""
    from cpt_jax.sharding import MeshConfig, make_mesh
    from cpt_jax.sharding.rules import Sharder

    mesh = make_mesh(MeshConfig(data=2, fsdp=1, tensor=2), jax.devices()[:4])
    q, k, v, segments, _ = _inputs(2, 32, 4, 2, 16, jnp.float32, seed=3)
    sharded = jax.jit(lambda *a: attend(*a, "pallas_gpu", Sharder(mesh)))(q, k, v, segments)
    np.testing.assert_allclose(sharded, attend(q, k, v, segments, "xla"), atol=5e-5, rtol=1e-4)


def test_auto_picks_a_kernel_per_platform_and_splash_checks_its_length():
    assert [attention.resolve("auto", b) for b in ("cpu", "tpu", "gpu")] == ["blocked", "splash", "pallas_gpu"]
    assert attention.resolve("xla", "tpu") == "xla"
    q, k, v, segments, _ = _inputs(1, 200, 2, 2, 8, jnp.float32)
    with pytest.raises(ValueError, match="multiple of 128, got 200"):
        attend(q, k, v, segments, "splash")
