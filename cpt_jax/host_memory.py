"""Keep freed host memory in the process, so that XLA:CPU's per-step buffers are reused.

XLA:CPU allocates a step's temporaries as one block per execution (57 MB for the tiny benchmark
model, 770 MB for medium at L=256), from its worker threads. glibc serves a block above 32 MB
with a fresh mmap and unmaps it when freed, so every step faults the whole block in again and
the kernel zeroes it page by page: 14,000 page faults and about a third of a tiny CPU step
(benchmarks/bench_step.py). With no mmap and a high trim threshold the next step reuses the freed
block instead.

Only XLA:CPU gains: on a GPU/TPU host the step's buffers live on the device, and the setting would
only change how every host thread (grain workers, orbax, tensorstore) allocates. So
`keep_host_memory: null` (the default) applies it to CPU-only runs. The setting is process-wide
and must precede the first thread that allocates, so the backend cannot be asked: it is judged
from JAX_PLATFORMS (jax.config) and the accelerator plugins installed (see `cpu_only`).
`apply` is the one place that decides; every training path calls it before JAX starts.
"""

from __future__ import annotations

import ctypes
import importlib.metadata
import importlib.util
import os
import pkgutil
import sys

from cpt_jax.errors import UserError

# mallopt(3) parameters (glibc malloc.h).
M_TRIM_THRESHOLD, M_MMAP_MAX, M_ARENA_MAX = -1, -4, -8
KEEP_SETTINGS = (
    (M_ARENA_MAX, 1),  # every thread allocates from the main heap: a worker's own arena is capped at 64 MB
    (M_MMAP_MAX, 0),  # large blocks come from the heap too, not from a fresh mmap per allocation
    (M_TRIM_THRESHOLD, 2**31 - 1),  # freed memory stays in the heap instead of going back to the system
)
ACCELERATOR_MODULES = ("libtpu",)  # found by jax without an entry point (besides jax_plugins.*)

_applied: dict = {}  # what `apply` decided in this process: {"kept": bool, "why": str}


def is_glibc() -> bool:
    try:
        return os.confstr("CS_GNU_LIBC_VERSION").startswith("glibc")
    except (ValueError, OSError, AttributeError):  # not a glibc system (macOS, musl)
        return False


def set_malloc_options(settings: tuple[tuple[int, int], ...]) -> bool:
    """mallopt each (option, value); False where one is refused. glibc only."""
    mallopt = ctypes.CDLL(None).mallopt
    return all(mallopt(option, value) == 1 for option, value in settings)


def accelerator_plugins() -> list[str]:
    """The JAX accelerator plugins installed (what jax would load): entry points of group
    jax_plugins, modules of the jax_plugins namespace package, and libtpu."""
    names = {ep.name for ep in importlib.metadata.entry_points(group="jax_plugins")}
    try:
        import jax_plugins  # namespace package; absent where no plugin is installed
        names |= {m.name for m in pkgutil.iter_modules(jax_plugins.__path__)}
    except ImportError:
        pass
    names |= {m for m in ACCELERATOR_MODULES if importlib.util.find_spec(m) is not None}
    return sorted(names)


def configured_platforms() -> list[str]:
    """JAX_PLATFORMS, or what jax.config.update set: read without starting a backend."""
    import jax

    return [p.strip() for p in (jax.config.jax_platforms or "").split(",") if p.strip()]


def cpu_only() -> tuple[bool, str]:
    """Whether this process will run on XLA:CPU alone, judged without starting a backend, and why."""
    platforms = configured_platforms()
    if platforms:
        return all(p == "cpu" for p in platforms), f"JAX_PLATFORMS={','.join(platforms)}"
    plugins = accelerator_plugins()
    if plugins:
        return False, f"accelerator plugins installed: {', '.join(plugins)} (JAX_PLATFORMS=cpu to run on CPU)"
    return True, "no accelerator plugin installed"


def backends_started() -> bool:
    from jax._src import xla_bridge  # no public API tells this without starting the backends

    return xla_bridge.backends_are_initialized()


def _log(message: str) -> None:
    print(f"host memory: {message}", file=sys.stderr, flush=True)


def apply(setting: bool | None) -> bool:
    """Decide and apply `keep_host_memory` (True, False, None = on for CPU-only runs) once per
    process, before JAX starts its backends; log what was done. Returns whether freed memory is
    kept. Raises UserError where True is asked for and cannot be had (not glibc, mallopt refused,
    JAX already started). A later call with another setting cannot undo the first: it says so."""
    if _applied:
        if setting is not None and setting != _applied["kept"]:
            if setting:
                raise UserError(f"keep_host_memory: true, but this process already decided otherwise "
                                f"({_applied['why']}); set it before the first run in the process")
            _log(f"keep_host_memory: false, but freed memory is already kept in this process ({_applied['why']})")
        return _applied["kept"]
    if setting is False:
        return _decide(False, "keep_host_memory: false; glibc's defaults")
    if setting is None:
        cpu, why = cpu_only()
        if not cpu:
            return _decide(False, f"not applied, not a CPU-only run ({why})")
    else:
        why = "keep_host_memory: true"
    if backends_started():
        if setting:
            raise UserError("keep_host_memory: true must be applied before JAX starts its backends (threads that "
                            "already allocated keep their own arenas); train in a fresh process, call "
                            "cpt_jax.host_memory.apply(True) before using JAX, or set keep_host_memory: null")
        return _decide(False, "not applied, JAX had already started in this process (keep_host_memory: null)")
    if not is_glibc():
        if setting:
            raise UserError("keep_host_memory: true needs glibc's malloc (Linux); use null or false here, or "
                            "LD_PRELOAD jemalloc/tcmalloc (BUILD.md)")
        return _decide(False, "not applied, malloc is not glibc's")
    if not set_malloc_options(KEEP_SETTINGS):
        raise UserError("keep_host_memory: glibc refused the malloc settings (mallopt); set keep_host_memory: false")
    return _decide(True, f"freed memory is kept in the process, XLA:CPU reuses its step buffers ({why})")


def _decide(kept: bool, why: str) -> bool:
    _applied.update(kept=kept, why=why)
    _log(why)
    return kept
