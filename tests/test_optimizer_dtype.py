"""optimizer.mu_dtype: Adam's first moment stored in bfloat16 (half its memory), the second moment
and the update as before."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cpt_jax.errors import ConfigError
from cpt_jax.train.config import load_run_config
from cpt_jax.train.optimizer import OptimizerConfig, make_optimizer


def _two_updates(mu_dtype):
    params = {"w": jnp.linspace(-1.0, 1.0, 64).reshape(8, 8), "norm": jnp.ones((8,))}
    tx = make_optimizer(OptimizerConfig(mu_dtype=mu_dtype, grad_clip=0.0))
    state = tx.init(params)
    out = []
    for i in range(2):
        grads = jax.tree.map(lambda p: jnp.sin(p * (i + 3.0)) / 3, params)
        update, state = tx.update(grads, state, params)
        out.append(update)
    return state, out


def test_bf16_first_moment_is_stored_in_bf16_and_the_updates_stay_close():
    state32, (a1, a2) = _two_updates(None)
    state16, (b1, b2) = _two_updates("bfloat16")
    adam = [s for s in state16 if hasattr(s, "mu")][0]
    assert {x.dtype for x in jax.tree.leaves(adam.mu)} == {jnp.dtype(jnp.bfloat16)}
    assert {x.dtype for x in jax.tree.leaves(adam.nu)} == {jnp.dtype(jnp.float32)}
    for x, y in zip(jax.tree.leaves(a1), jax.tree.leaves(b1)):  # the first update reads the unrounded moment
        np.testing.assert_array_equal(x, y)
    diffs = [float(jnp.max(jnp.abs(x - y))) for x, y in zip(jax.tree.leaves(a2), jax.tree.leaves(b2))]
    assert 0 < max(diffs) < 1e-2, diffs  # the second reads the bf16-rounded moment: close, not equal


def test_mu_dtype_is_validated(tmp_path):
    plan = tmp_path / "p.yaml"
    plan.write_text(f"run_dir: {tmp_path}/run\n"
                    "model: {vocab_size: 64, hidden_size: 16, intermediate_size: 32, num_layers: 1, num_heads: 2}\n"
                    "data: {seq_len: 16, global_batch_size: 2, sources: {s: {kind: synthetic}}}\n"
                    "phases: [{name: a, init: scratch, steps: 1, mixture: {s: 1.0}, schedule: {peak_lr: 1.0e-3}}]\n")
    assert load_run_config(plan, ["optimizer.mu_dtype=bfloat16"]).optimizer.mu_dtype == "bfloat16"
    with pytest.raises(ConfigError, match="mu_dtype"):
        load_run_config(plan, ["optimizer.mu_dtype=bf16"])
