"""Two real text domains that every Python installation carries, so the demo downloads nothing.

prose: the docstrings of the standard library (English technical prose), extracted with `ast`.
code:  the standard library's source with every docstring removed (so the domains do not share
       text). Files are split into train and held-out by a hash of their path, which is stable
       across machines with the same Python version.
"""

from __future__ import annotations

import ast
import hashlib
import json
import sysconfig
from pathlib import Path

SKIP_DIRS = {"test", "tests", "idlelib", "lib2to3", "site-packages", "__pycache__", "ensurepip", "turtledemo"}


def stdlib_files(limit: int | None = None) -> list[Path]:
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in root.rglob("*.py") if not (set(p.relative_to(root).parts[:-1]) & SKIP_DIRS))
    return files[:limit] if limit else files


def _docstring_nodes(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                    and isinstance(body[0].value.value, str):
                yield node


def split_file(source: str) -> tuple[list[str], str] | None:
    """(docstrings, code without docstrings) of one module, or None if it does not parse."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return None
    docs = []
    for node in list(_docstring_nodes(tree)):
        text = ast.get_docstring(node, clean=True)
        if text and len(text.split()) >= 8:
            docs.append(text)
        node.body[0] = ast.Pass() if len(node.body) == 1 else None
        node.body = [b for b in node.body if b is not None]
    try:
        code = ast.unparse(tree)
    except Exception:  # noqa: BLE001 - a module ast cannot unparse is simply skipped
        return None
    return docs, code


def is_heldout(path: Path, fraction: float) -> bool:
    h = int(hashlib.sha256(path.name.encode()).hexdigest()[:8], 16)
    return h / 0xFFFFFFFF < fraction


def build_corpus(out_dir: str | Path, *, max_files: int | None = None, heldout_fraction: float = 0.08,
                 max_code_chars: int = 20000) -> dict:
    """Write prose/{train,heldout}.jsonl and code/{train,heldout}.jsonl ({"text": ...} per line)."""
    out = Path(out_dir)
    counts: dict[str, int] = {}
    writers = {}
    for domain in ("prose", "code"):
        (out / domain).mkdir(parents=True, exist_ok=True)
        for split in ("train", "heldout"):
            writers[domain, split] = (out / domain / f"{split}.jsonl.tmp").open("w")
            counts[f"{domain}/{split}"] = 0
    for path in stdlib_files(max_files):
        try:
            source = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        parts = split_file(source)
        if parts is None:
            continue
        docs, code = parts
        split = "heldout" if is_heldout(path, heldout_fraction) else "train"
        for doc in docs:
            writers["prose", split].write(json.dumps({"text": doc}) + "\n")
            counts[f"prose/{split}"] += 1
        # Long modules are cut into pieces so one file cannot dominate a batch.
        for start in range(0, len(code), max_code_chars):
            writers["code", split].write(json.dumps({"text": code[start:start + max_code_chars]}) + "\n")
            counts[f"code/{split}"] += 1
    for (domain, split), f in writers.items():
        f.close()
        (out / domain / f"{split}.jsonl.tmp").replace(out / domain / f"{split}.jsonl")
    return counts
