"""The old domain's downstream task for experiment 10, built from held-out text (nothing is
downloaded) and scored by cpt_jax.tasks as lm-evaluation-harness scores `multiple_choice`."""

from __future__ import annotations

import json
import random
from pathlib import Path


def word_order_task(heldout: Path, out: Path, items: int, seed: int = 0, context: int = 24, span: int = 6) -> int:
    """A 4-way multiple-choice task of the old domain's word order (experiment 10): the context is
    `context` words of a held-out document, the gold choice the next `span` words, the distractors
    three other orders of the same words (equal lengths, so acc and acc_norm agree and length is no
    cue). Up to three windows per document. Returns the number of items written."""
    rng = random.Random(seed)
    rows = []
    with open(heldout) as f:
        docs = [json.loads(line)["text"].split() for line in f]
    for words in docs:
        for start in range(0, min(len(words), 3 * (context + span)) - context - span + 1, context + span):
            ctx, gold = words[start:start + context], words[start + context:start + context + span]
            if len(set(gold)) < 3:  # too few distinct words for three distinct wrong orders
                continue
            wrong: list[list[str]] = []
            while len(wrong) < 3:
                w = rng.sample(gold, len(gold))
                if w != gold and w not in wrong:
                    wrong.append(w)
            g = rng.randrange(4)
            choices = [" ".join(w) for w in wrong[:g] + [gold] + wrong[g:]]
            rows.append({"context": " ".join(ctx), "choices": choices, "gold": g})
    rng.shuffle(rows)
    rows = rows[:items]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return len(rows)
