"""`cpt-jax merge` against MergeKit itself: the same recipe on the same tiny random HF models
gives every output tensor equal to MergeKit's to 1e-6 (linear, task_arithmetic, ties, slerp)."""

from __future__ import annotations

import numpy as np
import pytest
import yaml
from hf_fixtures import make_tiny_hf_model
from test_merge import read_hf_tensors as _tensors

pytest.importorskip("mergekit")
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")




@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("merge_parity")
    # Four layers, so gradients interpolate between their points (t = 0, 1/3, 2/3, 1).
    return {name: str(make_tiny_hf_model(root / name, "qwen2", seed=seed, num_hidden_layers=4))
            for seed, name in enumerate(["base", "cpt", "instruct"])}


def _recipes(m):
    slerp_t = [{"filter": "self_attn", "value": [0.0, 0.5, 0.3, 0.7, 1.0]},
               {"filter": "mlp", "value": [1.0, 0.5, 0.7, 0.3, 0.0]}, {"value": 0.4}]
    return {
        "linear": {"merge_method": "linear", "models": [
            {"model": m["base"], "parameters": {"weight": 0.2}}, {"model": m["cpt"], "parameters": {"weight": 0.5}},
            {"model": m["instruct"], "parameters": {"weight": 0.3}}], "dtype": "float32"},
        "linear_unnormalized_gradient": {"merge_method": "linear", "parameters": {"normalize": False}, "models": [
            {"model": m["cpt"], "parameters": {"weight": [0.1, 0.9]}},
            {"model": m["instruct"], "parameters": {"weight": [{"filter": "mlp", "value": 0.5}, {"value": 0.25}]}}]},
        "chat_vector": {"merge_method": "task_arithmetic", "base_model": m["base"], "tokenizer_source": "base",
                        "models": [{"model": m["cpt"], "parameters": {"weight": 1.0}},
                                   {"model": m["instruct"], "parameters": {"weight": 1.0}}],
                        "dtype": "float32"},
        "task_arithmetic_lambda": {"merge_method": "task_arithmetic", "base_model": m["base"],
                                   "parameters": {"lambda": 0.8, "normalize": True}, "models": [
                                       {"model": m["cpt"], "parameters": {"weight": 0.7}},
                                       {"model": m["instruct"], "parameters": {"weight": -0.3}}]},
        "ties": {"merge_method": "ties", "base_model": m["base"], "parameters": {"int8_mask": True},
                 "tokenizer_source": "base", "models": [
            {"model": m["base"]},
            {"model": m["cpt"], "parameters": {"weight": 0.6, "density": 0.5}},
            {"model": m["instruct"], "parameters": {"weight": 0.4, "density": 0.3}}], "dtype": "float32"},
        # TIES keeps the top-k magnitudes; where equal magnitudes straddle the cut MergeKit keeps
        # whichever torch's unstable sort puts first, cpt_jax the earlier entries. These densities
        # put no such tie at the cut of these models.
        "ties_rescaled_unnormalized": {"merge_method": "ties", "base_model": m["base"],
                                       "parameters": {"normalize": False, "rescale": True, "density": 0.65}, "models": [
                                           {"model": m["cpt"], "parameters": {"weight": 1.0}},
                                           {"model": m["instruct"], "parameters": {"weight": 0.5}}]},
        "slerp": {"merge_method": "slerp", "base_model": m["base"], "parameters": {"t": 0.3}, "models": [
            {"model": m["base"]}, {"model": m["cpt"]}]},
        "slerp_gradient": {"merge_method": "slerp", "base_model": m["cpt"], "parameters": {"t": slerp_t}, "models": [
            {"model": m["instruct"]}, {"model": m["cpt"]}]},
    }


RECIPES = list(_recipes({"base": "", "cpt": "", "instruct": ""}))


@pytest.mark.parametrize("name", RECIPES)
def test_every_tensor_equals_mergekit(name, models, tmp_path):
    from mergekit.config import MergeConfiguration
    from mergekit.merge import run_merge
    from mergekit.options import MergeOptions

    from cpt_jax.surgery.merge import merge_from_recipe

    recipe = _recipes(models)[name]
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    run_merge(MergeConfiguration.model_validate(recipe), str(tmp_path / "mergekit"),
              MergeOptions(quiet=True, write_model_card=False))
    merge_from_recipe(path, tmp_path / "ours", progress=False)

    theirs, ours = _tensors(tmp_path / "mergekit"), _tensors(tmp_path / "ours")
    assert sorted(ours) == sorted(theirs)
    base = _tensors(recipe.get("base_model") or recipe["models"][0]["model"])
    for key, want in theirs.items():
        assert ours[key].dtype == want.dtype and ours[key].shape == want.shape, key
        np.testing.assert_allclose(ours[key], want, rtol=0, atol=1e-6, err_msg=f"{name}: {key}")
        assert not np.array_equal(want, base[key]) or name.startswith("slerp"), f"{name}: {key} was not merged"
