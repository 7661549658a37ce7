"""Scoring the same items with lm-evaluation-harness (its `hf` model on CPU, fp32) to compare with
cpt_jax: the task YAMLs it reads, and its per-item log-likelihoods."""

from __future__ import annotations

import json
import os
from pathlib import Path

MC_YAML = """task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {test}
    train: {train}
test_split: test
fewshot_split: train
num_fewshot: {shots}
output_type: multiple_choice
doc_to_text: "{{{{context}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{gold}}}}"
metric_list:
  - metric: acc
  - metric: acc_norm
"""

ROLLING_YAML = """task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {test}
test_split: test
output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: "{{{{text}}}}"
metric_list:
  - metric: word_perplexity
  - metric: byte_perplexity
  - metric: bits_per_byte
"""


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def run_lm_eval(hf_dir: Path, task_yamls: dict[str, str], tmp: Path, batch_size: int = 16) -> dict:
    """lm_eval.simple_evaluate on the HF folder for {task name: YAML text}, offline, with samples."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    tasks = tmp / "lm_eval_tasks"
    tasks.mkdir(exist_ok=True)
    for name, text in task_yamls.items():
        (tasks / f"{name}.yaml").write_text(text)
    os.environ.update(HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1", HF_DATASETS_CACHE=str(tmp / "hf_cache"))
    return lm_eval.simple_evaluate(model="hf", model_args=f"pretrained={hf_dir},dtype=float32",
                                   tasks=list(task_yamls), device="cpu", batch_size=batch_size,
                                   log_samples=True, task_manager=TaskManager(include_path=str(tasks)))


def their_items(theirs: dict, task: str) -> tuple[list[dict], list[list[float]]]:
    """(lm-eval's samples in document order, each document's per-request log-likelihoods)."""
    samples = sorted(theirs["samples"][task], key=lambda s: s["doc_id"])
    return samples, [[float(r[0]) if isinstance(r, (list, tuple)) else float(r) for r in s["filtered_resps"]]
                     for s in samples]
