"""A rooted tree as integer arrays, nodes numbered breadth first, for the O(N) tree frame and tree distances.

``parent[v] < v`` and each depth level is a contiguous node range, so every bottom-up or top-down pass over the
tree is one vectorised numpy step per level (:meth:`TreeArrays.levels`, :func:`_level_sum`).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field

import numpy as np

__all__ = ["TreeArrays"]


def binary_lifting(parent: np.ndarray, height: int) -> np.ndarray:
    """(L, N) table of 2^k-th ancestors, L = max(1, bit length of ``height``); the root (parent −1) maps to
    itself, and node 0 must be the root."""
    up = np.where(np.asarray(parent) < 0, 0, parent).astype(np.int64)
    tables = [up]
    for _ in range(max(1, int(height).bit_length()) - 1):
        tables.append(tables[-1][tables[-1]])
    table = np.stack(tables)
    table.setflags(write=False)
    return table


def _level_sum(values: np.ndarray, parent: np.ndarray, lo: int, hi: int, plo: int, phi: int) -> np.ndarray:
    """Σ of values[lo:hi] into their parents, which occupy [plo, phi) (one depth level up)."""
    return np.bincount(parent[lo:hi] - plo, weights=values, minlength=phi - plo)


@dataclass(frozen=True, eq=False)
class TreeArrays:
    """A rooted tree as integer arrays, nodes breadth first: ``parent[0] = −1``, ``parent[v] < v``.

    ``leaf_node[i]`` is the node of class i; the leaves are exactly the classes. Derived on construction: depth,
    the per-depth node ranges ``level_offsets``, subtree height.
    """

    parent: np.ndarray
    leaf_node: np.ndarray
    classes: tuple[str, ...] | None = None
    depth: np.ndarray = field(init=False)
    level_offsets: np.ndarray = field(init=False)
    subtree_height: np.ndarray = field(init=False)
    is_leaf: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        parent = np.ascontiguousarray(self.parent, dtype=np.int64)
        leaf_node = np.ascontiguousarray(self.leaf_node, dtype=np.int64)
        n = parent.size
        if n < 2 or parent[0] != -1:
            raise ValueError(f"tree: parent[0] must be -1 (the root) and the tree needs ≥ 2 nodes, got N = {n}")
        bad = np.flatnonzero((parent[1:] < 0) | (parent[1:] >= np.arange(1, n)))
        if bad.size:
            v = int(bad[0]) + 1
            raise ValueError(f"tree: parent[{v}] = {parent[v]} must lie in [0, {v}) (nodes breadth first)")
        if np.any(np.diff(parent[1:]) < 0):
            v = int(np.flatnonzero(np.diff(parent[1:]) < 0)[0]) + 2
            raise ValueError(f"tree: parent[{v}] = {parent[v]} < parent[{v - 1}] = {parent[v - 1]}: nodes must be "
                             "numbered breadth first, children grouped in their parents' order")
        # With parents non-decreasing, depth level d + 1 is the run of nodes whose parents lie in level d.
        depth = np.zeros(n, dtype=np.int64)
        offsets = [0, 1]
        while offsets[-1] < n:
            hi = int(np.searchsorted(parent[1:], offsets[-1], side="left")) + 1
            depth[offsets[-1]:hi] = len(offsets) - 1
            offsets.append(hi)
        level_offsets = np.array(offsets, dtype=np.int64)
        child_count = np.bincount(parent[1:], minlength=n)
        is_leaf = child_count == 0
        k = leaf_node.size
        if k != int(is_leaf.sum()) or k < 2:
            raise ValueError(f"tree: {int(is_leaf.sum())} leaves but {k} classes; every leaf must be a class, K ≥ 2")
        if np.any((leaf_node < 0) | (leaf_node >= n)) or not is_leaf[leaf_node].all() or \
                np.unique(leaf_node).size != k:
            raise ValueError("tree: leaf_node must list every leaf exactly once")
        height = np.zeros(n, dtype=np.int64)
        levels = len(offsets) - 1
        for level in range(levels - 1, 0, -1):
            lo, hi = offsets[level], offsets[level + 1]
            np.maximum.at(height, parent[lo:hi], height[lo:hi] + 1)
        for name, value in (("parent", parent), ("leaf_node", leaf_node), ("depth", depth),
                            ("level_offsets", level_offsets), ("subtree_height", height),
                            ("is_leaf", is_leaf)):
            value.setflags(write=False)
            object.__setattr__(self, name, value)

    @property
    def num_nodes(self) -> int:
        return self.parent.size

    @property
    def num_classes(self) -> int:
        return self.leaf_node.size

    @property
    def height(self) -> int:
        """H: the largest leaf depth."""
        return int(self.depth[self.leaf_node].max())

    def levels(self):
        """(lo, hi, plo, phi) per depth level ≥ 1, shallowest first: nodes [lo, hi), their parents [plo, phi)."""
        o = self.level_offsets
        return [(int(o[d]), int(o[d + 1]), int(o[d - 1]), int(o[d])) for d in range(1, len(o) - 1)]

    def node_distance(self, convention: str) -> np.ndarray:
        """d(v) per node, the distance of two distinct leaves whose LCA is v: the subtree height (``lca-height``)
        or H − depth(v) (``fixed-depth``); 0 at the leaves (d(i, i) = 0; distinct leaves never meet at one)."""
        from haf.hierarchy.distance_conventions import check_convention

        check_convention(convention)
        d = self.subtree_height if convention == "lca-height" else self.height - self.depth
        return np.where(self.is_leaf, 0, d)

    @functools.cached_property
    def jumps(self) -> np.ndarray:
        """Binary lifting: ``jumps[k, v]`` is v's 2^k-th ancestor (the root where there is none); ⌈log₂ H⌉ × N,
        so a caterpillar thousands deep costs O(N log H), never K × H."""
        return binary_lifting(self.parent, int(self.depth.max()))

    def lca(self, i: np.ndarray, j: np.ndarray) -> np.ndarray:
        """Lowest common ancestors of node pairs (vectorised; O(log H) steps by binary lifting)."""
        jumps = self.jumps
        a, b = np.array(i, dtype=np.int64), np.array(j, dtype=np.int64)
        swap = self.depth[a] < self.depth[b]
        a, b = np.where(swap, b, a), np.where(swap, a, b)  # a is the deeper one
        gap = self.depth[a] - self.depth[b]
        for k in range(jumps.shape[0]):
            a = np.where((gap >> k) & 1 == 1, jumps[k][a], a)
        for k in range(jumps.shape[0] - 1, -1, -1):
            ja, jb = jumps[k][a], jumps[k][b]
            move = ja != jb
            a, b = np.where(move, ja, a), np.where(move, jb, b)
        return np.where(a == b, a, jumps[0][a])

    @classmethod
    def from_hierarchy(cls, hierarchy) -> "TreeArrays":
        """Arrays of a :class:`haf.hierarchy.Hierarchy`, classes in its class order."""
        nodes = hierarchy.nodes
        index = {name: v for v, name in enumerate(nodes)}
        parent = np.array([index[p] if (p := hierarchy.parent(name)) is not None else -1 for name in nodes],
                          dtype=np.int64)
        leaf_node = np.array([index[c] for c in hierarchy.classes], dtype=np.int64)
        return cls.from_parents(parent, leaf_node, tuple(hierarchy.classes))

    @classmethod
    def from_parents(cls, parent: np.ndarray, leaf_node: np.ndarray | None = None,
                     classes: tuple[str, ...] | None = None) -> "TreeArrays":
        """From any parent array (root −1, parents anywhere), renumbered breadth first. Classes: the leaves in
        ``leaf_node`` order (default: increasing node number)."""
        parent = np.asarray(parent, dtype=np.int64)
        n = parent.size
        roots = np.flatnonzero(parent < 0)
        if roots.size != 1:
            raise ValueError(f"tree: need exactly one root (parent −1), got {roots.size}")
        if np.any(parent >= n):
            raise ValueError("tree: a parent index is out of range")
        # Depth by pointer jumping (O(N log H)): dist = edges from v to jump[v], jump doubling towards the root.
        up = np.where(parent < 0, np.arange(n), parent)
        jump, dist = up.copy(), (parent >= 0).astype(np.int64)
        for _ in range(int(np.log2(max(n, 2))) + 2):
            dist = dist + np.where(jump != roots[0], dist[jump], 0)
            jump = jump[jump]
        if np.any(jump != roots[0]):
            raise ValueError("tree: the parent array has a cycle (some node never reaches the root)")
        # Breadth first: level by level, each level stably sorted by its parents' new numbers.
        by_depth = np.argsort(dist, kind="stable")
        bounds = np.searchsorted(dist[by_depth], np.arange(int(dist.max()) + 2))
        rank = np.empty(n, dtype=np.int64)
        for d in range(int(dist.max()) + 1):
            level = by_depth[bounds[d]:bounds[d + 1]]
            if d:
                level = level[np.argsort(rank[parent[level]], kind="stable")]
            rank[level] = np.arange(bounds[d], bounds[d + 1])
        new_parent = np.full(n, -1, dtype=np.int64)
        new_parent[rank] = np.where(parent >= 0, rank[np.maximum(parent, 0)], -1)
        if leaf_node is None:
            leaf_node = np.flatnonzero(np.bincount(parent[parent >= 0], minlength=n) == 0)
        return cls(new_parent, rank[np.asarray(leaf_node, dtype=np.int64)], classes)
