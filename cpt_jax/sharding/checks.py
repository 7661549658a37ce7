"""Will a run fit its mesh? Divisibility checked before anything compiles.

jit refuses an array dimension that its sharding does not divide evenly (IndivisibleError, deep in
a traceback, or at restore time). Every sharded dimension is known from the parameters' logical
axes and the rules, and every batch split from the data-parallel size, so the whole question is
answered up front, with the config key to change and a mesh of the same devices that would fit.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from cpt_jax.errors import ConfigError
from cpt_jax.sharding.mesh import AXES
from cpt_jax.sharding.rules import DEFAULT_RULES


@dataclass(frozen=True)
class Misfit:
    """One size the mesh does not divide."""

    key: str  # config key of the size, e.g. model.hidden_size
    size: int
    axes: tuple[str, ...]  # mesh axes it is split over
    parts: int  # their product
    where: str  # what is split, e.g. "layers.attn.q (its 'embed' dimension)"


def _mesh_axes(logical: tuple, shape: dict[str, int], rules) -> list[tuple[str, ...]]:
    """Mesh axes of each dimension, as the rules map them (an axis used once per array, axes of
    size 1 dropped): the same mapping as `rules.logical_to_spec`, on axis sizes alone."""
    table, used, out = dict(rules), set(), []
    for name in logical:
        target = table.get(name) if name is not None else None
        targets = () if target is None else (target,) if isinstance(target, str) else tuple(target)
        targets = tuple(t for t in targets if t not in used and shape.get(t, 1) > 1)
        used.update(targets)
        out.append(targets)
    return out


def param_misfits(arrays: Iterable[tuple[str, tuple, tuple]], shape: dict[str, int], keys: dict[str, str],
                  rules=DEFAULT_RULES) -> list[Misfit]:
    """Sharded parameter dimensions the mesh does not divide. arrays: (name, shape, logical
    axes); keys: logical axis name -> the config key that sets its size."""
    found: dict[str, Misfit] = {}
    for name, dims, logical in arrays:
        for size, axis, mesh_axes in zip(dims, logical, _mesh_axes(logical, shape, rules)):
            parts = math.prod(shape[a] for a in mesh_axes)
            key = keys.get(axis, f"the {axis!r} dimension")
            if parts > 1 and size % parts and key not in found:
                found[key] = Misfit(key, size, mesh_axes, parts, f"{name} (its {axis!r} dimension)")
    return list(found.values())


def batch_misfits(batches: dict[str, int], shape: dict[str, int]) -> list[Misfit]:
    """Batch sizes (config key -> rows) that the data-parallel devices (data x fsdp) do not divide."""
    parts = shape["data"] * shape["fsdp"]
    return [Misfit(key, rows, ("data", "fsdp"), parts, "the batch rows") for key, rows in batches.items()
            if rows % parts]


def meshes(num_devices: int, context: int = 1) -> Iterable[dict[str, int]]:
    """Every (data, fsdp, tensor) split of `num_devices`, beside a fixed context axis (the row
    split a phase asks for, not a layout to search)."""
    for data, tensor in itertools.product(range(1, num_devices + 1), repeat=2):
        if num_devices % (data * tensor * context) == 0:
            yield {"data": data, "fsdp": num_devices // (data * tensor * context), "context": context, "tensor": tensor}


def suggest_mesh(num_devices: int, fits: Callable[[dict[str, int]], bool], current: dict[str, int]) -> dict | None:
    """The fitting split of the same devices closest to `current` (most fsdp, then least tensor)."""
    options = [m for m in meshes(num_devices, current.get("context", 1)) if fits(m)]
    if not options:
        return None
    return min(options, key=lambda m: (sum(m[a] != current.get(a, 1) for a in AXES), -m["fsdp"], m["tensor"]))


def describe(m: Misfit, shape: dict[str, int]) -> str:
    split = " x ".join(f"{a}={shape[a]}" for a in m.axes)
    text = f"{m.key}={m.size} does not split over mesh {split} ({m.parts} parts; {m.where} is sharded so)"
    if m.key == "model.num_kv_heads" and shape.get("tensor", 1) > m.size:
        text += "; KV heads are split over tensor, not replicated, so mesh.tensor may not exceed num_kv_heads"
    return text


def check_fits(num_devices: int, shape: dict[str, int], misfits: Callable[[dict[str, int]], list[Misfit]],
               dcn: tuple[int, int] = (1, 1)) -> None:
    """Raise ConfigError naming the first misfit of the mesh `shape` (whole-mesh axis sizes) and
    the fix: a split of the same devices that fits, or a size to change."""
    found = misfits(shape)
    if not found:
        return
    m = found[0]
    if dcn == (1, 1):
        better = suggest_mesh(num_devices, lambda s: not misfits(s), shape)
    else:
        better = None  # across slices the outer split is fixed; suggest the size instead
    if better:
        fix = (f"use a mesh that divides it, e.g. mesh.data={better['data']} mesh.fsdp={better['fsdp']} "
               f"mesh.tensor={better['tensor']} on these {num_devices} devices")
    else:
        fix = f"no split of these {num_devices} devices fits; change {m.key} or the device count"
    more = f" ({len(found) - 1} more size{'s' if len(found) > 2 else ''} too)" if len(found) > 1 else ""
    raise ConfigError("mesh", f"{describe(m, shape)}{more}: {fix}")
