"""Merge recipes (validation, parameter resolution), the DARE methods' random masks (drop rate,
rescaling, determinism) and the streaming shard writer."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from hf_fixtures import make_tiny_hf_model

from cpt_jax.errors import ConfigError, UserError
from cpt_jax.surgery import merge_methods as mm
from cpt_jax.surgery.recipe import evaluate, layer_position, load_recipe


def _write(tmp_path, recipe: dict, name="recipe.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(recipe))
    return path


def _ta(base="b", **extra):
    return {"merge_method": "task_arithmetic", "base_model": base,
            "models": [{"model": "x", "parameters": {"weight": 1.0}}], **extra}


@pytest.mark.parametrize("recipe, match", [
    (_ta(slices=[]), r"'slices': unknown key"),
    (_ta(merge_methd="ties"), r"merge_methd.*did you mean 'merge_method'"),
    ({**_ta(), "merge_method": "frankenmerge"}, r"merge_method.*must be one of 'linear'"),
    (_ta(base=None), r"base_model.*needs a base_model"),
    ({**_ta(), "models": [{"model": "x", "parameters": {"weight": 1.0, "densty": 0.5}}]},
     r"models\[0\]\.parameters\.densty.*unknown parameter"),
    ({**_ta(), "models": [{"model": "x"}]}, r"models\[0\]\.parameters\.weight.*needs a weight"),
    (_ta(parameters={"t": 0.5}), r"parameters\.t.*unknown parameter"),
    ({"merge_method": "slerp", "base_model": "b", "models": [{"model": "x"}, {"model": "y"}],
      "parameters": {"t": 0.5}}, r"exactly one other model"),
    ({"merge_method": "slerp", "base_model": "b", "models": [{"model": "x"}]}, r"needs parameters\.t"),
    ({"merge_method": "linear", "base_model": "b", "models": [{"model": "x", "parameters": {"weight": 1}}]},
     r"averages base_model too"),
    (_ta(tokenizer_source="union"), r"tokenizer_source.*'union'"),
    (_ta(dtype="int8"), r"dtype.*must be one of"),
    (_ta(parameters={"lambda": {"filtr": "mlp", "value": 1}}), r"parameters\.lambda.*'filter' and 'value'"),
    ({**_ta(), "merge_method": "dare_ties", "parameters": {"seed": -1}}, r"seed.*non-negative"),
])
def test_recipe_errors_name_the_key(tmp_path, recipe, match):
    with pytest.raises(ConfigError, match=match):
        load_recipe(_write(tmp_path, recipe))


def test_parameter_resolution_follows_mergekit():
    gradient = [0.0, 1.0, 0.5]
    assert evaluate(gradient, "x", 0.0) == 0.0
    assert evaluate(gradient, "x", 0.25) == pytest.approx(0.5)  # halfway between the first two points
    assert evaluate(gradient, "x", 1.0) == 0.5
    conditions = [{"filter": "self_attn", "value": 0.1}, {"value": 0.9}]
    assert evaluate(conditions, "model.layers.0.self_attn.q_proj.weight", 0) == 0.1
    assert evaluate(conditions, "model.layers.0.mlp.up_proj.weight", 0) == 0.9
    assert evaluate([{"filter": "mlp", "value": 1}], "model.norm.weight", 0) is None
    assert layer_position("model.layers.3.mlp.up_proj.weight", 4) == 1.0
    assert layer_position("model.layers.1.mlp.up_proj.weight", 4) == pytest.approx(1 / 3)
    assert layer_position("model.embed_tokens.weight", 4) == 0.0


def test_magnitude_mask_keeps_top_k_and_earlier_ties():
    delta = np.array([0.1, -0.5, 0.3, -0.3, 0.0, 0.2], np.float32)
    assert mm.magnitude_mask(delta, 0.5).tolist() == [False, True, True, True, False, False]
    assert mm.magnitude_mask(delta, 0.34).tolist() == [False, True, True, False, False, False]  # tie: earlier kept
    assert mm.magnitude_mask(delta, 0.01).sum() == 1  # at least one entry survives


DENSITY = 0.3


def _dare(rng, rescale=True, consensus=False):
    base = np.zeros((400, 500), np.float32)
    other = np.random.default_rng(1).normal(size=base.shape).astype(np.float32)
    merged = mm.task_arithmetic(base, [other], [1.0], [DENSITY], sparsify="random", consensus=consensus,
                                rescale=rescale, normalize=False, lam=1.0, rng=rng)
    return other, merged


def test_dare_drops_at_the_rate_and_rescales():
    other, merged = _dare(mm.tensor_rng(0, "w"))
    kept = merged != 0
    assert kept.mean() == pytest.approx(DENSITY, abs=0.005)  # 200k draws: the std of the rate is 0.001
    scale = merged[kept] / other[kept]
    np.testing.assert_allclose(scale, scale[0], rtol=1e-5)  # one factor for the whole tensor ...
    assert scale[0] == pytest.approx(np.abs(other).sum() / np.abs(other[kept]).sum(), rel=1e-5)  # ... its L1 ratio
    assert scale[0] == pytest.approx(1 / DENSITY, rel=0.02)  # which is about 1/density
    _, unscaled = _dare(mm.tensor_rng(0, "w"), rescale=False)
    np.testing.assert_array_equal(unscaled[kept], other[kept])  # rescale: false keeps the entries as they were
    np.testing.assert_array_equal(unscaled != 0, kept)


def test_dare_masks_are_deterministic_per_seed_and_tensor():
    _, a = _dare(mm.tensor_rng(7, "model.layers.0.mlp.up_proj.weight"))
    _, b = _dare(mm.tensor_rng(7, "model.layers.0.mlp.up_proj.weight"))
    _, c = _dare(mm.tensor_rng(8, "model.layers.0.mlp.up_proj.weight"))
    _, d = _dare(mm.tensor_rng(7, "model.layers.1.mlp.up_proj.weight"))
    np.testing.assert_array_equal(a, b)
    assert (a != 0).tolist() != (c != 0).tolist() and (a != 0).tolist() != (d != 0).tolist()


def test_ties_consensus_drops_the_minority_sign():
    base = np.zeros(3, np.float32)
    models = [np.array([1.0, -1.0, 2.0], np.float32), np.array([-3.0, -1.0, -1.0], np.float32)]
    merged = mm.task_arithmetic(base, models, [1.0, 1.0], [1.0, 1.0], sparsify=None, consensus=True,
                                rescale=False, normalize=True, lam=1.0)
    # sums: -2 (negative wins: -3 alone), -2 (both agree: mean -1), 1 (positive wins: 2 alone)
    np.testing.assert_allclose(merged, [-3.0, -1.0, 2.0])


@pytest.fixture(scope="module")
def trio(tmp_path_factory):
    root = tmp_path_factory.mktemp("merge_models")
    return {name: str(make_tiny_hf_model(root / name, "llama", seed=seed, tokenizer=False))
            for seed, name in enumerate(["base", "a", "b"])}


def _dare_recipe(trio, seed=None):
    params = {"seed": seed} if seed is not None else {}
    return {"merge_method": "dare_ties", "base_model": trio["base"], "parameters": params,
            "models": [{"model": trio["a"], "parameters": {"weight": 0.5, "density": 0.4}},
                       {"model": trio["b"], "parameters": {"weight": 0.5, "density": 0.6}}]}


def read_hf_tensors(folder) -> dict[str, np.ndarray]:
    """Every tensor of an HF folder as numpy (bf16 widened to fp32, exactly), read by safetensors."""
    import torch
    from safetensors.torch import load_file

    out = {}
    for f in sorted(Path(folder).glob("*.safetensors")):
        out.update({k: (v.float() if v.dtype == torch.bfloat16 else v).numpy() for k, v in load_file(f).items()})
    return out


_read = read_hf_tensors


def test_dare_merge_is_reproducible_under_a_seed(trio, tmp_path):
    from cpt_jax.surgery.merge import merge_from_recipe

    recipe = _write(tmp_path, _dare_recipe(trio, seed=3))
    first = _read(merge_from_recipe(recipe, tmp_path / "one", progress=False))
    again = _read(merge_from_recipe(recipe, tmp_path / "two", progress=False))
    flag = _read(merge_from_recipe(_write(tmp_path, _dare_recipe(trio), "noseed.yaml"), tmp_path / "three",
                                   progress=False, seed=3))
    other = _read(merge_from_recipe(recipe, tmp_path / "four", progress=False, seed=4))
    for name in first:
        np.testing.assert_array_equal(first[name], again[name])
        np.testing.assert_array_equal(first[name], flag[name])  # --seed 3 == parameters.seed 3
    assert any(not np.array_equal(first[n], other[n]) for n in first)


def test_merge_errors(trio, tmp_path):
    from cpt_jax.surgery.merge import merge_from_recipe

    wide = str(make_tiny_hf_model(tmp_path / "wide", "llama", tokenizer=False, intermediate_size=64))
    bigger_vocab = str(make_tiny_hf_model(tmp_path / "vocab", "llama", tokenizer=False, vocab_size=192))
    cases = [
        ({**_dare_recipe(trio), "base_model": wide}, r"is \(48, 96\) in .* but \(48, 64\).*one architecture"),
        ({**_dare_recipe(trio), "base_model": bigger_vocab}, r"vocabularies differ"),
        ({**_dare_recipe(trio), "base_model": "org/some-model"}, r"not a local folder.*never downloads"),
        ({**_dare_recipe(trio), "base_model": f"ckpt:{tmp_path}/missing@5"}, r"not a cpt_jax checkpoint"),
    ]
    for i, (recipe, match) in enumerate(cases):
        with pytest.raises(UserError, match=match):
            merge_from_recipe(_write(tmp_path, recipe), tmp_path / f"out{i}", progress=False)
        assert not (tmp_path / f"out{i}").exists()  # nothing half-written
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(UserError, match="not empty"):
        merge_from_recipe(_write(tmp_path, _dare_recipe(trio)), out, progress=False)
    with pytest.raises(UserError, match="would replace the input"):
        merge_from_recipe(_write(tmp_path, _dare_recipe(trio)), trio["a"], progress=False, overwrite=True)


def test_streaming_writer_shards_load_in_safetensors(tmp_path):
    from safetensors.numpy import load_file

    from cpt_jax.surgery.safetensors_stream import StreamingShardWriter

    rng = np.random.default_rng(0)
    tensors = {f"t{i}": rng.normal(size=(i + 1, 7)).astype(np.float32) for i in range(5)}
    tensors["h"] = rng.normal(size=(3,)).astype(np.float16)
    writer = StreamingShardWriter(tmp_path, [(n, t.shape, t.dtype) for n, t in tensors.items()], max_bytes=100)
    for n, t in tensors.items():
        writer.add(n, t)
    files = writer.finish()
    index = json.loads((tmp_path / files[-1]).read_text())["weight_map"]
    assert len(files) > 2 and set(index) == set(tensors)
    for n, t in tensors.items():
        np.testing.assert_array_equal(load_file(tmp_path / index[n])[n], t)


def test_bf16_inputs_merge_in_fp32_and_keep_their_dtype(tmp_path):
    import ml_dtypes

    from cpt_jax.hf.safetensors_io import tensor_files, tensor_headers
    from cpt_jax.surgery.merge import merge_from_recipe

    a = make_tiny_hf_model(tmp_path / "a", "llama", seed=0, tokenizer=False, dtype="bfloat16")
    b = make_tiny_hf_model(tmp_path / "b", "llama", seed=1, tokenizer=False, dtype="bfloat16")
    recipe = _write(tmp_path, {"merge_method": "linear", "models": [
        {"model": str(a), "parameters": {"weight": 1.0}}, {"model": str(b), "parameters": {"weight": 3.0}}]})
    out_dir = merge_from_recipe(recipe, tmp_path / "out", progress=False)
    out, ta, tb = _read(out_dir), _read(a), _read(b)
    headers = tensor_headers(tensor_files(out_dir))
    for name, x in out.items():
        assert headers[name].dtype == "BF16"
        want = ((ta[name] + 3 * tb[name]) / 4).astype(ml_dtypes.bfloat16).astype(np.float32)
        np.testing.assert_array_equal(x, want)
    assert json.loads((tmp_path / "out" / "config.json").read_text())["dtype"] == "bfloat16"
