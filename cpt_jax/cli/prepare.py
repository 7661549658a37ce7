"""Tokenize .txt/.jsonl/.parquet files into packed-ready ArrayRecord shards with a manifest.

Each input .txt file is one document (or one per blank-line separated block with
--txt-split blank-lines); each .jsonl line and each .parquet row is one document. Every
document ends with EOS. Held-out documents (--eval-docs / --eval-fraction, chosen by a hash of
their text, or every document of the --eval-inputs files) go to their own shards and are never
trained on, nor used to train a tokenizer. Interrupted runs resume: rerun the
same command and finished shards are kept; manifest.json is written last.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from cpt_jax.errors import UserError
from cpt_jax.storage import is_remote
from cpt_jax.data.readers import ReadOptions


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="files or folders of .txt, .jsonl, .parquet")
    parser.add_argument("--out", required=True, help="output directory (one source)")
    tok = parser.add_mutually_exclusive_group(required=True)
    tok.add_argument("--tokenizer", help="sentencepiece .model or Hugging Face tokenizer.json")
    tok.add_argument("--train-tokenizer", type=int, metavar="VOCAB_SIZE",
                     help="train a sentencepiece model on the training documents; writes OUT/tokenizer.model")
    parser.add_argument("--field", default="text", help="jsonl: the field holding the text (default: text)")
    parser.add_argument("--column", default="text", help="parquet: the column holding the text (default: text)")
    parser.add_argument("--txt-split", choices=["file", "blank-lines"], default="file",
                        help="txt: one document per file (default) or per blank-line separated block")
    parser.add_argument("--eos-token", default="", help="tokenizer.json: end-of-document token if not detected")
    parser.add_argument("--add-bos", action=argparse.BooleanOptionalAction, default=None,
                        help="start every document with BOS, or not (default: as the upstream tokenizer does: "
                             "tokenizer_config.json add_bos_token, tokenizer.json template, sentencepiece BOS piece)")
    held = parser.add_mutually_exclusive_group()
    held.add_argument("--eval-docs", type=int, help="held-out documents (default: 50; 0: none)")
    held.add_argument("--eval-fraction", type=float, default=0.0, help="hold out this fraction instead")
    parser.add_argument("--eval-inputs", nargs="+", action="extend", default=[], metavar="PATH",
                        help="files or folders (same formats and --field/--column) whose documents are the "
                             "whole held-out split; nothing is then held out of INPUT by hash")
    parser.add_argument("--workers", type=int, default=1, help="processes (default: 1)")
    parser.add_argument("--shard-docs", type=int, default=2048, help="input records per shard (default: 2048)")
    parser.add_argument("--overwrite", action="store_true", help="replace data prepared earlier in --out")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def as_flags(message: str) -> str:
    """The library names its options (`eval_docs`); on the command line they are flags (--eval-docs)."""
    return re.sub(r"`([a-z_]+)`", lambda m: "--" + m.group(1).replace("_", "-"), message)


def run(args: argparse.Namespace) -> int:
    from cpt_jax.data.prepare import PrepareOptions, prepare

    opts = PrepareOptions(
        inputs=tuple(args.inputs), out=args.out, tokenizer=args.tokenizer or "",
        train_tokenizer=args.train_tokenizer or 0, eos_token=args.eos_token, add_bos=args.add_bos,
        read=ReadOptions(field=args.field, column=args.column, txt_split=args.txt_split),
        eval_docs=args.eval_docs, eval_fraction=args.eval_fraction, eval_inputs=tuple(args.eval_inputs),
        workers=args.workers, shard_docs=args.shard_docs, overwrite=args.overwrite, progress=not args.quiet)
    out = Path(args.out)
    created = not is_remote(args.out) and not out.exists()  # a bucket's folder is never created empty
    try:
        manifest = prepare(opts)
    except UserError as e:
        if created and out.is_dir() and not any(out.iterdir()):
            out.rmdir()  # refused before writing anything: leave no empty folder behind
        raise UserError(as_flags(str(e))) from e
    except RuntimeError as e:  # the shard writer reports a refused write only as text
        if not any(why in str(e) for why in ("No space left on device", "Read-only file system", "Disk quota")):
            raise
        raise UserError(f"writing {out} failed ({str(e).splitlines()[0][:200]}); free disk space and rerun "
                        "the same command (finished shards are kept)") from e
    splits = manifest["splits"]
    summary = {"out": args.out, "train_documents": splits["train"]["documents"],
               "train_tokens": splits["train"]["tokens"], "eval_documents": splits["eval"]["documents"],
               "eval_tokens": splits["eval"]["tokens"], "skipped": manifest["skipped"]["by_reason"],
               "vocab_size": manifest["tokenizer"]["vocab_size"], "tokenizer": manifest["tokenizer"]["path"],
               "add_bos": manifest["tokenizer"]["add_bos"], "add_bos_reason": manifest["tokenizer"]["add_bos_reason"]}
    print(json.dumps(summary, indent=1))
    return 0
