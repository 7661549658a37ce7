"""Metrics from per-request log-likelihoods, as lm-evaluation-harness computes them.

multiple_choice: acc = argmax of the summed log-likelihoods is the gold choice; acc_norm divides
each by the choice's length in characters (lm-eval's `len(choice)`, delimiter excluded).
Ties go to the first choice (numpy argmax), as in lm-eval. loglikelihood (rolling): word and
byte perplexity and bits per byte over the whole set (sums, then the ratio), plus token perplexity.
"""

from __future__ import annotations

import math
import re

import numpy as np

from cpt_jax.tasks.documents import ChoiceDoc, TextDoc


def choice_scores(lls: list[float], doc: ChoiceDoc) -> dict[str, float]:
    lls_arr = np.asarray(lls, np.float64)
    lengths = np.asarray([float(len(c)) for c in doc.choices])
    nbytes = np.asarray([float(len(c.encode("utf-8"))) for c in doc.choices])
    return {"acc": float(np.argmax(lls_arr) == doc.gold), "acc_norm": float(np.argmax(lls_arr / lengths) == doc.gold),
            "acc_bytes": float(np.argmax(lls_arr / nbytes) == doc.gold)}


def multiple_choice_metrics(per_doc: list[dict[str, float]]) -> dict[str, float]:
    n = len(per_doc)
    out = {k: sum(d[k] for d in per_doc) / n for k in ("acc", "acc_norm", "acc_bytes")}
    out["acc_stderr"] = math.sqrt(out["acc"] * (1 - out["acc"]) / (n - 1)) if n > 1 else 0.0
    return {**out, "n": float(n)}


def count_words(text: str) -> int:
    return len(re.split(r"\s+", text))  # lm-eval's count_words


def perplexity_metrics(docs: list[TextDoc], lls: list[float], tokens: list[int]) -> dict[str, float]:
    """lls[i], tokens[i]: summed log-likelihood and scored token count of docs[i]."""
    ll = float(sum(lls))
    words = sum(count_words(d.text) for d in docs)
    nbytes = sum(len(d.text.encode("utf-8")) for d in docs)
    ntok = sum(tokens)
    return {"loglikelihood": ll, "word_perplexity": _exp(-ll / words), "byte_perplexity": _exp(-ll / nbytes),
            "bits_per_byte": -ll / nbytes / math.log(2), "token_perplexity": _exp(-ll / max(ntok, 1)),
            "n": float(len(docs))}


def _exp(x: float) -> float:
    return math.exp(min(x, 700.0))
