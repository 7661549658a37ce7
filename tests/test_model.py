"""Model semantics: packing isolation, positions restart, GQA, remat and dtype options."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from cpt_jax.model.config import ModelConfig
from cpt_jax.model import Decoder


def make(cfg, seed=0):
    model = Decoder(cfg, nnx.Rngs(seed))
    graphdef, state = nnx.split(model)
    return graphdef, nnx.to_pure_dict(state)


def apply(graphdef, params, tokens, positions=None, segments=None):
    return nnx.merge(graphdef, params)(jnp.asarray(tokens), None if positions is None else jnp.asarray(positions),
                                       None if segments is None else jnp.asarray(segments))


@pytest.mark.parametrize("extra", [{}, {"qkv_bias": True}, {"qk_norm": True, "head_dim": 24},
                                   {"tie_embeddings": True, "num_kv_heads": 4}])
def test_packed_document_equals_document_alone(tiny_model_cfg, extra):
    cfg = ModelConfig(**{**tiny_model_cfg.__dict__, **extra})
    graphdef, params = make(cfg)
    rng = np.random.default_rng(0)
    doc_a, doc_b, doc_c = (rng.integers(1, cfg.vocab_size, n) for n in (7, 12, 5))
    row = np.concatenate([doc_a, doc_b, doc_c])[None]
    seg = np.concatenate([np.full(7, 1), np.full(12, 2), np.full(5, 3)])[None]
    pos = np.concatenate([np.arange(7), np.arange(12), np.arange(5)])[None]
    packed = apply(graphdef, params, row, pos, seg)
    alone = apply(graphdef, params, doc_b[None])
    np.testing.assert_allclose(packed[0, 7:19], alone[0], atol=1e-5, rtol=1e-5)
    # Same positions but no segment boundary: the document must now see its predecessor.
    leaky = apply(graphdef, params, row, pos, np.ones_like(seg))
    assert np.abs(np.asarray(leaky[0, 7:19]) - np.asarray(alone[0])).max() > 1e-3


def test_causal_future_tokens_do_not_change_past(tiny_model_cfg):
    graphdef, params = make(tiny_model_cfg)
    rng = np.random.default_rng(1)
    a = rng.integers(0, 128, (1, 16))
    b = a.copy()
    b[0, 10:] = rng.integers(0, 128, 6)
    la, lb = apply(graphdef, params, a), apply(graphdef, params, b)
    np.testing.assert_allclose(la[0, :10], lb[0, :10], atol=1e-6)
    assert np.abs(np.asarray(la[0, 10:]) - np.asarray(lb[0, 10:])).max() > 1e-4


def test_gqa_equals_mha_with_repeated_kv(tiny_model_cfg):
    """GQA with kv heads repeated into a multi-head model gives identical logits."""
    gqa_graph, gqa = make(tiny_model_cfg)
    mha_cfg = ModelConfig(**{**tiny_model_cfg.__dict__, "num_kv_heads": 4})
    mha_graph, _ = make(mha_cfg)
    mha = jax.tree.map(lambda x: x, gqa)
    group = tiny_model_cfg.num_heads // tiny_model_cfg.kv_heads
    assert tiny_model_cfg.scan_layers  # the default: every layer's k and v stacked, [layers, d, kv, hd]
    for name in ("k", "v"):
        mha["layers"]["attn"][name] = jnp.repeat(mha["layers"]["attn"][name], group, axis=-2)
    tokens = np.random.default_rng(2).integers(0, 128, (2, 16))
    np.testing.assert_allclose(apply(gqa_graph, gqa, tokens), apply(mha_graph, mha, tokens), atol=1e-5)


@pytest.mark.parametrize("remat", ["full", "dots"])
def test_remat_changes_memory_not_math(tiny_model_cfg, remat):
    graphdef, params = make(tiny_model_cfg)
    remat_graph, _ = make(ModelConfig(**{**tiny_model_cfg.__dict__, "remat": remat}))
    tokens = jnp.asarray(np.random.default_rng(3).integers(0, 128, (2, 16)))

    def loss(g, p):
        return jnp.mean(nnx.merge(g, p)(tokens) ** 2)

    g1 = jax.grad(lambda p: loss(graphdef, p))(params)
    g2 = jax.grad(lambda p: loss(remat_graph, p))(params)
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_bf16_compute_is_close_to_fp32(tiny_model_cfg):
    graphdef, params = make(tiny_model_cfg)
    bf_graph, _ = make(ModelConfig(**{**tiny_model_cfg.__dict__, "dtype": "bfloat16"}))
    tokens = np.random.default_rng(4).integers(0, 128, (2, 16))
    a, b = apply(graphdef, params, tokens), apply(bf_graph, params, tokens)
    assert b.dtype == jnp.float32  # logits are always fp32 for the loss
    assert np.abs(np.asarray(a) - np.asarray(b)).max() < 0.05


def test_llama3_rope_scaling_matches_reference_formula():
    from cpt_jax.model.config import RopeScalingConfig
    from cpt_jax.model.rope import inverse_frequencies
    cfg = ModelConfig(hidden_size=64, num_heads=1, intermediate_size=8, vocab_size=8, num_layers=1,
                      rope_theta=500000.0, rope_scaling=RopeScalingConfig(factor=8.0, original_max_position_embeddings=64))
    inv = inverse_frequencies(cfg)
    base = 1.0 / (500000.0 ** (np.arange(0, 64, 2) / 64))
    wavelen = 2 * np.pi / base
    # High frequencies untouched, low frequencies divided by the factor.
    hi, lo = wavelen < 64 / 4, wavelen > 64 / 1
    np.testing.assert_allclose(inv[hi], base[hi], rtol=1e-6)
    np.testing.assert_allclose(inv[lo], base[lo] / 8.0, rtol=1e-6)
    mid = ~hi & ~lo
    assert mid.any() and np.all(inv[mid] <= base[mid]) and np.all(inv[mid] >= base[mid] / 8.0)
