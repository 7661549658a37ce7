"""Import a local Hugging Face folder: tensor by tensor, straight onto the target shardings."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from cpt_jax.checkpoint.params import check_output_dir, save_model_checkpoint
from cpt_jax.cli.errors import UserError
from cpt_jax.config.model import ModelConfig
from cpt_jax.hf.config_map import hf_config_to_model_config
from cpt_jax.hf.safetensors_io import (
    READABLE_DTYPES,
    read_tensors,
    tensor_files,
    tensor_headers,
)
from cpt_jax.hf.weights import Mapping, get_path, mappings, set_path

IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)  # a buffer some old exports contain; recomputed from the config


def read_hf_config(hf_dir: str | Path) -> dict:
    hf_dir = Path(hf_dir)
    path = hf_dir / "config.json"
    if not path.is_file():
        raise UserError(f"{hf_dir} has no config.json; pass a Hugging Face model folder")
    try:
        return json.loads(path.read_text())
    except ValueError as e:
        raise UserError(f"{path} is not valid JSON: {e}") from e


def check_tensors(hf_dir: Path, files: dict[str, Path], cfg: ModelConfig) -> list[Mapping]:
    """Every tensor the graph needs is present with the right shape and a readable dtype, and
    nothing else is there; checked from the file headers before any data is read."""
    wanted = mappings(cfg)
    names = {m.hf_name for m in wanted}
    unexpected = sorted(n for n in files if n not in names and not n.endswith(IGNORED_SUFFIXES)
                        and not (cfg.tie_embeddings and n == "lm_head.weight"))
    if unexpected:
        raise UserError(f"{hf_dir} has tensor {unexpected[0]!r} ({len(unexpected)} such in all) that the "
                        f"{cfg.family} graph of its config.json has no place for; config and weights disagree")
    missing = [m.hf_name for m in wanted if m.hf_name not in files]
    if missing:
        raise UserError(f"{hf_dir} is missing tensor {missing[0]!r} ({len(missing)} missing in all)")
    headers = tensor_headers({m.hf_name: files[m.hf_name] for m in wanted})
    for m in wanted:
        t = headers[m.hf_name]
        if t.shape != m.hf_shape:
            raise UserError(f"tensor {m.hf_name!r} in {files[m.hf_name].name} has shape {t.shape}, but config.json "
                            f"implies {m.hf_shape}; config and weights disagree")
        if t.dtype not in READABLE_DTYPES:
            raise UserError(f"tensor {m.hf_name!r} in {files[m.hf_name].name} is {t.dtype}; only "
                            f"{', '.join(READABLE_DTYPES)} checkpoints are imported")
    return wanted


def load_hf_params(hf_dir: str | Path, expected: ModelConfig | None, shardings: Any, dtype: str = "float32",
                   progress: bool = False) -> tuple[ModelConfig, Any, dict]:
    """(model config, params in its param_dtype, source metadata for a later export). Each tensor is read,
    converted and placed on its sharding (a tree like params; None: the host CPU device) before
    the next is read, so host memory never holds more than one tensor beyond the placed params.
    With `expected`, the folder must match that model (the run's) and its config is returned."""
    from cpt_jax.train.init import check_compatible

    hf_dir = Path(hf_dir)
    hf = read_hf_config(hf_dir)
    cfg = hf_config_to_model_config(hf, dtype=dtype)
    if expected is not None:
        check_compatible(cfg, expected, f"hf:{hf_dir}")
        cfg = expected
    files = tensor_files(hf_dir)
    by_name = {m.hf_name: m for m in check_tensors(hf_dir, files, cfg)}
    host = jax.local_devices(backend="cpu")[0]
    params: dict = {}
    bar = tqdm(total=len(by_name), desc="import", unit="tensor", disable=not progress)
    dtype = jnp.dtype(cfg.param_dtype)
    for name, view in read_tensors(files, by_name):
        m = by_name[name]
        target = get_path(shardings, m.path) if shardings is not None else host
        # The one copy out of the file: layout (to_jax gives views), dtype and C order at once;
        # device_put of a Fortran-order array would make further temporary copies.
        x = np.array(m.to_jax(view), dtype=dtype, order="C")
        del view
        set_path(params, m.path, jax.device_put(x, target))
        bar.update()
    bar.close()
    source = {"hf_dir": str(hf_dir.absolute()), "architectures": hf.get("architectures"), "hf_config": hf}
    return cfg, params, source


def import_hf(hf_dir: str | Path, out_dir: str | Path, *, dtype: str = "float32", overwrite: bool = False,
              mesh=None, progress: bool = False) -> Path:
    """HF folder -> cpt_jax model checkpoint (+ its tokenizer files), sharded over `mesh` if given."""
    from cpt_jax.train.state import param_shardings

    hf_dir, out = Path(hf_dir), Path(out_dir).absolute()
    check_output_dir(out, overwrite, hf_dir)
    cfg = hf_config_to_model_config(read_hf_config(hf_dir), dtype=dtype)
    shardings = param_shardings(cfg, mesh) if mesh is not None else None
    cfg, params, source = load_hf_params(hf_dir, None, shardings, dtype=dtype, progress=progress)
    return save_model_checkpoint(out, params, cfg, {"source": source}, tokenizer_dir=hf_dir, overwrite=overwrite)
