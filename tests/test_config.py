"""Config loading: unknown keys, wrong types and impossible values name the key and the fix."""


import pytest

from cpt_jax.config.base import ConfigError, apply_overrides, from_dict, load_yaml
from cpt_jax.model.config import ModelConfig
from cpt_jax.train.config import RunConfig, load_run_config
from cpt_jax.sharding.mesh import MeshConfig

BASE = {
    "run_dir": "r",
    "model": {"vocab_size": 64, "hidden_size": 32, "intermediate_size": 64, "num_layers": 1, "num_heads": 4},
    "data": {"seq_len": 16, "global_batch_size": 8, "sources": {"a": {"kind": "synthetic"}}},
    "phases": [{"name": "p0", "init": "scratch", "steps": 10, "mixture": {"a": 1.0},
                "schedule": {"peak_lr": 1e-3}}],
}


def build(overrides):
    import copy
    return from_dict(RunConfig, apply_overrides(copy.deepcopy(BASE), overrides))


def test_valid_config_builds():
    cfg = build([])
    assert cfg.model.dim_per_head == 8 and cfg.phase_steps() == [10] and cfg.tokens_per_step == 128


@pytest.mark.parametrize("override, key, words", [
    (["model.hiden_size=32"], "model.hiden_size", "did you mean 'hidden_size'"),
    (["model.num_heads=5"], "model.num_heads", "must divide hidden_size"),
    (["model.num_kv_heads=3"], "model.num_kv_heads", "must divide num_heads"),
    (["model.hidden_size=abc"], "model.hidden_size", "expected an integer"),
    (["data.seq_len=0"], "data.seq_len", "must be positive"),
    (["model.family=lama"], "model.family", "did you mean 'llama'"),
    (["phases.0.mixture={b: 1.0}"], "phases[0].mixture.b", "unknown source"),
    (["phases.0.init=previous"], "phases[0].init", "no previous phase"),
    (["phases.0.tokens=100"], "phases[0].steps", "exactly one of steps or tokens"),
    (["optimizer.grad_accum=3"], "optimizer.grad_accum", "must divide"),
    (["mesh.data=0"], "mesh.data", ">= 1"),
    (["data.seq_len=5000"], "data.seq_len", "max_position_embeddings"),
    (["model.scan_unroll=-1"], "model.scan_unroll", "must be >= 0"),
    (["keep_host_memory=maybe"], "keep_host_memory", "expected"),
])
def test_bad_values_name_the_key(override, key, words):
    with pytest.raises(ConfigError) as err:
        build(override)
    assert err.value.key == key, str(err.value)
    assert words in str(err.value)


def test_mesh_product_must_match_devices():
    with pytest.raises(ConfigError, match="8 devices, but 4 are available"):
        MeshConfig(data=2, fsdp=2, tensor=2).resolve(4)
    assert MeshConfig(data=2, fsdp=-1, tensor=2).resolve(8) == (2, 2, 1, 2)
    assert MeshConfig(data=1, fsdp=-1, context=2, tensor=2).resolve(8) == (1, 2, 2, 2)
    with pytest.raises(ConfigError, match="do not divide"):
        MeshConfig(data=3, fsdp=-1).resolve(8)


def test_overrides_parse_yaml_scalars():
    data = apply_overrides({"a": {"b": 1}}, ["a.b=2", "a.c=true", "d.e=[1, 2]", "f=3.0e-4"])
    assert data == {"a": {"b": 2, "c": True}, "d": {"e": [1, 2]}, "f": 3.0e-4}
    with pytest.raises(ConfigError, match="key.sub=value"):
        apply_overrides({}, ["novalue"])


def test_yaml_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_yaml(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_yaml(bad)


def test_shipped_configs_load():
    """Every plan in configs/ (and configs/estimate/) loads as a run config; merge recipes load as recipes."""
    from pathlib import Path

    from cpt_jax.surgery.recipe import load_recipe

    configs = Path(__file__).parent.parent / "configs"
    plans = sorted([*configs.glob("*.yaml"), *configs.glob("estimate/*.yaml")])
    assert len(plans) >= 6
    for path in plans:
        load_run_config(path)
    recipes = sorted(configs.glob("merge/*.yaml"))
    assert recipes
    for path in recipes:
        load_recipe(path)


def test_model_param_count_matches_tree(tiny_model_cfg):
    import jax
    from cpt_jax.model.params import abstract_model
    for cfg in (tiny_model_cfg, ModelConfig(**{**tiny_model_cfg.__dict__, "tie_embeddings": True,
                                                "qkv_bias": True, "qk_norm": True, "head_dim": 24})):
        _, state = abstract_model(cfg)
        n = sum(x.size for x in jax.tree.leaves(state))
        assert n == cfg.num_params()


def test_config_reference_is_up_to_date():
    """configs/REFERENCE.md documents every key; regenerate with tools/gen_config_reference.py."""
    from pathlib import Path
    from cpt_jax.cli.reference import run_config_reference
    shipped = Path(__file__).parent.parent.joinpath("configs", "REFERENCE.md").read_text()
    assert shipped == run_config_reference(), "run: python tools/gen_config_reference.py"


@pytest.mark.parametrize("override, key", [("task_items=-1", "task_items"), ("dense_first=-3", "dense_first"),
                                           ("dense_every=0", "dense_every")])
def test_demo_refuses_impossible_task_and_dense_settings(override, key):
    from cpt_jax.demo.config import PRESETS, DemoConfig

    with pytest.raises(ConfigError, match=key):
        from_dict(DemoConfig, apply_overrides(dict(PRESETS["default"]), [override]))
