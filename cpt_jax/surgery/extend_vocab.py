"""Extend a model's vocabulary to a tokenizer that appends tokens to its own, before CPT on a new
language or domain.

The input embedding and (untied) LM head grow to the new tokenizer's size, padded up to a
multiple of `pad_multiple` rows (the HF convention: config.json's vocab_size is the padded row
count; the real tokenizer size is recorded in the checkpoint's metadata under `vocab`). Rows of
the old tokenizer's ids are copied bit for bit, so on text the old tokenizer covers the logits of
the old ids do not change. Each new token's row is initialised from the old model:

- `mean`: the mean of the old rows (embedding and LM head alike) of the pieces the OLD tokenizer
  splits the new token's text into: the "Fast Vocabulary Transfer" initialisation of Gee et al.
  (2022, "Fast Vocabulary Transfer for Language Model Compression", EMNLP industry track).
- `mean-all`: the mean of all old rows, as Hewitt (2021, "Initializing New Word Embeddings for
  Pretrained Language Models") recommends: new tokens then start with a small, average
  probability instead of a random one.
- `random`: normal(0, the model's initializer_range), as a scratch model is initialised.

Padding rows, special tokens and tokens the old tokenizer cannot split (unknown pieces only) get
the mean of all old rows under every method.
"""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import numpy as np
import yaml

from cpt_jax.checkpoint.model_checkpoint import (
    check_output_dir,
    load_model_checkpoint,
    parse_ckpt_ref,
    read_meta,
    read_model_config,
    save_model_checkpoint,
)
from cpt_jax.errors import UserError
from cpt_jax.hf import load_hf_params, read_hf_config
from cpt_jax.model.config import ModelConfig
from cpt_jax.model.params import abstract_params
from cpt_jax.storage import absolute, as_path, copy, local_copy

INITS = ("mean", "mean-all", "random")
SPM_SPECIAL = (2, 3, 6)  # sentencepiece piece types UNKNOWN, CONTROL, BYTE: no surface text to split


@dataclass(frozen=True)
class NewToken:
    """A token of the new tokenizer: its string and how to split it with the old tokenizer."""

    text: str
    how: str  # "piece": a vocabulary string (▁/Ġ-escaped); "text": raw text (an added token); "special"


@dataclass(frozen=True)
class Vocab:
    """A tokenizer file as its id-ordered tokens, plus a function that splits a new token's text
    into this tokenizer's ids (used on the old tokenizer only)."""

    path: Path
    tokens: list[NewToken]
    split: Callable[[NewToken], list[int]]

    @property
    def size(self) -> int:
        return len(self.tokens)


def _sentencepiece_vocab(path: Path) -> Vocab:
    from sentencepiece import SentencePieceProcessor, sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()
    try:
        proto.ParseFromString(path.read_bytes())
    except Exception as e:  # protobuf's DecodeError
        raise UserError(f"{path} is not a sentencepiece model ({e}); pass a .model file or a tokenizer.json") from e
    tokens = [NewToken(p.piece, "special" if p.type in SPM_SPECIAL else "piece") for p in proto.pieces]
    # Split a piece as one word fragment: no dummy "▁" prefix, spaces kept (they are "▁" in pieces).
    proto.normalizer_spec.add_dummy_prefix = False
    proto.normalizer_spec.remove_extra_whitespaces = False
    sp = SentencePieceProcessor(model_proto=proto.SerializeToString())
    unk = sp.unk_id()

    def split(token: NewToken) -> list[int]:
        return [i for i in sp.encode(token.text.replace("▁", " "), out_type=int) if i != unk]

    return Vocab(path, tokens, split)


def _hf_vocab(path: Path) -> Vocab:
    from tokenizers import Tokenizer

    try:
        tok = Tokenizer.from_file(str(path))
    except Exception as e:  # the Rust side raises a bare Exception on malformed files
        raise UserError(f"{path} is not a Hugging Face tokenizer.json ({e})") from e
    added = tok.get_added_tokens_decoder()
    tokens = []
    for i in range(tok.get_vocab_size(with_added_tokens=True)):
        if i in added:
            tokens.append(NewToken(added[i].content, "special" if added[i].special else "text"))
        else:
            tokens.append(NewToken(tok.id_to_token(i) or "", "piece"))
    unk = next((tok.token_to_id(t) for t in (getattr(tok.model, "unk_token", None), "<unk>", "[UNK]")
                if t and tok.token_to_id(t) is not None), None)

    def split(token: NewToken) -> list[int]:
        try:
            if token.how == "text":
                ids = tok.encode(token.text, add_special_tokens=False).ids
            else:  # the model alone, on the already pre-tokenized piece string
                ids = [t.id for t in tok.model.tokenize(token.text)]
        except Exception:  # noqa: BLE001 (tokenizers raises bare Exception): a model without unk refuses
            return []
        return [i for i in ids if i != unk]

    return Vocab(path, tokens, split)


def read_vocab(path: str | Path) -> Vocab:
    """A sentencepiece .model or a Hugging Face tokenizer.json."""
    path = as_path(path)
    if not path.is_file():
        raise UserError(f"tokenizer {path} does not exist; pass a sentencepiece .model or a tokenizer.json")
    local = local_copy(path)  # a file in a bucket: its cached copy (the tokenizer libraries open local files)
    return dataclasses.replace(_hf_vocab(local) if path.suffix == ".json" else _sentencepiece_vocab(local), path=path)


def check_extends(old: Vocab, new: Vocab) -> None:
    """`new` must keep every old token at its id and add at least one."""
    if new.size <= old.size:
        raise UserError(f"the new tokenizer {new.path} has {new.size} tokens, not more than the model's tokenizer "
                        f"{old.path} ({old.size}); pass a tokenizer that appends new tokens to the old ones")
    for i, (a, b) in enumerate(zip(old.tokens, new.tokens)):
        if a.text != b.text:
            raise UserError(f"the new tokenizer {new.path} does not extend {old.path}: token id {i} is {a.text!r} "
                            f"in the old one but {b.text!r} in the new one; old tokens must keep their ids "
                            "(append new tokens after them)")


# ----------------------------------------------------------------------------- the model

@dataclass(frozen=True)
class Source:
    """Where the model comes from: an HF folder or a cpt_jax checkpoint (model or run) step."""

    path: Path
    step: int | None
    hf: bool

    @classmethod
    def parse(cls, ref: str) -> Source:
        if ref.startswith("hf:"):
            return cls(absolute(ref[3:]), None, True)
        path, step = parse_ckpt_ref(ref.removeprefix("ckpt:"))
        path = absolute(path)
        if not path.exists():
            raise UserError(f"model {path} does not exist; pass a cpt_jax model checkpoint, a run directory "
                            "(optionally @STEP) or a Hugging Face folder")
        hf = (path / "config.json").is_file() and not ref.startswith("ckpt:")
        if hf and step is not None:
            raise UserError(f"{ref}: a Hugging Face folder has no steps; drop '@{step}'")
        return cls(path, step, hf)

    def meta(self) -> dict:
        """The model's metadata without reading its weights (HF: the import's `source` only)."""
        if self.hf:
            hf = read_hf_config(self.path)
            return {"source": {"hf_dir": str(self.path), "hf_config": hf}}
        return read_meta(self.path, self.step)

    def load(self) -> tuple[Any, ModelConfig, dict]:
        """(params in host memory, model config, metadata): no accelerator memory is needed."""
        if self.hf:
            cfg, params, source = load_hf_params(self.path, None, None)
            return params, cfg, {"source": source}
        host = jax.sharding.SingleDeviceSharding(jax.local_devices(backend="cpu")[0])
        shardings = jax.tree.map(lambda _: host, abstract_params(read_model_config(self.path, self.step)))
        return load_model_checkpoint(self.path, shardings=shardings, step=self.step)


def find_old_tokenizer(source: Source, meta: dict, prefer_suffix: str) -> Path:
    """The tokenizer the model was trained with: a model checkpoint's tokenizer/, a run's
    configured tokenizer, the folder a model was imported from, or the HF folder itself."""
    folders = [source.path / "tokenizer"]
    run_config = source.path / "config.yaml"
    if not source.hf and run_config.is_file():
        configured = ((yaml.safe_load(run_config.read_text()) or {}).get("config") or {}).get("tokenizer")
        if configured and as_path(configured).is_file():
            return as_path(configured)
    origin = meta.get("source") or {}
    folders += [as_path(origin[k]) for k in ("tokenizer_dir", "hf_dir") if origin.get(k)]
    if source.hf:
        folders.append(source.path)
    names = ("tokenizer.model", "tokenizer.json")
    names = names if prefer_suffix == ".model" else names[::-1]
    for folder in folders:
        for name in names:
            if (folder / name).is_file():
                return folder / name
    raise UserError(f"cannot find the tokenizer of {source.path} (looked for {' or '.join(names)} in "
                    f"{', '.join(map(str, folders))}); give the model's own tokenizer file explicitly "
                    "(--old-tokenizer)")


def padded_rows(tokens: int, old_rows: int, multiple: int) -> int:
    """Rows for `tokens` ids: a multiple of `multiple`, never fewer than the model had."""
    return max(old_rows, -(-tokens // multiple) * multiple)


def grow_rows(old: np.ndarray, old_tokens: int, rows: int, pieces: list[list[int]], init: str,
              rng: np.random.Generator, std: float) -> np.ndarray:
    """`old` (old_rows, d) -> (rows, d): the old tokenizer's rows copied exactly, row
    old_tokens + k initialised from `pieces[k]` (old ids), every other row the mean of all old rows."""
    fill = np.asarray(old[:old_tokens], dtype=np.float64).mean(axis=0)
    out = np.empty((rows, old.shape[1]), dtype=old.dtype)
    out[:old_tokens] = old[:old_tokens]
    out[old_tokens:] = fill.astype(old.dtype)
    for k, ids in enumerate(pieces):
        if init == "random" and ids is not None:
            out[old_tokens + k] = (rng.standard_normal(old.shape[1]) * std).astype(old.dtype)
        elif init == "mean" and ids:
            out[old_tokens + k] = np.asarray(old[ids], dtype=np.float64).mean(axis=0).astype(old.dtype)
    return out


def new_token_pieces(old: Vocab, new: Vocab) -> list[list[int] | None]:
    """For each new token (in id order), the old ids its text splits into; None for special
    tokens (they have no text)."""
    return [None if t.how == "special" else old.split(t) for t in new.tokens[old.size:]]


def _stage_tokenizer(new_path: Path, folder: Path) -> None:
    """The new tokenizer under its canonical name (what export and the tokenizer/ folder expect);
    a tokenizer.json keeps its sibling config files, never another tokenizer's vocabulary."""
    if new_path.suffix == ".json":
        copy(new_path, folder / "tokenizer.json")
        for name in ("tokenizer_config.json", "special_tokens_map.json", "generation_config.json",
                     "added_tokens.json", "chat_template.jinja"):
            if (new_path.parent / name).is_file():
                copy(new_path.parent / name, folder / name)
    else:
        copy(new_path, folder / "tokenizer.model")


def extend_vocab(model_path: str | Path, tokenizer_path: str | Path, out_dir: str | Path, init: str = "mean",
                 pad_multiple: int = 128, overwrite: bool = False, *, old_tokenizer: str | Path | None = None,
                 seed: int = 0) -> Path:
    """Write a cpt_jax model checkpoint of `model_path` (checkpoint, run dir[@STEP] or HF folder)
    with its vocabulary extended to `tokenizer_path`; start a CPT phase from it with
    `init: ckpt:OUT`. Returns the output directory."""
    if init not in INITS:
        raise UserError(f"unknown init {init!r}; choose one of {', '.join(INITS)}")
    if pad_multiple < 1:
        raise UserError(f"pad_multiple must be at least 1, got {pad_multiple}")
    source = Source.parse(str(model_path))
    new_path = absolute(tokenizer_path)
    out = absolute(out_dir)
    check_output_dir(out, overwrite, source.path, new_path, *([absolute(old_tokenizer)] if old_tokenizer else []))
    meta = source.meta()
    new = read_vocab(new_path)
    old = read_vocab(old_tokenizer or find_old_tokenizer(source, meta, new_path.suffix))
    check_extends(old, new)
    pieces = new_token_pieces(old, new)

    params, cfg, meta = source.load()
    if old.size > cfg.vocab_size:
        raise UserError(f"the model's tokenizer {old.path} has {old.size} tokens but the model only "
                        f"{cfg.vocab_size} embedding rows; it is not this model's tokenizer")
    rows = padded_rows(new.size, cfg.vocab_size, pad_multiple)
    rng = np.random.default_rng(seed)
    for name in ("embed",) if cfg.tie_embeddings else ("embed", "lm_head"):
        weight = np.asarray(params[name])
        weight = weight if name == "embed" else weight.T  # the LM head is (d, vocab)
        grown = grow_rows(weight, old.size, rows, pieces, init, rng, cfg.initializer_range)
        grown = grown if name == "embed" else np.ascontiguousarray(grown.T)
        params[name] = jax.device_put(grown, params[name].sharding)
        del weight, grown
    new_cfg = dataclasses.replace(cfg, vocab_size=rows)

    origin = {k: v for k, v in (meta.get("source") or {}).items() if k not in ("hf_dir", "tokenizer_dir")}
    origin["tokenizer_dir"] = str(out / "tokenizer")  # export ships the new tokenizer, not the upstream one
    record = {"tokenizer_size": new.size, "padded_size": rows, "old_tokenizer_size": old.size,
              "old_vocab_size": cfg.vocab_size, "new_tokens": new.size - old.size, "init": init,
              "unsplit_tokens": sum(1 for p in pieces if not p), "pad_multiple": pad_multiple,
              "from": str(source.path), "from_step": meta.get("step")}
    with tempfile.TemporaryDirectory() as staged:
        _stage_tokenizer(new_path, Path(staged))
        return save_model_checkpoint(out, params, new_cfg, {"source": origin, "vocab": record},
                                     tokenizer_dir=staged, overwrite=overwrite)
