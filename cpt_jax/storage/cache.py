"""Local copies of remote files for readers that only open local files.

ArrayRecord (grain's reader of prepared shards) has no S3 reader, and its random access through
a network reader would cost a request per record. So a prepared source in a bucket, gs:// or
s3:// alike, is copied shard by shard into a local cache (`CPT_JAX_CACHE_DIR`, default
~/.cache/cpt_jax/objects) by background threads started when the source is opened (`prefetch`),
while the model is built and compiled; the reader waits only for a shard not yet copied
(`local_copy`). A copy is keyed by the URL, size and modification time of the object, and
written to a temporary name and renamed, so a killed copy is never taken for a whole one.
"""

from __future__ import annotations

import hashlib
import os
import pathlib
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Iterable

from cpt_jax.storage.paths import as_path, is_remote, storage_error

CACHE_ENV = "CPT_JAX_CACHE_DIR"
_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None
_inflight: dict[str, Future] = {}


def cache_dir() -> pathlib.Path:
    return pathlib.Path(os.environ.get(CACHE_ENV) or pathlib.Path.home() / ".cache" / "cpt_jax" / "objects")


def _download(url: str) -> pathlib.Path:
    src = as_path(url)
    try:
        info = src.stat()
        key = hashlib.sha256(f"{url}|{info.length}|{info.mtime}".encode()).hexdigest()[:24]
        out = cache_dir() / key / src.name
        if out.is_file() and out.stat().st_size == info.length:
            return out
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        with src.open("rb") as f, open(tmp, "wb") as g:
            while block := f.read(8 << 20):
                g.write(block)
        os.replace(tmp, out)
        return out
    except Exception as e:
        raise storage_error(url, e, "reading") from e


def prefetch(paths: list[str], threads: int = 4) -> None:
    """Start copying the remote ones of `paths` in the background (local paths: nothing)."""
    global _pool
    with _lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(threads, thread_name_prefix="cpt-jax-cache")
        for p in map(str, paths):
            if is_remote(p) and p not in _inflight:
                _inflight[p] = _pool.submit(_download, p)


def local_copy(path: str | os.PathLike) -> pathlib.Path:
    """A local path holding the bytes of `path`: itself when local, else the cached copy (waits
    for a prefetch in flight, or copies now)."""
    p = str(path)
    if not is_remote(p):
        return pathlib.Path(p)
    prefetch([p])
    return _inflight[p].result()


def local_folder(path: str | os.PathLike, only: Iterable[str] | None = None) -> pathlib.Path:
    """A local folder with the files of the folder `path` (a Hugging Face model: its readers
    memory-map safetensors and open tokenizer files by name): itself when local, else links to
    the cached copies of its files (fetched in parallel, each kept while its object is unchanged)
    under a folder keyed by the URL. An empty or missing remote folder gives an empty folder.
    `only`: just these names (a tokenizer beside a model's weights), the others left as they are."""
    p = str(path).rstrip("/")
    if not is_remote(p):
        return pathlib.Path(p)
    import fsspec

    try:
        fs, root = fsspec.core.url_to_fs(str(as_path(p)))
        names = [f[len(root):].lstrip("/") for f in fs.find(root)]
    except Exception as e:
        raise storage_error(p, e, "reading") from e
    scope = None if only is None else set(only)
    if scope is not None:
        names = [name for name in names if name in scope]
    urls = [f"{p}/{name}" for name in names]
    prefetch(urls)
    folder = cache_dir() / "folders" / hashlib.sha256(p.encode()).hexdigest()[:24]
    folder.mkdir(parents=True, exist_ok=True)
    for old in [f for f in folder.rglob("*") if f.is_symlink() and f.relative_to(folder).as_posix() not in names
                and (scope is None or f.relative_to(folder).as_posix() in scope)]:
        old.unlink()  # a file deleted from the bucket since the last copy
    for name, url in zip(names, urls):
        link, target = folder / name, local_copy(url).resolve()
        if link.is_symlink() and link.resolve() == target:
            continue
        link.parent.mkdir(parents=True, exist_ok=True)
        tmp = link.with_name(f".{link.name}.{os.getpid()}.{threading.get_ident()}.link")
        tmp.symlink_to(target)
        os.replace(tmp, link)  # atomic: several processes may build the same folder
    return folder


def local_file(path: str | os.PathLike, beside: Iterable[str] = ()) -> pathlib.Path:
    """A local path for the file `path`: itself when local, else its cached copy in a folder that
    also links the files named `beside` next to it in the bucket (readers that open a sibling by
    name, as a tokenizer opens tokenizer_config.json)."""
    if not is_remote(path):
        return pathlib.Path(path)
    parent, name = str(path).rstrip("/").rsplit("/", 1)
    return local_folder(parent, only=(name, *beside)) / name
