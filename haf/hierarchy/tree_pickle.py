"""Reader (restricted) and writer for the field's ``*_tree.pkl`` files: a pickled ``nltk.Tree``.

An ``nltk.Tree`` is a list of children with a label ``_label``; a child is either another ``Tree`` or a leaf
string. A ``Tree`` without children is read as a leaf named by its label. nltk 2 stored the label in ``node``
instead of ``_label``; both are read. The pickle is untrusted: it is read by
:mod:`haf.hierarchy.safe_unpickle`, which admits only the tree classes and never imports nltk. Labels must be
strings (ints are accepted and converted with ``str``). A label used twice is an error: a leaf label twice is a
duplicate leaf, an inner label twice would give that node two parents. Files over 64 MiB are refused unread.
"""

from __future__ import annotations

import pickle
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from haf.safe_files import atomic_write_bytes

from .safe_unpickle import TREE_GLOBALS, TreeNode, read_capped, restricted_loads
from .tree import Hierarchy

# A pickled tree of all of WordNet (~82k synsets) takes a few MB; anything beyond this is refused unread.
MAX_TREE_PICKLE_BYTES = 64 * 2**20


def _name(label: Any, where: str, source: str) -> str:
    if isinstance(label, bool) or not isinstance(label, (str, int)):
        raise ValueError(f"{source}: node label at {where} must be a string, got {type(label).__name__} {label!r}")
    name = str(label)
    if not name:
        raise ValueError(f"{source}: empty node label at {where}")
    return name


def _label_of(node: TreeNode) -> Any:
    """The node's label: ``_label`` (nltk 3) or ``node`` (nltk 2); ``None`` when it has neither."""
    state = node.__dict__
    return state["_label"] if "_label" in state else state.get("node")


def tree_to_edges(tree: Any, *, source: str) -> tuple[list[tuple[str, str]], list[str], str]:
    """Flatten an unpickled tree into (parent, child) edges, their origins and the root name.

    Breadth first and iterative (depth is not limited by Python's recursion limit), so messages name the
    first occurrence in reading order.
    """
    if not isinstance(tree, TreeNode):
        raise ValueError(f"{source}: expected a pickled nltk.Tree at the top level, got {type(tree).__name__}")
    root = _name(_label_of(tree), "the root", source)
    edges: list[tuple[str, str]] = []
    origins: list[str] = []
    labels_seen: dict[str, str] = {root: "the root"}
    queue: deque[tuple[TreeNode, str, str]] = deque([(tree, root, "root")])
    while queue:
        node, name, where = queue.popleft()
        for index, child in enumerate(node):
            child_where = f"{where}[{index}]"
            if isinstance(child, TreeNode):
                child_name = _name(_label_of(child), child_where, source)
                is_leaf = len(child) == 0
            else:
                child_name = _name(child, child_where, source)
                is_leaf = True
            if child_name in labels_seen:
                kind = "duplicate leaf name" if is_leaf else "node with two parents:"
                raise ValueError(
                    f"{source}: {kind} {child_name!r} appears at {labels_seen[child_name]} and at {child_where}"
                )
            labels_seen[child_name] = child_where
            edges.append((name, child_name))
            origins.append(f"tree position {child_where}")
            if isinstance(child, TreeNode) and len(child):
                queue.append((child, child_name, child_where))
    return edges, origins, root


def read_tree_pickle(path: str | Path, classes: Sequence[str] | None = None) -> Hierarchy:
    """Read a pickled ``nltk.Tree`` with the restricted unpickler (nltk need not be installed)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"hierarchy file not found: {path}")
    raw = read_capped(path, MAX_TREE_PICKLE_BYTES, why="the limit for tree pickles")
    tree = restricted_loads(raw, TREE_GLOBALS, source=str(path))
    edges, origins, _ = tree_to_edges(tree, source=str(path))
    return Hierarchy.from_edges(edges, classes, source=str(path), origins=origins)


def write_tree_pickle(hierarchy: Hierarchy, path: str | Path, protocol: int = pickle.DEFAULT_PROTOCOL) -> None:
    """Pickle the tree as a genuine ``nltk.Tree`` (needs the optional nltk package), leaves as strings."""
    try:
        from nltk import Tree
    except ImportError as error:  # pragma: no cover - nltk is installed where this is used
        raise ImportError("writing *_tree.pkl needs nltk (pip install nltk)") from error

    built: dict[str, Any] = {}
    # Children before parents: deepest nodes first.
    for node in sorted(hierarchy.nodes, key=hierarchy.depth, reverse=True):
        kids = hierarchy.children(node)
        if kids:
            built[node] = Tree(node, [built[c] for c in kids])
        else:
            built[node] = node
    atomic_write_bytes(path, pickle.dumps(built[hierarchy.root], protocol=protocol))
