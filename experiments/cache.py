"""Run cache keyed by code and plan: a finished run is reused only when the hash of (its plan,
the cpt_jax source tree that would train it, the keys of the runs it starts from) matches the
one it was trained under, so a code change retrains every run and a report never mixes in runs
of older code without saying so.

The code identity is git's tree hash of cpt_jax/ at HEAD (unchanged by commits that do not touch
the library), plus, when cpt_jax/ has uncommitted changes, a hash of the diff and of the
untracked files' contents.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path

CACHE_FILE = "experiment_cache.json"


@dataclass(frozen=True)
class SourceId:
    tree: str  # git rev-parse HEAD:<package>
    commit: str  # short HEAD, for the report
    clean: bool  # no uncommitted change under <package>
    diff: str = ""  # sha256 of the uncommitted changes ("" when clean)

    def label(self) -> str:
        return self.commit + ("" if self.clean else f"+dirty({self.diff[:8]})")


def _git(repo: Path, *args: str) -> bytes:
    return subprocess.run(["git", *args], cwd=repo, capture_output=True, check=True).stdout


def source_id(repo: Path, package: str = "cpt_jax") -> SourceId:
    """The identity of `package`'s source in the git checkout `repo`."""
    try:
        tree = _git(repo, "rev-parse", f"HEAD:{package}").decode().strip()
        commit = _git(repo, "rev-parse", "--short", "HEAD").decode().strip()
        diff = _git(repo, "diff", "HEAD", "--binary", "--", package)
        untracked = _git(repo, "ls-files", "--others", "--exclude-standard", "-z", "--", package).split(b"\0")
    except (OSError, subprocess.CalledProcessError):
        return SourceId("unknown", "unknown", False, "no git checkout")
    h = hashlib.sha256(diff)
    for name in sorted(n for n in untracked if n and not n.endswith(b".pyc")):
        h.update(name + b"\0" + (repo / name.decode()).read_bytes())
    clean = not diff and not any(n and not n.endswith(b".pyc") for n in untracked)
    return SourceId(tree, commit, clean, "" if clean else h.hexdigest())


def run_key(plan: dict, source: SourceId, parents: dict[str, str] | None = None) -> str:
    """The cache key of a run: its plan, the code tree (and uncommitted diff) and its parents' keys."""
    blob = json.dumps({"plan": plan, "tree": source.tree, "diff": source.diff, "parents": parents or {}},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def read_record(run_dir: Path) -> dict | None:
    path = Path(run_dir) / CACHE_FILE
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def write_record(run_dir: Path, key: str, source: SourceId, seconds: float, cpu_seconds: float | None = None) -> dict:
    """Mark `run_dir` as made under `key`: wall seconds, and the process's CPU seconds (all threads),
    which bound the wall time of the same work on an idle host when the measuring host is shared."""
    record = {"key": key, "seconds": seconds, "cpu_seconds": cpu_seconds, **asdict(source)}
    (Path(run_dir) / CACHE_FILE).write_text(json.dumps(record, indent=1) + "\n")
    return record
