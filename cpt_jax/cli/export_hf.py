"""Export a cpt_jax checkpoint or run directory to a Hugging Face folder (safetensors)."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("ckpt_dir", help="a run directory (latest step) or a model checkpoint")
    parser.add_argument("out_dir", help="new Hugging Face folder")
    parser.add_argument("--dtype", choices=["bf16", "fp32"], default="fp32")
    parser.add_argument("--max-shard-size", default="5GB", help="split safetensors files above this size")
    parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
    parser.add_argument("--tokenizer", default=None, help="tokenizer file to ship (default: the run's or the source's)")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty out_dir")


def run(args: argparse.Namespace) -> int:
    from cpt_jax.hf import export_hf

    out = export_hf(args.ckpt_dir, args.out_dir, dtype=args.dtype, max_shard_size=args.max_shard_size,
                    step=args.step, overwrite=args.overwrite, tokenizer_file=args.tokenizer)
    print(f"exported {args.ckpt_dir} -> {out} (load with transformers.AutoModelForCausalLM.from_pretrained)")
    return 0
