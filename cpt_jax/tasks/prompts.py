"""k-shot prompts for multiple-choice tasks, drawn the way lm-evaluation-harness draws them.

lm-eval keeps one `random.Random(seed)` per task and, document after document in file order,
draws `k` shots with `rnd.sample(fewshot_docs, k)`; each shot renders as
`context + target_delimiter + gold choice + fewshot_delimiter` before the question. Drawing
indices with the same generator and call sequence gives the same shots.
"""

from __future__ import annotations

import random

from cpt_jax.errors import DataError
from cpt_jax.tasks.documents import ChoiceDoc

TARGET_DELIMITER = " "  # lm-eval's default, between a context and its answer
FEWSHOT_DELIMITER = "\n\n"  # lm-eval's default, after each shot


def draw_shots(num_docs: int, pool_size: int, shots: int, seed: int) -> list[list[int]]:
    """Indices into the fewshot pool for each of `num_docs` documents (in order)."""
    if shots == 0:
        return [[] for _ in range(num_docs)]
    if pool_size < shots:
        raise DataError(f"{shots}-shot prompts need at least {shots} fewshot documents, the fewshot file has "
                        f"{pool_size}; add documents or lower the number of shots")
    rnd = random.Random(seed)
    return [rnd.sample(range(pool_size), shots) for _ in range(num_docs)]


def render_shot(doc: ChoiceDoc) -> str:
    return doc.context + TARGET_DELIMITER + doc.choices[doc.gold] + FEWSHOT_DELIMITER


def contexts(docs: list[ChoiceDoc], pool: list[ChoiceDoc], shots: int, seed: int) -> list[str]:
    """The full prompt of every document: its drawn shots, then its own context."""
    draws = draw_shots(len(docs), len(pool), shots, seed)
    return ["".join(render_shot(pool[i]) for i in idx) + doc.context for doc, idx in zip(docs, draws)]
