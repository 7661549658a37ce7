"""Bad Hugging Face folders, bad checkpoints and unsafe outputs: a clear error naming the problem,
and nothing left behind that could pass for a finished import or export."""

import json
import shutil

import numpy as np
import pytest
from hf_fixtures import make_tiny_hf_model
from safetensors.numpy import load_file, save_file

from cpt_jax.errors import UserError
from cpt_jax.hf import export_hf, exporter, import_hf

INDEX = "model.safetensors.index.json"


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    return make_tiny_hf_model(tmp_path_factory.mktemp("pristine") / "hf", "llama")


@pytest.fixture
def hf_dir(pristine, tmp_path):
    return shutil.copytree(pristine, tmp_path / "hf")


@pytest.fixture(scope="module")
def ckpt(pristine, tmp_path_factory):
    return import_hf(pristine, tmp_path_factory.mktemp("ckpt") / "ckpt")


def nothing_left(parent, name):
    return not (parent / name).exists() and not list(parent.glob(f".{name}.tmp-*"))


def file_of(hf_dir, tensor):
    return hf_dir / json.loads((hf_dir / INDEX).read_text())["weight_map"][tensor]


def rewrite(path, change):
    tensors = load_file(path)
    change(tensors)
    save_file(tensors, path, metadata={"format": "pt"})


def test_config_refusal_leaves_nothing(hf_dir, tmp_path):
    cfg = json.loads((hf_dir / "config.json").read_text())
    (hf_dir / "config.json").write_text(json.dumps({**cfg, "mlp_bias": True}))
    with pytest.raises(UserError, match="'mlp_bias'"):
        import_hf(hf_dir, tmp_path / "ck")
    assert nothing_left(tmp_path, "ck")


def test_missing_shard_is_named(hf_dir, tmp_path):
    victim = file_of(hf_dir, "model.layers.1.self_attn.k_proj.weight")
    victim.unlink()
    with pytest.raises(UserError, match=f"names {victim.name}, which is missing; download the complete"):
        import_hf(hf_dir, tmp_path / "ck")
    assert nothing_left(tmp_path, "ck")


def test_missing_tensor_is_named(hf_dir, tmp_path):
    name = "model.layers.1.mlp.up_proj.weight"
    path = file_of(hf_dir, name)
    rewrite(path, lambda t: t.pop(name))
    index = json.loads((hf_dir / INDEX).read_text())
    del index["weight_map"][name]
    (hf_dir / INDEX).write_text(json.dumps(index))
    with pytest.raises(UserError, match=f"missing tensor '{name}' \\(1 missing in all\\)"):
        import_hf(hf_dir, tmp_path / "ck")
    assert nothing_left(tmp_path, "ck")


def test_tensor_the_index_misplaces_is_named(hf_dir, tmp_path):
    name = "model.layers.0.mlp.down_proj.weight"
    rewrite(file_of(hf_dir, name), lambda t: t.pop(name))
    with pytest.raises(UserError, match=f"places tensor '{name}' in model-.*safetensors, which lacks it"):
        import_hf(hf_dir, tmp_path / "ck")


def test_wrong_shape_is_named_with_both_shapes(hf_dir, tmp_path):
    name = "model.layers.1.self_attn.q_proj.weight"  # [heads*hd, d] = [48, 48]
    rewrite(file_of(hf_dir, name), lambda t: t.update({name: np.zeros((40, 48), np.float32)}))
    with pytest.raises(UserError, match=rf"tensor '{name}' in model-.* has shape \(40, 48\), but config.json "
                                        r"implies \(48, 48\)"):
        import_hf(hf_dir, tmp_path / "ck")
    assert nothing_left(tmp_path, "ck")


def test_unexpected_tensor_is_named(hf_dir, tmp_path):
    name = "model.layers.0.self_attn.q_proj.bias"  # a Qwen2 tensor in a Llama checkpoint
    path = file_of(hf_dir, "model.layers.0.self_attn.q_proj.weight")
    rewrite(path, lambda t: t.update({name: np.zeros((48,), np.float32)}))
    index = json.loads((hf_dir / INDEX).read_text())
    index["weight_map"][name] = path.name
    (hf_dir / INDEX).write_text(json.dumps(index))
    with pytest.raises(UserError, match=f"has tensor '{name}' .* has no place for"):
        import_hf(hf_dir, tmp_path / "ck")


def test_unreadable_dtype_is_named(hf_dir, tmp_path):
    name = "model.norm.weight"
    rewrite(file_of(hf_dir, name), lambda t: t.update({name: np.ones((48,), np.int32)}))
    with pytest.raises(UserError, match=f"tensor '{name}' .* is I32; only F32, BF16, F16"):
        import_hf(hf_dir, tmp_path / "ck")


def test_pickle_only_folder_is_refused(hf_dir, tmp_path):
    for f in [*hf_dir.glob("model*.safetensors"), hf_dir / INDEX]:
        f.unlink()
    (hf_dir / "pytorch_model.bin").write_bytes(b"never unpickled")
    with pytest.raises(UserError, match="never unpickles. Convert them to safetensors"):
        import_hf(hf_dir, tmp_path / "ck")
    assert nothing_left(tmp_path, "ck")


def test_folder_without_config_is_refused(tmp_path):
    (tmp_path / "hf").mkdir()
    with pytest.raises(UserError, match="has no config.json"):
        import_hf(tmp_path / "hf", tmp_path / "ck")


def test_non_empty_output_needs_overwrite(hf_dir, tmp_path):
    (tmp_path / "ck").mkdir()
    (tmp_path / "ck" / "keep.txt").write_text("user data")
    with pytest.raises(UserError, match="not empty; choose another folder or pass --overwrite"):
        import_hf(hf_dir, tmp_path / "ck")
    assert (tmp_path / "ck" / "keep.txt").read_text() == "user data"
    import_hf(hf_dir, tmp_path / "ck", overwrite=True)
    assert not (tmp_path / "ck" / "keep.txt").exists() and (tmp_path / "ck" / "tokenizer").is_dir()


def test_output_may_not_replace_its_input(hf_dir, ckpt, tmp_path):
    with pytest.raises(UserError, match="would replace the input"):
        import_hf(hf_dir, hf_dir, overwrite=True)
    with pytest.raises(UserError, match="would replace the input"):
        import_hf(hf_dir, hf_dir.parent, overwrite=True)
    with pytest.raises(UserError, match="would replace the input"):
        export_hf(ckpt, ckpt, overwrite=True)
    assert (hf_dir / "config.json").is_file() and (ckpt / "0").is_dir()


def test_failed_export_leaves_nothing_and_keeps_the_old_output(ckpt, tmp_path, monkeypatch):
    old = export_hf(ckpt, tmp_path / "out", max_shard_size="40KB")
    before = sorted(p.name for p in old.iterdir())

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(exporter, "_write_tokenizer", boom)  # after every shard was written
    with pytest.raises(OSError, match="disk full"):
        export_hf(ckpt, tmp_path / "new", max_shard_size="40KB")
    assert nothing_left(tmp_path, "new")
    with pytest.raises(OSError, match="disk full"):
        export_hf(ckpt, tmp_path / "out", overwrite=True)
    assert sorted(p.name for p in old.iterdir()) == before and not list(tmp_path.glob(".out.tmp-*"))


def test_export_input_errors(ckpt, tmp_path):
    with pytest.raises(UserError, match="has no step 7; it has 0"):
        export_hf(ckpt, tmp_path / "out", step=7)
    with pytest.raises(UserError, match="not a cpt_jax checkpoint"):
        export_hf(tmp_path / "nowhere", tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="holds no checkpoint steps"):
        export_hf(tmp_path / "empty", tmp_path / "out")
    with pytest.raises(UserError, match="--max-shard-size 'big'"):
        export_hf(ckpt, tmp_path / "out", max_shard_size="big")
    with pytest.raises(UserError, match="unknown dtype 'fp8'"):
        export_hf(ckpt, tmp_path / "out", dtype="fp8")
    assert nothing_left(tmp_path, "out")


def test_truncated_shard_is_named(hf_dir, tmp_path):
    """An interrupted download: the file is there but shorter than its header says."""
    victim = file_of(hf_dir, "model.layers.1.mlp.down_proj.weight")
    data = victim.read_bytes()
    victim.write_bytes(data[:-100])
    with pytest.raises(UserError, match=f"{victim.name} is truncated: tensor .* download it again"):
        import_hf(hf_dir, tmp_path / "ck")
    victim.write_bytes(b"\x00" * 16)
    with pytest.raises(UserError, match=f"{victim.name} is not a valid safetensors file"):
        import_hf(hf_dir, tmp_path / "ck")
    assert nothing_left(tmp_path, "ck")
