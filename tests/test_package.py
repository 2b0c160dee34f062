"""The package as users get it: a wheel that carries the spaces, a light solver import, honest floors."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import sysconfig
import tomllib
from importlib import metadata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_import_solver_loads_neither_torch_nor_optuna():
    code = "import sys, ranksearch.solver; print(sorted(m for m in ('torch', 'optuna', 'ranksearch.search') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"


def test_the_lazy_package_still_exports_its_api():
    import ranksearch
    import ranksearch.search  # noqa: F401  (the submodule does not rebind the function's name)
    import ranksearch.spectra  # noqa: F401

    assert callable(ranksearch.search) and ranksearch.search.__module__ == "ranksearch.search"
    assert callable(ranksearch.spectra) and ranksearch.spectra.__module__ == "ranksearch.spectra"
    for name in ranksearch.__all__:
        assert getattr(ranksearch, name).__name__ == name
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        ranksearch.nope  # noqa: B018


#: The oldest version of each dependency the code works with, and what in the code needs it.
NEEDED = {
    "optuna": ("5.0", "trial.set_constraint (the budget constraint; constraints_func is deprecated)"),
    "torch": ("2.5", "torch.onnx.export(dynamo=True, dynamic_shapes=...) of the ONNX format"),
    "torchvision": ("0.20", "the torchvision that goes with torch 2.5"),
    "numpy": ("1.24", "the solver's numpy API"),
    "safetensors": ("0.4", "safe_open metadata of the factorized weights"),
    "pyyaml": ("6", "yaml.safe_load of the spaces"),
    "matplotlib": ("3.7", "the report's figures (the Agg backend, MaxNLocator, savefig into a buffer)"),
}


def _floors() -> dict[str, str]:
    out = {}
    for req in PYPROJECT["project"]["dependencies"]:
        m = re.fullmatch(r"([A-Za-z0-9_.-]+)(?:\[[^]]*\])?\s*>=\s*([0-9.]+)(?:,.*)?", req)
        assert m, f"dependency {req!r} has no '>=' floor"
        out[m.group(1).lower()] = m.group(2)
    return out


def _version(v: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", v)[:3])


def test_dependency_floors_are_the_versions_the_code_needs():
    floors = _floors()
    for name, (needed, why) in NEEDED.items():
        assert name in floors, f"{name} ({why}) is not a dependency"
        assert _version(floors[name]) >= _version(needed), f"{name}>={floors[name]} is below {needed}, needed for {why}"
    for name, floor in floors.items():  # what is installed here satisfies every floor
        assert _version(metadata.version(name)) >= _version(floor), f"installed {name} {metadata.version(name)} < {floor}"


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
    out = subprocess.run([str(venv / "bin" / "ranksearch"), "solve", "--space", "mnist5k-cnn", "--ratio", "0.25", "--out", "cfg.json"],
                         cwd=elsewhere, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert (elsewhere / "cfg.json").is_file()
    listed = subprocess.run([str(py), "-c", "from ranksearch.spaces import list_spaces; print(' '.join(sorted(list_spaces())))"],
                            cwd=elsewhere, env=env, capture_output=True, text=True, check=True).stdout.split()
    assert listed == sorted(p.stem for p in (ROOT / "search_spaces").glob("*.yaml"))  # the wheel carries every space
