"""Tokenizers for prepare: a sentencepiece `.model` or a Hugging Face `tokenizer.json`.

Both are wrapped behind `encode_batch`, `vocab_size`, `eos_id` and a fingerprint (sha256 of the
tokenizer file) that the manifest records, so a run can refuse data tokenized differently.

Whether documents start with BOS follows the upstream tokenizer unless asked explicitly
(add_bos=None is "auto"): a Hugging Face tokenizer by tokenizer_config.json's `add_bos_token`, else
by whether tokenizer.json's post-processor template starts with a special token (Llama 3 style);
a sentencepiece model whenever it has a BOS piece (Llama 1/2 style), except one trained by
prepare itself, which has no upstream convention. The decision and its reason go to the manifest.
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterable, Iterator

from cpt_jax.errors import DataError
from cpt_jax.data.hashing import sha256_file
from cpt_jax.storage import is_remote, local_file

# End-of-text tokens of common model families, tried in order when tokenizer.json does not
# name its EOS (a tokenizer_config.json next to it, or `eos_token`, takes precedence).
_TRAIN_THREADS = 4
_KNOWN_EOS = ("<|endoftext|>", "<|end_of_text|>", "</s>", "<eos>", "<|im_end|>")


@dataclass(frozen=True)
class TokenizerSpec:
    """What a worker process needs to load the tokenizer again (picklable)."""

    path: str
    eos_token: str = ""  # HF only: override the end-of-document token
    add_bos: bool | None = None  # None: auto, as the upstream tokenizer does
    trained_here: bool = False  # a sentencepiece model trained by prepare (auto: no BOS)


class Tokenizer:
    kind: str
    vocab_size: int
    eos_id: int
    bos_id: int | None

    add_bos: bool
    add_bos_reason: str

    def __init__(self, spec: TokenizerSpec):
        self.spec = spec
        self.path = spec.path
        self.fingerprint = sha256_file(spec.path)

    def _decide_bos(self, upstream: bool, reason: str) -> None:
        """add_bos: the explicit choice, else the upstream tokenizer's (`upstream`, because `reason`)."""
        if self.spec.add_bos is None:
            self.add_bos, self.add_bos_reason = upstream, f"auto: {reason}"
        else:
            self.add_bos, self.add_bos_reason = self.spec.add_bos, "explicit"
        if self.add_bos and self.bos_id is None:
            raise DataError(f"documents should start with BOS ({self.add_bos_reason}) but {self.path} defines no BOS "
                            "token; prepare without BOS or give a tokenizer that has one")

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """Token ids of each document, with BOS (if decided) and EOS."""
        prefix = [self.bos_id] if self.add_bos else []
        return [prefix + ids + [self.eos_id] for ids in self._encode(texts)]

    def _encode(self, texts: list[str]) -> list[list[int]]:
        raise NotImplementedError

    def describe(self) -> dict:
        path = self.path if is_remote(self.path) else str(Path(self.path).resolve())  # a URL stays a URL
        return {"path": path, "kind": self.kind, "sha256": self.fingerprint,
                "vocab_size": self.vocab_size, "eos_id": self.eos_id, "bos_id": self.bos_id,
                "add_bos": self.add_bos, "add_bos_reason": self.add_bos_reason}


class SentencePieceTokenizer(Tokenizer):
    kind = "sentencepiece"

    def __init__(self, spec: TokenizerSpec):
        import sentencepiece as spm

        super().__init__(spec)
        try:
            self._sp = spm.SentencePieceProcessor(model_file=spec.path)
        except (OSError, RuntimeError) as e:
            raise DataError(f"{spec.path} is not a sentencepiece model ({e}); pass a .model file "
                            "or a Hugging Face tokenizer.json") from e
        self.vocab_size = self._sp.get_piece_size()
        self.eos_id = self._sp.eos_id()
        bos = self._sp.bos_id()
        self.bos_id = bos if bos >= 0 else None
        if self.eos_id < 0:
            raise DataError(f"sentencepiece model {spec.path} has no EOS piece; documents must end with "
                            "EOS: retrain it with eos_id set (the default)")
        if spec.trained_here:
            self._decide_bos(False, "a tokenizer trained by prepare has no upstream BOS convention")
        else:
            self._decide_bos(self.bos_id is not None, "sentencepiece model " + (
                "has a BOS piece (Llama-style models start documents with it)" if self.bos_id is not None
                else "has no BOS piece"))

    def _encode(self, texts):
        return self._sp.encode(texts, out_type=int)


class HFTokenizer(Tokenizer):
    kind = "huggingface"

    def __init__(self, spec: TokenizerSpec):
        from tokenizers import Tokenizer as _HF

        super().__init__(spec)
        try:
            self._tok = _HF.from_file(spec.path)
        except Exception as e:  # the Rust side raises a bare Exception on malformed files
            raise DataError(f"{spec.path} is not a Hugging Face tokenizer.json ({e})") from e
        self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)
        config = _tokenizer_config(Path(spec.path).parent)
        self.eos_id = self._find_id(spec.eos_token or _token_text(config.get("eos_token")), _KNOWN_EOS, "EOS")
        bos = _token_text(config.get("bos_token"))
        template_bos = _template_bos(Path(spec.path))
        bos = bos or template_bos or ""
        self.bos_id = self._tok.token_to_id(bos) if bos else None
        if isinstance(config.get("add_bos_token"), bool):
            self._decide_bos(config["add_bos_token"], f"tokenizer_config.json add_bos_token={config['add_bos_token']}")
        elif template_bos:
            self._decide_bos(True, f"tokenizer.json post-processor starts with {template_bos}")
        else:
            self._decide_bos(False, "tokenizer_config.json and tokenizer.json add no BOS")

    def _find_id(self, name: str, fallbacks: tuple[str, ...], what: str) -> int:
        for candidate in ([name] if name else list(fallbacks)):
            token_id = self._tok.token_to_id(candidate)
            if token_id is not None:
                return token_id
        tried = name or ", ".join(fallbacks)
        raise DataError(f"cannot find the {what} token ({tried}) in {self.path}; pass `eos_token` with "
                        "the tokenizer's end-of-text token")

    def _encode(self, texts):
        return [e.ids for e in self._tok.encode_batch(texts, add_special_tokens=False)]


def _tokenizer_config(folder: Path) -> dict:
    path = folder / "tokenizer_config.json"
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DataError(f"{path} is not valid JSON: {e}") from e


def _template_bos(path: Path) -> str | None:
    """The special token a tokenizer.json's TemplateProcessing puts before a single sequence."""
    try:
        processor = json.loads(path.read_text()).get("post_processor") or {}
    except (OSError, json.JSONDecodeError):
        return None
    candidates = processor.get("processors", []) if processor.get("type") == "Sequence" else [processor]
    for p in candidates:
        if p.get("type") == "TemplateProcessing" and p.get("single"):
            first = p["single"][0]
            if "SpecialToken" in first:
                return first["SpecialToken"]["id"]
    return None


def _token_text(value) -> str:
    if isinstance(value, dict):  # AddedToken form {"content": "</s>", ...}
        return str(value.get("content", ""))
    return value or ""


def tokenizer_file(path: str | Path) -> Path:
    """The local file of a tokenizer (for a URL: a cached copy, with its tokenizer_config.json)."""
    return local_file(path, beside=("tokenizer_config.json",))


def load_tokenizer(spec: TokenizerSpec) -> Tokenizer:
    """A tokenizer in a bucket is read from a local copy; it records the URL as given."""
    path = tokenizer_file(spec.path)
    if not path.is_file():
        raise DataError(f"tokenizer {spec.path} does not exist; pass a sentencepiece .model or a tokenizer.json")
    local = replace(spec, path=str(path))
    tok = HFTokenizer(local) if path.suffix == ".json" else SentencePieceTokenizer(local)
    tok.path = spec.path
    return tok


def train_sentencepiece(lines: Iterable[str], out_path: Path, vocab_size: int) -> None:
    """Train a unigram sentencepiece model on `lines` and write it atomically to out_path.

    Ids: unk=0, bos=1, eos=2, no pad (packing uses segment id 0 for padding). Byte fallback needs
    256 byte pieces, so it is only on for vocabularies of at least 512. The trainer's thread count
    changes its floating-point sums, so it is fixed: the same text always gives the same model.
    """
    import sentencepiece as spm

    spm.set_random_generator_seed(1234)  # deterministic training: a rerun gives the same model
    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=_nonempty(lines), model_writer=model, vocab_size=vocab_size,
            model_type="unigram", character_coverage=0.9995 if vocab_size >= 512 else 1.0,  # rare chars: byte fallback
            byte_fallback=vocab_size >= 512, unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
            input_sentence_size=2_000_000, shuffle_input_sentence=True, max_sentence_length=16384,
            hard_vocab_limit=False,  # tiny corpora support fewer pieces: take what the text gives
            num_threads=_TRAIN_THREADS, minloglevel=2)
    except RuntimeError as e:
        raise DataError(f"training a sentencepiece tokenizer with vocab {vocab_size} failed: {e}. "
                        "Lower `train_tokenizer` (it must not exceed what the text supports)") from e
    tmp = out_path.with_name(out_path.name + ".tmp")
    tmp.write_bytes(model.getvalue())
    os.replace(tmp, out_path)


def _nonempty(lines: Iterable[str]) -> Iterator[str]:
    for line in lines:
        if line.strip():
            yield line
