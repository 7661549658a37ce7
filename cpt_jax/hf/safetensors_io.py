"""safetensors files of a Hugging Face folder, read and written one tensor at a time."""

from __future__ import annotations

import json
import math
import mmap
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import ml_dtypes
import numpy as np
from safetensors.numpy import save_file

from cpt_jax.errors import UserError

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"
READABLE_DTYPES = {"F32": np.float32, "BF16": ml_dtypes.bfloat16, "F16": np.float16}


def tensor_files(hf_dir: str | Path) -> dict[str, Path]:
    """tensor name -> safetensors file, checking that every file the index names exists."""
    hf_dir = Path(hf_dir)
    if (hf_dir / INDEX).is_file():
        try:
            weight_map = json.loads((hf_dir / INDEX).read_text())["weight_map"]
        except (ValueError, KeyError) as e:
            raise UserError(f"{hf_dir / INDEX} is not a valid safetensors index (no weight_map): {e}") from e
        for fname in sorted(set(weight_map.values())):
            if not (hf_dir / fname).is_file():
                raise UserError(f"{hf_dir / INDEX} names {fname}, which is missing; download the complete checkpoint")
        return {name: hf_dir / fname for name, fname in weight_map.items()}
    if (hf_dir / SINGLE).is_file():
        return {name: hf_dir / SINGLE for name in read_header(hf_dir / SINGLE)}
    if any(hf_dir.glob("pytorch_model*.bin")) or any(hf_dir.glob("*.pt")):
        raise UserError(f"{hf_dir} holds only PyTorch pickle weights (pytorch_model*.bin); cpt_jax never unpickles. "
                        "Convert them to safetensors first, e.g. in Python with transformers: "
                        "AutoModelForCausalLM.from_pretrained(dir).save_pretrained(out_dir)")
    raise UserError(f"{hf_dir} has no {SINGLE} and no {INDEX}; pass a Hugging Face model folder")


@dataclass(frozen=True)
class TensorInfo:
    dtype: str  # safetensors dtype name: F32, BF16, ...
    shape: tuple[int, ...]
    start: int  # byte range in the file
    end: int


def read_header(path: Path) -> dict[str, TensorInfo]:
    """The file's table of contents (8-byte little-endian length, JSON header, then the raw
    tensors back to back), checked against the file size so a truncated download is named."""
    size = path.stat().st_size
    try:
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            if not 0 < n <= size - 8:
                raise ValueError(f"header length {n}")
            header = json.loads(f.read(n))
        header.pop("__metadata__", None)
        begin = 8 + n  # tensor offsets count from the end of the header
        out = {name: TensorInfo(h["dtype"], tuple(h["shape"]), begin + h["data_offsets"][0], begin + h["data_offsets"][1])
               for name, h in header.items()}
    except (ValueError, KeyError, TypeError) as e:
        raise UserError(f"{path} is not a valid safetensors file ({e}); download it again") from e
    for name, t in out.items():
        if t.end > size:
            raise UserError(f"{path} is truncated: tensor {name!r} ends at byte {t.end} of {size}; download it again")
        itemsize = np.dtype(READABLE_DTYPES[t.dtype]).itemsize if t.dtype in READABLE_DTYPES else None
        if itemsize and t.end - t.start != math.prod(t.shape) * itemsize:
            raise UserError(f"{path}: tensor {name!r} has {t.end - t.start} bytes for shape {t.shape} {t.dtype}; "
                            "the file is corrupt, download it again")
    return out


def tensor_headers(files: dict[str, Path]) -> dict[str, TensorInfo]:
    """name -> TensorInfo from the file headers only (no tensor data is read)."""
    out = {}
    for path, names in _by_file(files, files).items():
        header = read_header(path)
        for name in names:
            if name not in header:
                raise UserError(f"{path.parent / INDEX} places tensor {name!r} in {path.name}, which lacks it")
            out[name] = header[name]
    return out


BLOCK_BYTES = 16 * 2**20  # file bytes resident at once while a tensor is copied out


class MappedTensor:
    """One tensor's bytes mapped read-only from its file (`array`: a view of them, in the file's
    dtype and shape). `copy_to` streams it into a destination block of rows by block of rows and
    drops each copied block's file pages from the process's resident set, so reading a tensor
    costs its destination plus one block, not the destination plus the file's pages."""

    def __init__(self, path: Path, t: TensorInfo):
        if t.end == t.start:  # an empty tensor: nothing to map
            self.array, self._map, self._skip = np.empty(t.shape, READABLE_DTYPES[t.dtype]), None, 0
            return
        start = t.start - t.start % mmap.ALLOCATIONGRANULARITY
        self._skip = t.start - start
        with open(path, "rb") as f:
            self._map = mmap.mmap(f.fileno(), t.end - start, access=mmap.ACCESS_READ, offset=start)
        raw = np.frombuffer(self._map, np.uint8, t.end - t.start, self._skip)
        self.array = raw.view(READABLE_DTYPES[t.dtype]).reshape(t.shape)

    def copy_to(self, dest: np.ndarray) -> None:
        """dest[...] = array (converting dtype), where dest may be a strided view (a transposed
        layout): blocks of source rows are read in file order."""
        src = self.array.reshape(1, *self.array.shape) if self.array.ndim == 0 else self.array
        dest = dest.reshape(src.shape) if dest.ndim == 0 else dest
        row_bytes = max(1, src.nbytes // max(1, len(src)))
        step = max(1, BLOCK_BYTES // row_bytes)
        for lo in range(0, len(src), step):
            dest[lo:lo + step] = src[lo:lo + step]
            self._release(lo * row_bytes, min(len(src), lo + step) * row_bytes)

    def _release(self, lo: int, hi: int) -> None:
        lo += self._skip
        lo -= lo % mmap.PAGESIZE
        self._map.madvise(mmap.MADV_DONTNEED, lo, min(hi + self._skip, len(self._map)) - lo)


def read_tensors(files: dict[str, Path], names: Iterable[str]) -> Iterator[tuple[str, MappedTensor]]:
    """(name, the tensor mapped from its file) one tensor at a time, one file at a time; the
    caller copies what it keeps (converting dtype and layout in that same copy).

    Hand-written over memory maps because safetensors' numpy reader has no bfloat16 (numpy
    lacks it; ml_dtypes provides it) and copies each tensor twice. Each tensor gets a map of its
    own byte range, unmapped once the caller drops it."""
    for path, group in _by_file(files, names).items():
        header = read_header(path)
        for name in group:
            yield name, MappedTensor(path, header[name])


def _by_file(files: dict[str, Path], names: Iterable[str]) -> dict[Path, list[str]]:
    grouped: dict[Path, list[str]] = {}
    for name in names:
        grouped.setdefault(files[name], []).append(name)
    return grouped


def parse_size(text: str) -> int:
    """'5GB', '500MB', '40KB' or a byte count (decimal units, as transformers uses)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]I?B)?\s*", text.upper())
    if not m or float(m.group(1)) <= 0:
        raise UserError(f"--max-shard-size {text!r}: write a positive size like 5GB, 500MB or 1000000")
    unit = m.group(2) or "B"
    scale = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}[unit]
    return int(float(m.group(1)) * scale)


class ShardWriter:
    """Writes tensors to safetensors files of at most `max_bytes` (a larger tensor gets a file of
    its own) as each file fills, then names them as transformers does: one `model.safetensors`,
    or `model-0000i-of-0000n.safetensors` with `model.safetensors.index.json`."""

    def __init__(self, directory: Path, max_bytes: int):
        self.directory, self.max_bytes = Path(directory), max_bytes
        self._pending: dict[str, np.ndarray] = {}
        self._pending_bytes = 0
        self._written: list[tuple[str, list[str]]] = []
        self.total_bytes = 0

    def add(self, name: str, array: np.ndarray) -> None:
        array = np.ascontiguousarray(array)
        if self._pending and self._pending_bytes + array.nbytes > self.max_bytes:
            self._flush()
        self._pending[name] = array
        self._pending_bytes += array.nbytes
        self.total_bytes += array.nbytes

    def _flush(self) -> None:
        name = f"part-{len(self._written):05d}.safetensors"
        save_file(self._pending, self.directory / name, metadata={"format": "pt"})
        self._written.append((name, list(self._pending)))
        self._pending, self._pending_bytes = {}, 0

    def finish(self) -> list[str]:
        """Final file names (index last, if any)."""
        if self._pending:
            self._flush()
        if len(self._written) == 1:
            (self.directory / self._written[0][0]).rename(self.directory / SINGLE)
            return [SINGLE]
        n, weight_map, names = len(self._written), {}, []
        for i, (tmp_name, tensors) in enumerate(self._written):
            final = f"model-{i + 1:05d}-of-{n:05d}.safetensors"
            (self.directory / tmp_name).rename(self.directory / final)
            weight_map.update({t: final for t in tensors})
            names.append(final)
        (self.directory / INDEX).write_text(json.dumps(
            {"metadata": {"total_size": self.total_bytes}, "weight_map": weight_map}, indent=2))
        return [*names, INDEX]
