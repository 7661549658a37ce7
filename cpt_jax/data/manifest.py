"""The layout of a prepared directory and its manifest, written last so its presence means done.

    manifest.json            everything below, written atomically after all shards
    doc_lengths.npz          tokens per document (EOS included), arrays 'train' and 'eval'
    train-00000.arrayrecord  documents in order, each as records of at most `chunk_tokens` token ids
                             (little-endian uint16/uint32), so a slice of a long document is cheap
    eval-00000.arrayrecord   held-out documents of the same chunk of input (or of an eval input file)
    unit-00000.json          per chunk of input: input hash, lengths, skips (lets a rerun resume)
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cpt_jax.errors import DataError
from cpt_jax.storage import as_path, prefetch

FORMAT = "cpt_jax.prepared/1"
MANIFEST = "manifest.json"
LENGTHS = "doc_lengths.npz"
SPLITS = ("train", "eval")
CHUNK_TOKENS = 4096  # tokens per record; manifests without "chunk_tokens" hold one record per document


def shard_name(split: str, unit: int) -> str:
    return f"{split}-{unit:05d}.arrayrecord"


def unit_name(unit: int) -> str:
    return f"unit-{unit:05d}.json"


def write_json_atomic(path: Path, obj: object) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=False) + "\n")
    os.replace(tmp, path)


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype("<u2") if vocab_size <= 1 << 16 else np.dtype("<u4")


def read_manifest(root: Path) -> dict:
    """The manifest of a prepared directory, or an error that says how to get one."""
    root = as_path(root)
    if not root.is_dir():
        raise DataError(f"prepared data directory {root} does not exist; run `cpt-jax prepare ... --out {root}`")
    path = root / MANIFEST
    if not path.is_file():
        if any(root.glob("unit-*.json")) or any(root.glob("*.arrayrecord*")):
            raise DataError(f"{root} has shards but no {MANIFEST}: `cpt-jax prepare` did not finish. Rerun the "
                            "same prepare command; it keeps finished shards and writes the manifest last")
        raise DataError(f"{root} is not a prepared directory (no {MANIFEST}); run `cpt-jax prepare ... --out {root}`")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DataError(f"{path} is not valid JSON ({e}); rerun `cpt-jax prepare --overwrite`") from e
    if manifest.get("format") != FORMAT:
        raise DataError(f"{path} has format {manifest.get('format')!r}, expected {FORMAT!r}; rerun "
                        "`cpt-jax prepare --overwrite` with this version")
    return manifest


@dataclass(frozen=True)
class PreparedSplit:
    shards: tuple[str, ...]
    lengths: np.ndarray  # int64 tokens per document in shard order


@dataclass(frozen=True)
class Prepared:
    root: Path
    manifest: dict
    splits: dict[str, PreparedSplit]

    @property
    def tokenizer(self) -> dict:
        return self.manifest["tokenizer"]

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.manifest["token_dtype"])

    @property
    def chunk_tokens(self) -> int:
        return int(self.manifest.get("chunk_tokens", 0))


def open_prepared(root: str | Path) -> Prepared:
    root = as_path(root)
    manifest = read_manifest(root)
    with np.load(io.BytesIO((root / manifest["lengths_file"]).read_bytes())) as npz:
        lengths = {s: npz[s].astype(np.int64) for s in SPLITS}
    splits = {}
    for split in SPLITS:
        info = manifest["splits"][split]
        shards = tuple(str(root / name) for name in info["shards"])
        missing = [s for s in shards if not as_path(s).is_file()]
        if missing:
            raise DataError(f"{root}: shard {missing[0]} listed in {MANIFEST} is missing; rerun `cpt-jax prepare`")
        if len(lengths[split]) != info["documents"] or int(lengths[split].sum()) != info["tokens"]:
            raise DataError(f"{root}: {manifest['lengths_file']} does not match {MANIFEST} for split "
                            f"'{split}'; rerun `cpt-jax prepare --overwrite`")
        splits[split] = PreparedSplit(shards, lengths[split])
        prefetch(list(shards))  # a source in a bucket: copied to the local cache while the model compiles
    return Prepared(root, manifest, splits)
