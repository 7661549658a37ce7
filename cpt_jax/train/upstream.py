"""The model of a plan whose first phase starts from a Hugging Face folder: the architecture is
that folder's config.json (read as import-hf reads it), so the plan gives only how it runs."""

from __future__ import annotations

from typing import Any

from cpt_jax.config.base import from_dict, to_dict
from cpt_jax.errors import ConfigError
from cpt_jax.hf.config_map import hf_config_to_model_config
from cpt_jax.hf.importer import read_hf_config
from cpt_jax.model.config import ModelConfig
from cpt_jax.storage import as_path

# Keys a plan may set over the upstream model: how it runs, not what it is.
RUN_ONLY = ("dtype", "param_dtype", "remat", "attention", "scan_layers", "scan_unroll", "initializer_range")
# Keys compared by what they mean (head_dim null and the head width written out are one model).
EFFECTIVE = {"head_dim": "dim_per_head", "num_kv_heads": "kv_heads"}


def _hf_dir(plan: dict) -> str | None:
    phases = plan.get("phases")
    first = phases[0] if isinstance(phases, list) and phases and isinstance(phases[0], dict) else {}
    init = first.get("init")
    return init[3:] if isinstance(init, str) and init.startswith("hf:") else None


def _value(cfg: ModelConfig, key: str) -> Any:
    return getattr(cfg, EFFECTIVE.get(key, key))


def resolve_upstream_model(plan: dict) -> dict:
    """`plan` (a plain dict) with its model section taken from phases[0]'s `hf:DIR`: the upstream
    architecture, with the plan's run-only keys (RUN_ONLY) over it. A plan key that says another
    architecture (hidden_size, num_layers, rope_theta, ...) is refused, naming both values. A
    plan without such a start point, or whose folder is not there yet while the plan gives its
    own model (checked before training starts), is returned as it is."""
    hf_dir = _hf_dir(plan) if isinstance(plan, dict) else None
    given = plan.get("model") if hf_dir is not None else None
    if hf_dir is None or not isinstance(given if given is not None else {}, dict):
        return plan
    if not (as_path(hf_dir) / "config.json").is_file():
        if given is not None:
            return plan
        raise ConfigError("model", f"required key is missing, and phases[0].init hf:{hf_dir} has no config.json "
                                   "to take the model from; fix the path or give the model section")
    upstream = hf_config_to_model_config(read_hf_config(hf_dir))

    def contradiction(key: str, mine: Any, theirs: Any) -> ConfigError:
        return ConfigError(f"model.{key}", f"{mine!r} contradicts the upstream model {as_path(hf_dir) / 'config.json'} "
                                           f"({theirs!r}); phases[0] starts from it, so remove the key (the plan may "
                                           f"set only {', '.join(RUN_ONLY)})")

    # Plain values first: a key that contradicts the upstream is named as such, before the merged
    # model's own checks (a family's features, say) would report a consequence of it.
    plain = to_dict(upstream)
    for key, mine in (given or {}).items():
        if key not in RUN_ONLY and key not in EFFECTIVE and not isinstance(mine, dict) and key in plain \
                and plain[key] is not None and mine != plain[key]:
            raise contradiction(key, mine, plain[key])
    merged = from_dict(ModelConfig, {**plain, **(given or {})}, "model")
    for key in given or {}:
        if key not in RUN_ONLY and _value(merged, key) != _value(upstream, key):
            raise contradiction(key, to_dict(_value(merged, key)), to_dict(_value(upstream, key)))
    return {**plan, "model": to_dict(merged)}
