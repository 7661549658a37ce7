"""Is a run checkpoint step damaged? Judged from its own files only.

A restore can fail for two reasons: the step's files are broken (a disk error, a half-copied
directory), or this invocation cannot take them (another device count or mesh, too little memory).
Only the first may cost a checkpoint, so a step is called damaged only when its files fail on
their own: every file is read back on the host without this run's config, mesh or devices, and
the parts are checked against each other (metadata step and format, array shapes against the
model config the step records).
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp

from cpt_jax.config.base import from_dict
from cpt_jax.errors import ConfigError, brief
from cpt_jax.model.config import ModelConfig
from cpt_jax.model.params import abstract_params
from cpt_jax.storage import as_path

ARRAY_ITEMS = ("params", "opt_state")
OPTIONAL_ITEMS = ("ema",)  # the weight EMA, in runs that keep one (same tree as params)
META_FIELDS = ("model", "phase", "phase_step")


def _meta_damage(step_dir: Path, step: int, fmt: str) -> tuple[str | None, dict]:
    try:
        meta = json.loads((step_dir / "meta" / "metadata").read_text())
    except (OSError, ValueError) as e:
        return f"its meta/metadata file is unreadable ({brief(e)})", {}
    if not isinstance(meta, dict):
        return "its meta/metadata file holds no JSON object", {}
    if meta.get("format") != fmt:
        return f"its meta/metadata says format {meta.get('format')!r}, not {fmt!r}", meta
    if meta.get("step") != step:
        return f"its meta/metadata says step {meta.get('step')!r}, not {step}", meta
    missing = [k for k in META_FIELDS if k not in meta]
    if missing:
        return f"its meta/metadata lacks {', '.join(missing)}", meta
    return None, meta


def _saved_shapes(meta: dict) -> dict | None:
    """{path: shape} of the parameters the step's own model config describes; None when this
    cpt_jax cannot read that config (a version question, not damage)."""
    try:
        cfg = from_dict(ModelConfig, {"scan_layers": False, **meta["model"]}, "model")
    except (ConfigError, TypeError, ValueError):
        return None
    leaves = jax.tree_util.tree_flatten_with_path(abstract_params(cfg))[0]
    return {jax.tree_util.keystr(p, simple=True, separator="."): tuple(x.shape) for p, x in leaves}


def _array_damage(item_dir: Path, expected_shapes: dict | None) -> str | None:
    """Read the item's tree metadata, then every array, one at a time, to host memory."""
    name = item_dir.name
    handler = ocp.PyTreeCheckpointHandler()
    try:
        tree = handler.metadata(item_dir).tree
    except Exception as e:  # noqa: BLE001 - orbax reports broken metadata in many ways
        return f"the array metadata of {name} is unreadable ({brief(e)})"
    finally:
        handler.close()
    leaves = [(p, x) for p, x in jax.tree_util.tree_flatten_with_path(tree)[0] if hasattr(x, "shape")]
    if not leaves:
        return f"{name} holds no arrays"
    if expected_shapes is not None:
        got = {jax.tree_util.keystr(p, simple=True, separator="."): tuple(x.shape) for p, x in leaves}
        if got != expected_shapes:
            bad = sorted(set(got) ^ set(expected_shapes)) or sorted(k for k in got if got[k] != expected_shapes[k])
            return f"{name} does not match the model config in its own metadata (first difference: {bad[0]})"
    reader = ocp.PyTreeCheckpointer()
    try:
        for path, _ in leaves:
            one = jax.tree_util.tree_map_with_path(lambda p, x, path=path: x if p == path else ocp.PLACEHOLDER, tree)
            args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), one)
            reader.restore(item_dir, args=ocp.args.PyTreeRestore(item=one, restore_args=args))
    except MemoryError:
        raise
    except Exception as e:  # noqa: BLE001 - tensorstore reports unreadable chunks in many ways
        return f"array {jax.tree_util.keystr(path, simple=True, separator='.')} of {name} is unreadable ({brief(e)})"
    finally:
        reader.close()
    return None


def find_damage(step_dir: str | Path, step: int, fmt: str) -> str | None:
    """What is wrong with the step's own files (a short phrase), or None if they are whole:
    all present, all readable on the host, and consistent with each other."""
    step_dir = as_path(step_dir)
    if not step_dir.is_dir():
        return "its directory is missing"
    missing = [n for n in (*ARRAY_ITEMS, "meta") if not (step_dir / n).is_dir()]
    if missing:
        return f"its {', '.join(missing)} {'item is' if len(missing) == 1 else 'items are'} missing"
    try:
        json.loads((step_dir / "_CHECKPOINT_METADATA").read_text())
    except (OSError, ValueError) as e:
        return f"its _CHECKPOINT_METADATA file is unreadable ({brief(e)})"
    damage, meta = _meta_damage(step_dir, step, fmt)
    if damage:
        return damage
    shapes = _saved_shapes(meta)
    optional = tuple(n for n in OPTIONAL_ITEMS if (step_dir / n).is_dir())
    for item in (*ARRAY_ITEMS, *optional):
        damage = _array_damage(step_dir / item, shapes if item in ("params", "ema") else None)
        if damage:
            return damage
    return None
