"""A plan that starts from `init: hf:DIR` takes its model from DIR's config.json: train, schedule,
estimate and eval see the same model, the plan sets only how it runs, and a key that says
another architecture is refused by name with both values."""

from __future__ import annotations

import json

import pytest
import yaml
from hf_fixtures import make_tiny_hf_model

from cpt_jax.cli.main import main
from cpt_jax.config.base import to_dict
from cpt_jax.hf import hf_config_to_model_config, read_hf_config
from cpt_jax.train.config import load_run_config


def write_plan(tmp, hf_dir, model=None, name="plan"):
    plan = {"run_dir": str(tmp / f"run_{name}"),
            "data": {"seq_len": 32, "global_batch_size": 8,
                     "sources": {"general": {"kind": "synthetic", "seed": 1, "num_docs": 64, "eval_docs": 8}}},
            "mesh": {"data": 1, "fsdp": -1, "tensor": 1}, "log": {"tensorboard": False, "progress": False},
            "eval": {"every": 2, "batches": 1},
            "phases": [{"name": "cpt", "init": f"hf:{hf_dir}", "steps": 2, "mixture": {"general": 1.0},
                        "schedule": {"shape": "constant", "peak_lr": 1e-3}}]}
    if model is not None:
        plan["model"] = model
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(plan))
    return path


@pytest.fixture(scope="module")
def upstream(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("upstream")
    hf_dir = make_tiny_hf_model(tmp / "hf", "qwen2", tie=True)
    return tmp, hf_dir


@pytest.mark.slow
def test_a_plan_without_a_model_section_trains_the_upstream_model(upstream, capsys):
    tmp, hf_dir = upstream
    plan = write_plan(tmp, hf_dir, {"remat": "full", "scan_unroll": 1})
    want = to_dict(hf_config_to_model_config(read_hf_config(hf_dir)))
    assert main(["train", str(plan)]) == 0, capsys.readouterr().err[-2000:]
    recorded = yaml.safe_load((tmp / "run_plan" / "config.yaml").read_text())["config"]["model"]
    assert recorded == {**want, "remat": "full", "scan_unroll": 1}
    assert recorded["qkv_bias"] and recorded["tie_embeddings"] and recorded["family"] == "qwen2"
    # schedule, estimate and eval read the same plan and see the same model.
    assert main(["schedule", str(plan)]) == 0
    assert main(["estimate", str(plan), "--devices", "1", "--analytic-only", "--json", str(tmp / "est.json")]) == 0
    params = hf_config_to_model_config(read_hf_config(hf_dir)).num_params()
    assert str(params) in json.dumps(json.loads((tmp / "est.json").read_text()))
    assert main(["eval", str(plan), "--json", str(tmp / "eval.json")]) == 0
    assert json.loads((tmp / "eval.json").read_text())["step"] == 2


@pytest.mark.parametrize("key, value, shown", [
    ("hidden_size", 64, "64 contradicts"),
    ("num_layers", 3, "3 contradicts"),
    ("vocab_size", 128, "(160)"),
    ("rope_theta", 5e5, "(10000.0)"),
    ("qkv_bias", False, "(True)"),
    ("family", "llama", "'llama' contradicts"),
])
def test_a_model_key_that_contradicts_upstream_is_refused_by_name(upstream, capsys, key, value, shown):
    tmp, hf_dir = upstream
    plan = write_plan(tmp, hf_dir, {key: value, "dtype": "bfloat16"}, name=f"bad_{key}")
    assert main(["schedule", str(plan)]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and f"'model.{key}'" in err and shown in err and "config.json" in err, err
    assert main(["train", str(plan)]) == 2
    assert not (tmp / f"run_bad_{key}").exists()


def test_the_copied_model_section_still_loads_and_equal_spellings_agree(upstream):
    tmp, hf_dir = upstream
    full = to_dict(hf_config_to_model_config(read_hf_config(hf_dir)))
    cfg = load_run_config(write_plan(tmp, hf_dir, {**full, "head_dim": 12, "num_kv_heads": 2}, name="full"))
    assert to_dict(cfg.model) == {**full, "head_dim": 12}  # the same width, as the plan spells it


def test_a_config_json_with_only_model_type_is_accepted(upstream, tmp_path, capsys):
    _, hf_dir = upstream
    bare = make_tiny_hf_model(tmp_path / "bare", "qwen2", tie=True)
    cfg = json.loads((bare / "config.json").read_text())
    del cfg["architectures"]
    (bare / "config.json").write_text(json.dumps(cfg))
    assert main(["import-hf", str(bare), str(tmp_path / "ckpt")]) == 0, capsys.readouterr().err[-2000:]
    assert load_run_config(write_plan(tmp_path, bare)).model.family == "qwen2"
