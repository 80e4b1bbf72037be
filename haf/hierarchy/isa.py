"""Reader and writer for the field's ``*_isa.txt`` parent → child edge lists.

Format: one edge per line, ``<parent> <child>`` separated by whitespace (the field's files use WordNet ids such
as ``n01440764``, which contain no spaces). Blank lines and ``#`` comments (whole-line or trailing) are
ignored. Any other line is an error that names the file and line. A repeated identical edge is harmless; a
child given two different parents is an error naming the node and both lines.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from haf.safe_files import atomic_write_text

from .tree import Hierarchy


def parse_isa_lines(lines: Sequence[str], *, source: str) -> tuple[list[tuple[str, str]], list[str]]:
    """Return the (parent, child) edges and, for each, its ``"file:line"`` origin."""
    edges: list[tuple[str, str]] = []
    origins: list[str] = []
    for number, raw in enumerate(lines, start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        fields = line.split()
        if len(fields) != 2:
            raise ValueError(
                f"{source}:{number}: expected '<parent> <child>' (two whitespace-separated names), got {raw.strip()!r}"
            )
        edges.append((fields[0], fields[1]))
        origins.append(f"{source}:{number}")
    return edges, origins


def read_isa(path: str | Path, classes: Sequence[str] | None = None) -> Hierarchy:
    """Read an ``*_isa.txt`` edge list into a :class:`Hierarchy` (class order: ``classes`` or sorted leaves)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"hierarchy file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(f"{path}: not UTF-8 text ({error})") from None
    edges, origins = parse_isa_lines(text.splitlines(), source=str(path))
    return Hierarchy.from_edges(edges, classes, source=str(path), origins=origins)


def write_isa(hierarchy: Hierarchy, path: str | Path) -> None:
    """Write the tree's edges, breadth first from the root. Node names must not contain whitespace or '#'."""
    lines = []
    for parent, child in hierarchy.edges():
        for name in (parent, child):
            if any(ch.isspace() for ch in name) or "#" in name:
                raise ValueError(f"node {name!r} contains whitespace or '#', which the isa format cannot hold")
        lines.append(f"{parent} {child}\n")
    atomic_write_text(path, "".join(lines))
