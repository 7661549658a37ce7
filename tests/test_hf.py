"""Hugging Face interop: exact logits parity with transformers, bit-exact round trips, bad input."""

import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import load_file

from cpt_jax.checkpoint.params import load_model_checkpoint
from cpt_jax.cli.errors import UserError
from cpt_jax.hf import export_hf, import_hf
from cpt_jax.train.state import abstract_model
from hf_fixtures import hf_logits, make_tiny_hf_model

LLAMA3_ROPE = dict(rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                 "high_freq_factor": 4.0, "original_max_position_embeddings": 16},
                   rope_theta=500000.0)
CASES = {
    "llama-untied-gqa-llama3rope": ("llama", dict(tie=False, **LLAMA3_ROPE)),
    "llama-tied-mha": ("llama", dict(tie=True, num_key_value_heads=4)),
    "mistral": ("mistral", dict()),
    "qwen2-bias": ("qwen2", dict(tie=True)),
    "qwen3-headdim": ("qwen3", dict(head_dim=16)),
}


def ours(ckpt, tokens, segment_ids=None):
    params, cfg, _ = load_model_checkpoint(ckpt)
    graphdef, _ = abstract_model(cfg)
    seg = None if segment_ids is None else jnp.asarray(segment_ids)
    return np.asarray(nnx.merge(graphdef, params)(jnp.asarray(tokens), None, seg))


@pytest.fixture(scope="module", params=list(CASES))
def imported(request, tmp_path_factory):
    family, kwargs = CASES[request.param]
    root = tmp_path_factory.mktemp(request.param)
    hf_dir = make_tiny_hf_model(root / "hf", family, **kwargs)
    ckpt = import_hf(hf_dir, root / "ckpt")
    return root, hf_dir, ckpt


def test_checkpoint_is_sharded_across_files(imported):
    _, hf_dir, _ = imported
    assert len(json.loads((hf_dir / "model.safetensors.index.json").read_text())["weight_map"]) > 10
    assert len(list(hf_dir.glob("model-*.safetensors"))) > 2


def test_import_logits_match_transformers(imported):
    _, hf_dir, ckpt = imported
    rng = np.random.default_rng(0)
    tokens = rng.integers(3, 160, (2, 24))
    assert np.abs(ours(ckpt, tokens) - hf_logits(hf_dir, tokens)).max() <= 1e-4
    # A right-padded batch: padding is segment 0 here and attention_mask 0 there.
    mask = np.ones_like(tokens)
    mask[1, 15:] = 0
    ref = hf_logits(hf_dir, tokens, mask)
    got = ours(ckpt, tokens, mask)
    assert np.abs(got[mask == 1] - ref[mask == 1]).max() <= 1e-4


def test_export_reloads_with_equal_logits_and_bit_exact_tensors(imported, caplog):
    root, hf_dir, ckpt = imported
    out = export_hf(ckpt, root / "export", max_shard_size="30KB", overwrite=True)
    assert (out / "model.safetensors.index.json").is_file()
    tokens = np.random.default_rng(1).integers(3, 160, (2, 16))
    with caplog.at_level(logging.WARNING, logger="transformers"):
        exported = hf_logits(out, tokens)
    assert not [r for r in caplog.records if "missing" in r.message.lower() or "unexpected" in r.message.lower()
                or "newly initialized" in r.message.lower()]
    np.testing.assert_array_equal(exported, hf_logits(hf_dir, tokens))
    src = {k: v for f in hf_dir.glob("*.safetensors") for k, v in load_file(f).items()}
    dst = {k: v for f in out.glob("*.safetensors") for k, v in load_file(f).items()}
    assert set(dst) == set(src) - {"lm_head.weight"} | ({"lm_head.weight"} & set(dst))
    for name, tensor in dst.items():
        np.testing.assert_array_equal(tensor, src[name], err_msg=name)
    cfg_out = json.loads((out / "config.json").read_text())
    cfg_in = json.loads((hf_dir / "config.json").read_text())
    assert cfg_out["architectures"] == cfg_in["architectures"] and cfg_out["model_type"] == cfg_in["model_type"]


def test_bf16_export_loads_close(imported):
    root, hf_dir, ckpt = imported
    out = export_hf(ckpt, root / "export-bf16", dtype="bf16", overwrite=True)
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    tokens = np.random.default_rng(2).integers(3, 160, (1, 16))
    assert np.abs(hf_logits(out, tokens) - hf_logits(hf_dir, tokens)).max() < 0.1


def test_cli_import_export_and_sharded_import(tmp_path):
    hf_dir = make_tiny_hf_model(tmp_path / "hf", "qwen3", head_dim=16)
    env_cmd = [sys.executable, "-m", "cpt_jax"]
    run = lambda *a: subprocess.run([*env_cmd, *a], capture_output=True, text=True, timeout=300)  # noqa: E731
    r = run("import-hf", str(hf_dir), str(tmp_path / "ck"), "--fsdp", "4", "--cpu-devices", "4")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "family: qwen3" in r.stdout and "head_dim: 16" in r.stdout
    r = run("export-hf", str(tmp_path / "ck"), str(tmp_path / "out"))
    assert r.returncode == 0, r.stderr[-2000:]
    r = run("export-hf", str(tmp_path / "ck"), str(tmp_path / "out"))
    assert r.returncode == 2 and "is not empty" in r.stderr and "--overwrite" in r.stderr
    tokens = np.arange(3, 19)[None]
    np.testing.assert_array_equal(hf_logits(tmp_path / "out", tokens), hf_logits(hf_dir, tokens))


def edit_config(hf_dir, **changes):
    cfg = json.loads((hf_dir / "config.json").read_text())
    cfg.update(changes)
    (hf_dir / "config.json").write_text(json.dumps(cfg))


@pytest.mark.parametrize("change, message", [
    ({"architectures": ["GPT2LMHeadModel"]}, "unsupported architecture 'GPT2LMHeadModel'; supported: LlamaForCausalLM"),
    ({"rope_parameters": {"rope_type": "yarn", "rope_theta": 1e4, "factor": 2.0}}, "rope type 'yarn' is not supported"),
    ({"hidden_act": "gelu"}, "'hidden_act'"),
    ({"mlp_bias": True}, "'mlp_bias'"),
    ({"attention_bias": True}, "'attention_bias'"),
])
def test_unsupported_configs_are_refused_naming_the_key(tmp_path, change, message):
    hf_dir = make_tiny_hf_model(tmp_path / "hf", "llama")
    edit_config(hf_dir, **change)
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        import_hf(hf_dir, tmp_path / "ck")
    assert not (tmp_path / "ck").exists()


def test_sliding_window_refused(tmp_path):
    hf_dir = make_tiny_hf_model(tmp_path / "hf", "mistral", sliding_window=32)
    with pytest.raises(UserError, match="'sliding_window'"):
        import_hf(hf_dir, tmp_path / "ck")


def test_broken_checkpoints_are_refused_and_leave_nothing(tmp_path):
    hf_dir = make_tiny_hf_model(tmp_path / "hf", "llama")
    index = json.loads((hf_dir / "model.safetensors.index.json").read_text())
    victim = sorted(set(index["weight_map"].values()))[1]
    moved = tmp_path / victim
    shutil.move(hf_dir / victim, moved)
    with pytest.raises(UserError, match=f"names {victim}, which is missing"):
        import_hf(hf_dir, tmp_path / "ck")
    shutil.move(moved, hf_dir / victim)
    # A missing tensor, then a tensor of the wrong shape.
    name = "model.layers.1.mlp.up_proj.weight"
    del index["weight_map"][name]
    (hf_dir / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(UserError, match=f"missing tensor '{name}'"):
        import_hf(hf_dir, tmp_path / "ck")
    edit_config(hf_dir, intermediate_size=64)
    index["weight_map"][name] = victim
    (hf_dir / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(UserError, match=r"tensor 'model.layers.0.mlp.gate_proj.weight' .* expected \(48, 64\)"):
        import_hf(hf_dir, tmp_path / "ck")
    assert not (tmp_path / "ck").exists()
    assert not list(tmp_path.glob(".ck.tmp-*"))


def test_pickle_only_folder_is_refused(tmp_path):
    hf_dir = make_tiny_hf_model(tmp_path / "hf", "llama")
    for f in hf_dir.glob("model*.safetensors*"):
        f.unlink()
    (hf_dir / "pytorch_model.bin").write_bytes(b"not unpickled")
    with pytest.raises(UserError, match="never unpickles. Convert it to safetensors"):
        import_hf(hf_dir, tmp_path / "ck")


def test_non_empty_output_refused_without_overwrite(tmp_path):
    hf_dir = make_tiny_hf_model(tmp_path / "hf", "llama")
    (tmp_path / "ck").mkdir()
    (tmp_path / "ck" / "keep.txt").write_text("user data")
    with pytest.raises(UserError, match="not empty; choose another folder or pass --overwrite"):
        import_hf(hf_dir, tmp_path / "ck")
    assert (tmp_path / "ck" / "keep.txt").read_text() == "user data"


def test_sentencepiece_model_becomes_an_equivalent_hf_tokenizer(tmp_path):
    from transformers import AutoTokenizer
    import sentencepiece as spm
    from cpt_jax.data.tokenizer import train_sentencepiece
    from cpt_jax.hf.spm_tokenizer import spm_to_hf_tokenizer

    rng = np.random.default_rng(0)
    words = ["alpha", "beta", "gamma", "delta", "déjà", "vu", "naïve", "x=1", "def", "(self):", "中文"]
    lines = [" ".join(rng.choice(words, 12)) for _ in range(400)]
    train_sentencepiece(lines, tmp_path / "sp.model", 600)
    spm_to_hf_tokenizer(tmp_path / "sp.model", tmp_path, 128)
    sp, hf = spm.SentencePieceProcessor(model_file=str(tmp_path / "sp.model")), AutoTokenizer.from_pretrained(tmp_path)
    for text in ["alpha  beta\tgamma\n delta", "  déjà vu ", "naïve x=1 ☃ unseen-chars ü", "def f(self):\n    return 1"]:
        assert hf(text).input_ids == sp.encode(text), text
        assert hf.decode(sp.encode(text)) == sp.decode(sp.encode(text))
