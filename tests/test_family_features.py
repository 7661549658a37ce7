"""A model family fixes its graph features (Qwen2: q/k/v biases; Qwen3: q/k head norms): a plan
gets them from `family` and is refused when it contradicts them, naming the key; what trains
is what exports under that family's architecture."""

from __future__ import annotations

import pytest
import yaml
from hf_fixtures import load_hf_model

from cpt_jax.cli.main import main
from cpt_jax.model.config import FAMILY_FEATURES
from cpt_jax.train.config import load_run_config

MODEL = {"vocab_size": 96, "hidden_size": 32, "intermediate_size": 64, "num_layers": 2, "num_heads": 4,
         "num_kv_heads": 2, "max_position_embeddings": 64}


def plan(tmp, name, **model):
    doc = {"run_dir": str(tmp / f"run_{name}"), "model": {**MODEL, **model},
           "data": {"seq_len": 32, "global_batch_size": 8,
                    "sources": {"general": {"kind": "synthetic", "seed": 1, "num_docs": 32, "eval_docs": 8}}},
           "mesh": {"data": 1, "fsdp": -1, "tensor": 1}, "log": {"tensorboard": False, "progress": False},
           "eval": {"every": 1, "batches": 1},
           "phases": [{"name": "p", "init": "scratch", "steps": 1, "mixture": {"general": 1.0},
                       "schedule": {"shape": "constant", "peak_lr": 1e-3}}]}
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return str(path)


@pytest.mark.parametrize("family, key, value", [
    ("qwen2", "qkv_bias", False), ("qwen3", "qk_norm", False), ("llama", "qkv_bias", True),
    ("mistral", "qk_norm", True), ("qwen2", "qk_norm", True), ("qwen3", "qkv_bias", True),
])
def test_a_contradicted_family_feature_is_refused_by_name(tmp_path, capsys, family, key, value):
    assert FAMILY_FEATURES[family][key] != value
    assert main(["train", plan(tmp_path, "bad", family=family, **{key: value})]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and f"'model.{key}'" in err and family in err and "Traceback" not in err, err
    assert not (tmp_path / "run_bad").exists()


@pytest.mark.parametrize("family", ["llama", "mistral", "qwen2", "qwen3"])
def test_a_plan_gets_the_features_from_its_family(tmp_path, family):
    cfg = load_run_config(plan(tmp_path, family, family=family))
    assert {"qkv_bias": cfg.model.qkv_bias, "qk_norm": cfg.model.qk_norm} == FAMILY_FEATURES[family]


@pytest.mark.slow
def test_the_family_gives_its_features_and_exports_as_that_architecture(tmp_path, capsys, family="qwen2"):
    """`family: qwen2` alone trains a Qwen2 (with biases) that transformers loads with no missing
    or unexpected weight (the qwen3 norms take the same path: test_hf_parity exports them)."""
    path = plan(tmp_path, family, family=family, tie_embeddings=family == "qwen2")
    assert main(["train", path]) == 0, capsys.readouterr().err[-2000:]
    recorded = yaml.safe_load((tmp_path / f"run_{family}" / "config.yaml").read_text())["config"]["model"]
    assert {k: recorded[k] for k in ("qkv_bias", "qk_norm")} == FAMILY_FEATURES[family]
    assert main(["export-hf", str(tmp_path / f"run_{family}"), str(tmp_path / "hf")]) == 0
    model, info = load_hf_model(tmp_path / "hf")
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    names = [n for n, _ in model.named_parameters()]
    assert any(n.endswith("q_proj.bias") for n in names) == (family == "qwen2")
    assert any(n.endswith("q_norm.weight") for n in names) == (family == "qwen3")
