"""Logical axis names -> mesh axes.

Parameters and activations are annotated with logical names ('embed', 'mlp', 'heads', ...);
one table maps them onto the mesh, so changing the parallelism never touches the model.
"""

from __future__ import annotations

from dataclasses import dataclass
import math
from typing import Any

import jax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

# (logical name, mesh axes). Parameters: 'embed' is sharded over fsdp (ZeRO-3) and context
# (its devices hold different tokens of the same rows, so they share parameters as fsdp does),
# the head / MLP / vocab dimensions over tensor. Activations: 'batch' over every data axis,
# 'length' over context (in the load-balanced order of sharding/context.py).
DEFAULT_RULES: tuple[tuple[str, Any], ...] = (
    ("batch", ("data", "fsdp")),
    ("length", "context"),
    ("embed", ("fsdp", "context")),
    ("vocab", "tensor"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("norm", None),
    ("layers", None),  # the stacking axis of scanned layers: every device holds all layers' shards
    ("act_embed", None),
    ("act_heads", "tensor"),
    ("act_kv_heads", "tensor"),
    ("act_mlp", "tensor"),
    ("act_vocab", "tensor"),
)


def logical_to_spec(axes: tuple[str | None, ...], rules=DEFAULT_RULES, mesh: Mesh | None = None) -> PartitionSpec:
    """Map logical names to a PartitionSpec; a mesh axis is used at most once per array and
    axes of size 1 are dropped (keeps specs readable and valid on any mesh)."""
    table = dict(rules)
    used: set[str] = set()
    out = []
    for name in axes:
        target = table.get(name) if name is not None else None
        if target is None:
            out.append(None)
            continue
        targets = (target,) if isinstance(target, str) else tuple(target)
        targets = tuple(t for t in targets if t not in used and (mesh is None or mesh.shape[t] > 1))
        used.update(targets)
        out.append(None if not targets else targets[0] if len(targets) == 1 else targets)
    return PartitionSpec(*out)


@dataclass(frozen=True)
class Sharder:
    """Places activations by logical name inside jit (no-op without a mesh)."""

    mesh: Mesh | None = None
    rules: tuple = DEFAULT_RULES

    def named(self, axes: tuple[str | None, ...]) -> NamedSharding:
        return NamedSharding(self.mesh, logical_to_spec(axes, self.rules, self.mesh))

    def is_split(self, axis: str) -> bool:
        """Whether a logical axis is actually divided over devices (mapped to a mesh axis > 1)."""
        return self.mesh is not None and logical_to_spec((axis,), self.rules, self.mesh)[0] is not None

    def ways(self, axis: str) -> int:
        """How many parts a logical axis is divided into on the mesh (1 without a mesh)."""
        if self.mesh is None:
            return 1
        spec = logical_to_spec((axis,), self.rules, self.mesh)[0]
        names = () if spec is None else (spec,) if isinstance(spec, str) else spec
        return math.prod(self.mesh.shape[n] for n in names)

    def constrain(self, x: jax.Array, axes: tuple[str | None, ...]) -> jax.Array:
        if self.mesh is None:
            return x
        return jax.lax.with_sharding_constraint(x, self.named(axes))


def param_axes(state: nnx.State) -> Any:
    """Tree of logical-axis tuples, one per parameter (from the `logical_axes` metadata)."""
    return jax.tree.map(lambda v: v.get_metadata().get("logical_axes", (None,) * v.get_value().ndim),
                        state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def state_shardings(state: nnx.State, mesh: Mesh, rules=DEFAULT_RULES) -> Any:
    axes = param_axes(state)
    return jax.tree.map(lambda a: NamedSharding(mesh, logical_to_spec(a, rules, mesh)), axes,
                        is_leaf=lambda x: isinstance(x, tuple))
