"""Device mesh from config: named axes (data, fsdp, tensor), checked before anything compiles."""

from __future__ import annotations

import math
from dataclasses import dataclass

import jax
import numpy as np
from jax.sharding import AxisType, Mesh

from cpt_jax.config.base import ConfigError, require

AXES = ("data", "fsdp", "tensor")
CPU_HINT = " (on CPU, `--cpu-devices N` simulates N devices)"


@dataclass(frozen=True)
class MeshConfig:
    """Sizes of the three mesh axes; one of them may be -1 to take the remaining devices.

    data: pure data parallelism (replicated parameters). fsdp: data parallelism with parameters
    and optimizer state sharded (ZeRO-3). tensor: Megatron-style tensor parallelism over heads,
    MLP width and vocabulary. On several hosts, keep `tensor` inside one host (fast links).
    """

    data: int = 1  # pure data parallelism
    fsdp: int = -1  # data parallelism with sharded params and optimizer state
    tensor: int = 1  # tensor parallelism over heads / MLP / vocab

    def validate(self, path: str) -> None:
        sizes = [self.data, self.fsdp, self.tensor]
        require(sum(s == -1 for s in sizes) <= 1, path, "fsdp", "at most one mesh axis may be -1")
        for name, size in zip(AXES, sizes):
            require(size == -1 or size >= 1, path, name, f"must be >= 1 or -1, got {size}")

    def resolve(self, num_devices: int) -> tuple[int, int, int]:
        sizes = [self.data, self.fsdp, self.tensor]
        known = math.prod(s for s in sizes if s != -1)
        if -1 in sizes:
            if num_devices % known:
                raise ConfigError("mesh", f"the fixed axes ({known} devices) do not divide the "
                                  f"{num_devices} available devices; change mesh sizes")
            sizes[sizes.index(-1)] = num_devices // known
        if math.prod(sizes) != num_devices:
            raise ConfigError("mesh", f"mesh data={sizes[0]} x fsdp={sizes[1]} x tensor={sizes[2]} = "
                              f"{math.prod(sizes)} devices, but {num_devices} are available; make the "
                              f"product equal the device count (or set one axis to -1){CPU_HINT}")
        return tuple(sizes)


def make_mesh(cfg: MeshConfig, devices: list | None = None) -> Mesh:
    """Build the mesh with Auto axis types: sharding is driven by jit in/out shardings and
    constraints, which is what the logical-axis rules produce."""
    devices = list(jax.devices() if devices is None else devices)
    shape = cfg.resolve(len(devices))
    if devices == list(jax.devices()):
        return jax.make_mesh(shape, AXES, axis_types=(AxisType.Auto,) * len(AXES))
    return Mesh(np.asarray(devices).reshape(shape), AXES, axis_types=(AxisType.Auto,) * len(AXES))
