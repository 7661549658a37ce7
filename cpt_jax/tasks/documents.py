"""Task documents from local jsonl files, checked row by row so a bad file names its bad line."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from cpt_jax.errors import DataError


@dataclass(frozen=True)
class ChoiceDoc:
    """A multiple-choice question: the prompt, the candidate answers, the index of the right one."""

    context: str
    choices: tuple[str, ...]
    gold: int


@dataclass(frozen=True)
class TextDoc:
    """A text scored whole (perplexity)."""

    text: str


def _rows(path: Path) -> list[tuple[int, dict]]:
    if not path.is_file():
        raise DataError(f"task file {path} does not exist; give a jsonl file with one document per line")
    rows = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{lineno}: not valid JSON ({e}); each line must be one JSON object") from e
        if not isinstance(row, dict):
            raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
        rows.append((lineno, row))
    if not rows:
        raise DataError(f"task file {path} has no documents; add one JSON object per line")
    return rows


def _choice_doc(row: dict, where: str) -> ChoiceDoc:
    for key in ("context", "choices", "gold"):
        if key not in row:
            raise DataError(f"{where}: missing {key!r}; multiple-choice rows look like "
                            '{"context": "...", "choices": ["...", "..."], "gold": 0}')
    context, choices, gold = row["context"], row["choices"], row["gold"]
    if not isinstance(context, str) or not context:
        raise DataError(f"{where}: 'context' must be a non-empty string, got {context!r}")
    if (not isinstance(choices, list) or len(choices) < 2
            or not all(isinstance(c, str) and c for c in choices)):
        raise DataError(f"{where}: 'choices' must be a list of at least two non-empty strings, got {choices!r}")
    if isinstance(gold, bool) or not isinstance(gold, int) or not 0 <= gold < len(choices):
        raise DataError(f"{where}: 'gold' must be the index of the right choice (0..{len(choices) - 1}), "
                        f"got {gold!r}")
    return ChoiceDoc(context, tuple(choices), gold)


def _text_doc(row: dict, where: str) -> TextDoc:
    text = row.get("text")
    if not isinstance(text, str) or not text.strip():
        raise DataError(f'{where}: loglikelihood rows look like {{"text": "..."}} with a non-empty text, got {row!r}')
    return TextDoc(text)


def load_docs(path: str | Path, kind: str, limit: int = 0) -> list[ChoiceDoc] | list[TextDoc]:
    """The first `limit` documents (all when 0) of a task file, validated."""
    path = Path(path)
    make = _choice_doc if kind == "multiple_choice" else _text_doc
    rows = _rows(path)
    if limit:
        rows = rows[:limit]
    return [make(row, f"{path}:{lineno}") for lineno, row in rows]
