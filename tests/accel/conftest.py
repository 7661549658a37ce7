"""Compile-only accelerator tests (`make test-accel`): the train step compiled by the real TPU
(libtpu) and NVIDIA (XLA's CUDA compiler) compilers for devices this CPU host does not have.

They run only where a compiler extra is installed (`.venv-tpu`: cpt-jax[tpu], `.venv-cuda`:
cpt-jax[cuda12]); in the plain test environment (`make test`) nothing here is collected and no
environment variable is touched.
"""

from __future__ import annotations

import importlib.util
import os


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


HAS_TPU = _installed("libtpu")
HAS_CUDA = _installed("jax_plugins.xla_cuda12")

if not (HAS_TPU or HAS_CUDA):
    collect_ignore_glob = ["test_*.py"]
else:
    # Before jax starts a backend: JAX's own devices stay CPU (the targets are compile-only),
    # several processes may load libtpu at once, and there is no GPU to autotune on.
    os.environ["JAX_PLATFORMS"] = "cpu"
    os.environ["ALLOW_MULTIPLE_LIBTPU_LOAD"] = "1"
    if "xla_gpu_shard_autotuning" not in os.environ.get("XLA_FLAGS", ""):
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_gpu_shard_autotuning=false").strip()
