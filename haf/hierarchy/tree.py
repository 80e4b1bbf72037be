"""The class tree: an immutable rooted tree whose leaves are the classes, in an explicit class order.

Every K × K object of the method (the distance matrix D, the similarity S, the frame W) indexes its rows by
``Hierarchy.classes``; that one order is fixed when the tree is built and never re-derived. The root has depth 0 and
``height`` H is the largest leaf depth; leaves may sit at different depths (an "unbalanced" tree such as
tieredImageNet-H's). Around the tree: its leaf distances under the two conventions (``distance_conventions``, docs/METHOD.md
§1), its per-level labels (``tree_levels``) and its JSON file (``tree_json``, docs/METHOD.md §9).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from types import MappingProxyType

import numpy as np

from haf.safe_files import atomic_write_text

from .distance_conventions import CONVENTIONS, check_convention, leaf_distance_matrix
from .tree_json import JSON_FORMAT_NAME, JSON_FORMAT_VERSION, parse_tree_document, tree_document
from .tree_levels import level_nodes

__all__ = ["CONVENTIONS", "JSON_FORMAT_NAME", "JSON_FORMAT_VERSION", "Hierarchy", "check_convention"]


class Hierarchy:
    """An immutable rooted tree over string node names whose leaves are the classes, in class order.

    Build it with :meth:`from_edges`, :meth:`from_parents`, :meth:`from_json` or ``haf.hierarchy.load_hierarchy``.
    ``source`` (a file name or description) is only used to make error messages name where the tree came from.
    """

    __slots__ = (
        "classes",
        "root",
        "num_classes",
        "height",
        "source",
        "_parent",
        "_children",
        "_depth",
        "_subtree_height",
        "_class_index",
    )

    classes: tuple[str, ...]
    root: str
    num_classes: int
    height: int
    source: str

    def __init__(
        self,
        parent_of: Mapping[str, str],
        classes: Sequence[str] | None = None,
        *,
        source: str = "<edges>",
        origins: Mapping[str, str] | None = None,
    ) -> None:
        """Build from a child → parent map (every non-root node exactly once).

        ``origins`` optionally maps a child name to where its edge came from (``"file:line"``) for messages.
        Prefer the ``from_*`` constructors; this one validates everything they pass in.
        """
        where = dict(origins or {})

        def at(node: str) -> str:
            return f" ({where[node]})" if node in where else ""

        parent: dict[str, str] = {}
        for child, par in parent_of.items():
            for name in (child, par):
                if not isinstance(name, str) or not name:
                    raise ValueError(f"{source}: node names must be non-empty strings, got {name!r}{at(child)}")
            if child == par:
                raise ValueError(f"{source}: node {child!r} is its own parent{at(child)}")
            parent[child] = par
        if not parent:
            raise ValueError(f"{source}: the hierarchy has no edges; it needs a root with at least one class below")

        children_lists: dict[str, list[str]] = {}
        for child, par in parent.items():
            children_lists.setdefault(par, []).append(child)
        nodes = set(parent) | set(children_lists)
        roots = sorted(n for n in nodes if n not in parent)
        if len(roots) != 1:
            if not roots:
                # Every node has a parent: the edges contain a cycle and no root.
                raise ValueError(f"{source}: the hierarchy has no root; {_find_cycle(parent)}")
            raise ValueError(
                f"{source}: the hierarchy has {len(roots)} roots {roots[:10]}{'...' if len(roots) > 10 else ''}; "
                "it must have exactly one (add a common root node above them)"
            )
        root = roots[0]

        # Depths by walking down from the root; nodes never reached lie on a cycle that is detached from the root.
        depth: dict[str, int] = {root: 0}
        stack = [root]
        while stack:
            node = stack.pop()
            for child in children_lists.get(node, ()):
                depth[child] = depth[node] + 1
                stack.append(child)
        if len(depth) != len(nodes):
            unreached = {n: parent[n] for n in nodes if n not in depth}
            raise ValueError(f"{source}: {_find_cycle(unreached)}{at(next(iter(sorted(unreached))))}")

        leaves = sorted(n for n in nodes if n not in children_lists)
        if classes is None:
            classes = leaves
        else:
            classes = list(classes)
            if not classes:
                raise ValueError(f"{source}: the class list is empty")
            seen: set[str] = set()
            for name in classes:
                if name in seen:
                    raise ValueError(f"{source}: class {name!r} is listed twice in the class list")
                seen.add(name)
                if name not in nodes:
                    raise ValueError(f"{source}: class {name!r} is absent from the hierarchy")
                if name in children_lists:
                    raise ValueError(
                        f"{source}: class {name!r} is an inner node of the hierarchy (children "
                        f"{children_lists[name][:5]}), not a leaf"
                    )
            if len(seen) != len(leaves):
                # Prune: keep the classes and their ancestors only.
                keep: set[str] = set()
                for name in classes:
                    node = name
                    while node not in keep:
                        keep.add(node)
                        if node == root:
                            break
                        node = parent[node]
                parent = {c: p for c, p in parent.items() if c in keep}
                children_lists = {p: [c for c in cs if c in keep] for p, cs in children_lists.items() if p in keep}
                depth = {n: d for n, d in depth.items() if n in keep}
                if not parent:
                    raise ValueError(f"{source}: the class list keeps only the root; a hierarchy needs classes")

        # Subtree heights bottom-up: deepest nodes first.
        subtree_height: dict[str, int] = dict.fromkeys(depth, 0)
        for node in sorted(depth, key=depth.__getitem__, reverse=True):
            if node != root:
                par = parent[node]
                subtree_height[par] = max(subtree_height[par], subtree_height[node] + 1)

        fields = {
            "classes": tuple(classes),
            "root": root,
            "num_classes": len(classes),
            "height": subtree_height[root],
            "source": source,
            "_parent": MappingProxyType(parent),
            "_children": MappingProxyType({p: tuple(cs) for p, cs in children_lists.items()}),
            "_depth": MappingProxyType(depth),
            "_subtree_height": MappingProxyType(subtree_height),
            "_class_index": MappingProxyType({name: i for i, name in enumerate(classes)}),
        }
        for name, value in fields.items():
            object.__setattr__(self, name, value)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"Hierarchy is immutable; cannot set {name!r}")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"Hierarchy is immutable; cannot delete {name!r}")

    def __reduce__(self) -> tuple:
        # Mapping proxies do not pickle; rebuild from the parent map (for DataLoader workers, spawn, deepcopy).
        return (_rebuild, (dict(self._parent), self.classes, self.source))

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_edges(
        cls,
        edges: Iterable[Sequence[str]],
        classes: Sequence[str] | None = None,
        *,
        source: str = "<edges>",
        origins: Sequence[str] | None = None,
    ) -> Hierarchy:
        """Build from (parent, child) pairs. A repeated identical edge is harmless; a second parent is an error.

        With ``classes`` the leaves are put in that order; a class that is not a leaf of the tree is an error naming
        it, and leaves that are not among the classes are *pruned*: only the classes and their ancestors are kept.
        Heights are then those of the pruned tree, so an ``"lca-height"`` distance (and H for ``"fixed-depth"``) can
        be smaller than in the full tree when the pruned leaves were the deepest ones below an LCA. Inner nodes left
        with a single child are kept, not collapsed, so depths never change. Without ``classes`` the class order is
        the sorted leaf names (the field's convention: sorted class-folder names).

        ``origins[i]`` (optional) says where edge i came from, e.g. ``"tree_isa.txt:12"``, for error messages.
        """
        parent_of: dict[str, str] = {}
        where: dict[str, str] = {}
        for index, edge in enumerate(edges):
            origin = origins[index] if origins is not None else f"edge {index}"
            if isinstance(edge, (str, bytes)) or len(edge) != 2:
                raise ValueError(f"{source}: {origin}: an edge must be a (parent, child) pair, got {edge!r}")
            par, child = edge
            if par == child:
                raise ValueError(f"{source}: node {child!r} is its own parent ({origin})")
            previous = parent_of.get(child)
            if previous is not None and previous != par:
                raise ValueError(
                    f"{source}: node {child!r} has two parents, {previous!r} ({where[child]}) and {par!r} ({origin})"
                )
            parent_of[child] = par
            where.setdefault(child, origin)
        return cls(parent_of, classes, source=source, origins=where)

    @classmethod
    def from_parents(
        cls, parent_of: Mapping[str, str], classes: Sequence[str] | None = None, *, source: str = "<parents>"
    ) -> Hierarchy:
        """Build from a child → parent mapping."""
        return cls(parent_of, classes, source=source)

    # ------------------------------------------------------------------ structure
    @property
    def nodes(self) -> tuple[str, ...]:
        """Every node, root first, then by depth and name (a stable order)."""
        return tuple(sorted(self._depth, key=lambda n: (self._depth[n], n)))

    def __contains__(self, node: object) -> bool:
        return node in self._depth

    def _check(self, node: str) -> str:
        if node not in self._depth:
            raise ValueError(f"{self.source}: node {node!r} is not in the hierarchy")
        return node

    def parent(self, node: str) -> str | None:
        """The node's parent, ``None`` for the root."""
        return self._parent.get(self._check(node))

    def children(self, node: str) -> tuple[str, ...]:
        """The node's children in the order their edges were given (empty for a leaf)."""
        return self._children.get(self._check(node), ())

    def is_leaf(self, node: str) -> bool:
        return not self.children(node)

    def ancestors(self, node: str) -> tuple[str, ...]:
        """The node's parent, its parent, ... up to and including the root (empty for the root)."""
        out = []
        current = self._parent.get(self._check(node))
        while current is not None:
            out.append(current)
            current = self._parent.get(current)
        return tuple(out)

    def depth(self, node: str) -> int:
        """Edges from the root to the node (root 0)."""
        return self._depth[self._check(node)]

    def subtree_height(self, node: str) -> int:
        """Edges from the node down to its deepest leaf (leaf 0)."""
        return self._subtree_height[self._check(node)]

    def class_index(self, name: str) -> int:
        """Row of class ``name`` in every K × K matrix."""
        if name not in self._class_index:
            raise ValueError(f"{self.source}: {name!r} is not a class of the hierarchy")
        return self._class_index[name]

    def lca(self, a: str, b: str) -> str:
        """Lowest common ancestor of two nodes (a node is its own ancestor here, so lca(a, a) = a)."""
        self._check(a)
        self._check(b)
        path_a = {a, *self.ancestors(a)}
        node = b
        while node not in path_a:
            node = self._parent[node]
        return node

    def __repr__(self) -> str:
        return (
            f"Hierarchy(num_classes={self.num_classes}, height={self.height}, nodes={len(self._depth)}, "
            f"root={self.root!r}, source={self.source!r})"
        )

    def __eq__(self, other: object) -> bool:
        """Same classes in the same order, same root and the same parent of every node."""
        if not isinstance(other, Hierarchy):
            return NotImplemented
        return self.classes == other.classes and self.root == other.root and dict(self._parent) == dict(other._parent)

    __hash__ = None  # type: ignore[assignment]  # equality is structural and the maps are large

    def edges(self) -> list[tuple[str, str]]:
        """(parent, child) pairs, breadth first from the root, children in their stored order."""
        out: list[tuple[str, str]] = []
        queue = [self.root]
        for node in queue:
            for child in self._children.get(node, ()):
                out.append((node, child))
                queue.append(child)
        return out

    # ------------------------------------------------------------------ per-level view
    def _level_nodes(self) -> tuple[np.ndarray, list[tuple[str, ...]]]:
        return level_nodes([[name, *self.ancestors(name)][::-1] for name in self.classes], self.height)

    def level_labels(self) -> np.ndarray:
        """K × H int64 label table, one column per level below the root.

        Column l holds, for each class, the index of its ancestor at depth l + 1 among ``level_names()[l]``; a
        class shallower than depth l + 1 is its own label on that level and every deeper one. Within a level,
        nodes are numbered in order of first appearance when the classes are walked in class order, so the last
        column is always ``arange(K)`` and coarse labels are stable under the class order.
        """
        return self._level_nodes()[0]

    def level_names(self) -> list[tuple[str, ...]]:
        """Node names per level: ``level_names()[l][level_labels()[k, l]]`` names class k's level-l node."""
        return self._level_nodes()[1]

    # ------------------------------------------------------------------ distances
    def distance_matrix(self, convention: str) -> np.ndarray:
        """K × K int64 leaf distances in class order under ``"lca-height"`` or ``"fixed-depth"``.

        d(i, j) is the height of the subtree rooted at LCA(i, j), or H − depth(LCA(i, j)); computed by
        :func:`haf.hierarchy.distance_conventions.leaf_distance_matrix` in O(K²) numpy work.
        """
        return leaf_distance_matrix(self, convention)

    # ------------------------------------------------------------------ our JSON format
    def to_dict(self) -> dict:
        """The readable JSON document (``haf.hierarchy.tree_json``; format in docs/METHOD.md §9)."""
        return tree_document(self.root, self.classes, self.edges())

    def to_json(self, path: str | Path | None = None, *, indent: int | None = 1) -> str:
        """Serialise as our JSON format; also write it to ``path`` when given. Returns the text."""
        text = json.dumps(self.to_dict(), indent=indent, ensure_ascii=False) + "\n"
        if path is not None:
            atomic_write_text(path, text)
        return text

    @classmethod
    def from_json(
        cls, document: str | bytes | Mapping, classes: Sequence[str] | None = None, *, source: str = "<json>"
    ) -> Hierarchy:
        """Parse our JSON format from text or an already-decoded mapping. ``classes`` overrides the stored order.

        A ``root`` that disagrees with the edges' root is an error naming the key. The stored ``classes`` must
        list every leaf of the edges (a file is a whole tree; pruning is what an explicit ``classes`` asks for):
        an omitted leaf is an error naming it, never pruned in silence.
        """
        edges, stored, root = parse_tree_document(document, source=source)
        if classes is None and stored is not None:
            parents = {parent for parent, _ in edges}
            listed = set(stored)
            omitted = [child for _, child in edges if child not in parents and child not in listed]
            if omitted:
                more = f" (and {len(omitted) - 1} more)" if len(omitted) > 1 else ""
                raise ValueError(f"{source}: key 'classes' omits the leaf {omitted[0]!r}{more} of the edges; list "
                                 "every leaf as a class (or remove its edge)")
        hierarchy = cls.from_edges(
            edges,
            classes if classes is not None else stored,
            source=source,
            origins=[f"edges[{i}]" for i in range(len(edges))],
        )
        if root is not None and root != hierarchy.root:
            raise ValueError(f"{source}: key 'root' says {root!r} but the edges' root is {hierarchy.root!r}")
        return hierarchy


def _rebuild(parent_of: dict[str, str], classes: tuple[str, ...], source: str) -> Hierarchy:
    return Hierarchy(parent_of, classes, source=source)


def _find_cycle(parent: Mapping[str, str]) -> str:
    """Describe one cycle of a child → parent map in which following parents never reaches a root."""
    start = min(parent)
    seen: dict[str, int] = {}
    path: list[str] = []
    node = start
    while node not in seen:
        seen[node] = len(path)
        path.append(node)
        node = parent[node]
    cycle = path[seen[node] :] + [node]
    return f"cycle through node {node!r}: {' -> '.join(map(repr, reversed(cycle)))} (parent -> child)"
