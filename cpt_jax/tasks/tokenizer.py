"""Text to token ids as lm-evaluation-harness's HF model class sees them.

lm-eval encodes with the tokenizer's default special tokens (what `tokenizer.json`'s post-processor
adds, e.g. a Llama BOS), except when the text already starts with the prefix token's text; an
empty context is replaced by the prefix token (BOS, else EOS). A sentencepiece `.model` behaves as
the `tokenizer.json` cpt_jax exports from it (no post-processor: no special tokens added).
"""

from __future__ import annotations

import json
from pathlib import Path

from cpt_jax.errors import DataError
from cpt_jax.storage import is_remote, local_file


class TaskTokenizer:
    """encode(text) with lm-eval's special-token rule, and the prefix token for empty contexts."""

    prefix_id: int

    def encode(self, text: str, add_special_tokens: bool | None = None) -> list[int]:
        if add_special_tokens is None:
            add_special_tokens = not text.startswith(self.prefix_text)
        return self._encode(text, add_special_tokens)

    def _encode(self, text: str, add_special_tokens: bool) -> list[int]:
        raise NotImplementedError

    @property
    def prefix_text(self) -> str:
        raise NotImplementedError


class HFTaskTokenizer(TaskTokenizer):
    def __init__(self, path: Path):
        from tokenizers import Tokenizer

        try:
            self._tok = Tokenizer.from_file(str(path))
        except Exception as e:  # the Rust side raises a bare Exception on malformed files
            raise DataError(f"{path} is not a Hugging Face tokenizer.json ({e})") from e
        config = _tokenizer_config(path.parent)
        ids = [self._tok.token_to_id(t) for t in (_text(config.get("bos_token")), _text(config.get("eos_token"))) if t]
        ids = [i for i in ids if i is not None]
        if not ids:
            raise DataError(f"{path.parent} names no bos_token or eos_token in tokenizer_config.json; tasks need "
                            "one as the prefix of an empty context")
        self.prefix_id = ids[0]

    def _encode(self, text, add_special_tokens):
        return self._tok.encode(text, add_special_tokens=add_special_tokens).ids

    @property
    def prefix_text(self) -> str:
        return self._tok.decode([self.prefix_id], skip_special_tokens=False)


class SentencePieceTaskTokenizer(TaskTokenizer):
    def __init__(self, path: Path):
        import sentencepiece as spm

        try:
            self._sp = spm.SentencePieceProcessor(model_file=str(path))
        except (OSError, RuntimeError) as e:
            raise DataError(f"{path} is not a sentencepiece model ({e})") from e
        bos, eos = self._sp.bos_id(), self._sp.eos_id()
        self.prefix_id = bos if bos >= 0 else eos
        if self.prefix_id < 0:
            raise DataError(f"sentencepiece model {path} has neither BOS nor EOS; tasks need one as a prefix")

    def _encode(self, text, add_special_tokens):
        return self._sp.encode(text, out_type=int)

    @property
    def prefix_text(self) -> str:
        return self._sp.id_to_piece(self.prefix_id)


def load_task_tokenizer(path: str | Path) -> TaskTokenizer:
    """A tokenizer.json, a folder holding one, or a sentencepiece .model (local or in a bucket)."""
    if is_remote(path) and not str(path).endswith((".json", ".model")):
        path = f"{str(path).rstrip('/')}/tokenizer.json"
    path = local_file(path, beside=("tokenizer_config.json",))
    if path.is_dir():
        path = path / "tokenizer.json"
    if not path.is_file():
        raise DataError(f"tokenizer {path} does not exist; tasks need the model's tokenizer.json or sentencepiece "
                        ".model")
    return HFTaskTokenizer(path) if path.suffix == ".json" else SentencePieceTaskTokenizer(path)


def _tokenizer_config(folder: Path) -> dict:
    path = folder / "tokenizer_config.json"
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except json.JSONDecodeError as e:
        raise DataError(f"{path} is not valid JSON: {e}") from e


def _text(value) -> str:
    return str(value.get("content", "")) if isinstance(value, dict) else (value or "")
