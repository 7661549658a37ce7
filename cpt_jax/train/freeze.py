"""Freezing: parameters that a phase does not train get no gradient, no update and no optimizer
state (in memory or in checkpoints), so they export bit-identical to where the phase started.

The optimizer sees a *trainable view* of the parameters: the same tree with every frozen tensor
replaced by None (an empty subtree to JAX and optax) and, for the stacked layers of a scanned
model whose bottom/top blocks are frozen, the contiguous slice of the blocks that train. optax
has `masked` and `multi_transform`, but both keep a full-size state entry per stacked tensor and
compute every gradient; slicing the stacked axis is what drops the frozen blocks' moments and
gradients, and optax has no transform for that.

Entries of `optimizer.freeze` (or a phase's `freeze`) name parameters by their path without the
layer index, dot-joined, as glob patterns: `embed`, `lm_head`, `final_norm`, `layers.attn.*`,
`layers.mlp.down`. `layers[a:b]` selects blocks a..b-1 (Python slice bounds, either may be
omitted), alone (every tensor of those blocks) or with a pattern: `layers[0:4].mlp.*`.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass
from typing import Any

import jax

from cpt_jax.errors import ConfigError
from cpt_jax.model.params import is_layer_index

_RANGE = re.compile(r"^layers\[(?P<a>-?\d*):(?P<b>-?\d*)\](?:\.(?P<rest>.+))?$")


@dataclass(frozen=True)
class FreezeEntry:
    pattern: str  # glob over the dotted path without the layer index
    layers: tuple[int | None, int | None] | None  # slice of blocks for `layers[a:b]` entries, else None


def parse_entry(text: str, where: str = "optimizer.freeze") -> FreezeEntry:
    text = text.strip()
    if not text:
        raise ConfigError(where, "an empty freeze entry; name parameters like embed, layers.attn.* or layers[0:4]")
    m = _RANGE.match(text)
    if m:
        a, b = (int(x) if x not in ("", "-") else None for x in (m["a"], m["b"]))
        return FreezeEntry(f"layers.{m['rest']}" if m["rest"] else "layers.*", (a, b))
    if "[" in text or "]" in text:
        raise ConfigError(where, f"cannot read {text!r}: a layer range is written layers[a:b] or layers[a:b].<name>")
    return FreezeEntry(text, None)


def _name(path: tuple) -> tuple[str, int | None]:
    """(dotted name without the layer index, the layer index of an unrolled block or None)."""
    keys = [getattr(k, "key", getattr(k, "idx", getattr(k, "name", k))) for k in path]
    layer = None
    if len(keys) > 1 and keys[0] == "layers" and is_layer_index(keys[1]):
        layer, keys = int(keys[1]), [keys[0], *keys[2:]]
    return ".".join(str(k) for k in keys), layer


def _matches(pattern: str, name: str) -> bool:
    return fnmatch.fnmatchcase(name, pattern) or name.startswith(pattern + ".")


@dataclass(frozen=True)
class Freeze:
    """Which parts of one parameter tree train. `plan` maps each leaf's path to None (trains
    whole), "frozen", or (a, b): the slice of stacked blocks that trains."""

    plan: dict[tuple, Any]

    @property
    def active(self) -> bool:
        return any(v is not None for v in self.plan.values())

    def describe(self) -> list[str]:
        return sorted(_name(p)[0] + ("" if v == "frozen" else f"[blocks {v[0]}:{v[1]} train]")
                      for p, v in self.plan.items() if v is not None)

    def view(self, tree: Any) -> Any:
        """The trainable view of params, of their ShapeDtypeStructs or of their shardings."""
        if not self.active:
            return tree

        def one(path, leaf):
            how = self.plan[path]
            if how is None:
                return leaf
            if how == "frozen":
                return None
            a, b = how
            if isinstance(leaf, jax.sharding.Sharding):
                return leaf  # the stacking axis is never sharded: a slice keeps the sharding
            if isinstance(leaf, jax.ShapeDtypeStruct):
                return jax.ShapeDtypeStruct((b - a, *leaf.shape[1:]), leaf.dtype, sharding=leaf.sharding)
            return leaf[a:b]

        return jax.tree_util.tree_map_with_path(one, tree, is_leaf=_is_leaf)

    def merge(self, view: Any, params: Any) -> Any:
        """params with the trainable view written back into them."""
        if not self.active:
            return view

        def one(path, p):
            how = self.plan[path]
            if how is None:
                return _at(view, path)
            if how == "frozen":
                return p
            a, _ = how
            return jax.lax.dynamic_update_slice_in_dim(p, _at(view, path).astype(p.dtype), a, axis=0)

        return jax.tree_util.tree_map_with_path(one, params)


def _is_leaf(x) -> bool:
    return isinstance(x, (jax.sharding.Sharding, jax.ShapeDtypeStruct))


def _at(tree: Any, path: tuple) -> Any:
    for k in path:
        tree = tree[getattr(k, "key", getattr(k, "idx", k))]
    return tree


def build_freeze(entries: list[str] | tuple[str, ...], abstract_params: Any, num_layers: int,
                 where: str = "optimizer.freeze") -> Freeze:
    """The freeze plan of `entries` over a parameter tree (either layer layout). Every entry must
    match something, and the blocks that train in a stacked tensor must be contiguous."""
    parsed = [parse_entry(e, where) for e in entries]
    leaves = jax.tree_util.tree_flatten_with_path(abstract_params, is_leaf=_is_leaf)[0]
    used = [False] * len(parsed)
    plan = {}
    for path, leaf in leaves:
        name, layer = _name(path)
        stacked = name.startswith("layers.") and layer is None
        frozen_blocks: set[int] = set()
        whole = False
        for i, e in enumerate(parsed):
            if not _matches(e.pattern, name):
                continue
            if e.layers is None:
                whole, used[i] = True, True
                continue
            blocks = set(range(num_layers)[slice(*e.layers)])
            if not blocks:
                raise ConfigError(where, f"{entries[i]!r} selects no block of the model's {num_layers}")
            if stacked:
                frozen_blocks |= blocks
                used[i] = True
            elif layer is not None and layer in blocks:
                whole, used[i] = True, True
            elif layer is not None:
                used[i] = True  # matched the name; this block is outside the range
        if whole or frozen_blocks >= set(range(num_layers)) and stacked:
            plan[path] = "frozen"
        elif frozen_blocks:
            train = sorted(set(range(num_layers)) - frozen_blocks)
            if train != list(range(train[0], train[-1] + 1)):
                raise ConfigError(where, f"the blocks that train in {name} ({train}) must be contiguous in the "
                                         "scanned layout: freeze the bottom or the top blocks (layers[0:k] or "
                                         "layers[k:]), or set model.scan_layers: false")
            plan[path] = (train[0], train[-1] + 1)
        else:
            plan[path] = None
    for i, ok in enumerate(used):
        if not ok:
            names = sorted({_name(p)[0] for p, _ in leaves})
            raise ConfigError(where, f"{entries[i]!r} matches no parameter; the model's are {', '.join(names)}")
    if all(v == "frozen" for v in plan.values()):
        raise ConfigError(where, "freezes every parameter: nothing would train")
    return Freeze(plan)


def carry_opt_state(old: Any, fresh: Any) -> tuple[Any, int]:
    """The optimizer state of a phase whose freeze differs from the phase before: every entry of
    `fresh` (the new view's initial state) that `old` holds at the same path and shape is taken
    from `old`; the rest (parameters that start training now) start afresh. Returns the state and
    the number of tensors that started afresh."""
    held = {p: x for p, x in jax.tree_util.tree_flatten_with_path(old)[0]}
    leaves, treedef = jax.tree_util.tree_flatten_with_path(fresh)
    out, fresh_count = [], 0
    for path, x in leaves:
        y = held.get(path)
        if y is not None and y.shape == x.shape and y.dtype == x.dtype:
            out.append(y)
        else:
            out.append(x)
            fresh_count += 1
    return jax.tree_util.tree_unflatten(treedef, out), fresh_count
