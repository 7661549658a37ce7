"""Typed dataclass configs built from plain dicts (YAML) with strict validation.

Every config in cpt_jax is a frozen dataclass. `from_dict` walks the type hints, so an unknown
key, a wrong type or an impossible value stops the run with one message naming the dotted key,
before anything is compiled. Each dataclass may define `validate(self, path)` for cross-field
rules; it raises `ConfigError` through `fail`.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

import yaml

from cpt_jax.errors import ConfigError
from cpt_jax.storage import as_path

T = TypeVar("T")


def fail(path: str, key: str, message: str) -> typing.NoReturn:
    raise ConfigError(join(path, key), message)


def join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


def _type_name(tp: Any) -> str:
    if get_origin(tp) is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    return getattr(tp, "__name__", str(tp)).replace("typing.", "")


def _convert(value: Any, tp: Any, path: str) -> Any:
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, path)
            except ConfigError as e:
                errors.append(e)
        if len(errors) == 1:  # Optional[X]: X's own error, with the key inside X it names
            raise errors[0]
        raise ConfigError(path, f"expected {' or '.join(_type_name(a) for a in args)}, got {value!r}")
    if origin is Literal:
        choices = get_args(tp)
        if value not in choices:
            hint = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
            extra = f" (did you mean {hint[0]!r}?)" if hint else ""
            raise ConfigError(path, f"must be one of {', '.join(map(repr, choices))}, got {value!r}{extra}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(path, f"expected a list, got {value!r}")
        args = get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise ConfigError(path, f"expected {len(args)} items, got {len(value)}")
            return tuple(_convert(v, a, join(path, i)) for i, (v, a) in enumerate(zip(args, value)))
        item = args[0] if args else Any
        out = [_convert(v, item, join(path, i)) for i, v in enumerate(value)]
        return tuple(out) if origin is tuple else out
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(path, f"expected a mapping, got {value!r}")
        kt, vt = get_args(tp) or (Any, Any)
        return {_convert(k, kt, path): _convert(v, vt, join(path, str(k))) for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, path)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(path, f"expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(path, f"expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            if isinstance(value, str):
                try:  # YAML 1.1 reads "3e-4" as a string; accept it as the number it means.
                    return float(value)
                except ValueError:
                    pass
            raise ConfigError(path, f"expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(path, f"expected a string, got {value!r}")
        return value
    raise TypeError(f"unsupported config type {tp} at {path}")


def from_dict(cls: type[T], data: Any, path: str = "") -> T:
    """Build dataclass `cls` from a mapping, rejecting unknown keys and wrong types."""
    if isinstance(data, cls):
        return data
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(path, f"expected a mapping for {cls.__name__}, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    for key in data:
        if key not in fields:
            hint = difflib.get_close_matches(str(key), list(fields), n=1)
            extra = f"; did you mean '{hint[0]}'?" if hint else f"; known keys: {', '.join(sorted(fields))}"
            raise ConfigError(join(path, str(key)), f"unknown key{extra}")
    kwargs = {}
    for name, f in fields.items():
        if name in data:
            kwargs[name] = _convert(data[name], hints[name], join(path, name))
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(join(path, name), "required key is missing")
    obj = cls(**kwargs)
    validate = getattr(obj, "validate", None)
    if validate is not None:
        validate(path)
    return obj


def to_dict(obj: Any) -> Any:
    """Plain-data form of a config (for YAML dumps and checkpoint metadata)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def fingerprint(obj: Any, ignore: tuple[str, ...] = ()) -> str:
    """Short stable hash of a config's plain form, leaving out the top-level sections in `ignore`.
    The one fingerprint of cpt_jax: which sections to ignore says what it protects."""
    plain = {k: v for k, v in to_dict(obj).items() if k not in ignore}
    return hashlib.sha256(json.dumps(plain, sort_keys=True, default=str).encode()).hexdigest()[:16]


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply `a.b.c=value` overrides; values are parsed as YAML scalars/flow collections."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(item, "override must look like key.sub=value")
        key, raw = item.split("=", 1)
        value = yaml.safe_load(raw) if raw != "" else ""
        node = data
        parts = key.split(".")
        for i, part in enumerate(parts[:-1]):
            if isinstance(node, list):
                node = node[_list_index(node, part, ".".join(parts[: i + 1]))]
                continue
            nxt = node.get(part)
            if nxt is None:
                nxt = node[part] = {}
            elif not isinstance(nxt, (dict, list)):
                raise ConfigError(".".join(parts[: i + 1]), f"is a value ({nxt!r}), not a section")
            node = nxt
        if isinstance(node, list):
            node[_list_index(node, parts[-1], key)] = value
        else:
            node[parts[-1]] = value
    return data


def _list_index(node: list, part: str, key: str) -> int:
    if not part.isdigit() or int(part) >= len(node):
        raise ConfigError(key, f"list index must be 0..{len(node) - 1}, got {part!r}")
    return int(part)


def load_yaml(path: str | Path) -> dict:
    path = as_path(path)
    if not path.is_file():
        raise ConfigError("", f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError("", f"{path} is not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError("", f"{path} must hold a mapping at the top level")
    return data


def require(cond: bool, path: str, key: str, message: str) -> None:
    if not cond:
        fail(path, key, message)
