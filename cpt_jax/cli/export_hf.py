"""Export a cpt_jax run or model checkpoint to a Hugging Face folder (safetensors).

Reads the checkpoint one layer at a time on the host (no accelerator needed), writes
config.json with the source's architecture and extra keys, generation_config.json, safetensors
shards (with model.safetensors.index.json when there are several) and the tokenizer files.
"""

from __future__ import annotations

import argparse

EXPORT_DTYPES = ["fp32", "bf16", "float32", "bfloat16"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("ckpt_dir", help="a run directory or a model checkpoint (from import-hf)")
    parser.add_argument("out_dir", help="new Hugging Face folder")
    parser.add_argument("--dtype", choices=EXPORT_DTYPES, default="float32", help="dtype of the written tensors")
    parser.add_argument("--max-shard-size", default="5GB", help="largest safetensors file, e.g. 5GB or 500MB")
    parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest)")
    parser.add_argument("--tokenizer", default=None,
                        help="tokenizer file to ship (default: the run's, else the imported model's)")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty out_dir")
    parser.add_argument("--ema", action="store_true", help="export the run's weight EMA (optimizer.ema_decay)")


def run(args: argparse.Namespace) -> int:
    from safetensors import SafetensorError

    from cpt_jax.errors import UserError
    from cpt_jax.hf import export_hf

    try:
        out = export_hf(args.ckpt_dir, args.out_dir, dtype=args.dtype, max_shard_size=args.max_shard_size,
                        step=args.step, overwrite=args.overwrite, tokenizer_file=args.tokenizer, progress=True,
                        ema=args.ema)
    except SafetensorError as e:  # a write that the filesystem refused (disk full); nothing is left behind
        raise UserError(f"writing {args.out_dir} failed ({e}); free disk space or choose another folder") from e
    print(f"exported {args.ckpt_dir} -> {out} (load with transformers.AutoModelForCausalLM.from_pretrained)")
    return 0
