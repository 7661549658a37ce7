"""Merge models with a MergeKit recipe (linear, task_arithmetic, ties, dare_ties, dare_linear, slerp).

Reads MergeKit's YAML (`merge_method`, `base_model`, `models` with per-model `parameters`,
global `parameters`, `dtype`, `tokenizer_source: base`). Inputs are local HF folders or cpt_jax
checkpoints written `ckpt:RUN_OR_CKPT_DIR[@STEP]` (averaging late checkpoints of a run is a
linear merge). Streams tensor by tensor; the output is written whole or not at all.
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("recipe", help="MergeKit YAML recipe (see configs/merge/chat_vector.yaml)")
    parser.add_argument("--out", required=True, help="new folder for the merged model")
    parser.add_argument("--format", choices=["hf", "cpt_jax"], default="hf",
                        help="hf: a Hugging Face folder; cpt_jax: a model checkpoint (init: ckpt:OUT)")
    parser.add_argument("--seed", type=int, default=None,
                        help="seed of the DARE methods' random masks (default: the recipe's parameters.seed, else 0)")
    parser.add_argument("--max-shard-size", default="5GB", help="largest safetensors file, e.g. 5GB or 500MB")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --out folder")


def run(args: argparse.Namespace) -> int:
    from cpt_jax.surgery.merge import merge_from_recipe

    out = merge_from_recipe(args.recipe, args.out, fmt=args.format, overwrite=args.overwrite, progress=True,
                            seed=args.seed, max_shard_size=args.max_shard_size)
    print(f"merged {args.recipe} -> {out} ({args.format})")
    return 0
