"""Real accelerator targets, compiled for on a CPU host ("deviceless" ahead-of-time compilation).

A target name becomes compile-only JAX devices of that accelerator, whose compiler (libtpu, or
XLA's CUDA compiler) then compiles the step for them. Accepted names:

- JAX TPU topologies: `tpu-v5p:4x8x8`, `tpu-v6e:16x16`, `tpu-v5e:2x2`, `tpu-v4:2x2x1` (chips
  per dimension), with `slices` > 1 for several slices joined by DCN.
- Google's slice names: `v5p-256`, `v4-64` count TensorCores (two per chip: v5p-256 is 128
  chips, topology 4x4x8); `v5e-16` (or `v5litepod-16`) and `v6e-256` count chips.
- NVIDIA GPU counts: `h100x64`, `h200x8`, `a100-80gbx16`: hosts of 8 GPUs (fewer than 8: one
  host), JAX topology "HOSTSx1xGPUS_PER_HOST".

`parse_target` is pure (no JAX backend is touched); `target_devices` loads the compiler.
"""

from __future__ import annotations

import importlib.util
import math
import os
import re
from dataclasses import dataclass

from cpt_jax.errors import UserError
from cpt_jax.estimate.devices import DeviceKind, device_kind, usable_memory
from cpt_jax.estimate.gpu_specs import GPU_SPECS, target_config_text

GPUS_PER_HOST = 8
TPU_GENERATIONS = ("v4", "v5e", "v5p", "v6e")
CORE_COUNTED = ("v4", "v5p")  # Google's slice names count TensorCores: two per chip (megacore)
MAX_2D_CHIPS = 256
HOST_CHIPS = 4  # chips per TPU host (2x2x1); smaller slices pass their own host bounds  # v5e and v6e slices: at most 16x16 chips
INSTALL = {"tpu": "pip install 'cpt-jax[tpu]'", "cuda": "pip install 'cpt-jax[cuda12]'"}
GPU_FLAGS = {"xla_gpu_shard_autotuning": False}  # no GPU to autotune on: XLA's defaults


@dataclass(frozen=True)
class TargetInfo:
    """What a target is, per device, and how JAX reaches its compiler."""

    name: str  # canonical: "tpu-v5p:4x4x8", "h100x64"
    kind: str  # "tpu" or "gpu"
    platform: str  # the JAX platform of its devices: "tpu" or "cuda"
    generation: str  # "v5p" ... for TPUs, "h100" ... for GPUs
    topology: str  # what get_topology_desc is given: "v5p:4x4x8" or "8x1x8"
    slices: int  # TPU slices (DCN); GPU targets: 1 (hosts are in the topology)
    num_devices: int  # JAX devices in all (chips for TPUs, GPUs)
    device: DeviceKind  # memory per device and dense bf16 peak, with sources
    memory_bytes: float  # per device, nominal
    memory_bytes_usable: float  # per device: what a run really gets (see devices.usable_memory)
    peak_flops: float  # per device, dense bf16

    @property
    def hosts(self) -> int:
        return math.ceil(self.num_devices / GPUS_PER_HOST) if self.kind == "gpu" else self.slices


def _dims(text: str, name: str) -> tuple[int, ...]:
    try:
        dims = tuple(int(x) for x in text.lower().split("x"))
    except ValueError:
        raise UserError(f"bad topology {text!r} in target {name!r}: write chips per dimension, e.g. 4x4x8") from None
    if not dims or min(dims) < 1:
        raise UserError(f"bad topology {text!r} in target {name!r}: every dimension must be >= 1")
    return dims


def slice_topology(generation: str, chips: int, name: str) -> str:
    """Chips of one slice laid out as Google's published slice shapes: v4/v5p grow a 3D torus
    from 2x2x1 by doubling the smallest dimension, last first (2x2x2, 2x2x4, 2x4x4, 4x4x4, 4x4x8,
    4x8x8, 8x8x8 ...); v5e/v6e a 2D one from 1x1 (2x2, 2x4, 4x4, 4x8, 8x8, 8x16, 16x16)."""
    if chips < 1 or chips & (chips - 1):
        raise UserError(f"target {name!r}: {chips} chips is not a power-of-two slice; give the "
                        f"topology instead, e.g. tpu-{generation}:2x2x4")
    if generation in CORE_COUNTED:
        if chips < 4:
            raise UserError(f"target {name!r}: the smallest {generation} slice is {generation}-8 (4 chips, 2x2x1)")
        dims = [2, 2, 1]
    else:
        if chips > MAX_2D_CHIPS:
            raise UserError(f"target {name!r}: a {generation} slice has at most {MAX_2D_CHIPS} chips; "
                            f"use several slices (--slices N)")
        dims = [1, 1] if chips < 4 else [2, 2]
        if chips == 2:
            raise UserError(f"target {name!r}: {generation} slices have 1, 4, 8, ... 256 chips")
    while math.prod(dims) < chips:
        smallest = min(dims)
        i = len(dims) - 1 - dims[::-1].index(smallest)
        dims[i] *= 2
    return "x".join(map(str, dims))


def parse_target(name: str, slices: int = 1) -> TargetInfo:
    """Target name -> what it is (no compiler is loaded)."""
    if slices < 1:
        raise UserError(f"--slices must be >= 1, got {slices}")
    key = name.strip().lower()
    if m := re.fullmatch(r"(?:tpu-)?(v4|v5e|v5p|v6e):([0-9x]+)", key):
        generation, topology = m.group(1), m.group(2)
        dims = _dims(topology, name)
        if len(dims) != (3 if generation in CORE_COUNTED else 2):
            raise UserError(f"target {name!r}: a {generation} topology has "
                            f"{3 if generation in CORE_COUNTED else 2} dimensions, e.g. "
                            f"{'tpu-v5p:2x2x1' if generation in CORE_COUNTED else 'tpu-v6e:2x2'}")
        return _tpu(generation, topology, slices, math.prod(dims))
    if m := re.fullmatch(r"(v4|v5e|v5litepod|v5p|v6e)-([0-9]+)", key):
        generation = "v5e" if m.group(1) == "v5litepod" else m.group(1)
        count = int(m.group(2))
        if generation in CORE_COUNTED and count % 2:
            raise UserError(f"target {name!r}: {generation}-N counts TensorCores, two per chip; N must be even")
        chips = count // 2 if generation in CORE_COUNTED else count
        return _tpu(generation, slice_topology(generation, chips, name), slices, chips)
    if m := re.fullmatch(r"(h100|h200|a100-80gb|a100)x([0-9]+)", key):
        gpu = "a100-80gb" if m.group(1) == "a100" else m.group(1)
        count = int(m.group(2))
        if slices != 1:
            raise UserError("--slices is for TPU targets; a GPU target counts all its GPUs, e.g. h100x64")
        if count < 1 or (count > GPUS_PER_HOST and count % GPUS_PER_HOST):
            raise UserError(f"target {name!r}: give up to {GPUS_PER_HOST} GPUs or a multiple of "
                            f"{GPUS_PER_HOST} (hosts of {GPUS_PER_HOST})")
        hosts, per_host = max(1, count // GPUS_PER_HOST), min(count, GPUS_PER_HOST)
        kind = device_kind(gpu)
        return TargetInfo(name=f"{gpu}x{count}", kind="gpu", platform="cuda", generation=gpu,
                          topology=f"{hosts}x1x{per_host}", slices=1, num_devices=count, device=kind,
                          memory_bytes=kind.memory_bytes, memory_bytes_usable=usable_memory(kind, "gpu"),
                          peak_flops=kind.peak_bf16_flops)
    raise UserError(f"unknown target {name!r}; use a TPU topology (tpu-v5p:4x8x8, tpu-v6e:16x16), a slice "
                    "name (v5p-256, v6e-256, v5e-16, v4-64) or GPUs (h100x64, h200x8, a100-80gbx16)")


def _tpu(generation: str, topology: str, slices: int, chips: int) -> TargetInfo:
    kind = device_kind(generation)
    return TargetInfo(name=f"tpu-{generation}:{topology}", kind="tpu", platform="tpu", generation=generation,
                      topology=f"{generation}:{topology}", slices=slices, num_devices=chips * slices, device=kind,
                      memory_bytes=kind.memory_bytes, memory_bytes_usable=usable_memory(kind, "tpu"),
                      peak_flops=kind.peak_bf16_flops)


def require_compiler(platform: str) -> None:
    """One clear error when the target's compiler is not installed."""
    module = "libtpu" if platform == "tpu" else "jax_plugins.xla_cuda12"
    try:
        found = importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        found = False
    if not found:
        what = "TPU compiler (libtpu)" if platform == "tpu" else "CUDA compiler (jax-cuda12-plugin)"
        raise UserError(f"compiling for this target needs the {what}; install it with: {INSTALL[platform]}")


def target_devices(name: str, slices: int = 1) -> tuple[list, TargetInfo]:
    """Compile-only JAX devices of the target (a mesh over them compiles with its compiler)."""
    info = parse_target(name, slices)
    require_compiler(info.platform)
    from jax.experimental import topologies

    if info.platform == "tpu":
        os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")  # several compiles may run at once
        extra: dict = {"chip_config_name": "megacore"} if info.generation == "v4" else {}  # one device per chip
        dims = [int(x) for x in info.topology.split(":")[1].split("x")]
        if math.prod(dims) < HOST_CHIPS:  # a slice smaller than one host (e.g. v5e:1x1) says so
            extra["chips_per_host_bounds"] = dims + [1] * (3 - len(dims))
        kwargs = {"platform": "tpu", "topology_name": info.topology, "num_slices": info.slices, **extra}
    else:
        kwargs = {"platform": "cuda", "topology_name": "", "topology": info.topology,
                  "target_config": target_config_text(GPU_SPECS[info.generation])}
    try:
        topo = topologies.get_topology_desc(**kwargs)
    except Exception as e:  # the compiler refuses the topology: say which, in its words
        raise UserError(f"target {info.name}: the {info.platform} compiler refused the topology: "
                        f"{str(e).splitlines()[0]}") from None
    devices = list(topo.devices)
    if len(devices) != info.num_devices:
        raise UserError(f"target {info.name}: the compiler gave {len(devices)} devices, expected {info.num_devices}")
    return devices, info


def compiler_options(info: TargetInfo) -> dict:
    """Per-compile XLA options the target needs (`Lowered.compile(compiler_options=...)`)."""
    return dict(GPU_FLAGS) if info.kind == "gpu" else {}
