"""Multi-host runs on JAX's own runtime (`jax.distributed`): start it from the config, the
environment or the cluster (TPU pod slice, SLURM, Open MPI), and keep the processes in step.

Every process runs the same command. Only `distributed.*` may differ between them (process id);
everything else is checked to match at start, because processes that compile different programs
do not fail, they hang in their first collective.

Environment (per process; fills what the shared config leaves at its default, see `resolve`):
  CPT_JAX_DISTRIBUTED     off | auto | manual (default: manual when CPT_JAX_COORDINATOR is set)
  CPT_JAX_COORDINATOR     host:port of process 0
  CPT_JAX_NUM_PROCESSES   number of processes
  CPT_JAX_PROCESS_ID      this process's id, 0 .. num_processes-1
"""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import json
import os
import socket
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Literal, Mapping

import jax
import numpy as np

from cpt_jax.config.base import require
from cpt_jax.errors import ConfigError, UserError
from cpt_jax.storage import as_path

ENV_VARS = {
    "mode": "CPT_JAX_DISTRIBUTED",
    "coordinator": "CPT_JAX_COORDINATOR",
    "num_processes": "CPT_JAX_NUM_PROCESSES",
    "process_id": "CPT_JAX_PROCESS_ID",
}
# JAX is given this much longer than timeout_s, so that our watchdog, which can say what went
# wrong, fires before JAX's own deadline, which aborts the process with a C++ stack trace.
_JAX_TIMEOUT_GRACE_S = 30


@dataclass(frozen=True)
class DistributedConfig:
    """jax.distributed settings. 'auto' lets JAX detect TPU pods, SLURM and Open MPI."""

    mode: Literal["off", "auto", "manual"] = "off"  # off: one process
    coordinator: str = ""  # host:port of process 0 (manual)
    num_processes: int = 1  # manual: total processes
    process_id: int = 0  # manual: this process (differs per host)
    timeout_s: int = 300  # give up reaching the coordinator after this long

    def validate(self, path: str) -> None:
        if self.mode == "manual":
            require(":" in self.coordinator, path, "coordinator", "set host:port of process 0")
            require(self.num_processes >= 1, path, "num_processes", "must be >= 1")
            require(0 <= self.process_id < self.num_processes, path, "process_id",
                    f"must be in [0, {self.num_processes})")
        require(self.timeout_s > 0, path, "timeout_s", "must be positive")


# ----------------------------------------------------------------------------- configuration
def resolve(cfg: DistributedConfig, environ: Mapping[str, str] | None = None) -> DistributedConfig:
    """The config with CPT_JAX_* variables applied.

    The YAML is shared by all processes while the environment is per process, so a variable
    fills a field the config leaves at its default; a config value (from the file or a
    `distributed.x=...` override) that contradicts a set variable is refused rather than guessed.
    """
    environ = os.environ if environ is None else environ
    default = DistributedConfig()
    values = {}
    for name, var in ENV_VARS.items():
        raw = environ.get(var, "").strip()
        if not raw:
            continue
        value = _parse_env(var, raw, type(getattr(default, name)))
        current = getattr(cfg, name)
        if current != getattr(default, name) and current != value:
            raise ConfigError(f"distributed.{name}", f"is {current!r} but {var}={raw!r}; set it in one place only")
        values[name] = value
    if "coordinator" in values and "mode" not in values and cfg.mode == "off":
        values["mode"] = "manual"
    if not values:
        return cfg
    out = dataclasses.replace(cfg, **values)
    out.validate("distributed")
    return out


def _parse_env(var: str, raw: str, kind: type):
    if kind is int:
        try:
            return int(raw)
        except ValueError:
            raise ConfigError(var, f"must be an integer, got {raw!r}") from None
    if var == ENV_VARS["mode"] and raw not in ("off", "auto", "manual"):
        raise ConfigError(var, f"must be off, auto or manual, got {raw!r}")
    return raw


def _split_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    host = host.strip("[]")  # [::1]:1234
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError("distributed.coordinator", f"must be host:port, got {address!r}")
    return host, int(port)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# ----------------------------------------------------------------------------- start-up
def initialize(cfg: DistributedConfig, environ: Mapping[str, str] | None = None) -> DistributedConfig:
    """Start jax.distributed as configured (after `resolve`); returns the resolved config.

    Must run before anything touches a JAX backend. Failures that JAX reports by aborting the
    process (unreachable coordinator, peers that never join, a port in use) are turned into a
    UserError, or an `error:` line and exit status 2, within `timeout_s`, naming the address.
    """
    cfg = resolve(cfg, environ)
    if cfg.mode == "off" or jax.distributed.is_initialized():
        return cfg
    if jax.config.jax_cpu_collectives_implementation in (None, "", "none"):
        # Cross-process collectives between CPU devices need an implementation; gloo ships with
        # jaxlib. It only affects the CPU backend, so it is harmless on GPU and TPU hosts.
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    # shutdown_timeout: a process that fails alone waits this long at exit for the others before
    # the runtime ends them all; JAX's default (300 s) would keep a broken launch alive for minutes.
    kwargs: dict = {"initialization_timeout": cfg.timeout_s + _JAX_TIMEOUT_GRACE_S,
                    "shutdown_timeout_seconds": cfg.timeout_s}
    if cfg.mode == "manual":
        host, port = _split_address(cfg.coordinator)
        if cfg.process_id == 0:
            _check_port_free(host, port)
        else:
            _wait_for_coordinator(host, port, cfg.timeout_s)
        kwargs.update(coordinator_address=cfg.coordinator, num_processes=cfg.num_processes,
                      process_id=cfg.process_id, cluster_detection_method="deactivate")
        if _is_loopback(host):
            # A loopback coordinator serves this machine only: don't listen on every interface.
            kwargs["coordinator_bind_address"] = cfg.coordinator
    # JAX's preemption notifier takes SIGTERM and agrees on the step to save (the train loop asks
    # its sync point every step); on by default in JAX, set here because the loop relies on it.
    jax.config.update("jax_enable_preemption_service", True)
    with _watchdog(cfg):
        try:
            jax.distributed.initialize(**kwargs)
        except ValueError as e:
            if cfg.mode == "auto" and "should be defined" in str(e):
                raise UserError(
                    f"distributed.mode is auto but JAX found no cluster it knows ({e}): auto works on Cloud "
                    "TPU VMs, under SLURM (srun) and Open MPI (mpirun); elsewhere use mode manual with "
                    "distributed.coordinator, num_processes and process_id (or the CPT_JAX_* variables)") from e
            raise UserError(f"jax.distributed.initialize refused the settings: {e}") from e
    return cfg


def _check_port_free(host: str, port: int) -> None:
    """jaxlib crashes (SIGSEGV) when the coordinator port is taken: check it first."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    bind_host = host if _is_loopback(host) else ("::" if family == socket.AF_INET6 else "0.0.0.0")
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((bind_host, port))
        except OSError as e:
            raise UserError(f"process 0 cannot serve the coordinator on port {port} ({e.strerror}): another "
                            "program (or an earlier run still exiting) holds it; pick another port in "
                            "distributed.coordinator") from e


def _wait_for_coordinator(host: str, port: int, timeout_s: float) -> None:
    """Retry a plain TCP connect until process 0's service listens (it may start later than
    this process). JAX itself aborts the process when it cannot connect, so probe first."""
    deadline = time.monotonic() + timeout_s
    last: OSError | None = None
    while True:
        try:
            with socket.create_connection((host, port), timeout=min(2.0, timeout_s)):
                return
        except OSError as e:
            last = e
        if time.monotonic() >= deadline:
            raise UserError(f"cannot reach the coordinator at {host}:{port} within {timeout_s:g} s ({last}): "
                            "start process 0 (it serves the coordinator), check distributed.coordinator "
                            "and that the port is open between the hosts, or raise distributed.timeout_s")
        time.sleep(0.25)


@contextlib.contextmanager
def _watchdog(cfg: DistributedConfig) -> Iterator[None]:
    """Bound jax.distributed.initialize by timeout_s with a clear message.

    JAX waits until every process has registered and, past its deadline, aborts the process from
    C++ (no Python exception to catch). A blocked native call cannot be interrupted either, so
    the timer reports like the CLI does (`error: ...`, exit status 2) and ends the process.
    """
    def expire() -> None:
        address = _detected_coordinator() or cfg.coordinator or "(not detected)"
        if cfg.mode == "manual" and cfg.process_id == 0:
            what = (f"not all {cfg.num_processes} processes joined the coordinator this process serves at "
                    f"{address}: start the others with the same distributed.coordinator")
        else:
            what = (f"could not join the coordinator at {address} (mode {cfg.mode}): check that process 0 "
                    "runs with the same num_processes and that this process's id is unique")
        print(f"error: {what}; gave up after distributed.timeout_s={cfg.timeout_s}", file=sys.stderr, flush=True)
        os._exit(2)

    timer = threading.Timer(cfg.timeout_s, expire)
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


def _detected_coordinator() -> str | None:
    """The address JAX settled on (auto mode finds it itself); only for error messages, so a
    change in this private attribute costs the address in the message, nothing else."""
    try:
        from jax._src import distributed as jax_distributed

        return jax_distributed.global_state.coordinator_address
    except (ImportError, AttributeError):
        return None


# ----------------------------------------------------------------------------- agreement
def gather_text(text: str) -> list[str]:
    """`text` from every process, in process order (the same list on all of them)."""
    if jax.process_count() == 1:
        return [text]
    from jax.experimental import multihost_utils

    data = text.encode()
    width = int(np.max(multihost_utils.process_allgather(np.array([len(data)], np.int32))))
    buf = np.zeros(width, np.uint8)
    buf[:len(data)] = np.frombuffer(data, np.uint8)
    rows = np.asarray(multihost_utils.process_allgather(buf)).reshape(jax.process_count(), width)
    return [bytes(r).rstrip(b"\0").decode() for r in rows]


def processes_where(flag: bool) -> list[int]:
    """Ids of the processes where `flag` is true, agreed by all: a decision every process must
    take at the same step (stop, skip a checkpoint) is taken on this list, never on a local flag."""
    if jax.process_count() == 1:
        return [0] if flag else []
    from jax.experimental import multihost_utils

    flags = np.asarray(multihost_utils.process_allgather(np.array([int(bool(flag))], np.int32))).reshape(-1)
    return [int(i) for i in np.flatnonzero(flags)]


def barrier(name: str) -> None:
    """Wait until every process got here (no-op with one process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def check_same_run(config_fingerprint: str, **extra: object) -> None:
    """Refuse to start unless every process has the same config (its fingerprint without the
    per-process `distributed` section), the same software and the same `extra` settings (e.g.
    command-line flags), naming who differs."""
    if jax.process_count() == 1:
        return
    import jaxlib

    import cpt_jax

    mine = {"config": config_fingerprint, "jax": jax.__version__, "jaxlib": jaxlib.__version__,
            "cpt_jax": cpt_jax.__version__, **{k: str(v) for k, v in extra.items()}}
    every = [json.loads(t) for t in gather_text(json.dumps(mine, sort_keys=True))]
    problems = []
    for pid, theirs in enumerate(every[1:], start=1):
        for key, value in theirs.items():
            if value != every[0].get(key):
                what = ("config (hash " if key == "config" else f"{key} (") + f"{value} vs {every[0].get(key)})"
                problems.append(f"process {pid} has a different {what} than process 0")
    if problems:
        raise UserError("; ".join(problems) + ". Launch every process with the same config file, overrides and "
                        "flags (only distributed.* may differ) and the same installed software")


def check_shared_dir(path: str | Path) -> None:
    """Refuse a run_dir that is not one shared directory: orbax writes each process's shards
    there and process 0 commits them, so local disks give checkpoints that cannot be restored."""
    if jax.process_count() == 1:
        return
    from jax.experimental import multihost_utils

    path = as_path(path)
    nonce = int(multihost_utils.broadcast_one_to_all(np.int32(np.random.default_rng().integers(2**31 - 1))))
    probe = path / f".shared-check-{nonce}"
    if jax.process_index() == 0:
        path.mkdir(parents=True, exist_ok=True)
        tmp = probe.with_suffix(".tmp")
        tmp.write_text(str(nonce))
        tmp.replace(probe)
    barrier("cpt_jax.check_shared_dir.written")
    try:
        seen = probe.read_text() == str(nonce)
    except OSError:
        seen = False
    blind = processes_where(not seen)
    if jax.process_index() == 0:
        probe.unlink(missing_ok=True)
    if blind:
        raise UserError(f"run_dir {path} is not shared: process(es) {', '.join(map(str, blind))} cannot see the "
                        "file process 0 wrote there; put run_dir on storage every host mounts at the same path "
                        "(NFS, Lustre, a GCS FUSE mount)")
