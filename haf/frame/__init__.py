"""The hierarchy-aware frame: S, the reference's s_min grid, the dense and the tree factorisations, the fixed ETF.

* :mod:`haf.frame.dense` — S (K × K) eigendecomposed, W = S^{1/2}Qᵀ (K × K, seeded rotation); any distances.
* :mod:`haf.frame.tree` — S_ij = g(LCA(i, j)) factorised exactly along the tree, W of width N − 1 kept as per-node
  arrays; O(N) time and memory, needs the class tree (docs/TREE_FRAME.md).

``build_frame(source, gamma, ..., factorization=...)`` picks one: ``"dense"``, ``"tree"``, or ``"auto"`` (the tree
when ``source`` is a tree with more than ``AUTO_TREE_MIN_CLASSES`` classes, else dense).
"""
from __future__ import annotations

import numpy as np

from .dense import (
    FrameResult,
    build_dense_frame,
    find_s_min,
    find_s_min_full_scan,
    fixed_etf,
    hierarchy_frame,
    similarity_matrix,
)
from .grid import GRID_POINTS, PSD_TOLERANCE, reference_grid
from .tree import TreeArrays, TreeFrame, build_tree_frame, find_s_min_tree
from .tree_io import load_tree_frame, save_tree_frame

__all__ = [
    "AUTO_TREE_MIN_CLASSES",
    "FACTORIZATIONS",
    "GRID_POINTS",
    "PSD_TOLERANCE",
    "FrameResult",
    "TreeArrays",
    "TreeFrame",
    "build_dense_frame",
    "build_frame",
    "build_tree_frame",
    "find_s_min",
    "find_s_min_full_scan",
    "find_s_min_tree",
    "fixed_etf",
    "hierarchy_frame",
    "load_tree_frame",
    "reference_grid",
    "resolve_factorization",
    "save_tree_frame",
    "similarity_matrix",
]

FACTORIZATIONS = ("dense", "tree", "auto")
#: ``factorization="auto"`` uses the tree above this many classes (the dense K × K eigensolve takes about a second
#: at K = 1010 and grows as K³).
AUTO_TREE_MIN_CLASSES = 2048


def resolve_factorization(factorization: str, num_classes: int, has_tree: bool) -> str:
    """"dense" or "tree" for ``factorization`` in :data:`FACTORIZATIONS`: "auto" takes the tree for a tree source of
    more than :data:`AUTO_TREE_MIN_CLASSES` classes (the dense eigensolve grows as K³), else the dense frame."""
    if factorization not in FACTORIZATIONS:
        raise ValueError(f"factorization must be one of {FACTORIZATIONS}, got {factorization!r}")
    if factorization == "auto":
        return "tree" if has_tree and num_classes > AUTO_TREE_MIN_CLASSES else "dense"
    return factorization


def _tree_of(source) -> TreeArrays | None:
    from haf.hierarchy import Hierarchy

    if isinstance(source, TreeArrays):
        return source
    if isinstance(source, Hierarchy):
        return TreeArrays.from_hierarchy(source)
    return None


def build_frame(source, gamma: float, s_min: float | None = None, seed: int = 0, psd_test: str = "cholesky", *,
                factorization: str = "dense", convention: str | None = None):
    """Build the HAFrame of ``source``: a K × K distance matrix, a ``Hierarchy`` or ``TreeArrays``.

    ``factorization``: "dense" → :class:`FrameResult` (W K × K, seeded rotation ``seed``); "tree" →
    :class:`TreeFrame` (width N − 1, no rotation: ``seed`` is unused); "auto" (module docstring). A tree source
    needs ``convention`` ("lca-height" or "fixed-depth"); the tree factorisation needs a tree source.
    """
    if factorization not in FACTORIZATIONS:
        raise ValueError(f"factorization must be one of {FACTORIZATIONS}, got {factorization!r}")
    tree = _tree_of(source)
    if tree is not None and convention is None:
        from haf.hierarchy.distance_conventions import CONVENTIONS

        raise ValueError(f"build_frame: a tree source needs a convention, one of {', '.join(CONVENTIONS)}")
    factorization = resolve_factorization(factorization, tree.num_classes if tree is not None else 0,
                                          tree is not None)
    if factorization == "tree":
        if tree is None:
            raise ValueError("the tree factorisation needs the class tree (a Hierarchy), not only a distance "
                             "matrix; use factorization='dense' for distance-only input")
        return build_tree_frame(tree, gamma, convention, s_min=s_min)
    if tree is not None:
        from haf.hierarchy import Hierarchy

        hierarchy = source if isinstance(source, Hierarchy) else None
        if hierarchy is None:
            raise ValueError("the dense factorisation of TreeArrays is not supported; pass the Hierarchy")
        source = hierarchy.distance_matrix(convention)
    return build_dense_frame(np.asarray(source), gamma, s_min=s_min, seed=seed, psd_test=psd_test)
