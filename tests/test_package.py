"""The package as users get it: a small core install, a wheel that carries the spaces, a light solver
import, a curated public API, honest floors, and the layers kept apart."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
import sysconfig
from importlib import metadata
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "ranksearch"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
#: the import name of each core dependency
CORE = {"torch": "torch", "optuna": "optuna", "numpy": "numpy", "safetensors": "safetensors", "pyyaml": "yaml", "tqdm": "tqdm",
        "xxhash": "xxhash"}
#: import names that only an extra brings
EXTRA_MODULES = ("torchvision", "mlxtend", "sklearn", "skimage", "scipy", "cmaes", "matplotlib", "onnx", "onnxruntime", "onnxscript",
                 "psycopg", "optuna_dashboard", "pandas", "PIL")


def _requirement(req: str) -> tuple[str, str]:
    m = re.fullmatch(r"([A-Za-z0-9_.-]+)(?:\[[^]]*\])?\s*>=\s*([0-9.]+)(?:,.*)?", req)
    assert m, f"dependency {req!r} has no '>=' floor"
    return m.group(1).lower(), m.group(2)


def _version(v: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", v)[:3])


def test_import_solver_loads_neither_torch_nor_optuna():
    code = ("import sys, ranksearch; from ranksearch.core import Curve, solve_ratio; "
            "print(sorted(m for m in ('torch', 'optuna', 'ranksearch.study', 'ranksearch._api') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("package", ["ranksearch", "ranksearch.core", "ranksearch.study", "ranksearch.results", "ranksearch.spaces"])
def test_every_public_name_resolves(package):
    import importlib
    import inspect

    module = importlib.import_module(package)
    assert module.__all__ == sorted(module.__all__) and module.__all__
    for name in module.__all__:
        value = getattr(module, name)
        assert value is not None, name
        assert name in dir(module)
        if inspect.isclass(value) or inspect.isfunction(value):  # ranksearch's own, not a re-export of torch's or optuna's
            assert value.__module__.startswith("ranksearch"), (name, value.__module__)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        module.nope  # noqa: B018


def test_the_errors_users_catch_are_public():
    import ranksearch

    assert issubclass(ranksearch.ConfigError, ranksearch.RankSearchError) and issubclass(ranksearch.RankSearchError, ValueError)
    assert callable(ranksearch.search) and callable(ranksearch.search_points) and callable(ranksearch.run_worker)


#: The oldest version of each dependency the code works with, and what in the code needs it.
NEEDED = {
    "optuna": ("5.0", "trial.set_constraint (the budget constraint; constraints_func is deprecated)"),
    "torch": ("2.5", "torch.onnx.export(dynamo=True, dynamic_shapes=...) of the ONNX format"),
    "numpy": ("1.24", "the solver's numpy API"),
    "safetensors": ("0.4", "safe_open metadata of the factorized weights"),
    "pyyaml": ("6", "yaml.safe_load of the spaces"),
    "torchvision": ("0.20", "the torchvision that goes with torch 2.5 (zoo)"),
    "matplotlib": ("3.7", "the report's figures: the Agg backend, MaxNLocator, savefig into a buffer (report)"),
}


def test_core_dependencies_are_exactly_the_small_set():
    assert {_requirement(r)[0] for r in PYPROJECT["project"]["dependencies"]} == set(CORE)


def test_dependency_floors_are_the_versions_the_code_needs():
    floors = dict(_requirement(r) for r in PYPROJECT["project"]["dependencies"])
    for _extra, reqs in PYPROJECT["project"]["optional-dependencies"].items():
        floors.update(_requirement(r) for r in reqs if not r.startswith("ranksearch"))
    for name, (needed, why) in NEEDED.items():
        assert name in floors, f"{name} ({why}) is not a dependency or in an extra"
        assert _version(floors[name]) >= _version(needed), f"{name}>={floors[name]} is below {needed}, needed for {why}"
    for name, floor in floors.items():  # what is installed here satisfies every floor
        assert _version(metadata.version(name)) >= _version(floor), f"installed {name} {metadata.version(name)} < {floor}"


def _imports(path: Path) -> list[tuple[str, bool]]:
    """Every imported top-level module of a file, and whether the import runs when the module loads
    (module level, not inside a function and not under ``if TYPE_CHECKING:``)."""
    tree = ast.parse(path.read_text())
    out: list[tuple[str, bool]] = []

    def visit(node: ast.AST, loading: bool) -> None:
        for child in ast.iter_child_nodes(node):
            here = loading and not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                here = False
            if isinstance(child, ast.Import):
                out.extend((a.name.split(".")[0], here) for a in child.names)
            elif isinstance(child, ast.ImportFrom) and child.level == 0 and child.module:
                out.append((child.module.split(".")[0], here))
            visit(child, here)

    visit(tree, True)
    return out


def _outside_zoo() -> list[Path]:
    return [p for p in PACKAGE.rglob("*.py") if "zoo" not in p.relative_to(PACKAGE).parts]


def test_each_core_dependency_is_imported_outside_the_zoo():
    imported = {name for p in _outside_zoo() for name, _ in _imports(p)}
    assert set(CORE.values()) <= imported, set(CORE.values()) - imported


def test_outside_the_zoo_only_core_dependencies_load_with_a_module():
    """An extra's package is imported only where its feature runs (inside a function), so a core install
    imports every module of ranksearch."""
    allowed = set(CORE.values()) | set(sys.stdlib_module_names) | {"ranksearch", "__future__"}
    bad = [(str(p.relative_to(ROOT)), name) for p in _outside_zoo() for name, loading in _imports(p) if loading and name not in allowed]
    assert not bad, bad


def _core_site(tmp: Path) -> Path:
    """A folder holding links to exactly the core dependencies' files and theirs (their metadata's closure),
    taken from this environment: what ``pip install ranksearch`` without extras installs, without downloading."""
    from packaging.requirements import Requirement

    site = tmp / "core-site"
    site.mkdir()
    todo, seen = list(CORE), set()
    while todo:
        name = todo.pop().lower().replace("_", "-")
        if name in seen:
            continue
        seen.add(name)
        dist = metadata.distribution(name)
        for req in dist.requires or []:
            r = Requirement(req)
            if r.marker is None or r.marker.evaluate({"extra": ""}):
                todo.append(r.name)
        for f in dist.files or []:
            top = f.parts[0]
            if top.endswith((".pth",)) or top.startswith("__editable__") or top in ("..", "__pycache__"):
                continue
            src = Path(dist.locate_file(top))
            if src.exists() and not (site / top).exists():
                (site / top).symlink_to(src)
    return site


@pytest.mark.slow
def test_a_core_install_alone_runs_a_search_on_a_users_model(tmp_path):
    """A fresh venv with ranksearch's wheel and only its core dependencies: a Python-API search on a user's
    own model and metric runs, writes its results (the report is skipped with one line naming the extra)
    and imports no package of an extra."""
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist), str(ROOT)], check=True,
                   capture_output=True, text=True)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    purelib = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], capture_output=True,
                             text=True, check=True).stdout.strip()
    (Path(purelib) / "core.pth").write_text(str(_core_site(tmp_path)) + "\n")
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(next(dist.glob("*.whl")))], check=True,
                   capture_output=True, text=True)
    script = f"""
import importlib.util, sys, torch, ranksearch
assert all(importlib.util.find_spec(m) is None for m in {EXTRA_MODULES!r}), "an extra is installed"
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 8))
x = torch.randn(256, 32)
y = model(x).argmax(1)
def evaluate(m):
    with torch.no_grad():
        return float((m(x).argmax(1) == y).float().mean())
result = ranksearch.search(model, ranksearch.SearchSettings(0.4, sampler="random"), evaluate=evaluate, calibration=[x[:64]],
                           run=ranksearch.RunOptions(n_trials=4, out_dir={str(tmp_path / "out")!r}))
print("ratio", result.config.achieved_ratio)
print("extras", sorted(m for m in sys.modules if m.split(".")[0] in {EXTRA_MODULES!r}))
"""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "RANKSEARCH_SPACES")}
    out = subprocess.run([str(py), "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "extras []" in out.stdout and float(out.stdout.split("ratio ")[1].split()[0]) <= 0.4
    assert (tmp_path / "out" / "rank_config.json").is_file() and not (tmp_path / "out" / "report.html").exists()
    assert "report.html not written" in out.stderr and "pip install 'ranksearch[report]'" in out.stderr


@pytest.mark.slow
def test_a_wheel_installs_and_solves_the_default_space(tmp_path):
    """Build a wheel, install it (without the repository on the path) into a fresh venv that sees this
    environment's dependencies, and run ``ranksearch solve --space mnist5k-cnn`` from elsewhere."""
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist), str(ROOT)], check=True,
                   capture_output=True, text=True)
    wheel = next(dist.glob("ranksearch-*.whl"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    # the dependencies come from this environment: its site-packages as a plain path entry (its .pth
    # files, among them the editable install's, are not run from there)
    site = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], capture_output=True,
                          text=True, check=True).stdout.strip()
    (Path(site) / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)], check=True,
                   capture_output=True, text=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "RANKSEARCH_SPACES")}
    where = subprocess.run([str(py), "-c", "import ranksearch, pathlib; print(pathlib.Path(ranksearch.__file__).parent)"],
                           cwd=elsewhere, env=env, capture_output=True, text=True, check=True).stdout.strip()
    assert Path(where).is_relative_to(venv), where  # the wheel's copy, not the repository
    assert (Path(where) / "py.typed").is_file()  # type checkers read its hints
    out = subprocess.run([str(venv / "bin" / "ranksearch"), "solve", "--space", "mnist5k-cnn", "--ratio", "0.25", "--out", "cfg.json"],
                         cwd=elsewhere, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert (elsewhere / "cfg.json").is_file()
    listed = subprocess.run([str(py), "-c", "from ranksearch.spaces import list_spaces; print(' '.join(sorted(list_spaces())))"],
                            cwd=elsewhere, env=env, capture_output=True, text=True, check=True).stdout.split()
    assert listed == sorted(p.stem for p in (ROOT / "search_spaces").glob("*.yaml"))  # the wheel carries every space
