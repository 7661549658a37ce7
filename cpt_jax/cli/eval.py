"""Held-out loss per source and downstream-task scores of a run, a checkpoint or an HF folder.

  cpt-jax eval RUN_DIR                      held-out sources of the run's plan (+ its eval.tasks)
  cpt-jax eval CKPT_DIR@STEP --plan PLAN    a checkpoint on a plan's held-out sources
  cpt-jax eval --model HF_DIR --task mc=questions.jsonl --shots 5 --fewshot mc=train.jsonl
  cpt-jax eval PLAN [--ckpt DIR@STEP]       a plan's run (or another checkpoint) on its sources
"""

from __future__ import annotations

import argparse
import json
import sys

from cpt_jax.cli.common import add_cpu_devices_argument, apply_cpu_devices
from cpt_jax.storage import as_path


def _pair(text: str) -> tuple[str, str]:
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"expected NAME=PATH.jsonl, got {text!r}")
    return name, path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("target", nargs="?", default=None,
                        help="a run directory, a checkpoint DIR[@STEP], or a plan YAML (its run_dir)")
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value", help="overrides of the plan")
    parser.add_argument("--model", default=None, metavar="HF_DIR", help="evaluate a Hugging Face folder instead")
    parser.add_argument("--plan", default=None, help="plan YAML whose held-out sources (and mesh) to use")
    parser.add_argument("--ckpt", default=None, help="DIR[@STEP] to evaluate when TARGET is a plan")
    parser.add_argument("--task", action="append", default=[], metavar="NAME=PATH.jsonl",
                        help="a downstream task (repeatable); add :loglikelihood for a perplexity task")
    parser.add_argument("--shots", type=int, default=0, help="k-shot prompts for the multiple-choice tasks")
    parser.add_argument("--fewshot", action="append", default=[], type=_pair, metavar="NAME=PATH.jsonl",
                        help="the split a task's shots are drawn from (repeatable)")
    parser.add_argument("--tokenizer", default=None, help="tokenizer for the tasks (default: the model's)")
    parser.add_argument("--batches", type=int, default=None, help="eval batches per source (default: eval.batches)")
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    add_cpu_devices_argument(parser)


def run(args: argparse.Namespace) -> int:
    apply_cpu_devices(args.cpu_devices)
    from cpt_jax.eval import evaluate, format_results
    from cpt_jax.tasks import parse_task_spec

    fewshot = dict(args.fewshot)
    tasks = [parse_task_spec(spec, shots=args.shots, fewshot=fewshot) for spec in args.task]
    target, plan, overrides = args.target, args.plan, list(args.overrides)
    if args.model and target and "=" in target:  # --model HF_DIR --plan P key=value: no TARGET
        target, overrides = None, [target, *overrides]
    if args.ckpt:
        target, plan = args.ckpt, target
    results = evaluate(target, model_dir=args.model, plan=plan, overrides=overrides, tasks=tasks,
                       batches=args.batches, tokenizer=args.tokenizer)
    print(format_results(results))
    if args.json:
        as_path(args.json).write_text(json.dumps(results, indent=2))
        print(f"wrote {args.json}", file=sys.stderr)
    return 0
