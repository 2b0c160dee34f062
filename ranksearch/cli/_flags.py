"""Command-line flags generated from the settings' described fields (help, default and allowed values
are the field's: :mod:`ranksearch._fields`), and the settings file that may hold any of them.

A generated flag's default is ``argparse.SUPPRESS``: a flag not given is absent from the parsed
namespace, so the field's value comes from the next source (a ``--settings`` file, the space, the
dataclass default), in that order of precedence: flag > file > space > default.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, NoReturn

import yaml

from ranksearch._fields import Spec, check_value, spec
from ranksearch._io import read_json
from ranksearch.errors import ConfigError

__all__ = ["Parser", "add_fields", "given", "rare_flags", "read_settings_file"]


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage dump): ``ranksearch CMD: error: ...``, exit 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _checked(s: Spec, name: str, value: Any) -> Any:
    """``value`` checked as the field's (:func:`~ranksearch._fields.check_value`), an argparse error if not."""
    try:
        return check_value(name, value, s)
    except ConfigError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _choice(s: Spec, name: str) -> Any:
    """The argparse ``type`` of a choice: its values, also spelled with ``-`` for ``_``."""
    def parse(text: str) -> Any:
        values = {m.value for m in s.choices or ()}
        return _checked(s, name, text.replace("-", "_") if text.replace("-", "_") in values else text)
    return parse


def _typed(s: Spec, name: str) -> Any:
    """The argparse ``type`` of a field: the text parsed as the field's kind, then checked."""
    def parse(text: str) -> Any:
        value: Any = text
        if s.auto and text == "auto":
            return "auto"
        try:
            if s.kind == "int":
                value = int(text)
            elif s.kind == "float":
                value = float(text)
            elif s.kind == "strings":
                value = tuple(t.strip() for t in text.split(",") if t.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} {text!r} is not {'an int' if s.kind == 'int' else 'a number'}"
                                             f"{' (or auto)' if s.auto else ''}") from None
        return _checked(s, name, value)
    return parse


def _flag(f: dataclasses.Field[Any], s: Spec) -> str:
    return s.flag or "--" + f.name.replace("_", "-")


def _default_text(default: Any) -> str:
    if isinstance(default, tuple):
        return ",".join(default) or "none"
    return str(default)


def add_fields(parser: argparse.ArgumentParser, cls: type[Any], groups: dict[str, Any], *, show_rare: bool,
               only: Iterable[str] | None = None, defaults: Mapping[str, str] | None = None) -> list[str]:
    """Add a flag for every described field of ``cls`` that has a command-line group (or those in ``only``),
    into ``groups`` (made on first use); returns the fields added. ``defaults`` overrides the default
    shown in the help (e.g. "the space's")."""
    added = []
    keep = set(only) if only is not None else None
    for f in dataclasses.fields(cls):
        s = spec(f)
        if s is None or s.group is None or (keep is not None and f.name not in keep):
            continue
        group = groups.get(s.group)
        if group is None:
            group = groups[s.group] = parser.add_argument_group(s.group)
        shown = (defaults or {}).get(f.name, _default_text(f.default))
        help_text = argparse.SUPPRESS if s.rare and not show_rare else f"{s.help} (default: {shown})"
        flag = _flag(f, s)
        if s.kind == "bool":
            if f.default is True:
                group.add_argument("--no-" + f.name.replace("_", "-"), dest=f.name, action="store_false", default=argparse.SUPPRESS,
                                   help=argparse.SUPPRESS if help_text is argparse.SUPPRESS else f"do not: {s.help}")
            else:
                group.add_argument(flag, dest=f.name, action="store_true", default=argparse.SUPPRESS,
                                   help=argparse.SUPPRESS if help_text is argparse.SUPPRESS else s.help)
        elif s.kind == "choice":
            assert s.choices is not None
            group.add_argument(flag, dest=f.name, type=_choice(s, flag), default=argparse.SUPPRESS,
                               metavar="{" + ",".join(m.value for m in s.choices) + "}", help=help_text)
        else:
            metavar = s.metavar or {"int": "N", "float": "X", "strings": "A,B"}.get(s.kind, f.name.split("_")[-1].upper())
            group.add_argument(flag, dest=f.name, type=_typed(s, flag), default=argparse.SUPPRESS, metavar=metavar, help=help_text)
        added.append(f.name)
    return added


def rare_flags(cls: type[Any]) -> list[str]:
    """The flags ``--help`` leaves out (``--help-all`` lists them)."""
    out = []
    for f in dataclasses.fields(cls):
        s = spec(f)
        if s is not None and s.group is not None and s.rare:
            out.append(_flag(f, s))
    return out


def given(args: argparse.Namespace, names: Iterable[str]) -> dict[str, Any]:
    """The fields among ``names`` given on the command line."""
    return {n: getattr(args, n) for n in names if hasattr(args, n)}


def read_settings_file(path: str) -> dict[str, Any]:
    """A ``--settings`` file: a YAML or JSON mapping of :class:`~ranksearch.SearchSettings` fields (what
    ``SearchSettings.to_dict`` writes; ``retrain`` may give only the recipe fields it changes)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"Settings file {path!r} does not exist; give a YAML or JSON file of SearchSettings fields.")
    if p.suffix not in (".yaml", ".yml"):
        data = read_json(p, "Settings file", "give a YAML or JSON file of SearchSettings fields")
    else:
        try:
            data = yaml.safe_load(p.read_text())
        except (yaml.YAMLError, UnicodeDecodeError, RecursionError) as e:
            raise ConfigError(f"Settings file {path!r} is not valid YAML ({(str(e).splitlines() or [type(e).__name__])[0]}).") from None
    if not isinstance(data, dict):
        raise ConfigError(f"Settings file {path!r} must hold a mapping of SearchSettings fields, not {type(data).__name__}.")
    return data
