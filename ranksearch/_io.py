"""Files: atomic writes (a temporary file beside the target, renamed into place), a check that a path can be
written before any work, and a bounded JSON reader whose errors are one line."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ranksearch.errors import ConfigError, RankSearchError

__all__ = ["MAX_DEPTH", "atomic_path", "atomic_write_bytes", "atomic_write_text", "check_writable", "read_json"]


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces ``path``, on error it is removed,
    so a crash leaves the old file or none, never a half-written one."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    finally:
        Path(tmp).unlink(missing_ok=True)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def check_writable(path: str | os.PathLike[str], *, folder: bool, what: str) -> Path:
    """Fail fast, before any work, if ``path`` cannot be written (as a folder or as a file), without
    creating anything: an existing path must be of the right kind, the nearest existing parent a
    writable folder."""
    p = Path(path)
    if str(path).strip() == "":
        raise RankSearchError(f"{what} is empty; give a path, e.g. runs/wp.")
    if p.exists():
        if folder and not p.is_dir():
            raise RankSearchError(f"{what} {str(p)!r} is a file, not a folder; give a folder path.")
        if not folder and p.is_dir():
            raise RankSearchError(f"{what} {str(p)!r} is a folder; give a file path.")
        target = p if folder else p.parent
        if not os.access(target, os.W_OK):
            raise RankSearchError(f"{what} {str(p)!r} is not writable; give a path you can write.")
        return p
    parent = p.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise RankSearchError(f"{what} {str(p)!r} lies under the file {str(parent)!r}; give a path under a folder.")
    if not os.access(parent, os.W_OK):
        raise RankSearchError(f"{what} {str(p)!r} cannot be created: {str(parent)!r} is not writable.")
    return p


#: how deeply a JSON file ranksearch reads may nest (a rank config nests 4 levels)
MAX_DEPTH = 32


def _depth(value: object) -> int:
    """How deeply ``value`` nests (a scalar is 0), without recursion."""
    deepest, todo = 0, [(value, 1)]
    while todo:
        item, level = todo.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is not None:
            deepest = max(deepest, level)
            todo.extend((c, level + 1) for c in children)
    return deepest


def read_json(path: str | os.PathLike[str], what: str, fix: str) -> object:
    """The JSON in the file at ``path`` (``what`` names it in errors, ``fix`` says what to do), refused in
    one line when it is missing, a folder, not text, not JSON, or nested deeper than :data:`MAX_DEPTH`."""
    p = Path(path)
    if p.is_dir():
        raise ConfigError(f"{what} {str(p)!r} is a folder, not a file; {fix}.")
    try:
        data = json.loads(p.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{what} {str(p)!r} does not exist; {fix}.") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{what} {str(p)!r} is not text (not JSON); {fix}.") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"{what} {str(p)!r} is not valid JSON ({e}); {fix}.") from None
    except RecursionError:
        raise ConfigError(f"{what} {str(p)!r} nests deeper than JSON can be read; {fix}.") from None
    if (depth := _depth(data)) > MAX_DEPTH:
        raise ConfigError(f"{what} {str(p)!r} nests {depth} levels deep (at most {MAX_DEPTH}); {fix}.")
    return data
