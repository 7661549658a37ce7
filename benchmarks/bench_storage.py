"""Prepared data read from object storage (GCS and S3 emulators on 127.0.0.1) next to local disk.

A source in a bucket is copied shard by shard into the local cache by background threads that
start when the source is opened (cpt_jax/storage/cache.py); the trainer opens its data before it
builds and compiles the model. For each storage this measures: the copy rate (MB/s from the
emulator), how long the first batch waits when it is asked for right away and when it is asked
for after `--compile-s` seconds (the trainer's time between opening the data and its first
step), and the steady pipeline rate once the shards are local.

    python benchmarks/bench_storage.py --out storage.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE.parent / "tests")]

from emulators import Emulator, upload  # noqa: E402
from text_fixtures import documents, vocabulary, write_jsonl  # noqa: E402

from cpt_jax.data.config import DataConfig, SourceConfig  # noqa: E402
from cpt_jax.data.pipeline import DataPipeline  # noqa: E402
from cpt_jax.data.prepare import PrepareOptions, prepare  # noqa: E402
from cpt_jax.data.tokenizer import train_sentencepiece  # noqa: E402


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="JSON-lines results file to append to")
    p.add_argument("--docs", type=int, default=20000)
    p.add_argument("--seq-len", type=int, default=2048)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--compile-s", type=float, default=5.0, help="seconds between opening the data and step 1")
    return p.parse_args()


def measure(url: str, cache: Path, args, delay: float) -> dict:
    shutil.rmtree(cache, ignore_errors=True)
    os.environ["CPT_JAX_CACHE_DIR"] = str(cache)
    from cpt_jax.storage import cache as cache_mod

    cache_mod._inflight.clear()  # a fresh process's view: nothing copied yet
    t0 = time.perf_counter()
    cfg = DataConfig(sources={"s": SourceConfig(path=url)}, seq_len=args.seq_len, global_batch_size=args.batch,
                     read_threads=1)
    pipe = DataPipeline(cfg)
    opened = time.perf_counter() - t0
    time.sleep(delay)  # the model is built and compiled meanwhile
    it = pipe.train_iterator({"s": 1.0})
    t1 = time.perf_counter()
    next(it)
    first_wait = time.perf_counter() - t1
    t2 = time.perf_counter()
    for _ in range(args.steps):
        next(it)
    steady = args.steps * args.batch * args.seq_len / (time.perf_counter() - t2)
    it.close()
    return {"open_s": opened, "first_batch_wait_s": first_wait, "steady_tokens_per_s": steady}


def copy_rate(url: str, shards: list[str], cache: Path) -> float:
    """MB/s of copying every shard of the source from `url` (4 threads, as the trainer does)."""
    from cpt_jax.storage import cache as cache_mod

    shutil.rmtree(cache, ignore_errors=True)
    os.environ["CPT_JAX_CACHE_DIR"] = str(cache)
    cache_mod._inflight.clear()
    remote = [f"{url}/{Path(s).name}" for s in shards]
    cache_mod.as_path(remote[0]).stat()  # the client (gcsfs/s3fs import, session) is made before timing
    t0 = time.perf_counter()
    cache_mod.prefetch(remote)
    size = sum(cache_mod.local_copy(r).stat().st_size for r in remote)
    return size / 1e6 / (time.perf_counter() - t0)


def main() -> None:
    args = parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        words = vocabulary("a", 600) + vocabulary("b", 600)
        src = write_jsonl(work / "raw" / "corpus.jsonl", documents(words, args.docs, seed=0, min_words=20,
                                                                    max_words=1200))
        tok = work / "bench.model"
        train_sentencepiece((line for t in documents(words, 2000, seed=1, min_words=20, max_words=1200)
                             for line in t.splitlines()), tok, 4000)
        m = prepare(PrepareOptions(inputs=(str(src),), out=str(work / "prepared"), tokenizer=str(tok),
                                   eval_docs=50, workers=1, overwrite=True, progress=False))
        shards = sorted(str(p) for p in (work / "prepared").glob("*.arrayrecord"))
        mb = sum(Path(s).stat().st_size for s in shards) / 1e6
        rows = []
        for kind in ("local", "gs", "s3"):
            em = None if kind == "local" else Emulator(kind).start()
            try:
                url = str(work / "prepared")
                if em is not None:
                    em.make_bucket("bench")
                    os.environ.update(em.env())
                    url = f"{kind}://bench/prepared"
                    upload(work / "prepared", url, em.env())
                row = {"bench": "storage", "storage": kind, "shard_mb": mb, "tokens": m["tokens"],
                       "seq_len": args.seq_len, "batch": args.batch, "steps": args.steps, "compile_s": args.compile_s}
                if em is not None:
                    row["copy_mb_per_s"] = copy_rate(url, shards, work / "cache")
                row["at_once"] = measure(url, work / "cache", args, 0.0)
                row["after_compile"] = measure(url, work / "cache", args, args.compile_s)
                row["time"] = time.time()
                rows.append(row)
                print(json.dumps(row))
            finally:
                if em is not None:
                    em.stop()
    with open(args.out, "a") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)


if __name__ == "__main__":
    main()
