"""Peak FLOP/s of the device, for the MFU estimate."""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp

# Dense bf16 peak per chip (vendor figures, no sparsity).
PEAK_BF16 = {
    "TPU v4": 275e12,
    "TPU v5 lite": 197e12,
    "TPU v5e": 197e12,
    "TPU v5p": 459e12,
    "TPU v6 lite": 918e12,
    "TPU v6e": 918e12,
    "NVIDIA H100 80GB HBM3": 989e12,
    "NVIDIA H100": 989e12,
    "NVIDIA H200": 989e12,
    "NVIDIA A100-SXM4-80GB": 312e12,
    "NVIDIA A100-SXM4-40GB": 312e12,
}


def measured_matmul_flops(n: int = 1024, reps: int = 5, dtype=jnp.float32) -> float:
    """Achieved FLOP/s of one large matmul: the stated 'peak' on CPU, where no vendor figure
    applies."""
    a = jnp.ones((n, n), dtype)
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        f(a).block_until_ready()
        best = min(best, time.perf_counter() - t)
    return 2.0 * n**3 / best


def device_peak_flops(device=None) -> tuple[float, str]:
    """(peak FLOP/s per device, where the figure comes from)."""
    device = device or jax.devices()[0]
    kind = device.device_kind
    for name, peak in PEAK_BF16.items():
        if kind.startswith(name):
            return peak, f"{kind} dense bf16 spec"
    if device.platform == "cpu":
        # Fake devices share the host's cores: the host rate is split between them.
        peak = measured_matmul_flops() / max(1, len(jax.local_devices()))
        return peak, "measured fp32 1024^3 matmul on this host / local devices"
    return float("nan"), f"unknown device kind {kind!r}"
