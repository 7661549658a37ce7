"""`cpt-jax merge` end to end: the chat-vector recipe of configs/ on three tiny HF models loads in
transformers; a cpt_jax checkpoint (`ckpt:`) is an input; `--format cpt_jax` writes a checkpoint."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml
from hf_fixtures import hf_logits, load_hf_model, make_tiny_hf_model
from test_merge import read_hf_tensors as _tensors

from cpt_jax.cli.main import main

ROOT = Path(__file__).resolve().parent.parent




@pytest.fixture(scope="module")
def trio(tmp_path_factory):
    root = tmp_path_factory.mktemp("chat_vector")
    return {name: make_tiny_hf_model(root / name, "llama", seed=seed) for seed, name in
            enumerate(["base", "cpt", "instruct"])}


def _chat_vector_recipe(tmp_path, base, cpt, instruct) -> Path:
    recipe = yaml.safe_load((ROOT / "configs" / "merge" / "chat_vector.yaml").read_text())
    recipe["base_model"], recipe["tokenizer_source"] = str(base), str(instruct)
    recipe["models"][0]["model"], recipe["models"][1]["model"] = str(cpt), str(instruct)
    path = tmp_path / "chat_vector.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def test_chat_vector_recipe_loads_in_transformers(trio, tmp_path):
    (trio["instruct"] / "chat_template.jinja").write_text("{{ messages }}")  # the instruct tokenizer's marker
    recipe = _chat_vector_recipe(tmp_path, trio["base"], trio["cpt"], trio["instruct"])
    out = tmp_path / "merged"
    assert main(["merge", str(recipe), "--out", str(out), "--max-shard-size", "20KB"]) == 0
    assert (out / "model.safetensors.index.json").is_file() and (out / "chat_template.jinja").is_file()

    model, info = load_hf_model(out)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys"))
    logits = hf_logits(model, [[1, 5, 9, 30, 2]])
    assert np.isfinite(logits).all()

    merged = _tensors(out)
    base, cpt, instruct = (_tensors(trio[n]) for n in ("base", "cpt", "instruct"))
    assert sorted(merged) == sorted(base)
    for name, x in merged.items():
        want = cpt[name] + (instruct[name] - base[name])  # CPT + chat vector, rounded to bf16 as out_dtype asks
        np.testing.assert_allclose(x, want, rtol=2 ** -8, atol=1e-6, err_msg=name)
    assert main(["merge", str(recipe), "--out", str(out)]) == 2  # no silent overwrite
    assert main(["merge", str(recipe), "--out", str(out), "--overwrite"]) == 0
    assert (out / "model.safetensors").is_file() and not (out / "model.safetensors.index.json").exists()


def test_ckpt_input_and_cpt_jax_output(trio, tmp_path):
    ckpt = tmp_path / "cpt_ckpt"
    assert main(["import-hf", str(trio["cpt"]), str(ckpt)]) == 0

    def average(cpt_ref, out, *extra):
        recipe = tmp_path / f"{out}.yaml"
        recipe.write_text(yaml.safe_dump({"merge_method": "linear", "models": [
            {"model": cpt_ref, "parameters": {"weight": 3.0}},
            {"model": str(trio["instruct"]), "parameters": {"weight": 1.0}}]}))
        assert main(["merge", str(recipe), "--out", str(tmp_path / out), *extra]) == 0
        return tmp_path / out

    from_hf = _tensors(average(str(trio["cpt"]), "from_hf"))
    from_ckpt = _tensors(average(f"ckpt:{ckpt}@0", "from_ckpt"))
    assert sorted(from_ckpt) == sorted(from_hf)
    for name in from_hf:  # the checkpoint's tensors, seen in HF layout, are the HF folder's
        np.testing.assert_allclose(from_ckpt[name], from_hf[name], rtol=0, atol=1e-6, err_msg=name)
    cpt, instruct = _tensors(trio["cpt"]), _tensors(trio["instruct"])
    name = "model.layers.1.mlp.down_proj.weight"
    np.testing.assert_allclose(from_hf[name], 0.75 * cpt[name] + 0.25 * instruct[name], atol=1e-6)

    as_ckpt = average(f"ckpt:{ckpt}", "as_ckpt", "--format", "cpt_jax")
    assert main(["export-hf", str(as_ckpt), str(tmp_path / "exported")]) == 0
    exported = _tensors(tmp_path / "exported")
    for name in from_hf:
        np.testing.assert_allclose(exported[name], from_hf[name], rtol=0, atol=1e-6, err_msg=name)
