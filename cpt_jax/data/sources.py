"""Named sources opened for training: a train and an eval split of documents, plus metadata."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from cpt_jax.data.config import SourceConfig
from cpt_jax.errors import DataError
from cpt_jax.data.manifest import open_prepared
from cpt_jax.data.synthetic import EOS_ID, SyntheticDocs
from cpt_jax.storage import local_copy


class Documents(Protocol):
    lengths: np.ndarray  # int64 tokens per document, EOS included

    def __getitem__(self, i: int) -> np.ndarray: ...

    def read(self, i: int, start: int, stop: int) -> np.ndarray:
        """Tokens [start, stop) of document i, reading only what they need."""
        ...


class PreparedDocs:
    """Documents of one split of a prepared directory, read at random from its ArrayRecord shards.

    chunk_tokens > 0: each document is stored as records of at most that many tokens, so reading
    a few tokens of a long document reads one or two records, not the document (0: one record per
    document, directories prepared before chunking)."""

    def __init__(self, shards: tuple[str, ...], lengths: np.ndarray, dtype: np.dtype, chunk_tokens: int = 0):
        self.shards, self.lengths, self.dtype, self.chunk = shards, lengths, dtype, chunk_tokens
        records = -(-lengths // chunk_tokens) if chunk_tokens else np.ones_like(lengths)
        self.first_record = np.concatenate([[0], np.cumsum(records)[:-1]]).astype(np.int64)
        self._records = None

    def _source(self):
        if self._records is None:
            import grain

            self._records = grain.sources.ArrayRecordDataSource([str(local_copy(s)) for s in self.shards])
        return self._records

    def __getitem__(self, i: int) -> np.ndarray:
        return self.read(i, 0, int(self.lengths[i]))

    def read(self, i: int, start: int, stop: int) -> np.ndarray:
        size = int(self.lengths[i])
        chunk = self.chunk or size
        first, last = start // chunk, (stop - 1) // chunk
        parts = []
        for c in range(first, last + 1):
            part = np.frombuffer(self._source()[int(self.first_record[i]) + c], dtype=self.dtype)
            if part.size != min(chunk, size - c * chunk):
                raise DataError(f"document {i} of {self.shards[0]}... does not match the manifest's length "
                                f"{size}: the prepared data is corrupt; rerun `cpt-jax prepare --overwrite`")
            parts.append(part)
        tokens = parts[0] if len(parts) == 1 else np.concatenate(parts)
        return tokens[start - first * chunk: stop - first * chunk].astype(np.int32)

    def __getstate__(self):  # grain workers reopen the shards themselves
        return {**self.__dict__, "_records": None}


@dataclass
class Source:
    name: str
    train: Documents
    eval: Documents
    vocab_size: int  # of the tokenizer (synthetic: of the generator)
    eos_id: int
    max_token_id: int
    fingerprint: str | None  # sha256 of the tokenizer file; None for synthetic data
    info: dict = field(default_factory=dict)


def open_source(name: str, cfg: SourceConfig, model_vocab: int | None) -> Source:
    if cfg.kind == "synthetic":
        vocab = cfg.vocab_size or model_vocab
        if not vocab:
            raise DataError(f"source '{name}': synthetic vocab_size is 0 (the model's) but no vocab_size was "
                            "given to DataPipeline; set data.sources.{name}.vocab_size")
        train = SyntheticDocs(vocab, cfg.num_docs, cfg.min_len, cfg.max_len, cfg.seed, "train")
        held = SyntheticDocs(vocab, cfg.eval_docs, cfg.min_len, cfg.max_len, cfg.seed, "eval")
        info = {"kind": "synthetic", "vocab_size": vocab, "train_documents": cfg.num_docs,
                "eval_documents": cfg.eval_docs, "train_tokens": int(train.lengths.sum())}
        return Source(name, train, held, vocab, EOS_ID, vocab - 1, None, info)
    try:
        prepared = open_prepared(cfg.path)
    except DataError as e:
        raise DataError(f"source '{name}': {e}") from e
    m = prepared.manifest
    splits = {s: PreparedDocs(p.shards, p.lengths, prepared.dtype, prepared.chunk_tokens)
              for s, p in prepared.splits.items()}
    info = {"kind": "prepared", "path": str(prepared.root),
            **{f"{s}_documents": m["splits"][s]["documents"] for s in splits},
            **{f"{s}_tokens": m["splits"][s]["tokens"] for s in splits}, "skipped": m["skipped"]["count"]}
    tok = m["tokenizer"]
    return Source(name, splits["train"], splits["eval"], tok["vocab_size"], tok["eos_id"], m["max_token_id"],
                  tok["sha256"], info)
