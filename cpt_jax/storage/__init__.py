"""Object storage: one path type for local paths, gs:// and s3:// (see paths.py), and a local
cache for files that only local readers can open (see cache.py)."""

from cpt_jax.storage.cache import cache_dir, local_copy, local_file, local_folder, prefetch
from cpt_jax.storage.paths import (
    GCS_ENDPOINT_ENV,
    S3_ENDPOINT_ENV,
    AnyPath,
    AppendLog,
    absolute,
    as_path,
    check_reachable,
    check_writable,
    copy,
    is_remote,
    move,
    remove_tree,
    storage_error,
    upload_tree,
)

__all__ = ["GCS_ENDPOINT_ENV", "S3_ENDPOINT_ENV", "AnyPath", "AppendLog", "absolute", "as_path", "cache_dir",
           "check_reachable", "check_writable", "copy", "is_remote", "local_copy", "local_file", "local_folder", "move",
           "prefetch", "remove_tree", "storage_error", "upload_tree"]
