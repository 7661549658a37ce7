"""Generated text corpora and word-level tokenizers for tests and benchmarks (no downloads)."""

from __future__ import annotations

import json
import random
from pathlib import Path

EOS_TOKEN = "</s>"


def vocabulary(prefix: str, size: int) -> list[str]:
    """`size` distinct lowercase words starting with prefix (disjoint prefixes: disjoint vocabularies)."""
    letters = "abcdefghijklmnopqrstuvwxyz"
    return [prefix + letters[i // 26 % 26] + letters[i % 26] for i in range(size)]


def documents(words: list[str], n: int, seed: int, min_words: int = 3, max_words: int = 60) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(words) for _ in range(rng.randint(min_words, max_words))) for _ in range(n)]


def write_jsonl(path: Path, texts: list[str], field: str = "text") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        for i, text in enumerate(texts):
            f.write(json.dumps({field: text, "id": i}) + "\n")
    return path


def word_level_tokenizer(path: Path, words: list[str]) -> Path:
    """A Hugging Face tokenizer.json: [UNK]=0, </s>=1, then one id per word."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"[UNK]": 0, EOS_TOKEN: 1, **{w: i + 2 for i, w in enumerate(words)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens([EOS_TOKEN])
    path.parent.mkdir(parents=True, exist_ok=True)
    tok.save(str(path))
    return path
