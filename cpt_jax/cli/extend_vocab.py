"""Grow a model's embeddings and LM head to a tokenizer that appends new tokens to its own.

The old tokenizer's rows are kept exactly; each new token's rows start as the mean of the old
rows of the pieces the old tokenizer splits it into (--init mean; or mean-all, random). The rows
are padded to a multiple of --pad-multiple. The output is a cpt_jax model checkpoint with the new
tokenizer in its tokenizer/ folder: prepare data with that tokenizer and start a phase from it
with `init: ckpt:OUT`.
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="a cpt_jax model checkpoint, a run directory (optionally @STEP) or an HF folder")
    parser.add_argument("--tokenizer", required=True,
                        help="the extended tokenizer: a sentencepiece .model or a tokenizer.json whose first "
                             "ids are the model's tokenizer's")
    parser.add_argument("--out", required=True, help="new cpt_jax model checkpoint")
    parser.add_argument("--init", default="mean", metavar="{mean,mean-all,random}",
                        help="new rows: mean of the old pieces' rows (default), mean of all old rows, or random")
    parser.add_argument("--pad-multiple", type=int, default=128, help="pad the rows to a multiple of N (default 128)")
    parser.add_argument("--old-tokenizer", default=None,
                        help="the model's own tokenizer file (default: found next to the model)")
    parser.add_argument("--seed", type=int, default=0, help="seed of --init random")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")


def run(args: argparse.Namespace) -> int:
    import yaml

    from cpt_jax.checkpoint.model_checkpoint import read_meta
    from cpt_jax.surgery.extend_vocab import extend_vocab

    out = extend_vocab(args.model, args.tokenizer, args.out, init=args.init, pad_multiple=args.pad_multiple,
                       overwrite=args.overwrite, old_tokenizer=args.old_tokenizer, seed=args.seed)
    meta = read_meta(out)
    v = meta["vocab"]
    print(f"extended {args.model} -> {out}: {v['old_tokenizer_size']} -> {v['tokenizer_size']} tokens "
          f"({v['new_tokens']} new, init {v['init']}; {v['unsplit_tokens']} without old pieces got the mean "
          f"of all rows), {v['old_vocab_size']} -> {v['padded_size']} embedding rows")
    print(f"tokenizer: {out / 'tokenizer'}; model section for your plan (init: ckpt:{out}):")
    print(yaml.safe_dump({"model": meta["model"]}, sort_keys=False))
    return 0
