"""safetensors shards written tensor by tensor as each is computed.

Every output name, shape and dtype is known before the first tensor is merged, so each file's
header can be written first and the tensors appended as they come: the writer holds no tensor
(cpt_jax.hf's ShardWriter, by contrast, holds a whole shard until it is full)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from cpt_jax.hf.safetensors_io import INDEX, READABLE_DTYPES, SINGLE

DTYPE_NAMES = {np.dtype(v): k for k, v in READABLE_DTYPES.items()}


def _shard_plan(specs: list[tuple[str, tuple[int, ...], np.dtype]], max_bytes: int) -> list[list[int]]:
    """Consecutive tensors packed into files of at most max_bytes (a larger tensor alone)."""
    shards: list[list[int]] = []
    size = 0
    for i, (_, shape, dtype) in enumerate(specs):
        nbytes = math.prod(shape) * dtype.itemsize
        if not shards or (size + nbytes > max_bytes and shards[-1]):
            shards.append([])
            size = 0
        shards[-1].append(i)
        size += nbytes
    return shards


def _header(specs: list[tuple[str, tuple[int, ...], np.dtype]]) -> bytes:
    entries, offset = {"__metadata__": {"format": "pt"}}, 0
    for name, shape, dtype in specs:
        nbytes = math.prod(shape) * dtype.itemsize
        entries[name] = {"dtype": DTYPE_NAMES[dtype], "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    raw = json.dumps(entries, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # tensor data starts 8-byte aligned, as safetensors writes it
    return len(raw).to_bytes(8, "little") + raw


class StreamingShardWriter:
    """`add` must receive the planned tensors in the planned order; `finish` writes the index."""

    def __init__(self, directory: Path, specs: list[tuple[str, tuple[int, ...], np.dtype]], max_bytes: int):
        self.directory, self.specs = Path(directory), specs
        self.shards = _shard_plan(specs, max_bytes)
        n = len(self.shards)
        self.file_names = [SINGLE] if n == 1 else [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
        self._shard_of = {i: s for s, idx in enumerate(self.shards) for i in idx}
        self._next = 0
        self._file = None

    def add(self, name: str, array: np.ndarray) -> None:
        i = self._next
        expected, shape, dtype = self.specs[i]
        if name != expected or tuple(array.shape) != tuple(shape) or array.dtype != dtype:
            raise RuntimeError(f"tensor {name} {array.shape} {array.dtype} out of plan: "
                               f"expected {expected} {shape} {dtype}")
        shard = self._shard_of[i]
        if i == self.shards[shard][0]:
            self.close()
            self._file = open(self.directory / self.file_names[shard], "wb")
            self._file.write(_header([self.specs[j] for j in self.shards[shard]]))
        self._file.write(np.ascontiguousarray(array).reshape(-1).view(np.uint8).data)
        self._next += 1

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> StreamingShardWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def finish(self) -> list[str]:
        if self._next != len(self.specs):
            raise RuntimeError(f"{len(self.specs) - self._next} planned tensors were never written")
        self.close()
        if len(self.file_names) == 1:
            return self.file_names
        weight_map = {self.specs[i][0]: self.file_names[s] for s, idx in enumerate(self.shards) for i in idx}
        total = sum(math.prod(shape) * dtype.itemsize for _, shape, dtype in self.specs)
        (self.directory / INDEX).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map},
                                                       indent=2))
        return [*self.file_names, INDEX]
