"""Merge inputs presented alike: HF-named tensors read one at a time from an HF folder or a
cpt_jax checkpoint (`ckpt:RUN_OR_CKPT_DIR[@STEP]`), never a whole model in host memory."""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np

from cpt_jax.checkpoint.model_checkpoint import TOKENIZER_FILES, HostParamReader, parse_ckpt_ref
from cpt_jax.errors import UserError
from cpt_jax.hf.config_map import model_config_to_hf_config
from cpt_jax.hf.importer import IGNORED_SUFFIXES, read_hf_config
from cpt_jax.hf.safetensors_io import READABLE_DTYPES, tensor_files, tensor_headers
from cpt_jax.hf.weights import get_path, mappings, set_path
from cpt_jax.model.params import abstract_params
from cpt_jax.storage import as_path, is_remote, local_folder

CKPT_PREFIX = "ckpt:"


class HFSource:
    """A local HF folder: tensors read straight from the safetensors files by byte range, each
    into its own array (no memory map, so the process's resident size stays a few tensors)."""

    def __init__(self, ref: str, folder: Path):
        self.ref, self.folder = ref, folder
        self.files = {n: f for n, f in tensor_files(folder).items() if not n.endswith(IGNORED_SUFFIXES)}
        self.headers = tensor_headers(self.files)
        for name, t in self.headers.items():
            if t.dtype not in READABLE_DTYPES:
                raise UserError(f"{ref}: tensor {name!r} is {t.dtype}; only {', '.join(READABLE_DTYPES)} "
                                "models can be merged")
        self.names = list(self.files)
        self.hf_config = read_hf_config(folder)
        self.tokenizer_dir: Path | None = folder

    def shape(self, name: str) -> tuple[int, ...]:
        return self.headers[name].shape

    def dtype(self, name: str) -> np.dtype:
        return np.dtype(READABLE_DTYPES[self.headers[name].dtype])

    def read(self, name: str) -> np.ndarray:
        t = self.headers[name]
        with open(self.files[name], "rb") as f:
            f.seek(t.start)
            return np.fromfile(f, dtype=self.dtype(name), count=int(np.prod(t.shape))).reshape(t.shape)

    def close(self) -> None:
        pass


class CheckpointSource:
    """A cpt_jax run or model checkpoint seen through the HF export's names and layouts. Each
    tensor is restored alone when the layers are unrolled; when they are stacked (scan_layers)
    one weight of every layer is restored at once and kept until another weight is asked for,
    so `names` lists the tensors weight by weight."""

    def __init__(self, ref: str, path: str, step: int | None):
        self.ref = ref
        self.reader = HostParamReader(path, step)
        cfg = self.reader.model_cfg
        self.scanned = cfg.scan_layers
        self.mappings = {m.hf_name: m for m in mappings(cfg)}
        groups = dict.fromkeys(m.group_in(self.scanned) for m in self.mappings.values())
        order = {group: i for i, group in enumerate(groups)}
        self.names = sorted(self.mappings, key=lambda n: order[self.mappings[n].group_in(self.scanned)])
        self._abstract = abstract_params(cfg)
        self._cached: tuple | None = None  # (key path, array) of the stacked weight last read
        source = self.reader.meta.get("source") or {}
        self.hf_config = model_config_to_hf_config(cfg, source.get("hf_config"), dtype="float32")
        candidates = [as_path(path) / "tokenizer", *([as_path(source["hf_dir"])] if source.get("hf_dir") else [])]
        self.tokenizer_dir = next((c for c in candidates if any((c / n).is_file() for n in TOKENIZER_FILES)), None)

    def shape(self, name: str) -> tuple[int, ...]:
        return self.mappings[name].hf_shape

    def dtype(self, name: str) -> np.dtype:
        return np.dtype(np.float32)  # parameters are stored fp32

    def _restore(self, path: tuple) -> np.ndarray:
        x = get_path(self._abstract, path)
        wanted: dict = {}
        set_path(wanted, path, jax.ShapeDtypeStruct(x.shape, x.dtype))
        return get_path(self.reader.read(wanted), path)

    def read(self, name: str) -> np.ndarray:
        m = self.mappings[name]
        path, index = m.location(self.scanned)
        if index is None:
            x = self._restore(path)
        else:
            if self._cached is None or self._cached[0] != path:
                self._cached = None  # drop the previous weight before reading the next
                self._cached = (path, self._restore(path))
            x = self._cached[1][index]
        return np.ascontiguousarray(m.to_hf(np.asarray(x, np.float32)))

    def close(self) -> None:
        self._cached = None
        self.reader.close()


def open_source(ref: str) -> HFSource | CheckpointSource:
    """`ref`: a local HF folder, or ckpt:DIR[@STEP]; relative paths are taken from the current
    directory, as MergeKit takes them."""
    if ref.startswith(CKPT_PREFIX):
        path, step = parse_ckpt_ref(ref[len(CKPT_PREFIX):])
        return CheckpointSource(ref, path, step)
    if is_remote(ref):  # a folder in a bucket: read from its local cached copy
        if not (as_path(ref) / "config.json").is_file():
            raise UserError(f"model {ref!r} is not a Hugging Face folder (no config.json there)")
        return HFSource(ref, local_folder(ref))
    folder = Path(ref)
    if not folder.is_dir():
        raise UserError(f"model {ref!r} is not a local folder; merging reads local Hugging Face folders, folders in "
                        "a bucket (gs://, s3://) or ckpt:DIR[@STEP] and never downloads from a hub (fetch the "
                        "model first, e.g. with `huggingface-cli download ... --local-dir DIR`, and name DIR)")
    return HFSource(ref, folder)
