"""`prepare`: tokenize text files into ArrayRecord shards plus a manifest.

Two passes. The scan (one task per file) checksums each file, counts its records, hashes each
document's text and notes where chunks of `shard_docs` records start. The held-out split is then
fixed by content: a document is held out iff its 64-bit text hash is below a cutoff (the
`eval_docs`-th smallest hash, or `eval_fraction` of the hash range), so exact duplicates of a
held-out document are held out too and never trained on. Alternatively `eval_inputs` names whole
files as the held-out split (a corpus split by source file, so near-duplicates stay on one side);
then nothing is held out of the training inputs by hash. The write pass (one task per chunk)
tokenizes a chunk, appends EOS, writes its train and eval shards under temporary names, renames
them, and writes the chunk's `unit-*.json` last. A rerun skips every chunk whose unit file holds
the same input hash; the manifest is written last, atomically, so its presence means complete.
"""

from __future__ import annotations

import functools
import json
import math
import dataclasses
import hashlib
import multiprocessing
import shutil
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
from tqdm import tqdm

from cpt_jax.data import manifest as mf
from cpt_jax.errors import DataError
from cpt_jax.data.hashing import sha256_json, text_hash64
from cpt_jax.data.readers import FileScan, ReadOptions, discover, iter_records, scan_file
from cpt_jax.data.tokenizer import TokenizerSpec, load_tokenizer, train_sentencepiece
from cpt_jax.storage import absolute, as_path, cache_dir, check_writable, is_remote, upload_tree

TRAINED_TOKENIZER = "tokenizer.model"
_TRAIN_KEY = "tokenizer.train.json"
_MAX_LISTED_SKIPS = 1000


@dataclass(frozen=True)
class PrepareOptions:
    inputs: tuple[str, ...]
    out: str
    tokenizer: str = ""  # sentencepiece .model or tokenizer.json
    train_tokenizer: int = 0  # >0: train a sentencepiece model of this vocab size instead
    eos_token: str = ""
    add_bos: bool | None = None  # None: as the upstream tokenizer does (see tokenizer.py)
    read: ReadOptions = field(default_factory=ReadOptions)
    eval_docs: int | None = None  # held out by hash; None: 50, or 0 when eval_inputs are given
    eval_fraction: float = 0.0  # >0: hold out this fraction of documents instead of eval_docs
    eval_inputs: tuple[str, ...] = ()  # files/folders whose documents are the whole eval split
    workers: int = 1
    shard_docs: int = 2048
    overwrite: bool = False
    progress: bool = True

    def check(self) -> None:
        if bool(self.tokenizer) == (self.train_tokenizer > 0):
            raise DataError("give exactly one of `tokenizer` PATH or `train_tokenizer` VOCAB_SIZE")
        if self.train_tokenizer and self.train_tokenizer < 16:
            raise DataError(f"`train_tokenizer` {self.train_tokenizer} is too small; use at least 16")
        if self.eval_docs is not None and self.eval_docs < 0:
            raise DataError(f"`eval_docs` must be >= 0, got {self.eval_docs}")
        if self.eval_inputs and (self.eval_docs or self.eval_fraction):
            raise DataError("`eval_inputs` cannot be combined with `eval_docs`/`eval_fraction`: the eval files are "
                            "the whole held-out split; drop one of them")
        if not 0.0 <= self.eval_fraction < 1.0:
            raise DataError(f"`eval_fraction` must be in [0, 1), got {self.eval_fraction}")
        if self.workers < 1:
            raise DataError(f"`workers` must be >= 1, got {self.workers}")
        if self.shard_docs < 1:
            raise DataError(f"`shard_docs` must be >= 1, got {self.shard_docs}")

    @property
    def hash_eval_docs(self) -> int:
        """eval_docs with its default resolved: 50, unless eval files replace the hash split."""
        if self.eval_docs is not None:
            return self.eval_docs
        return 0 if self.eval_inputs or self.eval_fraction else 50


@dataclass(frozen=True)
class Unit:
    """One chunk of one input file: records [start, stop), the work of one write task."""

    index: int
    path: str
    fmt: str
    start: int
    stop: int
    offset: int  # jsonl: byte offset of record `start`
    input_hash: str
    held_out: bool = False  # a chunk of an eval input: every document goes to the eval split


def prepare(opts: PrepareOptions) -> dict:
    """Run prepare end to end and return the manifest."""
    opts.check()
    if is_remote(opts.out):
        return _prepare_into_bucket(opts)
    out = Path(opts.out)
    _refuse_other_files(out)
    out.mkdir(parents=True, exist_ok=True)
    if opts.overwrite:
        _clean(out, include_tokenizer=opts.train_tokenizer > 0)
    files = discover(list(opts.inputs))
    eval_files = _discover_eval(files, opts.eval_inputs)
    # loaded here to fail before the long part; its path as the manifest records it (a URL stays a URL)
    tokenizer_path = opts.tokenizer and load_tokenizer(
        TokenizerSpec(opts.tokenizer, opts.eos_token, opts.add_bos)).describe()["path"]
    all_scans = _run(_scan_task, [(p, fmt, opts.read, opts.shard_docs) for p, fmt in files + eval_files], opts, "scan")
    scans, eval_scans = all_scans[:len(files)], all_scans[len(files):]
    _refuse_copies(scans, eval_scans)
    cutoff = _eval_cutoff(scans, eval_scans, opts)
    config = {"format": mf.FORMAT, "files": [[str(s.path), s.sha256] for s in scans],
              "read": asdict(opts.read), "tokenizer": tokenizer_path,
              "train_tokenizer": opts.train_tokenizer, "eos_token": opts.eos_token,
              "add_bos": opts.add_bos, "eval_docs": opts.hash_eval_docs,
              "eval_fraction": opts.eval_fraction, "shard_docs": opts.shard_docs}
    if eval_scans:  # only then, so directories prepared before eval files existed keep their hash
        config["eval_files"] = [[str(s.path), s.sha256] for s in eval_scans]
    config_hash = sha256_json(config)
    _refuse_foreign(out, config_hash)
    (out / mf.MANIFEST).unlink(missing_ok=True)  # incomplete from here until the new one is written

    spec = TokenizerSpec(opts.tokenizer, opts.eos_token, opts.add_bos)
    if opts.train_tokenizer:
        spec = TokenizerSpec(str(out / TRAINED_TOKENIZER), opts.eos_token, opts.add_bos, trained_here=True)
        _ensure_trained_tokenizer(out, scans, opts, cutoff)
    tok = load_tokenizer(spec)
    if opts.train_tokenizer and tok.vocab_size < opts.train_tokenizer and opts.progress:
        tqdm.write(f"prepare: the text supports only {tok.vocab_size} pieces; the tokenizer has that many, "
                   f"not {opts.train_tokenizer}")
    dtype = mf.token_dtype(tok.vocab_size)

    units = _plan_units(scans, eval_scans, opts, tok, cutoff, dtype)
    pending = [u for u in units if not _unit_done(out, u)]
    if len(pending) < len(units) and opts.progress:
        tqdm.write(f"prepare: {len(units) - len(pending)} of {len(units)} shards already done, skipping them")
    _run(_write_task, [(u, spec, opts.read, cutoff, str(out), dtype.str) for u in pending], opts, "tokenize")
    _remove_stale(out, len(units))
    manifest = _assemble(out, units, scans, eval_scans, tok, dtype, opts, cutoff, config_hash)
    mf.write_json_atomic(out / mf.MANIFEST, manifest)
    return manifest


def _prepare_into_bucket(opts: PrepareOptions) -> dict:
    """`out` in a bucket: the ArrayRecord writer writes local files only, so prepare writes into a
    local staging folder (in the object cache, keyed by the URL: rerunning an interrupted prepare
    resumes there), then uploads it whole, the manifest last (readers wait for it), and deletes
    the staging folder. An `out` that already holds files is replaced only with `overwrite`."""
    url = str(absolute(opts.out)).rstrip("/")
    check_writable(url)  # a missing bucket or no permission: one error before the long part
    staging = (cache_dir() / "prepare" / hashlib.sha256(url.encode()).hexdigest()[:24]).resolve()
    remote = as_path(url)
    if not opts.overwrite and not staging.is_dir() and remote.is_dir() and any(remote.iterdir()):
        raise DataError(f"--out {url} is not empty; pass `overwrite` to replace it, or choose another `out`")
    manifest = prepare(dataclasses.replace(opts, out=str(staging)))
    tokenizer = manifest["tokenizer"]
    if tokenizer["path"].startswith(str(staging)):  # a tokenizer trained here is uploaded with the data
        tokenizer["path"] = url + tokenizer["path"][len(str(staging)):]
        mf.write_json_atomic(staging / mf.MANIFEST, manifest)
    upload_tree(staging, url, last=mf.MANIFEST)
    shutil.rmtree(staging)
    return manifest


def _run(fn, tasks: list, opts: PrepareOptions, what: str) -> list:
    """fn over tasks, in order, with a progress bar; several spawned processes if asked.

    spawn, not fork: the parent may hold JAX or tokenizer threads that fork would copy broken.
    """
    bar = dict(total=len(tasks), desc=f"prepare: {what}", unit="task", disable=not opts.progress, leave=False)
    if opts.workers == 1 or len(tasks) <= 1:
        return [fn(t) for t in tqdm(tasks, **bar)]
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(min(opts.workers, len(tasks)), initializer=_worker_init) as pool:
        return list(tqdm(pool.imap(fn, tasks), **bar))


def _worker_init() -> None:
    os.environ["RAYON_NUM_THREADS"] = "1"  # one tokenizer thread per process: processes are the parallelism


def _scan_task(args) -> FileScan:
    path, fmt, read, shard_docs = args
    return scan_file(path, fmt, read, shard_docs)


def _discover_eval(train_files: list[tuple[Path, str]], eval_inputs: tuple[str, ...]) -> list[tuple[Path, str]]:
    """The eval input files; a file cannot be both trained on and held out."""
    if not eval_inputs:
        return []
    try:
        eval_files = discover(list(eval_inputs))
    except DataError as e:
        raise DataError(f"`eval_inputs`: {e}") from e
    both = sorted({p for p, _ in train_files} & {p for p, _ in eval_files})
    if both:
        raise DataError(f"{both[0]} is both a training input and an `eval_inputs` file ({len(both)} such files); "
                        "list each file on one side only (move held-out files out of the training folders)")
    return eval_files


def _refuse_copies(scans: list[FileScan], eval_scans: list[FileScan]) -> None:
    """A byte-identical copy of an eval file among the training inputs would leak all of it."""
    train = {s.sha256: s.path for s in scans if s.records}
    for s in eval_scans:
        if s.records and s.sha256 in train:
            raise DataError(f"eval input {s.path} has the same content as training input {train[s.sha256]}; "
                            "remove the copy from the training inputs")


def _eval_cutoff(scans: list[FileScan], eval_scans: list[FileScan], opts: PrepareOptions) -> int:
    """Documents of the training inputs whose text hash is below the cutoff are held out."""
    hashes = np.concatenate([s.hashes for s in scans])
    if hashes.size == 0:
        records = sum(s.records for s in scans)
        raise DataError(f"no documents: all {records} records of {len(scans)} input files were empty, invalid "
                        "or lacked the text field/column; check the inputs and `field`/`column`")
    if eval_scans and not any(s.hashes.size for s in eval_scans):
        records = sum(s.records for s in eval_scans)
        raise DataError(f"no eval documents: all {records} records of {len(eval_scans)} `eval_inputs` files were "
                        "empty, invalid or lacked the text field/column; check them and `field`/`column`")
    eval_docs = opts.hash_eval_docs
    if opts.eval_fraction > 0:
        cutoff = min(int(opts.eval_fraction * 2.0**64), 2**64 - 1)
    elif eval_docs == 0:
        cutoff = 0
    else:
        unique = np.unique(hashes)
        if eval_docs >= unique.size:
            raise DataError(f"`eval_docs` {eval_docs} would hold out all {unique.size} distinct documents; "
                            "lower it (or use `eval_fraction`)")
        cutoff = int(unique[eval_docs - 1]) + 1
    if not np.any(hashes >= np.uint64(cutoff)):
        raise DataError("the held-out split takes every document; lower `eval_docs`/`eval_fraction`")
    return cutoff


def _refuse_foreign(out: Path, config_hash: str) -> None:
    path = out / mf.MANIFEST
    if path.is_file():
        try:
            old = mf.read_manifest(out)
        except DataError:
            return
        if old.get("config_hash") != config_hash:
            raise DataError(f"{out} already holds data prepared from other inputs or options; pass "
                            "`overwrite` to replace it, or choose another `out`")


def _own_patterns(include_tokenizer: bool = True) -> list[str]:
    """The files prepare writes into `out` (and their temporary versions)."""
    patterns = ["unit-*.json*", "train-*.arrayrecord*", "eval-*.arrayrecord*", mf.LENGTHS + "*", mf.MANIFEST + "*"]
    return patterns + ([TRAINED_TOKENIZER + "*", _TRAIN_KEY + "*"] if include_tokenizer else [])


def _refuse_other_files(out: Path) -> None:
    """`out` is prepare's own folder: new, empty, or what an earlier prepare wrote (which it
    resumes or, with overwrite, replaces). A folder holding other files is refused: a source
    directory is read whole, and --overwrite would leave them mixed with the new data."""
    if out.exists() and not out.is_dir():
        raise DataError(f"--out {out} is a file; choose a new or empty folder for the prepared data")
    if not out.is_dir():
        return
    others = sorted(p.name for p in out.iterdir() if not any(p.match(pat) for pat in _own_patterns()))
    if others:
        shown = ", ".join(others[:3]) + (f" and {len(others) - 3} more" if len(others) > 3 else "")
        raise DataError(f"--out {out} holds files prepare did not write ({shown}); choose a new or empty folder "
                        "(prepare reruns and resumes only in a folder of its own)")


def _clean(out: Path, include_tokenizer: bool) -> None:
    """Remove what prepare writes (and nothing else)."""
    for pattern in _own_patterns(include_tokenizer):
        for p in out.glob(pattern):
            p.unlink()


def _train_lines(scans: list[FileScan], read: ReadOptions, cutoff: int) -> Iterator[str]:
    for scan in scans:
        for rec in iter_records(scan.path, scan.fmt, read):
            if rec.text is not None and text_hash64(rec.text) >= cutoff:
                yield from rec.text.splitlines()


def _ensure_trained_tokenizer(out: Path, scans: list[FileScan], opts: PrepareOptions, cutoff: int) -> None:
    """Train on the training documents only; reuse an earlier model trained on the same input."""
    key = sha256_json({"files": [s.sha256 for s in scans], "read": asdict(opts.read), "cutoff": cutoff,
                       "vocab": opts.train_tokenizer})
    key_path, model = out / _TRAIN_KEY, out / TRAINED_TOKENIZER
    if model.is_file() and key_path.is_file() and key_path.read_text().strip() == key:
        return
    if opts.progress:
        tqdm.write(f"prepare: training a sentencepiece tokenizer (vocab {opts.train_tokenizer})")
    train_sentencepiece(_train_lines(scans, opts.read, cutoff), model, opts.train_tokenizer)
    tmp = key_path.with_name(key_path.name + ".tmp")
    tmp.write_text(key + "\n")
    os.replace(tmp, key_path)


def _plan_units(scans, eval_scans, opts, tok, cutoff, dtype) -> list[Unit]:
    units = []
    for held_out, scan in [(False, s) for s in scans] + [(True, s) for s in eval_scans]:
        for c in range(math.ceil(scan.records / opts.shard_docs)):
            start, stop = c * opts.shard_docs, min((c + 1) * opts.shard_docs, scan.records)
            offset = scan.chunk_offsets[c] if scan.fmt == "jsonl" else 0
            key = {"format": mf.FORMAT, "file": scan.sha256, "fmt": scan.fmt, "read": asdict(opts.read),
                   "start": start, "stop": stop, "tokenizer": tok.fingerprint, "eos_token": opts.eos_token,
                   "add_bos": tok.add_bos, "cutoff": cutoff, "dtype": dtype.str, "chunk_tokens": mf.CHUNK_TOKENS}
            if held_out:  # the key says what the unit writes: a training chunk's shards do not depend on eval files
                key["held_out"] = True
            units.append(Unit(len(units), str(scan.path), scan.fmt, start, stop, offset, sha256_json(key), held_out))
    return units


def _read_unit(out: Path, index: int) -> dict | None:
    path = out / mf.unit_name(index)
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _unit_done(out: Path, unit: Unit) -> bool:
    meta = _read_unit(out, unit.index)
    if meta is None or meta.get("input_hash") != unit.input_hash:
        return False
    return all((out / name).is_file() for name in meta["shards"].values())


@functools.lru_cache(maxsize=2)
def _tokenizer(spec: TokenizerSpec):
    """Loaded once per process (workers receive the picklable spec with every task)."""
    return load_tokenizer(spec)


def _write_task(args) -> int:
    unit, spec, read, cutoff, out, dtype = args
    out, dtype = Path(out), np.dtype(dtype)
    texts, held_out, skipped = [], [], []
    for rec in iter_records(Path(unit.path), unit.fmt, read, unit.start, unit.stop, unit.offset):
        if rec.text is None:
            skipped.append([rec.index, rec.reason])
        else:
            texts.append(rec.text)
            held_out.append(unit.held_out or text_hash64(rec.text) < cutoff)
    docs = _tokenizer(spec).encode_batch(texts)
    meta = {"input_hash": unit.input_hash, "file": unit.path, "start": unit.start, "stop": unit.stop,
            "skipped": skipped, "shards": {}, "lengths": {}, "max_token_id": -1}
    for split in mf.SPLITS:
        chosen = [np.asarray(d, dtype=dtype) for d, h in zip(docs, held_out) if h == (split == "eval")]
        meta["lengths"][split] = [int(d.size) for d in chosen]
        if chosen:
            name = mf.shard_name(split, unit.index)
            _write_shard(out / name, chosen)
            meta["shards"][split] = name
            meta["max_token_id"] = max(meta["max_token_id"], max(int(d.max()) for d in chosen))
    mf.write_json_atomic(out / mf.unit_name(unit.index), meta)
    return unit.index


def _write_shard(path: Path, docs: list[np.ndarray]) -> None:
    from array_record.python.array_record_module import ArrayRecordWriter

    tmp = path.with_name(path.name + ".tmp")
    # group_size:1 keeps every record separately addressable: packing reads slices at random.
    writer = ArrayRecordWriter(str(tmp), "group_size:1")
    try:
        for doc in docs:
            for start in range(0, doc.size, mf.CHUNK_TOKENS):
                writer.write(doc[start:start + mf.CHUNK_TOKENS].tobytes())
    finally:
        writer.close()
    os.replace(tmp, path)


def _remove_stale(out: Path, num_units: int) -> None:
    """Shards of chunks that no longer exist (the inputs shrank) or lost their eval documents."""
    keep = set()
    for i in range(num_units):
        meta = _read_unit(out, i) or {}
        keep.update(meta.get("shards", {}).values())
        keep.add(mf.unit_name(i))
    for pattern in ("unit-*.json", "train-*.arrayrecord", "eval-*.arrayrecord"):
        for p in out.glob(pattern):
            if p.name not in keep:
                p.unlink()


def _assemble(out, units, scans, eval_scans, tok, dtype, opts, cutoff, config_hash) -> dict:
    metas = [_read_unit(out, u.index) for u in units]
    if any(m is None or m["input_hash"] != u.input_hash for m, u in zip(metas, units)):
        raise DataError(f"{out}: a shard was not written; rerun the same prepare command")
    splits, lengths = {}, {}
    for split in mf.SPLITS:
        lengths[split] = np.asarray([n for m in metas for n in m["lengths"][split]], dtype=np.int64)
        splits[split] = {"shards": [m["shards"][split] for m in metas if split in m["shards"]],
                         "documents": int(lengths[split].size), "tokens": int(lengths[split].sum())}
    tmp = out / (mf.LENGTHS + ".tmp")
    with open(tmp, "wb") as f:
        np.savez(f, **lengths)
    os.replace(tmp, out / mf.LENGTHS)

    # file names come from this run's plan: a unit reused after the inputs moved keeps its old name
    skips = [{"file": u.path, "record": r, "reason": why} for m, u in zip(metas, units) for r, why in m["skipped"]]
    skips += [{"file": str(s.path), "record": None, "reason": "empty file"}
              for s in scans + eval_scans if s.records == 0]
    by_reason: dict[str, int] = {}
    for s in skips:
        reason = s["reason"].split(" at byte")[0]
        by_reason[reason] = by_reason.get(reason, 0) + 1
    by_file: dict[str, list[dict]] = {}
    for m, u in zip(metas, units):
        by_file.setdefault(u.path, []).append(m)
    sources = []
    for role, scan in [("train", s) for s in scans] + [("eval", s) for s in eval_scans]:
        mine = by_file.get(str(scan.path), [])
        sources.append({"path": str(scan.path), "role": role, "format": scan.fmt, "sha256": scan.sha256,
                        "records": scan.records,
                        **{f"{split}_documents": sum(len(m["lengths"][split]) for m in mine) for split in mf.SPLITS},
                        "tokens": sum(sum(m["lengths"][split]) for m in mine for split in mf.SPLITS),
                        "skipped": sum(len(m["skipped"]) for m in mine)})
    return {
        "format": mf.FORMAT,
        "config_hash": config_hash,
        "tokenizer": {**tok.describe(), "trained_here": opts.train_tokenizer > 0},
        "token_dtype": dtype.str,
        "chunk_tokens": mf.CHUNK_TOKENS,
        "max_token_id": max(m["max_token_id"] for m in metas),
        "documents": sum(s["documents"] for s in splits.values()),
        "tokens": sum(s["tokens"] for s in splits.values()),
        "splits": splits,
        "lengths_file": mf.LENGTHS,
        "eval_selection": _eval_selection(opts, scans, eval_scans, cutoff),
        "options": {"read": asdict(opts.read), "shard_docs": opts.shard_docs, "eos_token": opts.eos_token,
                    "add_bos": "auto" if opts.add_bos is None else opts.add_bos},
        "sources": sources,
        "skipped": {"count": len(skips), "by_reason": by_reason, "records": skips[:_MAX_LISTED_SKIPS],
                    "listed": min(len(skips), _MAX_LISTED_SKIPS)},
    }


def _eval_selection(opts: PrepareOptions, scans: list[FileScan], eval_scans: list[FileScan], cutoff: int) -> dict:
    if eval_scans:
        # reported, not removed: with eval files the user fixed the split, and exact copies are their call
        copies = np.isin(np.concatenate([s.hashes for s in scans]), np.concatenate([s.hashes for s in eval_scans]))
        if copies.any() and opts.progress:
            tqdm.write(f"prepare: warning: {int(copies.sum())} training documents are exact copies of eval documents")
        return {"rule": "every document of the eval files (sources with role 'eval')",
                "eval_files": [{"path": str(s.path), "sha256": s.sha256} for s in eval_scans],
                "train_documents_equal_to_eval": int(copies.sum())}
    return {"rule": "sha256(text)[:8] as big-endian uint64 < cutoff", "cutoff": str(cutoff),
            "eval_docs": opts.hash_eval_docs, "eval_fraction": opts.eval_fraction}
