"""Which way dependencies may run (docs/ARCHITECTURE.md), checked by reading every import statement.

Function-level imports count: a lazy import is still a dependency.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "moc_cli"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path) -> list[tuple[int, str, list[str]]]:
    """(line, absolute module, imported names) of every import in a file."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            target = node.module or ""
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join([*base, target] if target else base)
            found.append((node.lineno, target, [alias.name for alias in node.names]))
    return found


def _files(folder: str) -> list[Path]:
    return sorted((ROOT / folder).rglob("*.py"))


def _violations(folder: str, forbidden: tuple[str, ...], allowed: tuple[str, ...] = ()) -> list[str]:
    out = []
    for path in _files(folder):
        for line, target, _ in imports_of(path):
            if target.startswith(forbidden) and not target.startswith(allowed):
                out.append(f"{path.relative_to(ROOT)}:{line} imports {target}")
    return out


_OTHER_THAN_TUNER = tuple(
    f"moc_cli.{p.name if p.is_dir() else p.stem}"
    for p in PACKAGE.iterdir()
    if p.name not in ("tuner", "__pycache__", "__init__.py") and (p.is_dir() or p.suffix == ".py")
)


def test_the_tuner_imports_nothing_else_of_moc_cli() -> None:
    assert _violations("moc_cli/tuner", _OTHER_THAN_TUNER) == []
    assert all(target != "moc_cli" for p in _files("moc_cli/tuner") for _, target, _ in imports_of(p))


def test_the_molex_baseline_is_a_tuner_of_its_own() -> None:
    others = tuple(m for m in _OTHER_THAN_TUNER if m != "moc_cli.baselines") + ("moc_cli.tuner",)
    assert _violations("moc_cli/baselines", others) == []


def test_tasks_import_neither_the_cli_nor_training() -> None:
    assert _violations("moc_cli/tasks", ("moc_cli.cli", "moc_cli.training")) == []


def test_export_does_not_import_training() -> None:
    assert _violations("moc_cli/export", ("moc_cli.training",)) == []


def test_config_imports_neither_training_export_nor_cli() -> None:
    assert _violations("moc_cli/config", ("moc_cli.training", "moc_cli.export", "moc_cli.cli")) == []


def _public_names(module: str) -> set[str] | None:
    """Names a moc_cli package exports (`__all__`), or None for a plain module (all of it is public)."""
    path = ROOT / Path(*module.split("."))
    if not (path / "__init__.py").is_file():
        return None
    exported = getattr(importlib.import_module(module), "__all__", None)
    return set(exported or ())


def reach_violations(label: str, imports: list[tuple[int, str, list[str]]], own: str | None) -> list[str]:
    """Imports of moc_cli that reach past a package's `__init__` (submodules, unexported names)."""
    out = []
    for line, target, names in imports:
        if not target.startswith("moc_cli") or (own and target.startswith(own)):
            continue
        where = f"{label}:{line}"
        parent = target.rpartition(".")[0]
        if target.count(".") >= 2 and (ROOT / Path(*parent.split(".")) / "__init__.py").is_file():
            out.append(f"{where} imports the submodule {target}")
            continue
        public = _public_names(target)
        if public is None:
            continue
        folder = ROOT / Path(*target.split("."))
        hidden = [n for n in names if n not in public and not (folder / f"{n}.py").is_file()]
        out += [f"{where} imports {target}.{n}, which {target} does not export" for n in hidden]
    return out


def _reach_violations_in(paths: list[Path], own: str | None) -> list[str]:
    return [v for path in paths for v in reach_violations(str(path.relative_to(ROOT)), imports_of(path), own)]


def test_benchmark_scripts_use_the_public_api_only() -> None:
    assert _reach_violations_in(sorted((ROOT / "benchmarks").glob("*.py")), None) == []


def test_what_moc_bench_runs_uses_the_public_api_only() -> None:
    assert _reach_violations_in(_files("moc_cli/bench"), "moc_cli.bench") == []


@pytest.mark.parametrize(
    "source, expected",
    [
        (
            "from moc_cli.training.methods import apply_method\n",
            ["x.py:1 imports the submodule moc_cli.training.methods"],
        ),
        ("from moc_cli.training import apply_method\n", []),
        ("from moc_cli.methods import METHODS\n", []),
        (
            "from moc_cli.tuner import not_exported_name\n",
            ["x.py:1 imports moc_cli.tuner.not_exported_name, which moc_cli.tuner does not export"],
        ),
        (
            "def f():\n    import moc_cli.export.build\n",
            ["x.py:2 imports the submodule moc_cli.export.build"],
        ),
    ],
)
def test_the_checker_catches_reaching_past_a_package(
    tmp_path: Path, source: str, expected: list[str]
) -> None:
    script = tmp_path / "x.py"
    script.write_text(source, encoding="utf-8")
    assert reach_violations("x.py", _imports_in(script), None) == expected


def _imports_in(path: Path) -> list[tuple[int, str, list[str]]]:
    out: list[tuple[int, str, list[str]]] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            out.append((node.lineno, node.module or "", [alias.name for alias in node.names]))
    return out
