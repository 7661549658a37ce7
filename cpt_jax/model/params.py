"""The model's parameter tree without a trainer: abstract shapes, shardings, random init, the
shape check that every start point (checkpoint, HF folder) must pass, and the conversion between
the two layer layouts.

Layouts of params["layers"]: unrolled {0: block, 1: block, ...} (scan_layers false), or stacked:
one block tree whose every leaf has a leading [num_layers] axis (scan_layers true). The
conversion works on any tree holding parameter trees (params, optimizer state whose moments
mirror them) and on any leaf kind: arrays, ShapeDtypeStructs or shardings, so a checkpoint can be
restored in the layout it was saved in and converted on device.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from cpt_jax.errors import CheckpointError
from cpt_jax.model.config import ModelConfig
from cpt_jax.model.decoder import Decoder
from cpt_jax.sharding.rules import DEFAULT_RULES, Sharder, state_shardings


def abstract_model(cfg: ModelConfig, mesh: Mesh | None = None, rules=DEFAULT_RULES):
    """Graph definition and abstract parameters, without allocating anything."""
    sharder = Sharder(mesh, rules)
    model = nnx.eval_shape(lambda: Decoder(cfg, nnx.Rngs(0), sharder))
    graphdef, state = nnx.split(model)
    return graphdef, state


def abstract_params(cfg: ModelConfig):
    """Shape/dtype tree of the parameters, as a pure dict."""
    return nnx.to_pure_dict(abstract_model(cfg)[1])


def with_shardings(abstract: Any, shardings: Any) -> Any:
    """Attach target shardings to a shape/dtype tree (what orbax restores onto)."""
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract, shardings)


def param_shardings(cfg: ModelConfig, mesh: Mesh, rules=DEFAULT_RULES):
    _, state = abstract_model(cfg, mesh, rules)
    return nnx.to_pure_dict(state_shardings(state, mesh, rules))


def init_params(cfg: ModelConfig, mesh: Mesh, seed: int, rules=DEFAULT_RULES):
    """Random init directly into the target shardings (no full copy on one device)."""
    shardings = param_shardings(cfg, mesh, rules)

    @jax.jit
    def init():
        return nnx.to_pure_dict(nnx.state(Decoder(cfg, nnx.Rngs(seed))))

    return jax.jit(init, out_shardings=shardings)()


def param_shapes(cfg: ModelConfig) -> dict:
    """{key path: shape} of every parameter of the model `cfg` describes."""
    leaves = jax.tree_util.tree_flatten_with_path(abstract_params(cfg))[0]
    return {path: tuple(x.shape) for path, x in leaves}


def check_compatible(loaded: ModelConfig, expected: ModelConfig, where: str) -> None:
    """Refuse a start point whose tensors do not match the run's model, naming the first one.
    The layer layout is no difference (loading converts it); shapes are compared per layer."""
    want_shapes, got_shapes = (param_shapes(dataclasses.replace(cfg, scan_layers=False))
                               for cfg in (expected, loaded))
    for path, shape in want_shapes.items():
        name = jax.tree_util.keystr(path, simple=True, separator=".")
        if path not in got_shapes:
            raise CheckpointError(f"{where}: tensor {name} is missing from the start point; its model config "
                                  "differs from the run's model section")
        if got_shapes[path] != shape:
            raise CheckpointError(f"{where}: tensor {name} has shape {got_shapes[path]} but the run's model "
                                  f"needs {shape}; make the run's model section match the start point")
    extra = set(got_shapes) - set(want_shapes)
    if extra:
        name = jax.tree_util.keystr(sorted(extra, key=str)[0], simple=True, separator=".")
        raise CheckpointError(f"{where}: the start point has tensor {name}, which the run's model lacks")


# ----------------------------------------------------------------- layer layouts
def is_layer_index(key: Any) -> bool:
    return isinstance(key, int) or (isinstance(key, str) and key.isdigit())


def is_stacked(params: Any) -> bool:
    """Whether a parameter tree (or a tree shaped like one) holds its layers stacked."""
    return not all(is_layer_index(k) for k in params["layers"])


def _stack_leaves(*leaves):
    first = leaves[0]
    if isinstance(first, NamedSharding):
        return NamedSharding(first.mesh, PartitionSpec(None, *first.spec))
    if isinstance(first, jax.sharding.Sharding):
        return first
    if isinstance(first, jax.ShapeDtypeStruct):
        sharding = _stack_leaves(first.sharding) if first.sharding is not None else None
        return jax.ShapeDtypeStruct((len(leaves), *first.shape), first.dtype, sharding=sharding)
    return jnp.stack(leaves)


def _layer_leaf(leaf, i: int):
    if isinstance(leaf, NamedSharding):
        return NamedSharding(leaf.mesh, PartitionSpec(*leaf.spec[1:]))
    if isinstance(leaf, jax.sharding.Sharding):
        return leaf
    if isinstance(leaf, jax.ShapeDtypeStruct):
        sharding = _layer_leaf(leaf.sharding, i) if leaf.sharding is not None else None
        return jax.ShapeDtypeStruct(leaf.shape[1:], leaf.dtype, sharding=sharding)
    return leaf[i]


def _is_leaf(x) -> bool:
    return isinstance(x, (jax.sharding.Sharding, jax.ShapeDtypeStruct))


def stack_layers(params: dict) -> dict:
    """Unrolled -> stacked (a no-op on a stacked tree)."""
    if is_stacked(params):
        return params
    layers = params["layers"]
    ordered = [layers[k] for k in sorted(layers, key=int)]
    return {**params, "layers": jax.tree.map(_stack_leaves, *ordered, is_leaf=_is_leaf)}


def num_stacked(params: dict) -> int:
    leaf = jax.tree.leaves(params["layers"], is_leaf=_is_leaf)[0]
    if isinstance(leaf, jax.sharding.Sharding):
        raise TypeError("the number of layers cannot be read from a tree of shardings; pass num_layers")
    return leaf.shape[0]


def unstack_layers(params: dict, num_layers: int | None = None) -> dict:
    """Stacked -> unrolled with integer layer keys (a no-op on an unrolled tree)."""
    if not is_stacked(params):
        return params
    n = num_layers if num_layers is not None else num_stacked(params)
    stacked = params["layers"]
    return {**params, "layers": {i: jax.tree.map(lambda x, i=i: _layer_leaf(x, i), stacked, is_leaf=_is_leaf)
                                 for i in range(n)}}


def layer_param(params: dict, layer: int, path: tuple) -> Any:
    """Layer `layer`'s tensor at `path` inside the block (e.g. ("attn", "q")), in either layout."""
    tree = params["layers"]
    if not is_stacked(params):
        tree = tree[layer] if layer in tree else tree[str(layer)]
    for key in path:
        tree = tree[key]
    return tree if not is_stacked(params) else _layer_leaf(tree, layer)


def map_param_trees(tree: Any, fn) -> Any:
    """Apply `fn` to every parameter tree (a dict with 'layers' and 'embed') inside `tree`:
    the params themselves, or the moments inside an optax state (tuples, named tuples, dicts)."""
    if isinstance(tree, dict):
        if "layers" in tree and "embed" in tree:
            return fn(tree)
        return {k: map_param_trees(v, fn) for k, v in tree.items()}
    if isinstance(tree, tuple) and hasattr(tree, "_fields"):
        return type(tree)(*(map_param_trees(v, fn) for v in tree))
    if isinstance(tree, (list, tuple)):
        return type(tree)(map_param_trees(v, fn) for v in tree)
    return tree


def to_layout(tree: Any, scanned: bool, num_layers: int | None = None) -> Any:
    """Every parameter tree inside `tree` in the stacked (scanned) or unrolled layout."""
    return map_param_trees(tree, stack_layers if scanned else lambda p: unstack_layers(p, num_layers))


def find_layout(tree: Any) -> bool | None:
    """True (stacked) / False (unrolled) for the first parameter tree inside `tree`; None if none."""
    found = []
    map_param_trees(tree, lambda p: found.append(is_stacked(p)) or p)
    return found[0] if found else None


def relayout(tree: Any, scanned: bool, shardings: Any = None, num_layers: int | None = None) -> Any:
    """Convert a tree of arrays to `scanned`'s layout on device, onto `shardings` (a tree in the
    new layout; None: XLA's choice). Both layouts are on device during the call (donating the
    input would not help: no output has an input's shape)."""
    if find_layout(tree) in (None, scanned):
        return tree
    return jax.jit(lambda t: to_layout(t, scanned, num_layers), out_shardings=shardings)(tree)

