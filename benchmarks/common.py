"""Helpers every benchmark script shares: where a number was measured, and atomic JSON results."""

from __future__ import annotations

import datetime as dt
import importlib.metadata as md
import json
import os
import platform
import tempfile
from pathlib import Path

VERSIONED = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "grain", "numpy", "torch", "transformers")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def cpu_vector_flags() -> list[str]:
    """The SIMD extensions the CPU reports: they bound the fp32 matmul rate ('peak' on CPU)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return sorted(f for f in line.split(":", 1)[1].split()
                              if f in ("avx2", "fma", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16"))
    except OSError:
        pass
    return []


def usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def environment() -> dict:
    """Where and with what a number was measured; load average because the host may be shared."""
    versions = {}
    for name in VERSIONED:
        try:
            versions[name] = md.version(name)
        except md.PackageNotFoundError:
            versions[name] = None
    return {
        "host": platform.node(), "cpu_model": cpu_model(), "cpu_flags": cpu_vector_flags(), "cores": usable_cores(),
        "cpu_count": os.cpu_count(), "python": platform.python_version(), "versions": versions,
        "loadavg": list(os.getloadavg()), "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "time": dt.datetime.now().isoformat(timespec="seconds"),
    }


def write_json(path: str | Path, obj: dict) -> None:
    """Write to a temporary name in the same folder, then rename: never a half-written result."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(obj, f, indent=1)
        f.write("\n")
    os.chmod(tmp, 0o644)  # mkstemp makes it private; a result is for everyone to read
    os.replace(tmp, path)
