"""The project's own hierarchy file: a readable JSON document that round-trips a tree exactly.

The format (keys ``format``, ``version``, ``root``, ``classes``, ``edges``) is specified in docs/METHOD.md §9.
:func:`tree_document` writes it; :func:`parse_tree_document` checks it and returns what ``Hierarchy.from_json``
builds the tree from. Unknown keys, a wrong ``format``/``version`` or a malformed edge are errors naming the key or
``edges[i]``.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

from haf.safe_files import json_loads

JSON_FORMAT_NAME = "haf-hierarchy"
JSON_FORMAT_VERSION = 1
JSON_KEYS = ("format", "version", "root", "classes", "edges")


def tree_document(root: str, classes: Sequence[str], edges: Sequence[tuple[str, str]]) -> dict:
    """The JSON document of a tree: its root, its class order and its (parent, child) edges, breadth first."""
    return {
        "format": JSON_FORMAT_NAME,
        "version": JSON_FORMAT_VERSION,
        "root": root,
        "classes": list(classes),
        "edges": [list(edge) for edge in edges],
    }


def parse_tree_document(
    document: str | bytes | Mapping, *, source: str
) -> tuple[list[list[str]], list[str] | None, str | None]:
    """Decode and check a document (text or an already-decoded mapping): (edges, stored classes, stored root)."""
    if isinstance(document, (str, bytes)):
        text = document.decode("utf-8") if isinstance(document, bytes) else document
        document = json_loads(text, source)
    if not isinstance(document, Mapping):
        raise ValueError(f"{source}: the document must be a JSON object, got {type(document).__name__}")
    fmt = document.get("format")
    if fmt != JSON_FORMAT_NAME:
        hint = (
            " (this looks like an iNaturalist annotation file: build its tree with "
            "haf.hierarchy.inat2019_hierarchy)"
            if "categories" in document
            else ""
        )
        raise ValueError(f"{source}: key 'format' must be {JSON_FORMAT_NAME!r}, got {fmt!r}{hint}")
    version = document.get("version")
    if version != JSON_FORMAT_VERSION:
        raise ValueError(f"{source}: key 'version' must be {JSON_FORMAT_VERSION}, got {version!r}")
    unknown = sorted(set(document) - set(JSON_KEYS))
    if unknown:
        raise ValueError(f"{source}: unknown key(s) {unknown}")
    edges = document.get("edges")
    if not isinstance(edges, list):
        raise ValueError(f"{source}: key 'edges' must be a list of [parent, child] pairs")
    for index, edge in enumerate(edges):
        if not (isinstance(edge, list) and len(edge) == 2 and all(isinstance(n, str) and n for n in edge)):
            raise ValueError(f"{source}: edges[{index}] must be a [parent, child] pair of names, got {edge!r}")
    stored = document.get("classes")
    if stored is not None and not (isinstance(stored, list) and all(isinstance(c, str) for c in stored)):
        raise ValueError(f"{source}: key 'classes' must be a list of class names")
    return edges, stored, document.get("root")
