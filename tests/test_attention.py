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
