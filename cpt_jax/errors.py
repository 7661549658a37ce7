"""The one error hierarchy of cpt_jax.

Every error a user can fix is a `UserError`: its message names the problem and the fix. The
library raises them; only the CLI turns them into one `error:` line and exit status 2. Subclasses
say which part found the problem, so callers can catch narrowly.
"""

from __future__ import annotations

import re


class UserError(Exception):
    """Bad input or state the user can fix; the message names the problem and the fix."""


class ConfigError(UserError, ValueError):
    """A bad configuration value; the message names the dotted key and how to fix it."""

    def __init__(self, key: str, message: str):
        self.key = key
        super().__init__(f"config error at '{key or '<root>'}': {message}")


class DataError(UserError, ValueError):
    """Bad input data or prepared data (missing fields, empty files, vocabulary mismatch)."""


class CheckpointError(UserError):
    """A checkpoint that cannot be used as asked (missing, incompatible, damaged)."""


class TrainingDiverged(UserError):
    """A non-finite loss; the message names the step and the last good checkpoint."""


class StorageError(UserError):
    """Object storage that cannot be used as asked (missing bucket, no permission, unreachable)."""


def brief(error: BaseException, limit: int = 400) -> str:
    """One line naming an exception, for inside an error message: its type and first line,
    without tensorstore's spec dump (`[tensorstore_spec=...]`, often kilobytes). A longer line
    keeps its start and its end, because tensorstore nests contexts ("Error opening ...: Error
    writing ...: <cause>") and names the cause last."""
    line = (str(error).strip().splitlines() or [""])[0]
    line = re.sub(r"\s*\[(tensorstore_spec|source locations)=.*$", "", line)
    if len(line) > limit:
        line = f"{line[:limit // 3]} ... {line[-(limit - limit // 3):]}"
    return f"{type(error).__name__}: {line}"
