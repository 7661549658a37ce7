"""Downstream tasks for the demo, made from its own held-out text (nothing is downloaded).

A cloze multiple-choice item per held-out document: the context is the document's opening words,
the gold choice its true next words, and the distractors the same-length continuations of three
other documents of the same domain. Scoring it is the lm-evaluation-harness `multiple_choice`
recipe (cpt_jax.tasks), so the curve shows whether CPT keeps the model's in-context ability on
the old domain while it learns the new one, which held-out loss alone can hide.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

CONTEXT_WORDS = 24
CHOICE_WORDS = 6


def _items(texts: list[str], seed: int, limit: int) -> list[dict]:
    words = [t.split() for t in texts if len(t.split()) >= CONTEXT_WORDS + CHOICE_WORDS]
    rng = random.Random(seed)
    rng.shuffle(words)
    words = words[:limit]
    items = []
    for i, doc in enumerate(words):
        others = [w for j, w in enumerate(words) if j != i]
        distractors = [" ".join(o[CONTEXT_WORDS:CONTEXT_WORDS + CHOICE_WORDS]) for o in rng.sample(others, 3)]
        gold = rng.randrange(4)
        choices = distractors[:gold] + [" ".join(doc[CONTEXT_WORDS:CONTEXT_WORDS + CHOICE_WORDS])] + distractors[gold:]
        items.append({"context": " ".join(doc[:CONTEXT_WORDS]), "choices": choices, "gold": gold})
    return items


def write_cloze_tasks(corpus_dir: Path, out_dir: Path, domains: tuple[str, ...], seed: int = 0,
                      limit: int = 48) -> dict[str, Path]:
    """{domain: path of its cloze task jsonl} from corpus_dir/DOMAIN/heldout.jsonl."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for domain in domains:
        with open(corpus_dir / domain / "heldout.jsonl") as f:
            texts = [json.loads(line)["text"] for line in f]
        path = out_dir / f"{domain}_cloze.jsonl"
        path.write_text("".join(json.dumps(item) + "\n" for item in _items(texts, seed, limit)))
        paths[domain] = path
    return paths
