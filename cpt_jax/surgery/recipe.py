"""MergeKit's YAML merge recipe as a typed, validated dataclass, and its parameter resolution.

The subset read here is MergeKit's `models:` form (no `slices:`/`modules:`): `merge_method`,
`base_model`, `models` (each `model` with its `parameters`), global `parameters`, `dtype`,
`out_dtype` and `tokenizer_source`. A parameter is a scalar, a gradient (a list of numbers
interpolated over the layers) or a list of `{filter, value}` conditions, resolved per tensor as
MergeKit resolves them (mergekit/config.py `evaluate_setting`, mergekit/plan.py): the model's
own parameters first, then the global ones; layer i of L sees t = i / (L - 1), every tensor
outside the layers t = 0. `int8_mask` (a memory option of MergeKit's torch masks, with no
effect on the result) is accepted and has no effect here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from cpt_jax.config.base import fail, from_dict, join, load_yaml, require

Method = Literal["linear", "task_arithmetic", "ties", "dare_ties", "dare_linear", "slerp"]
DType = Literal["float32", "bfloat16", "float16"]

# Parameters each method reads (MergeKit's specs): shared ones are read once per tensor, the
# others once per input model. `weight` has no default and must be given.
_TASK_ARITHMETIC = {"shared": {"normalize": None, "rescale": None, "lambda": 1.0, "int8_mask": False},
                    "model": {"weight": None, "density": 1.0}}
METHOD_PARAMETERS: dict[str, dict[str, dict[str, Any]]] = {
    "linear": {"shared": {"normalize": True}, "model": {"weight": None}},
    "slerp": {"shared": {"t": None}, "model": {}},
    **{m: _TASK_ARITHMETIC for m in ("task_arithmetic", "ties", "dare_ties", "dare_linear")},
}
# (normalize, rescale) defaults of the task-arithmetic family, as MergeKit registers them.
TASK_ARITHMETIC_DEFAULTS = {"task_arithmetic": (False, False), "ties": (True, False),
                            "dare_ties": (False, True), "dare_linear": (False, True)}
NEEDS_BASE = ("task_arithmetic", "ties", "dare_ties", "dare_linear", "slerp")
RANDOM_METHODS = ("dare_ties", "dare_linear")
BOOL_PARAMETERS = ("normalize", "rescale", "int8_mask")
LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.")


def _check_setting(value: Any, path: str, key: str) -> None:
    """A scalar, a list of scalars (gradient), a {filter, value} mapping or a list of them."""
    if isinstance(value, (bool, int, float, str)):
        return
    if isinstance(value, dict):
        unknown = sorted(set(value) - {"filter", "value"})
        require(not unknown, path, key, f"a conditional parameter has keys 'filter' and 'value', not {unknown}")
        require("value" in value, path, key, "a conditional parameter needs a 'value'")
        require(value.get("filter") is None or isinstance(value.get("filter"), str), path, key,
                "'filter' must be a substring of tensor names, e.g. self_attn")
        _check_setting(value["value"], path, key)
        return
    if isinstance(value, list) and value:
        if all(isinstance(v, (bool, int, float, str)) for v in value):
            return
        if all(isinstance(v, dict) for v in value):
            for v in value:
                _check_setting(v, path, key)
            return
    fail(path, key, f"expected a number, a list of numbers (a gradient over layers) or a list of "
                    f"{{filter, value}} conditions, got {value!r}")


def _check_parameters(params: dict, allowed: set[str], path: str, method: str) -> None:
    for key, value in params.items():
        if key not in allowed:
            fail(path, key, f"unknown parameter for merge_method {method}; it takes "
                            f"{', '.join(sorted(allowed)) or 'no parameters here'}")
        _check_setting(value, path, key)


@dataclass(frozen=True)
class ModelEntry:
    model: str  # an HF folder, or ckpt:RUN_OR_CKPT_DIR[@STEP]
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Recipe:
    """A MergeKit recipe (models form). `parameters.seed` (DARE's masks) is cpt_jax's addition."""

    merge_method: Method
    models: tuple[ModelEntry, ...]
    base_model: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    dtype: DType | None = None  # inputs are cast to it before merging (default: the inputs' own)
    out_dtype: DType | None = None  # written dtype (default: dtype)
    tokenizer_source: str | None = None  # "base" or one of the models (default: the base, else the first model)

    def validate(self, path: str) -> None:
        spec = METHOD_PARAMETERS[self.merge_method]
        require(len(self.models) > 0, path, "models", "list at least one model to merge")
        if self.merge_method in NEEDS_BASE:
            require(self.base_model is not None, path, "base_model",
                    f"merge_method {self.merge_method} needs a base_model (the model the others differ from)")
        if self.merge_method == "slerp":
            others = [m for m in self.models if m.model != self.base_model]
            require(len(others) == 1, path, "models",
                    "slerp interpolates between base_model and exactly one other model; list those two")
        shared, per_model = set(spec["shared"]), set(spec["model"])
        global_allowed = shared | per_model | ({"seed"} if self.merge_method in RANDOM_METHODS else set())
        _check_parameters(self.parameters, global_allowed, join(path, "parameters"), self.merge_method)
        seed = self.parameters.get("seed")
        require(seed is None or (isinstance(seed, int) and not isinstance(seed, bool) and seed >= 0),
                join(path, "parameters"), "seed", "must be a non-negative integer")
        for i, entry in enumerate(self.models):
            where = join(join(join(path, "models"), i), "parameters")
            _check_parameters(entry.parameters, per_model, where, self.merge_method)
            weighted = entry.model != self.base_model or self.merge_method == "linear"
            if "weight" in per_model and "weight" not in self.parameters and weighted:
                require("weight" in entry.parameters, where, "weight",
                        f"every model of a {self.merge_method} merge needs a weight "
                        "(or give one for all under the global parameters)")
        if self.merge_method == "linear" and "weight" not in self.parameters:
            require(len(self.inputs()) == len(self.models), path, "base_model",
                    "a linear merge averages base_model too (as MergeKit does); list it under models "
                    "with a weight, or remove base_model")
        require(self.tokenizer_source in (None, "base", *(m.model for m in self.inputs())), path, "tokenizer_source",
                "cpt_jax merges models of one vocabulary only: use 'base' or one of the models "
                f"(MergeKit's 'union' and tokenizer surgery are not supported), got {self.tokenizer_source!r}")
        if "t" in shared:
            require("t" in self.parameters, path, "parameters",
                    "slerp needs parameters.t (0: base_model, 1: the other)")

    def inputs(self) -> list[ModelEntry]:
        """The models merged, in order; as in MergeKit a base_model not listed is appended."""
        listed = list(self.models)
        if self.base_model is not None and all(m.model != self.base_model for m in listed):
            listed.append(ModelEntry(self.base_model))
        return listed

    def reference(self) -> str:
        """The model whose config.json the output takes (MergeKit's choice)."""
        return self.base_model if self.base_model is not None else self.models[0].model

    def tokenizer_model(self) -> str:
        """The model whose tokenizer files the output takes."""
        return self.reference() if self.tokenizer_source in (None, "base") else self.tokenizer_source


def load_recipe(path: str | Path) -> Recipe:
    return from_dict(Recipe, load_yaml(path))


def layer_position(tensor_name: str, num_layers: int) -> float:
    """MergeKit's t for gradients: i / (L - 1) in decoder layer i, 0 elsewhere (1 with one layer)."""
    m = LAYER.search(tensor_name)
    if m is None:
        return 0.0
    return int(m.group(1)) / (num_layers - 1) if num_layers > 1 else 1.0


def evaluate(setting: Any, tensor_name: str, t: float) -> Any:
    """One parameter's value for one tensor (None: no condition matched)."""
    if isinstance(setting, dict):
        setting = [setting]
    if isinstance(setting, (bool, int, float, str)):
        return setting
    if all(not isinstance(v, dict) for v in setting):
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in setting):
            return setting[int(t * (len(setting) - 1))]
        scaled = t * (len(setting) - 1)
        i0 = int(scaled)
        i1 = min(len(setting) - 1, i0 + 1)
        frac = scaled - i0
        return (1 - frac) * setting[i0] + frac * setting[i1]
    for cond in setting:
        flt = cond.get("filter")
        if flt is None or flt == "*" or flt in tensor_name:
            return evaluate(cond["value"], tensor_name, t)
    return None


def resolve(name: str, scopes: list[dict], tensor_name: str, t: float, default: Any, what: str) -> Any:
    """The first scope (highest precedence first) that sets `name` for this tensor, else the default."""
    for scope in scopes:
        if name in scope:
            value = evaluate(scope[name], tensor_name, t)
            if value is not None:
                return _typed(name, value, what)
    if default is None:
        fail(what, name, f"no value applies to tensor {tensor_name!r}; add one without a filter")
    return default


def _typed(name: str, value: Any, what: str) -> Any:
    if name in BOOL_PARAMETERS:
        require(isinstance(value, bool), what, name, f"expected true or false, got {value!r}")
        return value
    try:
        return float(value)
    except (TypeError, ValueError):
        fail(what, name, f"expected a number, got {value!r}")
