"""Search spaces: declarative YAML files naming a model, its data, working points and recipes
(``search_spaces/``), and the zoo of small models and data they use (``ranksearch.spaces.zoo``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ranksearch._lazy import exports

_NAMES = {"Space": "_space", "cache_root": "_space", "list_spaces": "_space", "load_space": "_space", "spaces_dirs": "_space"}
__all__ = sorted(_NAMES)
__getattr__, __dir__ = exports(__name__, _NAMES)

if TYPE_CHECKING:
    from ranksearch.spaces._space import Space, cache_root, list_spaces, load_space, spaces_dirs
