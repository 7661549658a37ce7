"""Task scoring of a model with a 131072-token context: short requests get short (bucketed) rows,
log-likelihoods and is-greedy equal the full logits' ones, and the compiled scoring step's
temporaries stay small (no [B, max_position_embeddings, V] logits)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from cpt_jax.model.params import abstract_model, init_params, param_shardings
from cpt_jax.sharding import MeshConfig, make_mesh
from cpt_jax.sharding.placement import batch_sharding, place_batch
from cpt_jax.tasks import Request, pack_rows
from cpt_jax.train.task_eval import make_loglik_step

CONTEXT = 131072


@pytest.mark.slow  # over 20 s on CI's 2 cores: `make test-slow` runs it
def test_short_requests_of_a_long_context_model_score_exactly_in_small_rows(tiny_model_cfg):
    cfg = dataclasses.replace(tiny_model_cfg, max_position_embeddings=CONTEXT, logits_chunk=16)
    mesh = make_mesh(MeshConfig(2, 2, 2))
    graphdef, _ = abstract_model(cfg, mesh)
    params = init_params(cfg, mesh, seed=0)
    step = make_loglik_step(graphdef, param_shardings(cfg, mesh), mesh)
    rng = np.random.default_rng(0)
    reqs = [Request(tuple(int(t) for t in rng.integers(1, 128, n)), tuple(int(t) for t in rng.integers(1, 128, k)))
            for n, k in ((3, 1), (90, 4), (20, 2), (45, 3), (7, 5), (60, 1), (1, 2), (33, 3), (12, 1))]
    lls, greedy, shapes = np.zeros(len(reqs)), np.zeros(len(reqs), bool), set()
    for batch, idx in pack_rows(reqs, batch_size=8, max_len=CONTEXT):
        shapes.add(batch["tokens"].shape)
        out = jax.device_get(step(params, place_batch(batch, batch_sharding(mesh))))
        lls[idx], greedy[idx] = out["ll"][:len(idx)], out["greedy"][:len(idx)]
    assert shapes == {(8, 128), (8, 16)}  # the longest request (93 ids) and the last one's, not 131072

    plain, _ = abstract_model(cfg)  # no mesh: one request per call
    forward = jax.jit(lambda p, t: nnx.merge(plain, p)(t))
    host_params = jax.device_get(params)
    for i, req in enumerate(reqs):  # each request alone, full logits, as lm-eval scores it
        ids = req.context + req.continuation
        logp = jax.nn.log_softmax(forward(host_params, jnp.asarray([ids[:-1]], jnp.int32))[0], axis=-1)
        scored = np.arange(len(ids) - 1 - len(req.continuation), len(ids) - 1)
        np.testing.assert_allclose(lls[i], float(sum(logp[j, ids[j + 1]] for j in scored)), rtol=1e-5, atol=1e-5)
        assert greedy[i] == all(int(jnp.argmax(logp[j])) == ids[j + 1] for j in scored)

    # The compiled step for the largest of those shapes holds no [rows, context, vocab] buffer:
    # the old rows of 131072 needed 8 x 131072 x 128 x 4 B = 537 MB for the fp32 logits alone.
    batch = {k: jax.ShapeDtypeStruct((8, 128), jnp.int32, sharding=batch_sharding(mesh))
             for k in ("tokens", "positions", "segment_ids", "targets", "score_mask")}
    temps = step.lower(params, batch).compile().memory_analysis().temp_size_in_bytes
    assert temps < 4 * 2 ** 20, temps
