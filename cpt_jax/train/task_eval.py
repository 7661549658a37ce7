"""Downstream tasks scored with the model being trained: one jitted log-likelihood function over
[B, L] rows on the run's mesh (L bucketed per batch, tasks.requests.pack_rows), shared by every
task and every eval."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from cpt_jax.errors import ConfigError
from cpt_jax.sharding.placement import batch_sharding, place_batch, replicated
from cpt_jax.tasks import PreparedTask, TaskConfig, load_task_tokenizer, pack_rows, prepare_task


def make_loglik_step(graphdef, params_shardings, mesh: Mesh) -> Callable:
    """(params, batch) -> {'ll': [B], 'greedy': [B]}: each row's summed log-probability of its
    scored targets (fp32 log-softmax over the vocabulary, as lm-eval takes it) and whether every
    scored target is the argmax (lm-eval's is_greedy). The LM head runs chunk by chunk
    (Decoder.scores): no [B, L, V] logits, whatever the row length."""
    def fn(params, batch):
        model = nnx.merge(graphdef, params)
        hidden = model.hidden(batch["tokens"], batch["positions"], batch["segment_ids"])
        scores = model.scores(hidden, batch["targets"], greedy=True)
        mask = batch["score_mask"] != 0
        return {"ll": jnp.sum(jnp.where(mask, scores["target"] - scores["log_z"], 0.0), axis=1),
                "greedy": jnp.all(scores["greedy"] | ~mask, axis=1)}

    return jax.jit(fn, in_shardings=(params_shardings, batch_sharding(mesh)), out_shardings=replicated(mesh))


def request_logliks(loglik_step: Callable, params: Any, task: PreparedTask, batch_size: int, seq_len: int,
                    mesh: Mesh) -> np.ndarray:
    """The log-likelihood of every request of `task`, in request order (rows of at most seq_len)."""
    sharding = batch_sharding(mesh)
    out = np.zeros((len(task.requests),), np.float64)
    for batch, idx in pack_rows(task.requests, batch_size, seq_len):
        res = loglik_step(params, place_batch(batch, sharding))
        out[idx] = np.asarray(jax.device_get(res["ll"]), np.float64)[:len(idx)]
    return out


def evaluate_tasks(loglik_step: Callable, params: Any, tasks: Sequence[PreparedTask], batch_size: int, seq_len: int,
                   mesh: Mesh) -> dict[str, dict[str, float]]:
    """{task name: metrics} (multiple_choice: acc, acc_norm, acc_bytes, acc_stderr, n;
    loglikelihood: word_perplexity, byte_perplexity, bits_per_byte, token_perplexity, n)."""
    return {t.cfg.name: t.metrics(request_logliks(loglik_step, params, t, batch_size, seq_len, mesh)) for t in tasks}


def task_rows(results: dict[str, dict[str, float]], *, step: int, phase: int, phase_name: str) -> list[dict]:
    """metrics.jsonl rows of one task eval: {"kind": "task", "step", "phase", "phase_name", "task", <metrics>}."""
    return [{"kind": "task", "step": step, "phase": phase, "phase_name": phase_name, "task": name, **m}
            for name, m in results.items()]


@dataclass
class TaskEvaluator:
    """Tasks prepared once (documents read, prompts drawn, requests tokenised) and scored on demand:
    `evaluator(params) -> {task: metrics}`."""

    tasks: list[PreparedTask]
    loglik_step: Callable
    batch_size: int
    seq_len: int
    mesh: Mesh

    @classmethod
    def build(cls, tasks: Sequence[TaskConfig], tokenizer: str, *, graphdef, param_shardings, mesh: Mesh,
              batch_size: int, seq_len: int) -> "TaskEvaluator":
        if not tokenizer:
            raise ConfigError("tokenizer", "downstream tasks need the model's tokenizer (a tokenizer.json, its "
                                           "folder or a sentencepiece .model) to turn their text into tokens")
        tok = load_task_tokenizer(tokenizer)
        prepared = [prepare_task(t, tok, seq_len) for t in tasks]
        return cls(prepared, make_loglik_step(graphdef, param_shardings, mesh), batch_size, seq_len, mesh)

    @classmethod
    def for_run(cls, cfg, graphdef, param_shardings, mesh: Mesh) -> "TaskEvaluator | None":
        """The evaluator of a RunConfig's `eval.tasks` (None when it lists none): rows of
        data.seq_len, eval.batch_size (or the global batch) rows per call, the run's tokenizer."""
        if not cfg.eval.tasks:
            return None
        return cls.build(cfg.eval.tasks, cfg.tokenizer, graphdef=graphdef, param_shardings=param_shardings,
                         mesh=mesh, batch_size=cfg.eval.batch_size or cfg.data.global_batch_size,
                         seq_len=cfg.data.seq_len)

    def __call__(self, params: Any) -> dict[str, dict[str, float]]:
        return evaluate_tasks(self.loglik_step, params, self.tasks, self.batch_size, self.seq_len, self.mesh)

    def with_details(self, params: Any) -> tuple[dict[str, dict[str, float]], dict[str, list[list[float]]]]:
        """(metrics, per task and document the log-likelihood of each request: each choice, or
        each rolling window), from one pass."""
        metrics, details = {}, {}
        for t in self.tasks:
            lls = request_logliks(self.loglik_step, params, t, self.batch_size, self.seq_len, self.mesh)
            metrics[t.cfg.name], details[t.cfg.name] = t.metrics(lls), t.per_doc(lls)
        return metrics, details
