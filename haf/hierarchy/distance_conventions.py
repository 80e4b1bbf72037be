"""Leaf distances of a class tree under the two conventions (docs/METHOD.md §1).

    "lca-height":   d(i, j) = height of the subtree rooted at LCA(i, j)  (siblings 1)
    "fixed-depth":  d(i, j) = H − depth(LCA(i, j)), H the tree height, root depth 0
    d(i, i) = 0 under both; they agree on a balanced tree.

Both are ultrametric, d(l_p, l_q) = max_{p ≤ t < q} d(l_t, l_{t+1}) over the leaves in depth-first order, so a
whole K × K matrix is one running maximum per row (:func:`leaf_distance_matrix`).

This module is the one home of the conventions' names (:data:`Convention`, :data:`CONVENTIONS`), the default
(:data:`DEFAULT_CONVENTION`; a dataset may state its own, e.g. tieredImageNet-H's fixed-depth) and their
validation (:func:`check_convention`): readers, the run config, methods and commands import them from here.
"""
from __future__ import annotations

import typing
from typing import Literal, Protocol

import numpy as np

#: The tree distance conventions, as a type (config keys and reader options are checked against it).
Convention = Literal["lca-height", "fixed-depth"]
CONVENTIONS: tuple[str, ...] = typing.get_args(Convention)
#: The convention when neither the dataset nor the caller names one (siblings at distance 1).
DEFAULT_CONVENTION: Convention = "lca-height"


class TreeView(Protocol):
    """What the distances need of a tree (``haf.hierarchy.Hierarchy`` provides it)."""

    root: str
    classes: tuple[str, ...]
    num_classes: int
    height: int

    def children(self, node: str) -> tuple[str, ...]: ...
    def lca(self, a: str, b: str) -> str: ...
    def depth(self, node: str) -> int: ...
    def subtree_height(self, node: str) -> int: ...


def check_convention(convention: str) -> str:
    """Return ``convention`` if it names a tree distance convention, else raise naming the valid choices."""
    if convention not in CONVENTIONS:
        raise ValueError(
            f"unknown distance convention {convention!r}; choose one of {', '.join(map(repr, CONVENTIONS))}"
        )
    return convention


def leaf_distance_matrix(tree: TreeView, convention: str) -> np.ndarray:
    """K × K int64 leaf distances of ``tree`` in class order under ``"lca-height"`` or ``"fixed-depth"``.

    Vectorised with the depth-first leaf order. List the leaves as a depth-first walk meets them,
    l_0, l_1, ..., and let a_t = LCA(l_t, l_{t+1}). Every leaf between l_p and l_q (p < q) lies below
    LCA(l_p, l_q) and the walk leaves that subtree's branches only through it, so the a_t for p ≤ t < q are
    LCA(l_p, l_q) itself or its proper descendants, and LCA(l_p, l_q) is among them. Both distances are
    strictly larger for an ancestor than for its proper descendant (subtree height grows going up; so does
    H − depth), hence

        d(l_p, l_q) = max_{p ≤ t < q} d(l_t, l_{t+1}),

    the ultrametric property of tree distances. One running maximum per row (``np.maximum.accumulate``)
    gives a whole row; the K × K result is then permuted from depth-first to class order in row blocks.
    O(K²) numpy work and O(K) numpy calls (about a second for K = 10,000 on one CPU core).
    """
    check_convention(convention)
    k = tree.num_classes
    order = depth_first_leaves(tree)
    # Distances between depth-first neighbours; every distance is ≤ H, so a small dtype holds them.
    small = np.int16 if tree.height < np.iinfo(np.int16).max else np.int64
    adjacent = np.empty(max(k - 1, 0), dtype=small)
    for t in range(k - 1):
        lca = tree.lca(order[t], order[t + 1])
        if convention == "lca-height":
            adjacent[t] = tree.subtree_height(lca)
        else:
            adjacent[t] = tree.height - tree.depth(lca)
    dfs = np.zeros((k, k), dtype=small)
    for p in range(k):
        # Right of p the running maximum runs forwards from p; left of p it runs backwards.
        dfs[p, p + 1 :] = np.maximum.accumulate(adjacent[p:])
        dfs[p, :p] = np.maximum.accumulate(adjacent[:p][::-1])[::-1]
    position = {name: i for i, name in enumerate(order)}
    perm = np.array([position[name] for name in tree.classes], dtype=np.int64)
    out = np.empty((k, k), dtype=np.int64)
    # Row blocks bound the gathered temporary to block × K entries (256 rows: ~5 MB at K = 10,000).
    for start in range(0, k, 256):
        rows = perm[start : start + 256]
        out[start : start + rows.size] = dfs.take(rows, axis=0).take(perm, axis=1)
    return out


def depth_first_leaves(tree: TreeView) -> list[str]:
    """Leaves in depth-first (pre-order) order, children in their stored order."""
    out: list[str] = []
    stack = [tree.root]
    while stack:
        node = stack.pop()
        kids = tree.children(node)
        if kids:
            stack.extend(reversed(kids))
        else:
            out.append(node)
    return out
