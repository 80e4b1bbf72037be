"""Tree factorisation of the HAFrame: an exact frame of width N − 1 (N tree nodes) built in O(N).

Under both distance conventions d(i, j) depends only on v = LCA(i, j) and grows towards the root, so
S_ij = g(v) with g(v) = (1 − s)·exp(−γ·d(v)/d_max) + s, g = 1 at the leaves, g decreasing towards the root.
With a_v = g(v) − g(parent v) ≥ 0 (every non-root v) and c = g(root):

    S = F Fᵀ + c·11ᵀ,    F[i, v] = √a_v if leaf i lies under v, else 0        (K × (N − 1))

T = F Fᵀ is positive definite (every leaf edge has a_leaf > 0). With x = T⁻¹1, u = Fᵀx (so F u = 1), q = u·u =
1ᵀT⁻¹1 and β = (1 − √(1 + c·q))/q = −c/(1 + √(1 + c·q)), the frame W = F − β·1uᵀ has W Wᵀ = T − (2β − β²q)·11ᵀ = S
and unit rows. S + τI is positive definite iff 1 + c·1ᵀ(T + τI)⁻¹1 > 0 (c < 0; always when c ≥ 0), which is the
reference's "λ_min > −τ" PSD test, exactly; T + τI is T with τ added to every leaf edge.

1ᵀT⁻¹1 and T⁻¹1 come from the pruning recursion (T is the covariance of Brownian motion on the tree with branch
lengths a_v): bottom-up p_leaf = 0, 1/p_v = Σ_children 1/(p_c + a_c), so 1ᵀT⁻¹1 = 1/p_root; top-down, leaf i's
entry of T⁻¹1 is (1/a_i)·Π p_w/(p_w + a_w) over the inner non-root nodes w on its path. Both are one pass per
depth level. Nodes are numbered breadth first (parent index < child index, each depth a contiguous range).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from haf.hierarchy.distance_conventions import check_convention

from .grid import PSD_TOLERANCE, last_psd_index, reference_grid

__all__ = ["TreeArrays", "TreeFrame", "build_tree_frame", "find_s_min_tree", "find_s_min_tree_full_scan",
           "tree_is_psd"]

#: Exact all-pairs Gram check up to this K; beyond it, sampled pairs (sibling pairs included).
ALL_PAIRS_MAX_CLASSES = 4000
#: Sampled pairs for the Gram check of a large frame.
SAMPLED_PAIRS = 100_000


def _level_sum(values: np.ndarray, parent: np.ndarray, lo: int, hi: int, plo: int, phi: int) -> np.ndarray:
    """Σ of values[lo:hi] into their parents, which occupy [plo, phi) (one depth level up)."""
    return np.bincount(parent[lo:hi] - plo, weights=values, minlength=phi - plo)


@dataclass(frozen=True, eq=False)
class TreeArrays:
    """A rooted tree as integer arrays, nodes breadth first: ``parent[0] = −1``, ``parent[v] < v``.

    ``leaf_node[i]`` is the node of class i; the leaves are exactly the classes. Derived on construction: depth,
    the per-depth node ranges ``level_offsets``, subtree height, leaf count under each node.
    """

    parent: np.ndarray
    leaf_node: np.ndarray
    classes: tuple[str, ...] | None = None
    depth: np.ndarray = field(init=False)
    level_offsets: np.ndarray = field(init=False)
    subtree_height: np.ndarray = field(init=False)
    leaf_count: np.ndarray = field(init=False)
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
        count = is_leaf.astype(np.int64)
        levels = len(offsets) - 1
        for level in range(levels - 1, 0, -1):
            lo, hi, plo, phi = offsets[level], offsets[level + 1], offsets[level - 1], offsets[level]
            np.maximum.at(height, parent[lo:hi], height[lo:hi] + 1)
            count[plo:phi] += _level_sum(count[lo:hi].astype(np.float64), parent, lo, hi, plo, phi).astype(np.int64)
        for name, value in (("parent", parent), ("leaf_node", leaf_node), ("depth", depth),
                            ("level_offsets", level_offsets), ("subtree_height", height), ("leaf_count", count),
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

    def ancestor_table(self) -> np.ndarray:
        """K × (H + 1) nodes on each class's path, root first; −1 pads below a shallow leaf."""
        h = self.height
        table = np.full((self.num_classes, h + 1), -1, dtype=np.int64)
        node = self.leaf_node.copy()
        d = self.depth[node]
        for level in range(h, -1, -1):
            here = d >= level
            table[here, level] = node[here]
            node = np.where(here, self.parent[node], node)
            d = np.where(here, d - 1, d)
        return table

    def lca(self, i: np.ndarray, j: np.ndarray) -> np.ndarray:
        """Lowest common ancestors of node pairs (vectorised; one step per depth level)."""
        a, b = np.array(i, dtype=np.int64), np.array(j, dtype=np.int64)
        da, db = self.depth[a], self.depth[b]
        for _ in range(int(self.depth.max()) + 1):
            deeper_a, deeper_b = da > db, db > da
            a = np.where(deeper_a, self.parent[a], a)
            b = np.where(deeper_b, self.parent[b], b)
            da, db = self.depth[a], self.depth[b]
        while np.any(a != b):
            differ = a != b
            a = np.where(differ, self.parent[a], a)
            b = np.where(differ, self.parent[b], b)
        return a

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


# ------------------------------------------------------------------------------------------ similarity per node


def _node_distances(tree: TreeArrays, convention: str) -> tuple[np.ndarray, float]:
    """d(v) per node under the convention (0 at leaves), clamped at d_max above the top branching node."""
    check_convention(convention)
    d = tree.subtree_height if convention == "lca-height" else tree.height - tree.depth
    d = np.where(tree.is_leaf, 0, d).astype(np.float64)
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


def find_s_min_tree_full_scan(tree: TreeArrays, gamma: float, convention: str) -> float:
    """The reference rule literally: all 100 grid points with the O(N) test; the most negative PSD one."""
    gamma = _check_gamma(gamma)
    d, d_max = _node_distances(tree, convention)
    grid = reference_grid(tree.num_classes)
    is_psd = _psd_at(tree, d, d_max, gamma)
    psd = [float(s) for s in grid if is_psd(s)]
    if not psd:
        raise _no_psd_point(tree, grid, gamma)
    return min(psd)


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
        table = self.tree.ancestor_table()
        rows = np.repeat(np.arange(k), table.shape[1])
        nodes = table.ravel()
        keep = nodes > 0
        w[rows[keep], nodes[keep] - 1] += self.sqrt_a[nodes[keep]]
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
        table = self.tree.ancestor_table()
        sqrt_a = self.sqrt_a
        weight = np.where(table > 0, sqrt_a[np.maximum(table, 0)] * self.u[np.maximum(table, 0)], 0.0)
        path_u = weight.sum(axis=1)
        edge = np.where(table > 0, self.a[np.maximum(table, 0)], 0.0)
        i, j = np.asarray(i), np.asarray(j)
        shared = np.where((table[i] == table[j]) & (table[i] > 0), edge[i], 0.0).sum(axis=1)
        return shared - self.beta * (path_u[i] + path_u[j]) + self.beta**2 * float(self.u @ self.u)

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
        error = 0.0
        for start in range(0, i.size, 50_000):
            a, b = i[start:start + 50_000], j[start:start + 50_000]
            error = max(error, float(np.abs(self.gram(a, b) - self.similarity(a, b)).max()))
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
