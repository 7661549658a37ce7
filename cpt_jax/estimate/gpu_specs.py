"""Compile-only NVIDIA GPU descriptions, generated from each GPU's published properties.

XLA's GPU compiler needs a `GpuTargetConfigProto` (text proto) to compile for a GPU that is not
in the machine. Each field below comes from the vendor's documents, cited per GPU; the proto is
written by `target_config_text`. Memory is the datasheet's capacity in decimal GB (1e9 bytes),
as NVIDIA states it: the CUDA runtime reports slightly more usable bytes, so fits judged against
it are on the safe side.
"""

from __future__ import annotations

from dataclasses import dataclass

KIB, MIB = 1024, 1024 * 1024


@dataclass(frozen=True)
class GpuSpec:
    name: str  # what the CUDA driver calls the device (becomes the JAX device_kind)
    sm_count: int
    fp32_cores_per_sm: int
    boost_clock_ghz: float
    memory_bytes: int
    memory_bandwidth: int  # bytes/s
    l2_bytes: int
    shared_memory_per_sm: int
    shared_memory_per_block_optin: int
    compute_capability: tuple[int, int]
    accelerated_features: bool  # sm_90a: Hopper's wgmma/TMA instructions
    nvlink_links: int
    threads_per_sm: int = 2048
    registers_per_sm: int = 65536


# NVIDIA H100 Tensor Core GPU Architecture whitepaper (v1.0x, "H100 SXM5" column) and the H100
# datasheet (nvidia.com/en-us/data-center/h100): 132 SMs, 128 FP32 cores per SM, 50 MB L2,
# 228 KB shared memory per SM (227 KB per block opt-in), 65,536 registers and 2,048 threads per
# SM, compute capability 9.0 (sm_90a), 80 GB HBM3 at 3.35 TB/s, max boost 1.98 GHz, 18 NVLink 4
# links.
H100_SXM = GpuSpec(name="NVIDIA H100 80GB HBM3", sm_count=132, fp32_cores_per_sm=128, boost_clock_ghz=1.98,
                   memory_bytes=80 * 10**9, memory_bandwidth=3350 * 10**9, l2_bytes=50 * MIB,
                   shared_memory_per_sm=228 * KIB, shared_memory_per_block_optin=227 * KIB,
                   compute_capability=(9, 0), accelerated_features=True, nvlink_links=18)

# NVIDIA H200 datasheet (nvidia.com/en-us/data-center/h200): the H100's GH100 die (same SMs,
# clocks, caches and NVLink as H100 SXM above) with 141 GB HBM3e at 4.8 TB/s.
H200_SXM = GpuSpec(name="NVIDIA H200", sm_count=132, fp32_cores_per_sm=128, boost_clock_ghz=1.98,
                   memory_bytes=141 * 10**9, memory_bandwidth=4800 * 10**9, l2_bytes=50 * MIB,
                   shared_memory_per_sm=228 * KIB, shared_memory_per_block_optin=227 * KIB,
                   compute_capability=(9, 0), accelerated_features=True, nvlink_links=18)

# NVIDIA A100 Tensor Core GPU Architecture whitepaper and the A100 datasheet
# (nvidia.com/en-us/data-center/a100), A100 80GB SXM: 108 SMs, 64 FP32 cores per SM, 40 MB L2,
# 164 KB shared memory per SM (163 KB per block opt-in), compute capability 8.0, 80 GB HBM2e at
# 2,039 GB/s, boost 1.41 GHz, 12 NVLink 3 links.
A100_80GB_SXM = GpuSpec(name="NVIDIA A100-SXM4-80GB", sm_count=108, fp32_cores_per_sm=64, boost_clock_ghz=1.41,
                        memory_bytes=80 * 10**9, memory_bandwidth=2039 * 10**9, l2_bytes=40 * MIB,
                        shared_memory_per_sm=164 * KIB, shared_memory_per_block_optin=163 * KIB,
                        compute_capability=(8, 0), accelerated_features=False, nvlink_links=12)

GPU_SPECS: dict[str, GpuSpec] = {"h100": H100_SXM, "h200": H200_SXM, "a100-80gb": A100_80GB_SXM}

# CUDA limits common to every compute capability >= 7.0 (CUDA C++ Programming Guide, "Technical
# Specifications per Compute Capability"): warp size, threads and dimensions per block, grid
# dimensions, 48 KB static shared memory per block, 64K registers per block.
_CUDA_LIMITS = {
    "threads_per_block_limit": 1024, "threads_per_warp": 32, "shared_memory_per_block": 48 * KIB,
    "block_dim_limit_x": 2**31 - 1, "block_dim_limit_y": 65535, "block_dim_limit_z": 65535,
    "registers_per_block_limit": 65536, "thread_dim_limit_x": 1024, "thread_dim_limit_y": 1024,
    "thread_dim_limit_z": 64,
}


def target_config_text(spec: GpuSpec) -> str:
    """The GpuTargetConfigProto text XLA compiles against for `spec` (no device needed)."""
    major, minor = spec.compute_capability
    feature = "\n    feature_extension: ACCELERATED_FEATURES" if spec.accelerated_features else ""
    info = {
        **_CUDA_LIMITS,
        "shared_memory_per_core": spec.shared_memory_per_sm,
        "threads_per_core_limit": spec.threads_per_sm,
        "core_count": spec.sm_count,
        "fpus_per_core": spec.fp32_cores_per_sm,
        "memory_bandwidth": spec.memory_bandwidth,
        "l2_cache_size": spec.l2_bytes,
        "clock_rate_ghz": spec.boost_clock_ghz,
        "device_memory_size": spec.memory_bytes,
        "shared_memory_per_block_optin": spec.shared_memory_per_block_optin,
        "registers_per_core_limit": spec.registers_per_sm,
    }
    lines = [f"  {k}: {v}" for k, v in info.items()]
    lines.append(f"  cuda_compute_capability {{\n    major: {major}\n    minor: {minor}{feature}\n  }}")
    lines += ['  device_vendor: "NVIDIA Corporation"', f'  name: "{spec.name}"',
              f"  device_interconnect_info {{\n    active_links: {spec.nvlink_links}\n  }}"]
    return ("gpu_device_info {\n" + "\n".join(lines) + "\n}\n"
            f'platform_name: "CUDA"\ndevice_description_str: "{spec.name}"\n')
