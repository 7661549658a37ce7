"""Version-stable hashing, seeds and permutations.

numpy's Generator streams are not promised to stay identical across numpy versions, and a
resumed run must see the same shuffle as the run that wrote the checkpoint, so shuffles are
built here from SplitMix64 (a bijection on uint64) and sha256 only.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def splitmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser of x + golden ratio: distinct inputs give distinct outputs."""
    with np.errstate(over="ignore"):
        z = np.asarray(x, dtype=np.uint64) + _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * _M1
        z = (z ^ (z >> np.uint64(27))) * _M2
        return z ^ (z >> np.uint64(31))


def derive_key(*parts: object) -> int:
    """A 64-bit key from any JSON-able parts (seed, source name, epoch, ...)."""
    blob = json.dumps(parts, sort_keys=True, separators=(",", ":")).encode()
    return int.from_bytes(hashlib.sha256(blob).digest()[:8], "little")


def random_u64(key: int, index: np.ndarray | int) -> np.ndarray:
    """Counter-based random uint64 values: a pure function of (key, index)."""
    return splitmix64(splitmix64(np.asarray(index, dtype=np.uint64)) ^ np.uint64(key))


def permutation(n: int, key: int) -> np.ndarray:
    """A permutation of range(n) determined by key (ties are impossible: the keys are distinct)."""
    dtype = np.int32 if n < 2**31 else np.int64
    keys = splitmix64(np.arange(n, dtype=np.uint64) + np.uint64(key))
    return np.argsort(keys, kind="stable").astype(dtype, copy=False)


def text_hash64(text: str) -> int:
    """Content hash of a document; decides the held-out split, so duplicates share a side."""
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big")


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_json(obj: object) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
