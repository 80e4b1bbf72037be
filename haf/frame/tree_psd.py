"""S_ij = g(LCA(i, j)) per tree node, its O(N) PSD test, and the reference's s_min searched with it.

With a_v = g(v) − g(parent v) and c = g(root), S = T + c·11ᵀ with T = F Fᵀ (docs/TREE_FRAME.md). For c ≥ 0
S is PSD outright; for c < 0, S + τI is positive definite iff 1 + c·1ᵀ(T + τI)⁻¹1 > 0 (Sherman–Morrison), and
T + τI is T with τ added to every leaf edge: the reference's "λ_min > −τ" test decided exactly, without an
eigensolve. 1ᵀT⁻¹1 comes from Felsenstein's pruning recursion (T is the covariance of Brownian motion on the tree
with branch lengths a_v): bottom-up p_leaf = 0, 1/p_v = Σ_children 1/(p_c + a_c), so 1ᵀT⁻¹1 = 1/p_root.
"""
from __future__ import annotations

import numpy as np

from .grid import PSD_TOLERANCE, last_psd_index, reference_grid
from .tree_arrays import TreeArrays, _level_sum

__all__ = ["find_s_min_tree", "tree_is_psd"]


# ------------------------------------------------------------------------------------------ similarity per node


def _node_distances(tree: TreeArrays, convention: str) -> tuple[np.ndarray, float]:
    """d(v) per node under the convention (0 at leaves), clamped at d_max above the top branching node."""
    d = tree.node_distance(convention).astype(np.float64)
    # d_max = max over leaf pairs = d of the shallowest node with ≥ 2 children (unary nodes are no one's LCA).
    branching = np.bincount(tree.parent[1:], minlength=tree.num_nodes) >= 2
    d_max = float(d[np.flatnonzero(branching)[0]])
    return np.minimum(d, d_max), d_max


def _node_similarity(d: np.ndarray, d_max: float, is_leaf: np.ndarray, gamma: float, s_min: float) -> np.ndarray:
    g = (1.0 - s_min) * np.exp(-gamma * d / d_max) + s_min
    g[is_leaf] = 1.0
    return g


def _edges(tree: TreeArrays, g: np.ndarray) -> np.ndarray:
    a = np.zeros_like(g)
    a[1:] = g[1:] - g[tree.parent[1:]]
    return a


def _pruning(tree: TreeArrays, a: np.ndarray) -> tuple[np.ndarray, float]:
    """Bottom-up p_v = 1/(1ᵀT_v⁻¹1) (0 at leaves) and q = 1ᵀT⁻¹1, for edges ``a`` (a_leaf > 0)."""
    p = np.zeros_like(a)
    levels = tree.levels()
    q_root = 0.0
    for lo, hi, plo, phi in reversed(levels):
        r = 1.0 / (p[lo:hi] + a[lo:hi])
        q = _level_sum(r, tree.parent, lo, hi, plo, phi)
        inner = ~tree.is_leaf[plo:phi]
        p[plo:phi][inner] = 1.0 / q[inner]
        if plo == 0:
            q_root = float(q[0])
    return p, q_root


def tree_is_psd(tree: TreeArrays, g: np.ndarray, tolerance: float = PSD_TOLERANCE) -> bool:
    """λ_min(S) > −tolerance for S_ij = g(LCA(i, j)), in O(N) (module docstring)."""
    a = _edges(tree, g)
    a[tree.is_leaf] += tolerance
    c = float(g[0])
    if c >= 0:
        return True
    _, q = _pruning(tree, a)
    return 1.0 + c * q > 0.0


# ------------------------------------------------------------------------------------------------ s_min search


def _check_gamma(gamma: float) -> float:
    gamma = float(gamma)
    if not np.isfinite(gamma) or gamma <= 0:
        raise ValueError(f"gamma must be a positive finite number, got {gamma}")
    return gamma


def _psd_at(tree: TreeArrays, d: np.ndarray, d_max: float, gamma: float):
    return lambda s: tree_is_psd(tree, _node_similarity(d, d_max, tree.is_leaf, gamma, s))


def _no_psd_point(tree: TreeArrays, grid: np.ndarray, gamma: float) -> ValueError:
    return ValueError(f"no s_min on the reference grid linspace({grid[0]:.6g}, -1, {len(grid)}) makes S positive "
                      f"semi-definite for K = {tree.num_classes}, gamma = {gamma} (tree test)")


def find_s_min_tree(tree: TreeArrays, gamma: float, convention: str) -> float:
    """The reference's s_min (most negative PSD point of the 100-point grid) by bisection, O(N) per test."""
    gamma = _check_gamma(gamma)
    d, d_max = _node_distances(tree, convention)
    grid = reference_grid(tree.num_classes)
    index, _ = last_psd_index(_psd_at(tree, d, d_max, gamma), grid)
    if index is None:
        raise _no_psd_point(tree, grid, gamma)
    return float(grid[index])
