"""A task ready to score: documents, prompts and requests built once, metrics from log-likelihoods."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from cpt_jax.errors import DataError
from cpt_jax.tasks.config import TaskConfig
from cpt_jax.tasks.documents import ChoiceDoc, load_docs
from cpt_jax.tasks.prompts import TARGET_DELIMITER, contexts
from cpt_jax.tasks.requests import Request, encode_pair, rolling_requests
from cpt_jax.tasks.scoring import choice_scores, multiple_choice_metrics, perplexity_metrics
from cpt_jax.tasks.tokenizer import TaskTokenizer


@dataclass(frozen=True)
class PreparedTask:
    cfg: TaskConfig
    docs: list
    prompts: list[str]  # multiple_choice: the full context of each document ([] for loglikelihood)
    requests: list[Request]
    owner: list[int]  # the document of each request

    def per_doc(self, lls: Sequence[float]) -> list[list[float]]:
        out: list[list[float]] = [[] for _ in self.docs]
        for doc, ll in zip(self.owner, lls):
            out[doc].append(float(ll))
        return out

    def metrics(self, lls: Sequence[float]) -> dict[str, float]:
        """Aggregate metrics from the log-likelihood of every request (in request order)."""
        if len(lls) != len(self.requests):
            raise ValueError(f"{self.cfg.name}: {len(lls)} log-likelihoods for {len(self.requests)} requests")
        grouped = self.per_doc(lls)
        if self.cfg.kind == "multiple_choice":
            return multiple_choice_metrics([choice_scores(g, d) for g, d in zip(grouped, self.docs)])
        tokens = [0] * len(self.docs)
        for doc, req in zip(self.owner, self.requests):
            tokens[doc] += len(req.continuation)
        return perplexity_metrics(self.docs, [sum(g) for g in grouped], tokens)


def prepare_task(cfg: TaskConfig, tok: TaskTokenizer, seq_len: int) -> PreparedTask:
    """Load the task's documents and build its requests (rows of at most `seq_len` inputs)."""
    docs = load_docs(cfg.path, cfg.kind, cfg.limit)
    requests, owner, prompts = [], [], []
    if cfg.kind == "multiple_choice":
        pool: list[ChoiceDoc] = load_docs(cfg.fewshot_path, cfg.kind) if cfg.shots else []
        prompts = contexts(docs, pool, cfg.shots, cfg.seed)
        for i, (doc, prompt) in enumerate(zip(docs, prompts)):
            for choice in doc.choices:
                req = encode_pair(tok, prompt, TARGET_DELIMITER + choice)
                if not req.continuation:
                    raise DataError(f"{cfg.path}: document {i + 1}: choice {choice!r} encodes to no tokens after its "
                                    "context; fix the choice (or the task's tokenizer)")
                requests.append(req)
                owner.append(i)
    else:
        for i, doc in enumerate(docs):
            tokens = tok.encode(doc.text)
            if not tokens:
                raise DataError(f"{cfg.path}: document {i + 1} encodes to no tokens; remove it or fix its text")
            windows = rolling_requests(tokens, tok.prefix_id, seq_len)
            requests += windows
            owner += [i] * len(windows)
    return PreparedTask(cfg, docs, prompts, requests, owner)
