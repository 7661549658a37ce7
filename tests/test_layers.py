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


def test_benchmark_scripts_have_no_import_cycle():
    scripts = {p.stem: p for p in (REPO / "benchmarks").glob("*.py")}
    graph = {name: _sibling_imports(path, set(scripts)) for name, path in scripts.items()}
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(name: str, path: list[str]) -> None:
        state[name] = 1
        for dep in graph[name]:
            assert state.get(dep) != 1, f"import cycle: {' -> '.join([*path, name, dep])}"
            if dep not in state:
                visit(dep, [*path, name])
        state[name] = 2

    for name in graph:
        if name not in state:
            visit(name, [])


def test_a_cycle_would_be_found(tmp_path):
    """The checker above is not vacuous: two scripts importing each other are reported."""
    (tmp_path / "a.py").write_text("from b import x\n")
    (tmp_path / "b.py").write_text("import a\n")
    assert _sibling_imports(tmp_path / "a.py", {"a", "b"}) == {"b"}
    assert _sibling_imports(tmp_path / "b.py", {"a", "b"}) == {"a"}


def test_cli_errors_are_the_library_hierarchy():
    from cpt_jax.errors import CheckpointError, ConfigError, DataError, TrainingDiverged, UserError

    for cls in (ConfigError, DataError, CheckpointError, TrainingDiverged):
        assert issubclass(cls, UserError)
    assert not (REPO / "cpt_jax" / "cli" / "errors.py").exists()
