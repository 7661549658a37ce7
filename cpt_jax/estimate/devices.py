"""Accelerators the estimator knows: memory per chip and dense bf16 peak FLOP/s, with sources.

Memory is the vendor's nominal HBM per chip (GB = 1e9 bytes for NVIDIA, GiB for Google's TPU
pages, as each vendor states it). Peaks are dense (no structured sparsity) bf16 matmul rates.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from cpt_jax.errors import UserError

GB, GIB = 1e9, 2**30
# JAX preallocates this share of a GPU's memory for its allocator, and a run can use no more
# (jax.readthedocs.io, "GPU memory allocation"); XLA_PYTHON_CLIENT_MEM_FRACTION changes it.
JAX_GPU_MEM_FRACTION = 0.75


@dataclass(frozen=True)
class DeviceKind:
    name: str
    memory_bytes: float
    peak_bf16_flops: float


DEVICE_KINDS: dict[str, DeviceKind] = {
    # NVIDIA H100 SXM5 datasheet (nvidia.com/en-us/data-center/h100): 80 GB HBM3,
    # BF16 Tensor Core 1,979 TFLOPS "with sparsity" -> 989 TFLOPS dense.
    "h100": DeviceKind("NVIDIA H100 SXM 80GB", 80 * GB, 989e12),
    # NVIDIA H200 SXM datasheet (nvidia.com/en-us/data-center/h200): 141 GB HBM3e,
    # BF16 Tensor Core 1,979 TFLOPS with sparsity -> 989 TFLOPS dense (same compute as H100).
    "h200": DeviceKind("NVIDIA H200 SXM 141GB", 141 * GB, 989e12),
    # NVIDIA A100 datasheet (nvidia.com/en-us/data-center/a100): 40 GB HBM2, BF16 Tensor Core
    # 312 TFLOPS dense (624 with sparsity).
    "a100-40gb": DeviceKind("NVIDIA A100 40GB", 40 * GB, 312e12),
    # Same datasheet: 80 GB HBM2e, 312 TFLOPS dense bf16.
    "a100-80gb": DeviceKind("NVIDIA A100 80GB", 80 * GB, 312e12),
    # Google Cloud TPU v4 page (cloud.google.com/tpu/docs/v4): 32 GiB HBM2 per chip,
    # 275 TFLOPS peak bf16 per chip.
    "tpu-v4": DeviceKind("TPU v4", 32 * GIB, 275e12),
    # Google Cloud TPU v5e page (cloud.google.com/tpu/docs/v5e): 16 GiB HBM2 per chip,
    # 197 TFLOPS peak bf16 per chip.
    "tpu-v5e": DeviceKind("TPU v5e", 16 * GIB, 197e12),
    # Google Cloud TPU v5p page (cloud.google.com/tpu/docs/v5p): 95 GiB HBM2e per chip,
    # 459 TFLOPS peak bf16 per chip.
    "tpu-v5p": DeviceKind("TPU v5p", 95 * GIB, 459e12),
    # Google Cloud TPU v6e (Trillium) page (cloud.google.com/tpu/docs/v6e): 32 GiB HBM per chip,
    # 918 TFLOPS peak bf16 per chip.
    "tpu-v6e": DeviceKind("TPU v6e", 32 * GIB, 918e12),
}

ALIASES = {"a100": "a100-80gb", "v4": "tpu-v4", "v5e": "tpu-v5e", "v5p": "tpu-v5p", "v6e": "tpu-v6e"}


def device_kind(name: str) -> DeviceKind:
    key = name.strip().lower().replace("_", "-").replace(" ", "-")
    key = ALIASES.get(key, key)
    if key not in DEVICE_KINDS:
        raise UserError(f"unknown device kind {name!r}; use one of {', '.join(DEVICE_KINDS)}")
    return DEVICE_KINDS[key]


def gpu_memory_fraction() -> tuple[float, str]:
    """(share of GPU memory a JAX process gets, where that figure comes from)."""
    raw = os.environ.get("XLA_PYTHON_CLIENT_MEM_FRACTION")
    if os.environ.get("XLA_PYTHON_CLIENT_PREALLOCATE", "").lower() in ("false", "0") and raw is None:
        return 1.0, "XLA_PYTHON_CLIENT_PREALLOCATE=false (no preallocation: all of it, less fragmentation)"
    if raw is None:
        return JAX_GPU_MEM_FRACTION, "JAX's default preallocation (XLA_PYTHON_CLIENT_MEM_FRACTION unset)"
    try:
        fraction = float(raw)
    except ValueError:
        raise UserError(f"XLA_PYTHON_CLIENT_MEM_FRACTION={raw!r} is not a number") from None
    if not 0 < fraction <= 1:
        raise UserError(f"XLA_PYTHON_CLIENT_MEM_FRACTION={raw!r} must be in (0, 1]")
    return fraction, f"XLA_PYTHON_CLIENT_MEM_FRACTION={raw}"


def is_gpu(kind: DeviceKind) -> bool:
    return kind.name.startswith("NVIDIA")


def usable_memory(kind: DeviceKind, family: str | None = None) -> float:
    """Bytes per device a run can use: on GPUs the share JAX preallocates; on TPUs the chip's
    HBM (when compiled, the TPU compiler's own verdict decides)."""
    if (family or ("gpu" if is_gpu(kind) else "tpu")) == "gpu":
        return kind.memory_bytes * gpu_memory_fraction()[0]
    return kind.memory_bytes


def usable_memory_basis(kind: DeviceKind) -> str:
    """Says which share `usable_memory` assumed."""
    if is_gpu(kind):
        fraction, source = gpu_memory_fraction()
        return f"{fraction:.0%} of {kind.memory_bytes / GB:.0f} GB: {source}"
    return f"the chip's HBM ({kind.memory_bytes / GIB:.0f} GiB)"
