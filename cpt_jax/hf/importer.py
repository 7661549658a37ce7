"""Import a local Hugging Face folder: tensor by tensor, straight onto the target shardings."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

import jax
import numpy as np
from safetensors import safe_open

from cpt_jax.cli.errors import UserError
from cpt_jax.config.model import ModelConfig
from cpt_jax.hf.config_map import hf_to_model_config
from cpt_jax.hf.weights import get_path, mappings, set_path

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                   "generation_config.json", "added_tokens.json", "vocab.json", "merges.txt")
IGNORED = ("rotary_emb.inv_freq",)  # buffers some old exports contain; recomputed from the config


def read_hf_config(hf_dir: str | Path) -> dict:
    hf_dir = Path(hf_dir)
    path = hf_dir / "config.json"
    if not path.is_file():
        raise UserError(f"{hf_dir} has no config.json; pass a Hugging Face model folder")
    return json.loads(path.read_text())


def tensor_files(hf_dir: str | Path) -> dict[str, Path]:
    """tensor name -> safetensors file, checking that every file the index names exists."""
    hf_dir = Path(hf_dir)
    index = hf_dir / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        for fname in sorted(set(weight_map.values())):
            if not (hf_dir / fname).is_file():
                raise UserError(f"{hf_dir}/model.safetensors.index.json names {fname}, which is missing; "
                                "download the complete checkpoint")
        return {name: hf_dir / fname for name, fname in weight_map.items()}
    single = hf_dir / "model.safetensors"
    if single.is_file():
        with safe_open(single, "np") as f:
            return {name: single for name in f.keys()}
    if any(hf_dir.glob("pytorch_model*.bin")):
        raise UserError(f"{hf_dir} holds only pytorch_model*.bin (pickle); cpt_jax never unpickles. Convert it "
                        "to safetensors first, e.g. `AutoModelForCausalLM.from_pretrained(dir)"
                        ".save_pretrained(out, safe_serialization=True)`")
    raise UserError(f"{hf_dir} has no model.safetensors or model.safetensors.index.json")


def iter_hf_params(hf_dir: str | Path, cfg: ModelConfig) -> Iterator[tuple[tuple, np.ndarray]]:
    """(param path, fp32 array in cpt_jax layout), one tensor at a time (one file open at once)."""
    files = tensor_files(hf_dir)
    wanted = {m.hf_name: m for m in mappings(cfg)}
    unexpected = [n for n in files if n not in wanted and not n.endswith(IGNORED)
                  and not (cfg.tie_embeddings and n == "lm_head.weight")]
    if unexpected:
        raise UserError(f"{hf_dir} has tensor {unexpected[0]!r} that the {cfg.family} graph has no place for "
                        f"({len(unexpected)} such tensors); the config and the weights disagree")
    missing = [n for n in wanted if n not in files]
    if missing:
        raise UserError(f"{hf_dir} is missing tensor {missing[0]!r} ({len(missing)} missing in all)")
    by_file: dict[Path, list[str]] = {}
    for name in wanted:
        by_file.setdefault(files[name], []).append(name)
    for path, names in by_file.items():
        with safe_open(path, "np") as f:
            for name in names:
                m = wanted[name]
                x = f.get_tensor(name).astype(np.float32)
                y = m.to_jax(x)
                yield m, name, y


def load_hf_params(hf_dir: str | Path, expected: ModelConfig | None, shardings: Any,
                   dtype: str = "float32") -> tuple[ModelConfig, Any, dict]:
    """(model config, params placed on `shardings`, source metadata for later export)."""
    from cpt_jax.train.init import check_compatible
    from cpt_jax.train.state import abstract_params

    hf = read_hf_config(hf_dir)
    cfg = hf_to_model_config(hf, dtype=dtype)
    if expected is not None:
        check_compatible(cfg, expected, f"hf:{hf_dir}")
        cfg = expected
    shapes = jax.tree.map(lambda x: x.shape, abstract_params(cfg))
    params: dict = {}
    for m, name, y in iter_hf_params(hf_dir, cfg):
        want = get_path(shapes, m.path)
        if tuple(y.shape) != tuple(want):
            raise UserError(f"tensor {name!r} in {hf_dir} has a shape that gives {tuple(y.shape)} for "
                            f"{'.'.join(map(str, m.path))}, expected {tuple(want)} from config.json")
        sharding = get_path(shardings, m.path) if shardings is not None else None
        set_path(params, m.path, jax.device_put(y, sharding) if sharding is not None else jax.numpy.asarray(y))
    source = {"hf_dir": str(Path(hf_dir).absolute()), "architectures": hf.get("architectures"), "hf_config": hf}
    return cfg, params, source


def import_hf(hf_dir: str | Path, out_dir: str | Path, *, dtype: str = "float32", overwrite: bool = False,
              mesh=None) -> Path:
    """HF folder -> cpt_jax model checkpoint (+ tokenizer files)."""
    from cpt_jax.checkpoint.params import save_model_checkpoint
    from cpt_jax.train.state import param_shardings

    hf_dir = Path(hf_dir)
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise UserError(f"{out} is not empty; choose another folder or pass --overwrite")
    cfg = hf_to_model_config(read_hf_config(hf_dir), dtype=dtype)
    shardings = param_shardings(cfg, mesh) if mesh is not None else None
    cfg, params, source = load_hf_params(hf_dir, None, shardings, dtype=dtype)
    tokenizer = [hf_dir / n for n in TOKENIZER_FILES if (hf_dir / n).is_file()]
    return save_model_checkpoint(out, params, cfg, {"source": source}, tokenizer, overwrite=overwrite)
