"""Markdown reference of every config key, generated from the dataclasses themselves (types,
defaults, the comment on each field's line, the class docstring), so the docs cannot drift."""

from __future__ import annotations

import dataclasses
import inspect
import io
import tokenize
import typing

from cpt_jax.config.base import _type_name


def _field_comments(cls) -> dict[str, str]:
    comments: dict[str, str] = {}
    try:
        source = inspect.getsource(cls)
    except (OSError, TypeError):
        return comments
    tokens = list(tokenize.generate_tokens(io.StringIO(source).readline))
    for i, tok in enumerate(tokens):
        if tok.type == tokenize.COMMENT:
            line = tok.start[0]
            names = [t.string for t in tokens[:i] if t.start[0] == line and t.type == tokenize.NAME]
            if names and names[0] in {f.name for f in dataclasses.fields(cls)}:
                comments[names[0]] = tok.string.lstrip("# ").strip()
    return comments


def _type(tp) -> str:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        return " or ".join(_type(a) for a in args if a is not type(None)) + (" or null" if type(None) in args else "")
    if origin in (list, tuple):
        return f"list of {_type(args[0])}" if args else "list"
    if origin is dict:
        return f"mapping of {_type(args[0])} to {_type(args[1])}"
    if origin is typing.Literal:
        return "one of " + ", ".join(f"`{a}`" for a in args)
    return _type_name(tp)


def _default(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        return "`null`" if f.default is None else f"`{f.default!r}`".replace("'", "")
    if f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
        return "see below" if dataclasses.is_dataclass(value) else f"`{value!r}`"
    return "**required**"


def reference(cls, path: str = "", seen: set | None = None) -> str:
    seen = set() if seen is None else seen
    hints = typing.get_type_hints(cls)
    comments = _field_comments(cls)
    title = path or "(top level)"
    doc = inspect.cleandoc(cls.__doc__ or "") if cls.__doc__ and not cls.__doc__.startswith(cls.__name__ + "(") else ""
    out = [f"## `{title}` ({cls.__name__})", ""]
    if doc:
        out += [doc, ""]
    out += ["| key | type | default | meaning |", "|---|---|---|---|"]
    nested = []
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        out.append(f"| `{f.name}` | {_type(tp)} | {_default(f)} | {comments.get(f.name, '').replace('|', '/')} |")
        for inner in (tp, *typing.get_args(tp), *[a for t in typing.get_args(tp) for a in typing.get_args(t)]):
            if dataclasses.is_dataclass(inner) and inner not in seen:
                seen.add(inner)
                sub = f"{path}.{f.name}" if path else f.name
                if typing.get_origin(tp) in (list, tuple):
                    sub += "[i]"
                elif typing.get_origin(tp) is dict:
                    sub += ".<name>"
                nested.append((inner, sub))
    out.append("")
    for inner, sub in nested:
        out.append(reference(inner, sub, seen))
    return "\n".join(out)
