"""Every path a user gives (run_dir, prepared data, HF folders, eval targets) goes through
`as_path`: a local path stays a `pathlib.Path` (behaviour unchanged), a `gs://` or `s3://` URL
becomes an `etils.epath.Path` (the path type orbax uses; its I/O goes through fsspec's gcsfs and
s3fs), with the same methods (open, read_text, write_text, exists, is_dir, iterdir, glob,
mkdir, unlink, rename, `/`).

Endpoints: tensorstore (orbax's arrays), gcsfs/s3fs (everything else) and botocore each look
for an emulator or a private endpoint under a different variable. cpt_jax reads ONE per scheme,
`CPT_JAX_GCS_ENDPOINT` and `CPT_JAX_S3_ENDPOINT`, and sets the others from it before any of
them is first used (tensorstore reads its variable once per process).
"""

from __future__ import annotations

import logging
import os
import pathlib
import shutil
import uuid
from typing import Union

from cpt_jax.errors import StorageError, brief

GCS_ENDPOINT_ENV = "CPT_JAX_GCS_ENDPOINT"
S3_ENDPOINT_ENV = "CPT_JAX_S3_ENDPOINT"
SCHEMES = ("gs://", "s3://")

try:  # the remote path type; etils is a dependency of orbax
    from etils.epath import Path as _RemotePath
except ImportError:  # pragma: no cover - orbax always brings it
    _RemotePath = pathlib.PurePosixPath

AnyPath = Union[pathlib.Path, "_RemotePath"]
_configured: tuple | None = None


def is_remote(path: object) -> bool:
    return str(path).startswith(SCHEMES)


def configure() -> None:
    """Point tensorstore, gcsfs, s3fs and botocore at the endpoints named by CPT_JAX_*_ENDPOINT
    (idempotent; called before the first remote path is made)."""
    global _configured
    gcs = os.environ.get(GCS_ENDPOINT_ENV, "").rstrip("/")
    s3 = os.environ.get(S3_ENDPOINT_ENV, "").rstrip("/")
    if _configured == (gcs, s3):
        return
    _configured = (gcs, s3)
    import fsspec

    if gcs:
        os.environ["TENSORSTORE_GCS_HTTP_URL"] = gcs
        os.environ["STORAGE_EMULATOR_HOST"] = gcs
        # gcsfs probes a bucket's type over gRPC first, which an emulator does not serve
        os.environ["GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT"] = "false"
        if not os.environ.get("GOOGLE_APPLICATION_CREDENTIALS"):
            # an emulator takes any token; without one tensorstore would look for a metadata server
            os.environ.setdefault("GOOGLE_AUTH_TOKEN_FOR_TESTING", "cpt-jax")
            fsspec.config.conf.setdefault("gs", {}).setdefault("token", "anon")
        fsspec.config.conf.setdefault("gs", {})["endpoint_url"] = gcs
        # emulators lack the moveTo API: gcsfs falls back to copy and delete, logging each refusal
        logging.getLogger("gcsfs").setLevel(logging.CRITICAL)
    if s3:
        os.environ["AWS_ENDPOINT_URL_S3"] = s3  # botocore (s3fs) reads it
        os.environ["S3_ENDPOINT"] = s3  # tensorboardX reads it
        fsspec.config.conf.setdefault("s3", {})["endpoint_url"] = s3
        os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")


def as_path(path: str | os.PathLike) -> AnyPath:
    """The path type for `path`: pathlib.Path for local paths, epath.Path for gs:// and s3://."""
    if isinstance(path, _RemotePath) and not isinstance(path, pathlib.Path) and is_remote(path):
        configure()
        return path
    text = os.fspath(path)
    if is_remote(text):
        configure()
        return _RemotePath(text)
    return pathlib.Path(text)


def absolute(path: str | os.PathLike) -> AnyPath:
    """as_path(path), made absolute when local (a URL already is; epath would prefix the cwd)."""
    p = as_path(path)
    return p if is_remote(p) else p.absolute()


def storage_error(path: object, error: BaseException, doing: str) -> StorageError:
    """One clear error for a failed remote operation: which bucket, what went wrong, what to do."""
    text = brief(error)
    bucket = "/".join(str(path).split("/")[:3])
    if isinstance(error, FileNotFoundError) or "NoSuchBucket" in text or "404" in text:
        why = f"the bucket {bucket} does not exist (or the path is wrong); create it or fix the path"
    elif isinstance(error, PermissionError) or any(  # gcsfs: OSError "Forbidden: URL"; tensorstore: PERMISSION_DENIED
            s in text for s in ("403", "401", "AccessDenied", "Forbidden", "Unauthorized", "PERMISSION_DENIED")):
        why = f"no permission to write to {bucket}; grant write access or choose another bucket"
    else:
        why = (f"{bucket} cannot be reached ({text}); check the network and the endpoint "
               f"({GCS_ENDPOINT_ENV}/{S3_ENDPOINT_ENV})")
    return StorageError(f"{doing} {path} failed: {why}")


def check_reachable(path: str | os.PathLike) -> None:
    """Look `path` up once (a URL): an unreachable endpoint or a refused read is one StorageError,
    not the client library's traceback from whichever call came first."""
    p = as_path(path)
    if not is_remote(p):
        return
    try:
        p.exists()
    except Exception as e:  # noqa: BLE001 - gcsfs/s3fs raise OSError, botocore and aiohttp their own
        raise storage_error(p, e, "reading") from e


def check_writable(directory: str | os.PathLike) -> None:
    """Write and delete a small object under `directory` (a URL): a missing bucket, no write
    permission or an unreachable endpoint is one StorageError before any work starts."""
    d = as_path(directory)
    if not is_remote(d):
        return
    probe = d / f".cpt-jax-write-probe-{uuid.uuid4().hex[:8]}"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except Exception as e:  # noqa: BLE001 - gcsfs/s3fs raise OSError, botocore and aiohttp their own
        raise storage_error(d, e, "writing to") from e


class AppendLog:
    """A text file that is appended to (metrics.jsonl). Locally an ordinary file opened "a"; an
    object in a bucket cannot be appended to, so there the text is kept and the whole object is
    rewritten at each flush (a few kB per log line at most)."""

    def __init__(self, path: str | os.PathLike):
        self.path = as_path(path)
        self._remote = is_remote(self.path)
        if self._remote:
            self._text = self.path.read_text() if self.path.exists() else ""
            self._dirty = False
        else:
            self._file = self.path.open("a")

    def write(self, text: str) -> None:
        if self._remote:
            self._text += text
            self._dirty = True
        else:
            self._file.write(text)

    def flush(self) -> None:
        if not self._remote:
            self._file.flush()
        elif self._dirty:
            self.path.write_text(self._text)
            self._dirty = False

    def close(self) -> None:
        self.flush()
        if not self._remote:
            self._file.close()


def move(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Move a file or a directory tree (in a bucket: copy, then delete)."""
    if not is_remote(src):
        shutil.move(str(src), str(dst))
        return
    import fsspec

    fs, _ = fsspec.core.url_to_fs(str(as_path(src)))
    fs.mv(str(src), str(dst), recursive=True)


def copy(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Copy one file, either side local or in a bucket."""
    if not is_remote(src) and not is_remote(dst):
        shutil.copy2(src, dst)
    else:
        as_path(dst).write_bytes(as_path(src).read_bytes())


def upload_tree(local: pathlib.Path, url: str | os.PathLike, last: str | None = None, replace: bool = True) -> None:
    """Replace the folder `url` by the local folder `local` (with `replace`, what was there is
    deleted first; without, files are added beside it); the file named `last` (a manifest readers
    wait for) is uploaded after all the others."""
    import fsspec

    fs, root = fsspec.core.url_to_fs(str(as_path(url)))
    root = root.rstrip("/")
    try:
        if replace and fs.exists(root):
            fs.rm(root, recursive=True)
        files = sorted(p for p in pathlib.Path(local).rglob("*") if p.is_file())
        files.sort(key=lambda p: p.name == last)  # stable: `last` moves to the end
        for f in files:
            fs.put_file(str(f), f"{root}/{f.relative_to(local).as_posix()}")
    except Exception as e:
        raise storage_error(url, e, "writing to") from e


def remove_tree(path: str | os.PathLike) -> None:
    """Delete a file or a directory tree, local or in a bucket."""
    if not is_remote(path):
        shutil.rmtree(path, ignore_errors=True)
        return
    import fsspec

    fs, root = fsspec.core.url_to_fs(str(as_path(path)))
    fs.rm(root, recursive=True)
