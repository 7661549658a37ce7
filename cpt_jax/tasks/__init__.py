"""Downstream tasks (local jsonl) scored as lm-evaluation-harness scores them.

Layer 3: files, prompts, token requests and metric math only; the model call lives in
cpt_jax.train.task_eval.
"""

from cpt_jax.tasks.config import TaskConfig, parse_task_spec
from cpt_jax.tasks.documents import ChoiceDoc, TextDoc, load_docs
from cpt_jax.tasks.prepared import PreparedTask, prepare_task
from cpt_jax.tasks.requests import Request, encode_pair, pack_rows, rolling_requests
from cpt_jax.tasks.tokenizer import TaskTokenizer, load_task_tokenizer

__all__ = ["TaskConfig", "parse_task_spec", "ChoiceDoc", "TextDoc", "load_docs", "PreparedTask", "prepare_task",
           "Request", "encode_pair", "pack_rows", "rolling_requests", "TaskTokenizer", "load_task_tokenizer"]
