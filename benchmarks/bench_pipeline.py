"""Data pipeline throughput on one CPU core: prepare (tokenize + write), then packed, mixed batches.

Generates a text corpus (no downloads), prepares it with a sentencepiece tokenizer (trained on it
unless --tokenizer is given; training time is not counted), then times the training-time pipeline
(grain loading, packing, 95/5 mixing) and compares its tokens/s with what the train step consumes
(--demand, tokens/s). Prints one JSON line and appends it to --out.

    python benchmarks/bench_pipeline.py --demand 200000 --out results/bench_pipeline.jsonl
    # long documents (~250k tokens each: books, repositories): packing must stay O(row)
    python benchmarks/bench_pipeline.py --demand 200000 --out results/bench_pipeline.jsonl \
        --docs 60 --min-words 170000 --max-words 170000
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # text_fixtures: generated corpora

from cpt_jax.data import DataConfig, DataPipeline, SourceConfig  # noqa: E402
from text_fixtures import documents, vocabulary, write_jsonl  # noqa: E402
from cpt_jax.data.prepare import PrepareOptions, prepare  # noqa: E402
from cpt_jax.data.tokenizer import train_sentencepiece  # noqa: E402


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--demand", type=float, required=True, help="tokens/s the train step consumes")
    p.add_argument("--out", required=True, help="JSON-lines results file to append to")
    p.add_argument("--docs", type=int, default=20000, help="generated documents")
    p.add_argument("--min-words", type=int, default=20, help="words per generated document, at least")
    p.add_argument("--max-words", type=int, default=1200, help="words per generated document, at most")
    p.add_argument("--tokenizer", default="", help="tokenizer to use instead of training one")
    p.add_argument("--vocab", type=int, default=4000, help="vocab of the trained tokenizer")
    p.add_argument("--seq-len", type=int, default=2048)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--cpu", type=int, default=-1, help="pin to this core (default: the first allowed)")
    p.add_argument("--workdir", default="", help="keep the corpus and prepared data here (default: a temp dir)")
    return p.parse_args()


def main() -> None:
    args = parse_args()
    cpu = args.cpu if args.cpu >= 0 else min(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cpu})
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.workdir or tmp)
        result = run(args, work)
    result.update(cpu=cpu, host=platform.node(), python=platform.python_version(), time=time.time())
    line = json.dumps(result)
    print(line)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "a") as f:
        f.write(line + "\n")


def run(args: argparse.Namespace, work: Path) -> dict:
    words = vocabulary("a", 600) + vocabulary("b", 600)
    texts = documents(words, args.docs, seed=0, min_words=args.min_words, max_words=args.max_words)
    src = write_jsonl(work / "raw" / "corpus.jsonl", texts)
    tokenizer = args.tokenizer
    if not tokenizer:
        tokenizer = str(work / "bench.model")
        sample = documents(words, 2000, seed=1, min_words=20, max_words=1200)  # same tokenizer for any --docs
        train_sentencepiece((line for t in sample for line in t.splitlines()), Path(tokenizer), args.vocab)

    t0 = time.perf_counter()
    m = prepare(PrepareOptions(inputs=(str(src),), out=str(work / "prepared"), tokenizer=tokenizer,
                               eval_docs=max(1, min(50, args.docs // 10)),
                               workers=1, overwrite=True, progress=False))
    prepare_s = time.perf_counter() - t0
    tokens = m["tokens"]

    sources = {"new": SourceConfig(path=str(work / "prepared")), "replay": SourceConfig(path=str(work / "prepared"))}
    cfg = DataConfig(sources=sources, seq_len=args.seq_len, global_batch_size=args.batch, read_threads=1)
    pipe = DataPipeline(cfg)
    mixture = {"new": 0.95, "replay": 0.05}
    it = pipe.train_iterator(mixture)
    next(it)  # first batch: epoch layouts and shard indexes
    t0 = time.perf_counter()
    for _ in range(args.steps):
        next(it)
    pipeline_s = time.perf_counter() - t0
    it.close()
    pipe_tps = args.steps * args.batch * args.seq_len / pipeline_s

    t0 = time.perf_counter()
    for step in range(args.steps):
        pipe.global_batch(mixture, step=step)
    direct_tps = args.steps * args.batch * args.seq_len / (time.perf_counter() - t0)
    return {
        "bench": "pipeline", "docs": args.docs, "tokens": tokens, "tokenizer_vocab": m["tokenizer"]["vocab_size"],
        "mean_doc_tokens": tokens / m["documents"],
        "prepare_tokens_per_s": tokens / prepare_s, "prepare_s": prepare_s,
        "seq_len": args.seq_len, "global_batch": args.batch, "steps": args.steps, "mixture": mixture,
        "pipeline_tokens_per_s": pipe_tps, "packing_tokens_per_s_without_grain": direct_tps,
        "demand_tokens_per_s": args.demand, "pipeline_over_demand": pipe_tps / args.demand,
    }


if __name__ == "__main__":
    main()
