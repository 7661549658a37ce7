"""The architecture stays as README draws it: layers import only downward (import-linter's contract
in pyproject.toml), no import cycles in cpt_jax or among the benchmark scripts, and the library
raises only its own error hierarchy."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_import_linter_contracts_are_kept():
    lint = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run([str(lint), "--no-cache"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "0 broken" in result.stdout


def _sibling_imports(path: Path, names: set[str]) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
        elif isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
    return found & names - {path.stem}


def import_cycle(folder: Path) -> list[str] | None:
    """The first import cycle among the scripts of `folder` (as a path a -> b -> a), or None."""
    scripts = {p.stem: p for p in folder.glob("*.py")}
    graph = {name: _sibling_imports(path, set(scripts)) for name, path in scripts.items()}
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(name: str, path: list[str]) -> list[str] | None:
        state[name] = 1
        for dep in sorted(graph[name]):
            if state.get(dep) == 1:
                return [*path, name, dep]
            if dep not in state:
                found = visit(dep, [*path, name])
                if found:
                    return found
        state[name] = 2
        return None

    for name in sorted(graph):
        if name not in state:
            found = visit(name, [])
            if found:
                return found
    return None


def test_benchmark_scripts_have_no_import_cycle():
    cycle = import_cycle(REPO / "benchmarks")
    assert cycle is None, f"import cycle: {' -> '.join(cycle)}"


def test_a_cycle_would_be_found(tmp_path):
    """The checker above is not vacuous: it reports a planted cycle (a -> b -> c -> a), and the
    same scripts with the cycle broken pass."""
    (tmp_path / "a.py").write_text("from b import x\n")
    (tmp_path / "b.py").write_text("import c\n")
    (tmp_path / "c.py").write_text("import a\nimport json\n")
    assert import_cycle(tmp_path) == ["a", "b", "c", "a"]
    (tmp_path / "c.py").write_text("import json\n")  # broken: c no longer imports a
    assert import_cycle(tmp_path) is None


def test_cli_errors_are_the_library_hierarchy():
    from cpt_jax.errors import CheckpointError, ConfigError, DataError, TrainingDiverged, UserError

    for cls in (ConfigError, DataError, CheckpointError, TrainingDiverged):
        assert issubclass(cls, UserError)
    assert not (REPO / "cpt_jax" / "cli" / "errors.py").exists()
