"""Described fields: each setting's default, help, allowed values and command-line group, in one place.

The frozen settings dataclasses (:class:`~ranksearch.study.SearchSettings`, :class:`~ranksearch.study.RunOptions`,
:class:`~ranksearch.core.RetrainSettings`) declare their fields with :func:`option`; :func:`validate` checks
and normalizes an instance from that metadata (one error per field, naming the value and what it must
be), :func:`document` writes the class's attribute docs from it, and the CLI generates its flags from it
(``ranksearch.cli``). So a default or a help text is written once.
"""

from __future__ import annotations

import dataclasses
import math
from enum import StrEnum
from typing import Any, Literal

from ranksearch.errors import ConfigError

__all__ = ["Kind", "Spec", "check_value", "document", "option", "spec", "validate"]

Kind = Literal["float", "int", "bool", "str", "choice", "strings", "floats"]


@dataclasses.dataclass(frozen=True)
class Spec:
    """What a field takes. ``low``/``high`` bound numbers (``open_low``/``open_high``: excluded);
    ``choices`` is the enum of a ``choice``; ``auto`` also allows the string ``"auto"``, ``custom`` strings
    with that prefix, ``optional`` None; ``group`` is the command-line section (None: no flag), ``flag``
    its name when not ``--field-name``, ``metavar`` its placeholder."""

    kind: Kind
    help: str
    low: float | None = None
    high: float | None = None
    open_low: bool = False
    open_high: bool = False
    choices: type[StrEnum] | None = None
    auto: bool = False
    custom: str | None = None
    optional: bool = False
    hint: str = ""
    group: str | None = None
    flag: str | None = None
    metavar: str | None = None
    rare: bool = False


def option(default: Any, help: str, kind: Kind, **how: Any) -> Any:
    """A dataclass field with its :class:`Spec` in the metadata (``default=...``: a required field)."""
    meta = {"spec": Spec(kind=kind, help=help, **how)}
    return dataclasses.field(metadata=meta) if default is ... else dataclasses.field(default=default, metadata=meta)


def spec(f: dataclasses.Field[Any]) -> Spec | None:
    """The :class:`Spec` of a field (None for a field declared without :func:`option`)."""
    s = f.metadata.get("spec")
    return s if isinstance(s, Spec) else None


def _num(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else f"{v:g}"


def _range(s: Spec) -> str:
    lo = "" if s.low is None else f"{'(' if s.open_low else '['}{_num(s.low)}"
    hi = "" if s.high is None else f"{_num(s.high)}{')' if s.open_high else ']'}"
    if s.low is not None and s.high is not None:
        return f"in {lo}, {hi}"
    if s.low is not None:
        return f"{'>' if s.open_low else '>='} {_num(s.low)}"
    return f"{'<' if s.open_high else '<='} {_num(s.high)}" if s.high is not None else ""


def _number_ok(s: Spec, v: float) -> bool:
    if not math.isfinite(v):
        return False
    if s.low is not None and (v < s.low or (s.open_low and v == s.low)):
        return False
    return not (s.high is not None and (v > s.high or (s.open_high and v == s.high)))


def check_value(name: str, value: Any, s: Spec) -> Any:
    """``value`` normalized (an enum member, a float, a tuple), or a :class:`ConfigError` naming it."""
    hint = f" ({s.hint})" if s.hint else ""
    if value is None and s.optional:
        return None
    if s.auto and value == "auto":
        return "auto"
    if s.kind == "choice":
        assert s.choices is not None
        if isinstance(value, str) and value in {m.value for m in s.choices}:
            return s.choices(value)
        if s.custom and isinstance(value, str) and value.startswith(s.custom):
            return value
        raise ConfigError(f"{name} {value!r} is not supported; use one of {[m.value for m in s.choices]}{hint}.")
    if s.kind == "bool":
        if not isinstance(value, bool):
            raise ConfigError(f"{name} {value!r} must be true or false{hint}.")
        return value
    if s.kind == "str":
        if not isinstance(value, str):
            raise ConfigError(f"{name} {value!r} must be a string{hint}.")
        return value
    if s.kind == "strings":
        if isinstance(value, str) or not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{name} {value!r} must be a list of strings{hint}.")
        return tuple(value)
    if s.kind == "floats":
        if isinstance(value, str) or not isinstance(value, (list, tuple)):
            raise ConfigError(f"{name} {value!r} must be a list of numbers{hint}.")
        return tuple(check_value(f"{name} value", v, dataclasses.replace(s, kind="float", hint="")) for v in value)
    wants_int = s.kind == "int"
    ok_type = not isinstance(value, bool) and isinstance(value, int if wants_int else (int, float))
    if not ok_type or not _number_ok(s, float(value)):
        what = "an int" if wants_int else ("a finite number" if s.low is not None and s.high is None else "a number")
        bound = _range(s)
        extra = " or auto" if s.auto else ""
        raise ConfigError(f"{name} {value!r} must be {what}{' ' + bound if bound else ''}{extra}{hint}.")
    return int(value) if wants_int else float(value)


def validate(obj: Any, skip: tuple[str, ...] = ()) -> None:
    """Check and normalize every described field of the frozen dataclass ``obj`` in place."""
    for f in dataclasses.fields(obj):
        s = spec(f)
        if s is None or f.name in skip:
            continue
        object.__setattr__(obj, f.name, check_value(f.name, getattr(obj, f.name), s))


def document(cls: type[Any], summary: str) -> type[Any]:
    """Set ``cls.__doc__`` to ``summary`` and an ``Attributes:`` section written from the fields' help."""
    lines = [summary.strip(), "", "Attributes:"]
    for f in dataclasses.fields(cls):
        s = spec(f)
        if s is not None:
            default = "required" if f.default is dataclasses.MISSING else f"default {f.default!r}"
            lines.append(f"    {f.name}: {s.help} ({default}).")
    cls.__doc__ = "\n".join(lines)
    return cls

