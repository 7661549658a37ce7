"""Device mesh from config: named axes (data, fsdp, context, tensor), checked before anything compiles.

Across TPU slices or GPU nodes (DCN: the slower network between them) the data and fsdp axes
are split in two: an outer part over slices (`dcn_data`, `dcn_fsdp`) and an inner part inside
each slice (`data`, `fsdp`, over ICI / NVLink). The mesh keeps the same three axis names, each
of size outer x inner, so shardings, rules and checkpoints do not change with the slice count.
The context axis (sequence parallelism for long rows) stays inside a slice, like tensor.
"""

from __future__ import annotations

import itertools
import math
from collections import defaultdict
from dataclasses import dataclass

import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import AbstractMesh, AxisType, Mesh

from cpt_jax.config.base import ConfigError, require

AXES = ("data", "fsdp", "context", "tensor")
CPU_HINT = " (on CPU, `--cpu-devices N` simulates N devices)"
AUTO = (AxisType.Auto,) * len(AXES)


@dataclass(frozen=True)
class MeshConfig:
    """Sizes of the mesh axes inside one slice (or node), one of which may be -1 to take the
    remaining devices, and how many slices the data-parallel axes span.

    data: pure data parallelism (replicated parameters). fsdp: data parallelism with parameters
    and optimizer state sharded (ZeRO-3). tensor: Megatron-style tensor parallelism over heads,
    MLP width and vocabulary; it stays inside a slice or node (fast links). context: context
    parallelism, each row's sequence split over devices (attention gathers keys and values; see
    model/context_attention.py), for long-context phases; it also shards parameters like fsdp.
    dcn_data x dcn_fsdp is the number of slices (TPU) or nodes (GPU): the data / fsdp axes'
    outer parts, across them.
    """

    data: int = 1  # pure data parallelism inside a slice
    fsdp: int = -1  # data parallelism with sharded params and optimizer state, inside a slice
    tensor: int = 1  # tensor parallelism over heads / MLP / vocab
    context: int = 1  # context parallelism: each row's sequence split over this many devices
    dcn_data: int = 1  # slices (or nodes) replicating the model: pure data parallelism over DCN
    dcn_fsdp: int = 1  # slices (or nodes) sharing one copy of params/optimizer state over DCN

    def validate(self, path: str) -> None:
        sizes = [self.data, self.fsdp, self.context, self.tensor]
        require(sum(s == -1 for s in sizes) <= 1, path, "fsdp", "at most one mesh axis may be -1")
        for name, size in zip(AXES, sizes):
            require(size == -1 or size >= 1, path, name, f"must be >= 1 or -1, got {size}")
        for name in ("dcn_data", "dcn_fsdp"):
            require(getattr(self, name) >= 1, path, name, f"must be >= 1, got {getattr(self, name)}")

    @property
    def num_slices(self) -> int:
        return self.dcn_data * self.dcn_fsdp

    @property
    def dcn_shape(self) -> tuple[int, int, int, int]:
        return (self.dcn_data, self.dcn_fsdp, 1, 1)

    def ici_shape(self, num_devices: int) -> tuple[int, int, int, int]:
        """Axis sizes inside one slice, -1 resolved, for `num_devices` devices in all."""
        slices = self.num_slices
        if num_devices % slices:
            raise ConfigError("mesh", f"{num_devices} devices do not split into dcn_data={self.dcn_data} x "
                              f"dcn_fsdp={self.dcn_fsdp} = {slices} equal slices; change the dcn sizes")
        per_slice = num_devices // slices
        where = f" per slice ({num_devices} devices / {slices} slices)" if slices > 1 else ""
        sizes = [self.data, self.fsdp, self.context, self.tensor]
        known = math.prod(s for s in sizes if s != -1)
        if -1 in sizes:
            if per_slice % known:
                raise ConfigError("mesh", f"the fixed axes ({known} devices) do not divide the "
                                  f"{per_slice} available devices{where}; change mesh sizes")
            sizes[sizes.index(-1)] = per_slice // known
        if math.prod(sizes) != per_slice:
            raise ConfigError("mesh", f"mesh data={sizes[0]} x fsdp={sizes[1]} x context={sizes[2]} x "
                              f"tensor={sizes[3]} = "
                              f"{math.prod(sizes)} devices, but {per_slice} are available{where}; make the "
                              f"product equal the device count (or set one axis to -1){CPU_HINT}")
        return tuple(sizes)

    def resolve(self, num_devices: int) -> tuple[int, int, int, int]:
        """Whole-mesh axis sizes: (dcn_data x data, dcn_fsdp x fsdp, context, tensor)."""
        return tuple(o * i for o, i in zip(self.dcn_shape, self.ici_shape(num_devices)))


def _assemble(slices: list[list], cfg: MeshConfig) -> np.ndarray:
    """Slice s's devices laid out as the inner mesh, placed as block s of the outer (DCN) grid:
    the data / fsdp axes run over slices outermost, over one slice's devices innermost."""
    ici = cfg.ici_shape(sum(len(s) for s in slices))
    blocks = np.empty(cfg.dcn_shape, dtype=object)
    for group, index in zip(slices, np.ndindex(*cfg.dcn_shape), strict=True):
        blocks[index] = np.asarray(group, dtype=object).reshape(ici)
    return np.block(blocks.tolist())


def hybrid_devices(cfg: MeshConfig, devices: list) -> np.ndarray:
    """Device array of a mesh spanning slices or nodes.

    TPU: devices know their `slice_index`; JAX's hybrid mesh helper lays out each slice along
    its ICI topology. GPU: a node is its processes: one process per node, or several (one per
    GPU) numbered node by node, as SLURM's block distribution does. CPU (one process of fake
    devices): consecutive runs of devices stand for slices, an emulation of the layout only."""
    n, slices = len(devices), cfg.num_slices
    if len({getattr(d, "slice_index", 0) for d in devices}) == slices:
        return mesh_utils.create_hybrid_device_mesh(cfg.ici_shape(n), cfg.dcn_shape, devices)
    by_process: dict[int, list] = defaultdict(list)
    for d in devices:
        by_process[d.process_index].append(d)
    processes = [by_process[k] for k in sorted(by_process)]
    if len(processes) == slices:
        return mesh_utils.create_hybrid_device_mesh(cfg.ici_shape(n), cfg.dcn_shape, devices,
                                                    process_is_granule=True)
    if len(processes) == 1:  # emulation
        per = n // slices
        return _assemble([devices[i * per:(i + 1) * per] for i in range(slices)], cfg)
    if len(processes) % slices:
        raise ConfigError("mesh", f"the devices belong to {len(processes)} processes, which do not form "
                          f"dcn_data x dcn_fsdp = {slices} equal nodes; set the dcn sizes to the number of "
                          "slices or nodes")
    per = len(processes) // slices  # processes per node, numbered node by node
    return _assemble([list(itertools.chain(*processes[i * per:(i + 1) * per])) for i in range(slices)], cfg)


def make_mesh(cfg: MeshConfig, devices: list | None = None) -> Mesh:
    """Build the mesh with Auto axis types: sharding is driven by jit in/out shardings and
    constraints, which is what the logical-axis rules produce."""
    devices = list(jax.devices() if devices is None else devices)
    shape = cfg.resolve(len(devices))
    if cfg.num_slices > 1:
        return Mesh(hybrid_devices(cfg, devices), AXES, axis_types=AUTO)
    if devices == list(jax.devices()):
        return jax.make_mesh(shape, AXES, axis_types=AUTO)
    return Mesh(np.asarray(devices).reshape(shape), AXES, axis_types=AUTO)


def abstract_mesh(cfg: MeshConfig, num_devices: int) -> AbstractMesh:
    """The mesh's axis names and sizes for `num_devices` devices, without any device: enough to
    derive every sharding (what the estimator counts on)."""
    return AbstractMesh(cfg.resolve(num_devices), AXES, axis_types=AUTO)
