"""Tree factorisation of the HAFrame: an exact frame of width N − 1 (N tree nodes) built in O(N).

Under both distance conventions d(i, j) depends only on v = LCA(i, j) and grows towards the root, so
S_ij = g(v) with g(v) = (1 − s)·exp(−γ·d(v)/d_max) + s, g = 1 at the leaves, g decreasing towards the root.
With a_v = g(v) − g(parent v) ≥ 0 (every non-root v) and c = g(root):

    S = F Fᵀ + c·11ᵀ,    F[i, v] = √a_v if leaf i lies under v, else 0        (K × (N − 1))

T = F Fᵀ is positive definite (every leaf edge has a_leaf > 0). With x = T⁻¹1, u = Fᵀx (so F u = 1),
q = u·u = 1ᵀT⁻¹1 and β = (1 − √(1 + c·q))/q = −c/(1 + √(1 + c·q)), the frame W = F − β·1uᵀ has
W Wᵀ = T − (2β − β²q)·11ᵀ = S and unit rows. The tree as arrays: :mod:`haf.frame.tree_arrays`; the PSD test,
the pruning recursion and the s_min search: :mod:`haf.frame.tree_psd`; derivation: docs/TREE_FRAME.md.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .grid import PSD_TOLERANCE
from .tree_arrays import TreeArrays, _level_sum
from .tree_psd import (
    _check_gamma,
    _edges,
    _node_distances,
    _node_similarity,
    _pruning,
    find_s_min_tree,
    tree_is_psd,
)

__all__ = ["TreeArrays", "TreeFrame", "build_tree_frame", "find_s_min_tree", "tree_is_psd"]

#: Exact all-pairs Gram check up to this K; beyond it, sampled pairs (sibling pairs included).
ALL_PAIRS_MAX_CLASSES = 4000
#: Sampled pairs for the Gram check of a large frame.
SAMPLED_PAIRS = 100_000


# ------------------------------------------------------------------------------------------------------ frame


@dataclass(frozen=True, eq=False)
class TreeFrame:
    """W = F − β·1uᵀ (K × (N − 1), column v − 1 for node v ≥ 1), kept as per-node arrays.

    Row i of W: √a_v on the nodes v of leaf i's root path, minus β·u. W Wᵀ = S, rows unit norm.
    """

    tree: TreeArrays
    convention: str
    gamma: float
    s_min: float
    s_min_searched: bool
    d_max: float
    node_similarity: np.ndarray  # g(v), N
    a: np.ndarray  # edge weights a_v = g(v) − g(parent v), a_root = 0, N
    u: np.ndarray  # Fᵀ T⁻¹ 1 per node (u_root = 0), N
    beta: float
    q: float  # 1ᵀ T⁻¹ 1 = u·u
    max_gram_error: float = float("nan")
    gram_pairs: int = 0

    @property
    def num_classes(self) -> int:
        return self.tree.num_classes

    @property
    def width(self) -> int:
        return self.tree.num_nodes - 1

    @property
    def sqrt_a(self) -> np.ndarray:
        return np.sqrt(self.a)

    @property
    def c(self) -> float:
        return float(self.node_similarity[0])

    def materialise(self, max_classes: int = 20_000) -> np.ndarray:
        """The dense K × (N − 1) frame (small K only)."""
        k, width = self.num_classes, self.width
        if k * width > max_classes * max_classes:
            raise ValueError(f"materialise: K × width = {k} × {width} is too large (limit {max_classes}²)")
        w = np.tile(-self.beta * self.u[1:], (k, 1))
        rows, nodes = np.arange(k), self.tree.leaf_node.copy()
        while rows.size:  # climb all class paths at once, one step per level: no K × H table
            w[rows, nodes - 1] += self.sqrt_a[nodes]
            nodes = self.tree.parent[nodes]
            keep = nodes > 0
            rows, nodes = rows[keep], nodes[keep]
        return w

    def similarity(self, i: np.ndarray, j: np.ndarray) -> np.ndarray:
        """S[i, j] = g(LCA(i, j)) for class index pairs, straight from the exp formula per node."""
        nodes = self.tree.leaf_node
        return self.node_similarity[self.tree.lca(nodes[np.asarray(i)], nodes[np.asarray(j)])]

    def similarity_matrix(self) -> np.ndarray:
        """S (K × K, small K only)."""
        k = self.num_classes
        i, j = np.meshgrid(np.arange(k), np.arange(k), indexing="ij")
        return self.similarity(i.ravel(), j.ravel()).reshape(k, k)

    def gram(self, i: np.ndarray, j: np.ndarray) -> np.ndarray:
        """W_i · W_j expanded term by term: Σ_{v ∈ path i ∩ path j} a_v − β(Σ_{path i} √a u + Σ_{path j} √a u)
        + β² u·u, with the path sums gathered along each class's ancestors (no identity F u = 1 assumed)."""
        return self._gram(self._gram_tables(), i, j)

    def _gram_tables(self) -> tuple[np.ndarray, np.ndarray]:
        """Per node v, sums over the root path of v (root excluded): (Σ a, Σ √a·u). One top-down pass, O(N):
        the path of leaf i and the shared part of the paths of i and j (the path of LCA(i, j)) are read off
        them, with no K × H ancestor table (a tree thousands of levels deep stays O(N))."""
        edge, path_u = np.zeros_like(self.a), np.zeros_like(self.a)
        term = self.sqrt_a * self.u
        for lo, hi, _, _ in self.tree.levels():
            up = self.tree.parent[lo:hi]
            edge[lo:hi] = edge[up] + self.a[lo:hi]
            path_u[lo:hi] = path_u[up] + term[lo:hi]
        return edge, path_u

    def _gram(self, tables: tuple[np.ndarray, np.ndarray], i: np.ndarray, j: np.ndarray) -> np.ndarray:
        edge, path_u = tables
        nodes = self.tree.leaf_node
        ni, nj = nodes[np.asarray(i)], nodes[np.asarray(j)]
        shared = edge[self.tree.lca(ni, nj)]
        return shared - self.beta * (path_u[ni] + path_u[nj]) + self.beta**2 * float(self.u @ self.u)

    def gram_error(self, rng_seed: int = 0) -> tuple[float, int]:
        """max |W Wᵀ − S| over all pairs (K ≤ 4000: W materialised, one GEMM), else over ≥ 10⁵ random pairs plus
        one sibling pair per leaf that has a sibling leaf; returns (error, pairs checked)."""
        k = self.num_classes
        if k <= ALL_PAIRS_MAX_CLASSES:
            w = self.materialise()
            return float(np.abs(w @ w.T - self.similarity_matrix()).max()), k * k
        rng = np.random.default_rng(rng_seed)
        i = rng.integers(0, k, SAMPLED_PAIRS)
        j = rng.integers(0, k, SAMPLED_PAIRS)
        # Sibling pairs: classes sorted by parent node, neighbours with the same parent.
        parent_of = self.tree.parent[self.tree.leaf_node]
        order = np.argsort(parent_of, kind="stable")
        same = parent_of[order[1:]] == parent_of[order[:-1]]
        i = np.concatenate([i, order[:-1][same], np.arange(k)])
        j = np.concatenate([j, order[1:][same], np.arange(k)])
        error, tables = 0.0, self._gram_tables()
        for start in range(0, i.size, 50_000):
            a, b = i[start:start + 50_000], j[start:start + 50_000]
            error = max(error, float(np.abs(self._gram(tables, a, b) - self.similarity(a, b)).max()))
        return error, int(i.size)


def build_tree_frame(tree: TreeArrays, gamma: float, convention: str, s_min: float | None = None,
                     check: bool = True) -> TreeFrame:
    """The tree-factorised HAFrame (the reference grid's s_min unless given); ``check``: measure max |W Wᵀ − S|."""
    gamma = _check_gamma(gamma)
    searched = s_min is None
    if searched:
        s_min = find_s_min_tree(tree, gamma, convention)
    elif not (np.isfinite(s_min) and -1.0 <= s_min < 1.0):
        raise ValueError(f"s_min must be a finite number in [-1, 1), got {s_min}")
    d, d_max = _node_distances(tree, convention)
    g = _node_similarity(d, d_max, tree.is_leaf, gamma, float(s_min))
    a = _edges(tree, g)
    if np.any(a < 0):
        raise ValueError("tree frame: g must not increase towards the root (a_v < 0); is s_min < 1?")
    p, q = _pruning(tree, a)
    c = float(g[0])
    discriminant = 1.0 + c * q
    if discriminant < -PSD_TOLERANCE * q:
        raise ValueError(f"similarity is not positive semi-definite at s_min = {s_min} (1 + c·1ᵀT⁻¹1 = "
                         f"{discriminant:.6g} < 0); use a less negative s_min")
    beta = -c / (1.0 + np.sqrt(max(discriminant, 0.0)))
    # x = T⁻¹1: product of p_w/(p_w + a_w) down the inner nodes, then 1/a_leaf; u = Fᵀx by subtree sums.
    factor = np.where(tree.is_leaf, 1.0, p / np.where(p + a > 0, p + a, 1.0))
    factor[0] = 1.0
    prod = np.ones_like(a)
    for lo, hi, _, _ in tree.levels():
        prod[lo:hi] = prod[tree.parent[lo:hi]] * factor[lo:hi]
    x = np.zeros_like(a)
    leaves = tree.is_leaf
    x[leaves] = prod[tree.parent[leaves]] / a[leaves]
    subtree = x.copy()
    for lo, hi, plo, phi in reversed(tree.levels()):
        subtree[plo:phi] += _level_sum(subtree[lo:hi], tree.parent, lo, hi, plo, phi)
    u = np.sqrt(a) * subtree
    u[0] = 0.0
    frame = TreeFrame(tree, convention, gamma, float(s_min), searched, d_max, g, a, u, float(beta), float(q))
    if check:
        error, pairs = frame.gram_error()
        object.__setattr__(frame, "max_gram_error", error)
        object.__setattr__(frame, "gram_pairs", pairs)
    return frame
