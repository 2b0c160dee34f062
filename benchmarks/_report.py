"""Shared by the benchmarks: print a markdown section and append it to the results file."""

from __future__ import annotations

from pathlib import Path


def publish(lines: list[str], out: str | Path) -> None:
    """Print ``lines`` and append them, as one section, to ``out`` (created with a heading)."""
    text = "\n".join(lines).rstrip() + "\n"
    print(text)
    path = Path(out)
    head = path.read_text() if path.exists() else "# Benchmark results\n"
    path.write_text(head.rstrip() + "\n\n" + text)
