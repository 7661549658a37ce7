"""Object-storage emulators on 127.0.0.1 for the storage tests and benchmark: a GCS emulator
(gcp-storage-emulator) and an S3 one (moto in server mode), each started in its own process on a
free port and stopped by the test (the GCS one through tests/gcs_emulator.py, which adds the
generation preconditions tensorstore relies on). `env()` is what a cpt-jax process needs to
reach it: the one cpt_jax variable per scheme (CPT_JAX_GCS_ENDPOINT / CPT_JAX_S3_ENDPOINT) and dummy S3 keys."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(port: int, proc: subprocess.Popen, timeout: float = 30.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"emulator exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"emulator did not listen on 127.0.0.1:{port}")


class Emulator:
    def __init__(self, kind: str, data_dir: Path | None = None, port: int | None = None,
                 deny_writes: str | None = None, stop_at: str | None = None):
        """GCS faults: `deny_writes` "bucket/prefix" under which every write is refused with 403;
        `stop_at` "bucket/prefix" at whose first write the emulator ends (tests/gcs_emulator.py)."""
        self.kind, self.data_dir, self.port = kind, data_dir, port or free_port()
        self.faults = [*(["--deny-writes", deny_writes] if deny_writes else []),
                       *(["--stop-at", stop_at] if stop_at else [])]
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> Emulator:
        if self.kind == "gs":
            data = ["-d", str(self.data_dir)] if self.data_dir else []
            # through tests/gcs_emulator.py: the emulator with GCS's generation preconditions
            cmd = [sys.executable, str(Path(__file__).with_name("gcs_emulator.py")), *self.faults, *data, "start",
                   "--host", "127.0.0.1", "--port", str(self.port), *([] if self.data_dir else ["--in-memory"])]
        else:
            cmd = [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(self.port)]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait(self.port, self.proc)
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def env(self) -> dict[str, str]:
        if self.kind == "gs":
            return {"CPT_JAX_GCS_ENDPOINT": self.url}
        return {"CPT_JAX_S3_ENDPOINT": self.url, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                "AWS_DEFAULT_REGION": "us-east-1"}

    def make_bucket(self, name: str) -> None:
        """Create a bucket through the emulator's own API (the library never creates buckets)."""
        import json
        import urllib.request

        if self.kind == "gs":
            req = urllib.request.Request(f"{self.url}/storage/v1/b?project=test", method="POST",
                                         data=json.dumps({"name": name}).encode(),
                                         headers={"Content-Type": "application/json"})
        else:
            req = urllib.request.Request(f"{self.url}/{name}", method="PUT")
        urllib.request.urlopen(req, timeout=10).read()

    def __enter__(self) -> Emulator:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def upload(local: Path, url: str, env: dict[str, str]) -> None:
    """Copy a local directory tree to `url` in a fresh process that has `env` (the endpoints)."""
    code = ("import sys; from cpt_jax.storage.paths import as_path; import fsspec; as_path(sys.argv[2]); "
            "fs, _ = fsspec.core.url_to_fs(sys.argv[2]); fs.put(sys.argv[1].rstrip('/') + '/', sys.argv[2], "
            "recursive=True)")
    subprocess.run([sys.executable, "-c", code, str(local), url], env={**os.environ, **env}, check=True)
