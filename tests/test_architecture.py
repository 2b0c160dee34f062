"""The shape the package keeps: layers that import only downwards, no circle, small modules, the settings
read only above the plan, and Optuna's private attributes only in the storage module."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "ranksearch"
#: each layer and the layers it may import (its own included); the base is errors, _io, _fields, _extras, _lazy, _process
BASE = "base"
MAY_IMPORT = {
    BASE: {BASE},
    "core": {BASE, "core"},
    "spaces": {BASE, "core", "spaces"},
    "study": {BASE, "core", "study"},
    "results": {BASE, "core", "study", "results"},
    "api": {BASE, "core", "study", "results", "spaces", "api"},
    "cli": {BASE, "core", "study", "results", "spaces", "api", "cli"},
    "root": {BASE, "core", "study", "results", "spaces", "api", "cli"},  # the package's face; nothing inside imports it
}
#: the study's modules that results may read: its record, storage and vocabulary, never the trial loop
RESULTS_MAY_READ = {"ranksearch.study._record", "ranksearch.study._storage", "ranksearch.study._vocab", "ranksearch.study._settings"}
#: the modules that may name SearchSettings: where settings are defined, stored, compared and resolved into a plan, and above
SETTINGS_READERS = {"ranksearch.study._settings", "ranksearch.study._record", "ranksearch.study._join", "ranksearch.study._plan",
                    "ranksearch.study", "ranksearch._api", "ranksearch._points", "ranksearch._from_space", "ranksearch",
                    "ranksearch.cli._commands", "ranksearch.cli._parser"}


def _name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _layer(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1:
        return "root"
    if parts[1] in ("errors", "_io", "_fields", "_extras", "_lazy", "_process"):
        return BASE
    if parts[1] in ("core", "spaces", "study", "results", "cli"):
        return parts[1]
    return "api"  # _api, _points, _workers, _from_space: the faces of the library


def _runtime_imports(path: Path) -> set[str]:
    """The ranksearch modules a file imports when it runs (imports under ``if TYPE_CHECKING:`` are not)."""
    out: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue
            if isinstance(child, ast.ImportFrom) and child.level == 0 and (child.module or "").startswith("ranksearch"):
                for alias in child.names:
                    full = f"{child.module}.{alias.name}"
                    out.add(full if full in MODULES else str(child.module))
            elif isinstance(child, ast.Import):
                out.update(a.name for a in child.names if a.name.startswith("ranksearch"))
            visit(child)

    visit(ast.parse(path.read_text()))
    return {m for m in out if m in MODULES}


GRAPH = {m: _runtime_imports(p) - {m} for m, p in MODULES.items()}


@pytest.mark.parametrize("module", sorted(MODULES))
def test_a_module_imports_only_its_layer_and_those_below(module):
    layer = _layer(module)
    bad = sorted(m for m in GRAPH[module] if _layer(m) not in MAY_IMPORT[layer])
    assert not bad, f"{module} ({layer}) imports {bad}"
    if layer == "results":
        study = sorted(m for m in GRAPH[module] if _layer(m) == "study" and m not in RESULTS_MAY_READ)
        assert not study, f"{module} reads the study's internals {study} (results read its record and storage only)"


def test_no_import_circle():
    state: dict[str, int] = {}

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for n in GRAPH[m]:
            if state.get(n) == 1:
                raise AssertionError(f"import circle: {' -> '.join([*path[path.index(n):], n])}")
            if n not in state:
                visit(n, [*path, n])
        state[m] = 2

    for m in MODULES:
        if m not in state:
            visit(m, [m])


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_module_over_450_lines(module):
    lines = len(MODULES[module].read_text().splitlines())
    assert lines <= 450, f"{module}: {lines} lines"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_below_the_plan_no_module_reads_the_settings(module):
    names = {n.id for n in ast.walk(ast.parse(MODULES[module].read_text())) if isinstance(n, ast.Name)}
    names |= {a.name for n in ast.walk(ast.parse(MODULES[module].read_text())) if isinstance(n, ast.ImportFrom) for a in n.names}
    if "SearchSettings" in names:
        assert module in SETTINGS_READERS, f"{module} names SearchSettings; give it the plan's components instead"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_optunas_private_attributes_only_in_the_storage_module(module):
    private = {"_storage", "_study_id", "_trial_id"}
    tree = ast.parse(MODULES[module].read_text())
    found = [n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute) and n.attr in private
             and not ast.unparse(n.value).startswith("ranksearch")]
    assert not found or module == "ranksearch.study._storage", f"{module} reaches {found}"
