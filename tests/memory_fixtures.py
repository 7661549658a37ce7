"""Run a command and measure its peak resident memory, killing it past a bound (so a test of a
memory bound fails instead of taking a shared host down with it)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass


@dataclass
class Bounded:
    returncode: int
    peak_bytes: int  # the child's max RSS (getrusage of that child, via wait4)
    killed: bool  # killed for passing the bound
    output: str


def _rss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def run_bounded(cmd: list[str], limit_bytes: int, *, env: dict | None = None, timeout: float = 900,
                poll: float = 0.1) -> Bounded:
    """Run cmd (stdout+stderr captured to a temporary file), SIGKILL it when its RSS passes
    limit_bytes or it runs past timeout, and return its exit code and peak RSS."""
    import tempfile

    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        killed, deadline = False, time.monotonic() + timeout
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if not killed and (_rss(proc.pid) > limit_bytes or time.monotonic() > deadline):
                os.kill(proc.pid, signal.SIGKILL)
                killed = True
            time.sleep(poll)
        proc.returncode = os.waitstatus_to_exitcode(status)
        log.seek(0)
        output = log.read().decode(errors="replace")
    return Bounded(proc.returncode, usage.ru_maxrss * 1024, killed, output)
