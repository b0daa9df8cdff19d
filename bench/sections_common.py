"""BENCHMARKS.md is written by several benchmarks, each between its own markers."""

from __future__ import annotations

from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent.parent / "BENCHMARKS.md"


def write_section(text: str, start: str, end: str, path: Path = BENCHMARKS) -> None:
    """Replace the text between `start` and `end` (markers included in `text`) with `text`,
    or append it; the rest of the file is left as it is."""
    current = path.read_text() if path.exists() else "# Benchmarks\n"
    if start in current and end in current:
        before = current[: current.index(start)]
        after = current[current.index(end) + len(end) :].lstrip("\n")
        current = before + text + ("\n" + after if after else "")
    else:
        current = current.rstrip("\n") + "\n\n" + text
    path.write_text(current)
