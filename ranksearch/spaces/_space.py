"""Search spaces: declarative YAML files naming a model, its data, working points and recipes.

A space is looked up by name in the folders of ``RANKSEARCH_SPACES`` (separated by ``os.pathsep``),
then in the package's own spaces (``search_spaces/``, installed as ``ranksearch.search_spaces``), or
given as a path to a ``.yaml`` file. Factories are ``module:function`` strings,
so a user's own model needs no change to the package. Dense weights come from a local file
(``model.weights`` or ``--weights``); a space with a ``pretrain`` recipe and a task trains them here on
first use and caches them under ``RANKSEARCH_CACHE`` (default ``~/.cache/ranksearch``).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.resources
import inspect
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from ranksearch._extras import install_hint
from ranksearch.core._progress import bar
from ranksearch.core._retrain import RetrainSettings, fit
from ranksearch.core._task import Task
from ranksearch.core._weights import load_state_dict, save_state_dict
from ranksearch.errors import ConfigError, RankSearchError, SpaceError

__all__ = ["Space", "cache_root", "list_spaces", "load_space", "spaces_dirs"]

_log = logging.getLogger(__name__)
FORMAT = "ranksearch.space"
FORMAT_VERSION = 1
_FIELDS = {
    "format", "format_version", "name", "description", "model", "task", "working_points", "layers",
    "pretrain", "retrain", "solver", "metric", "input_shape",
}


def spaces_dirs() -> list[Path]:
    """Folders searched for space files: ``RANKSEARCH_SPACES`` entries, then the package's own
    (``ranksearch.search_spaces``: the repository's ``search_spaces/``, installed inside the package)."""
    extra = [Path(p) for p in os.environ.get("RANKSEARCH_SPACES", "").split(os.pathsep) if p]
    return extra + [Path(str(importlib.resources.files("ranksearch.search_spaces")))]


def cache_root() -> Path:
    """Root of ranksearch's caches (spectra, trained dense weights)."""
    return Path(os.environ.get("RANKSEARCH_CACHE", Path.home() / ".cache" / "ranksearch"))


def list_spaces() -> dict[str, Path]:
    """Space name -> file, over :func:`spaces_dirs` (earlier folders win)."""
    found: dict[str, Path] = {}
    for d in spaces_dirs():
        for p in sorted(d.glob("*.yaml")) if d.is_dir() else []:
            found.setdefault(p.stem, p)
    return found


#: packages the shipped spaces' models and data need (the ``zoo`` extra)
ZOO_PACKAGES = ("torchvision", "mlxtend", "sklearn", "skimage", "scipy")


def _missing_extra(ref: str, e: ImportError) -> SpaceError | None:
    """A factory that needs a package of the zoo extra, said in one line with the install command."""
    name = (getattr(e, "name", None) or "").split(".")[0]
    if name in ZOO_PACKAGES:
        return SpaceError(f"Factory {ref!r} needs {name}, which is not installed: {install_hint('zoo')}.")
    return None


def resolve(ref: str) -> Callable[..., Any]:
    """Import ``module:function``."""
    module, _, attr = ref.partition(":")
    if not module or not attr:
        raise SpaceError(f"Factory {ref!r} must be written 'module:function'.")
    try:
        fn: Callable[..., Any] = getattr(importlib.import_module(module), attr)
        return fn
    except ImportError as e:
        raise _missing_extra(ref, e) or SpaceError(f"Factory {ref!r} cannot be imported ({e}); check the module path.") from None
    except AttributeError as e:
        raise SpaceError(f"Factory {ref!r} cannot be imported ({e}); check the module path.") from None


def _call(ref: str, kwargs: dict[str, Any], what: str) -> Any:
    """Call a space's factory; an exception in the user's code becomes one line naming the factory
    (the original stays chained for ``--debug``)."""
    fn = resolve(ref)
    try:
        return fn(**kwargs)
    except RankSearchError:
        raise
    except Exception as e:
        if isinstance(e, ImportError) and (missing := _missing_extra(ref, e)) is not None:
            raise missing from e
        raise SpaceError(f"The {what} factory {ref!r} raised {type(e).__name__}: {(str(e).splitlines() or [''])[0][:200]} "
                         "(check the factory and its kwargs; --debug shows the traceback).") from e


def _load_into(model: nn.Module, state: dict[str, torch.Tensor], path: str, space: str) -> None:
    """Load dense weights, refusing a file made for another model in one line."""
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        detail = next((line.strip() for line in str(e).splitlines()[1:] if line.strip()), str(e)[:200])
        raise ConfigError(f"Weights file {path!r} does not fit the model of space {space!r} ({detail[:200]}); "
                          "pass the weights of this space's model.") from None


@dataclass(frozen=True)
class Space:
    """A validated space file. Build its parts with :meth:`build_model` and :meth:`build_task`."""

    name: str
    path: Path
    model_factory: str
    model_kwargs: dict[str, Any]
    weights: str | None
    task_factory: str | None
    task_kwargs: dict[str, Any]
    working_points: tuple[float, ...]
    exclude: dict[str, str]
    pretrain: RetrainSettings | None
    retrain: RetrainSettings
    rank_multiple: int = 1
    min_rank: int = 1
    description: str = ""
    metric: str | None = None
    input_shape: tuple[int, ...] | None = None  #: one input sample's shape (no batch dimension), for the cost model
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def with_weights(self, weights: str | None) -> Space:
        """The same space with dense weights from a local file (None keeps the file's setting)."""
        return self if weights is None else replace(self, weights=str(weights))

    def with_data(self, data: str | os.PathLike[str] | None) -> Space:
        """The same space reading its data from a local folder (its task factory's ``data_dir``); refused in
        one line for a space whose data ships with it (None keeps the file's setting)."""
        if data is None:
            return self
        if self.task_factory is None:
            raise SpaceError(f"--data {str(data)!r}: space {self.name!r} has no task (no data to read); leave --data out.")
        params = inspect.signature(resolve(self.task_factory)).parameters
        if "data_dir" not in params and not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
            raise SpaceError(f"--data {str(data)!r}: space {self.name!r} reads no data folder (its data ships with it: its task "
                             f"factory {self.task_factory} takes no data_dir); leave --data out.")
        return replace(self, task_kwargs={**self.task_kwargs, "data_dir": str(data)})

    def working_point(self, wp: str) -> float:
        """Ratio of ``WP1``..``WP4`` (1-based, as in Table 1 of the CE1 contribution)."""
        names = {f"WP{i + 1}": r for i, r in enumerate(self.working_points)}
        if wp.upper() not in names:
            raise SpaceError(f"Working point {wp!r} is not defined for space {self.name!r}; use one of {sorted(names)}.")
        return names[wp.upper()]

    def build_task(self) -> Task:
        """The space's data, loss and metric."""
        if self.task_factory is None:
            raise SpaceError(f"Space {self.name!r} has no task (data); it can be solved but not searched or retrained.")
        t = _call(self.task_factory, self.task_kwargs, "task")
        if not isinstance(t, Task):
            raise SpaceError(f"Task factory {self.task_factory!r} returned {type(t).__name__}, not ranksearch.Task.")
        return t

    def build_model(self, task: Task | None = None, *, allow_random: bool = False, progress: bool = False) -> nn.Module:
        """The dense model with its weights: a local file, or the cached/pretrained ones.

        Args:
            task: Used to pretrain when the space has a recipe and no weights are cached.
            allow_random: With no weights and no recipe, return the random initialization (logged).
            progress: Show a progress bar while the dense model is trained here.
        """
        model = self.build_architecture()
        if self.weights is not None:
            _load_into(model, load_state_dict(self.weights), self.weights, self.name)
            return model.eval()
        if self.pretrain is not None and self.task_factory is not None:
            path = self.pretrained_path()
            if path.exists():
                try:
                    _load_into(model, load_state_dict(path), str(path), self.name)
                    return model.eval()
                except ConfigError as e:  # a cache file a crash or another version left: trained again
                    _log.warning("cached dense weights %s are unusable (%s); training them again", path, str(e).split(" (")[0])
                    model = self.build_architecture()
            _log.info("training dense %s once (%d epochs); cached at %s", self.name, self.pretrain.epochs, path)
            with bar(self.pretrain.epochs, f"training dense {self.name}", progress, unit="epoch") as shown:
                fit(model, task or self.build_task(), self.pretrain, seed=0, device=torch.device("cpu"),
                    on_epoch=lambda epoch, value: shown.update(1))
            save_state_dict(model.cpu().state_dict(), path)
            model.load_state_dict(load_state_dict(path))  # as every later run reads it
            return model.eval()
        if not allow_random:
            raise SpaceError(f"Space {self.name!r} has no weights; pass --weights PATH to a local state dict.")
        _log.warning("space %s: no weights given, using a random initialization", self.name)
        return model.eval()

    def build_architecture(self) -> nn.Module:
        """The model with its seeded random initialization and no weights loaded, nothing trained: the
        shape to load another state dict into (e.g. a factorized model's retrained weights)."""
        with torch.random.fork_rng():  # the same initialization every time, global RNG untouched
            torch.manual_seed(0)
            model = _call(self.model_factory, self.model_kwargs, "model")
        if not isinstance(model, nn.Module):
            raise SpaceError(f"Model factory {self.model_factory!r} returned {type(model).__name__}, not nn.Module.")
        return model

    def pretrained_path(self) -> Path:
        """Where this space's dense weights trained here are cached (keyed by model, data and recipe)."""
        key = json.dumps([self.model_factory, self.model_kwargs, self.task_factory, self.task_kwargs, self.pretrain.to_dict() if self.pretrain else None], sort_keys=True)
        return cache_root() / "dense" / f"{self.name}-{hashlib.sha256(key.encode()).hexdigest()[:12]}.safetensors"


def _get(data: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str, default: Any = ...) -> Any:
    if key not in data:
        if default is ...:
            raise SpaceError(f"{where}: missing field {key!r}.")
        return default
    value = data[key]
    if not isinstance(value, kind):
        raise SpaceError(f"{where}: field {key!r} must be {getattr(kind, '__name__', kind)}, got {value!r}.")
    return value


def _recipe(data: dict[str, Any], key: str, where: str) -> RetrainSettings | None:
    raw = _get(data, key, (dict, type(None)), where, None)
    if raw is None:
        return None
    try:
        return RetrainSettings(**raw)
    except (TypeError, ValueError) as e:
        raise SpaceError(f"{where}: field {key!r}: {e}") from None


def parse_space(data: Any, path: Path) -> Space:
    """Validate a space file's content; every error names the file and the field."""
    where = f"space file {str(path)!r}"
    if not isinstance(data, dict):
        raise SpaceError(f"{where}: expected a mapping at top level, got {type(data).__name__}.")
    unknown = sorted(set(data) - _FIELDS)
    if unknown:
        raise SpaceError(f"{where}: unknown fields {unknown}; allowed: {sorted(_FIELDS)}.")
    if data.get("format") != FORMAT or data.get("format_version") != FORMAT_VERSION:
        raise SpaceError(f"{where}: field 'format' must be {FORMAT!r} with format_version {FORMAT_VERSION}.")
    model = _get(data, "model", dict, where)
    task = _get(data, "task", (dict, type(None)), where, None) or {}
    wps = _get(data, "working_points", list, where)
    if not wps or not all(isinstance(r, (int, float)) and 0 < r <= 1 for r in wps):
        raise SpaceError(f"{where}: field 'working_points' must list ratios in (0, 1], got {wps!r}.")
    layers = _get(data, "layers", (dict, type(None)), where, None) or {}
    exclude = _get(layers, "exclude", (dict, list, type(None)), f"{where} 'layers'", None) or {}
    exclude = {str(k): "excluded" for k in exclude} if isinstance(exclude, list) else {str(k): str(v) for k, v in exclude.items()}
    solver = _get(data, "solver", (dict, type(None)), where, None) or {}
    return Space(
        name=_get(data, "name", str, where),
        path=path,
        model_factory=_get(model, "factory", str, f"{where} 'model'"),
        model_kwargs=_get(model, "kwargs", (dict, type(None)), f"{where} 'model'", None) or {},
        weights=_get(model, "weights", (str, type(None)), f"{where} 'model'", None),
        task_factory=_get(task, "factory", (str, type(None)), f"{where} 'task'", None),
        task_kwargs=_get(task, "kwargs", (dict, type(None)), f"{where} 'task'", None) or {},
        working_points=tuple(float(r) for r in wps),
        exclude=exclude,
        pretrain=_recipe(data, "pretrain", where),
        retrain=_recipe(data, "retrain", where) or RetrainSettings(),
        rank_multiple=_get(solver, "rank_multiple", int, f"{where} 'solver'", 1),
        min_rank=_get(solver, "min_rank", int, f"{where} 'solver'", 1),
        description=_get(data, "description", str, where, ""),
        metric=_get(data, "metric", (str, type(None)), where, None),
        input_shape=_shape(data, where),
        raw=data,
    )


def _shape(data: dict[str, Any], where: str) -> tuple[int, ...] | None:
    shape = _get(data, "input_shape", (list, type(None)), where, None)
    if shape is None:
        return None
    if not shape or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape):
        raise SpaceError(f"{where}: field 'input_shape' must list positive ints (one sample, no batch), got {shape!r}.")
    return tuple(shape)


def load_space(name_or_path: str | os.PathLike[str]) -> Space:
    """Load a space by name (see :func:`list_spaces`) or from a ``.yaml`` file path."""
    ref = str(name_or_path)
    path = Path(ref) if ref.endswith((".yaml", ".yml")) or os.sep in ref else list_spaces().get(ref)
    if path is None or not path.is_file():
        raise SpaceError(f"Unknown space {ref!r}; known spaces: {sorted(list_spaces())} (or pass a .yaml path).")
    try:
        data = yaml.safe_load(path.read_text())
    except UnicodeDecodeError:
        raise SpaceError(f"space file {str(path)!r} is not text (YAML); give a space file (see search_spaces/).") from None
    except (yaml.YAMLError, RecursionError) as e:
        raise SpaceError(f"space file {str(path)!r} is not valid YAML: {(str(e).splitlines() or [type(e).__name__])[0]}") from None
    return parse_space(data, path)
