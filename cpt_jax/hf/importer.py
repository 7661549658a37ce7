"""Import a local Hugging Face folder: tensor by tensor, each straight into its shards on the target mesh."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec
from tqdm import tqdm

from cpt_jax.checkpoint.model_checkpoint import check_output_dir, save_model_checkpoint
from cpt_jax.errors import UserError
from cpt_jax.hf.config_map import hf_config_to_model_config
from cpt_jax.hf.safetensors_io import (
    READABLE_DTYPES,
    MappedTensor,
    read_tensors,
    tensor_files,
    tensor_headers,
)
from cpt_jax.hf.weights import Mapping, get_path, mappings, set_path
from cpt_jax.model.config import ModelConfig
from cpt_jax.model.params import check_compatible, find_layout, param_shardings
from cpt_jax.sharding.mesh import MeshConfig, make_mesh
from cpt_jax.storage import absolute, as_path, local_folder

IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)  # a buffer some old exports contain; recomputed from the config


def read_hf_config(hf_dir: str | Path) -> dict:
    hf_dir = as_path(hf_dir)
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


def aligned_empty(shape: tuple, dtype, alignment: int = 64) -> np.ndarray:
    """np.empty on a 64-byte boundary (numpy guarantees 16). XLA:CPU adopts such a buffer as a
    device array without copying it, so on a CPU device a converted tensor becomes the parameter
    itself: an import holds the model plus the tensor being read, not plus two copies of it."""
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    raw = np.empty(nbytes + alignment, np.uint8)
    start = -raw.ctypes.data % alignment
    return raw[start:start + nbytes].view(dtype).reshape(shape)


def host_tensor(m: Mapping, tensor: MappedTensor, dtype) -> np.ndarray:
    """The tensor in cpt_jax's layout and `dtype`: one array, written through its HF-layout view
    straight from the file (dtype converted, transposed on the way) block by block."""
    out = aligned_empty(m.to_jax(np.empty(m.hf_shape, np.bool_)).shape, dtype)
    hf_view = m.to_hf(out)
    if np.shares_memory(hf_view, out):
        tensor.copy_to(hf_view)
    else:  # a layout whose HF form is no view of ours: convert the whole tensor at once
        out[...] = m.to_jax(tensor.array)
    return out


def place_tensor(host: np.ndarray, sharding) -> jax.Array:
    """One tensor into its shards: each addressable device gets its block of `host` (on several
    hosts each process places only what its devices hold). On one CPU device the shard is `host`
    itself (aligned_empty); on several each device gets its own copy. Not make_array_from_callback
    there: it calls back once per distinct block and puts that one array on every replica, which
    XLA:CPU adopts without copying when it is 64-byte aligned, so replicas would share a buffer."""
    if len(sharding.device_set) == 1:
        return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])
    blocks = sharding.addressable_devices_indices_map(host.shape)
    return jax.make_array_from_single_device_arrays(
        host.shape, sharding, [jax.device_put(np.array(host[index]), d) for d, index in blocks.items()])


class StackedLeaf:
    """A stacked (scan_layers) parameter filled one layer at a time: allocated on its sharding,
    then each layer's row is written in place (the buffer is donated), so neither host nor device
    ever holds the stacked tensor twice."""

    def __init__(self, shape: tuple, sharding, dtype):
        self.sharding = sharding
        self.row_sharding = NamedSharding(sharding.mesh, PartitionSpec(*sharding.spec[1:]))
        self.array = jax.jit(lambda: jnp.zeros(shape, dtype), out_shardings=sharding)()
        self._set = jax.jit(lambda a, row, i: jax.lax.dynamic_update_index_in_dim(a, row, i, 0),
                            out_shardings=sharding, donate_argnums=0)

    def set_row(self, i: int, host: np.ndarray) -> None:
        self.array = self._set(self.array, place_tensor(host, self.row_sharding), np.int32(i))


def one_device_shardings(cfg: ModelConfig, device) -> Any:
    """Parameter shardings on a mesh of one device: where the parameters stream to when no mesh
    is given, instead of a host copy of the model assembled first."""
    return param_shardings(cfg, make_mesh(MeshConfig(data=1, fsdp=1, tensor=1), [device]))


def load_hf_params(hf_dir: str | Path, expected: ModelConfig | None, shardings: Any, dtype: str = "float32",
                   progress: bool = False) -> tuple[ModelConfig, Any, dict]:
    """(model config, params in its param_dtype, source metadata for a later export). Streamed:
    each tensor is read through a memory map, converted and placed into its shards on
    `shardings` (a tree like params in either layer layout; None: the host CPU device) before the next is
    read, so host memory holds about one tensor beyond what the devices hold. With `expected`,
    the folder must match that model (the run's) and its config is returned. A folder in a
    bucket is read from its local cached copy (storage.local_folder)."""
    hf = read_hf_config(hf_dir)
    where, hf_dir = absolute(hf_dir), local_folder(hf_dir)
    cfg = hf_config_to_model_config(hf, dtype=dtype)
    if expected is not None:
        check_compatible(cfg, expected, f"hf:{where}")
        cfg = expected
    if shardings is None:
        shardings = one_device_shardings(cfg, jax.local_devices(backend="cpu")[0])
    scanned = bool(find_layout(shardings))
    files = tensor_files(hf_dir)
    by_name = {m.hf_name: m for m in check_tensors(hf_dir, files, cfg)}
    params: dict = {}
    stacked: dict[tuple, StackedLeaf] = {}
    bar = tqdm(total=len(by_name), desc="import", unit="tensor", disable=not progress)
    dtype = jnp.dtype(cfg.param_dtype)
    for name, tensor in read_tensors(files, by_name):
        m = by_name[name]
        path, row = m.location(scanned)
        sharding = get_path(shardings, path)
        host = host_tensor(m, tensor, dtype)
        del tensor  # unmapped
        if row is None:
            set_path(params, path, place_tensor(host, sharding))
        else:
            if path not in stacked:
                stacked[path] = StackedLeaf((cfg.num_layers, *host.shape), sharding, dtype)
            stacked[path].set_row(row, host)
        del host
        bar.update()
    bar.close()
    for path, leaf in stacked.items():
        set_path(params, path, leaf.array)
    source = {"hf_dir": str(where), "architectures": hf.get("architectures"), "hf_config": hf}
    return cfg, params, source


def import_hf(hf_dir: str | Path, out_dir: str | Path, *, dtype: str = "float32", overwrite: bool = False,
              mesh=None, progress: bool = False) -> Path:
    """HF folder -> cpt_jax model checkpoint (+ its tokenizer files), sharded over `mesh` if given."""
    hf_dir, out = absolute(hf_dir), absolute(out_dir)
    check_output_dir(out, overwrite, hf_dir)
    cfg = hf_config_to_model_config(read_hf_config(hf_dir), dtype=dtype)
    # Without a mesh: the first device (an accelerator if there is one), not a host copy.
    shardings = param_shardings(cfg, mesh) if mesh is not None else one_device_shardings(cfg, jax.devices()[0])
    cfg, params, source = load_hf_params(hf_dir, None, shardings, dtype=dtype, progress=progress)
    # One array's host copy in flight while orbax writes from an accelerator (the smallest bound
    # it accepts); on a CPU device the arrays are host memory and are written in place.
    return save_model_checkpoint(out, params, cfg, {"source": source}, tokenizer_dir=hf_dir, overwrite=overwrite,
                                 host_gb=0.0)
