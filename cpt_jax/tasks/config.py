"""What a downstream task is: a local jsonl file, how it is scored and how its prompts are drawn."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal, Optional

from cpt_jax.config.base import from_dict, require
from cpt_jax.errors import ConfigError

LM_EVAL_FEWSHOT_SEED = 1234  # lm-evaluation-harness's default fewshot_random_seed


@dataclass(frozen=True)
class TaskConfig:
    """A downstream task scored as lm-evaluation-harness scores it.

    multiple_choice rows: {"context": str, "choices": [str, ...], "gold": int}; acc is the argmax of
    the summed log-likelihood of " " + choice after the context, acc_norm divides it by the
    choice's length in characters. loglikelihood rows: {"text": str}; scored whole (rolling windows
    when longer than a row) as word and byte perplexity and bits per byte.
    """

    name: str  # metric names and table rows: task/<name>/acc
    path: str  # jsonl file, one document per line
    kind: Literal["multiple_choice", "loglikelihood"] = "multiple_choice"
    shots: int = 0  # k-shot examples before each question (multiple_choice)
    fewshot_path: Optional[str] = None  # jsonl the shots are drawn from (a split other than `path`)
    limit: int = 0  # score only the first N documents (0: all)
    seed: int = LM_EVAL_FEWSHOT_SEED  # seed of the shot draw (lm-eval's default)

    def validate(self, path: str) -> None:
        require(bool(re.fullmatch(r"[A-Za-z0-9_.-]+", self.name)), path, "name",
                f"use letters, digits, '_', '.' or '-' (it becomes a metric name), got {self.name!r}")
        require(bool(self.path), path, "path", "give the task's jsonl file")
        require(self.shots >= 0, path, "shots", f"must be >= 0, got {self.shots}")
        require(self.limit >= 0, path, "limit", f"must be >= 0 (0: all documents), got {self.limit}")
        if self.kind == "loglikelihood":
            require(self.shots == 0, path, "shots", "loglikelihood tasks score whole texts; set shots: 0")
        if self.shots:
            require(bool(self.fewshot_path), path, "fewshot_path",
                    "k-shot prompts are drawn from a separate split: give its jsonl file")
            require(self.fewshot_path != self.path, path, "fewshot_path",
                    "must be a split other than the scored file (shots would leak the answers)")


def parse_task_spec(spec: str, shots: int = 0, fewshot: dict[str, str] | None = None,
                    kind: str = "multiple_choice") -> TaskConfig:
    """'NAME=PATH.jsonl' (optionally 'NAME=PATH.jsonl:loglikelihood') as a validated TaskConfig."""
    name, sep, rest = spec.partition("=")
    if not sep or not name or not rest:
        raise ConfigError("task", f"expected NAME=PATH.jsonl, got {spec!r}")
    path, _, maybe_kind = rest.rpartition(":") if rest.endswith((":loglikelihood", ":multiple_choice")) else (rest, "", "")
    kind = maybe_kind or kind
    fewshot_path = (fewshot or {}).get(name)
    return from_dict(TaskConfig, {"name": name, "path": path, "kind": kind,
                                  "shots": shots if kind == "multiple_choice" else 0,
                                  "fewshot_path": fewshot_path}, f"task {name}")
