"""Shared by the benchmarks: print a markdown section and put it in the log file, in place of the last run's."""

from __future__ import annotations

import re
from pathlib import Path

_DATE = re.compile(r" \(\d{4}-\d{2}-\d{2}")  # the " (" that opens a heading's date


def section_key(heading: str) -> str:
    """The title of a ``## title (date...)`` heading: its text up to the `` (`` that opens the date."""
    title = heading.removeprefix("##").strip()
    m = _DATE.search(title)
    return title[: m.start()] if m else title


def publish(lines: list[str], out: str | Path, key: str | None = None) -> None:
    """Print ``lines``, one section whose first line is ``## title (date...)``, and write it to ``out``.

    The section replaces the one in ``out`` whose title is ``key`` (default: this section's own title),
    from its ``## `` line to the next (or the end); with none, it is appended. The top matter before the
    first section stays; a missing file is created with a ``# Benchmark log`` heading.
    """
    text = "\n".join(lines).rstrip() + "\n"
    print(text)
    key = section_key(lines[0]) if key is None else key
    path = Path(out)
    parts = re.split(r"(?m)^(?=## )", path.read_text() if path.exists() else "# Benchmark log\n")
    at = next((i for i, p in enumerate(parts[1:], 1) if section_key(p.partition("\n")[0]) == key), None)
    if at is None:
        parts[-1] = parts[-1].rstrip() + "\n\n"
        parts.append(text)
    else:
        parts[at] = text + "\n"
    path.write_text("".join(parts).rstrip() + "\n")
