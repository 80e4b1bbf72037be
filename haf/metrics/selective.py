"""Hierarchical selective classification (Goren, Galil & El-Yaniv, NeurIPS 2024) on the class tree, in O(N) per sample.

A prediction may be any node of the tree: it is *correct* when it is the true leaf or one of its ancestors. With
leaf probabilities p (softmax of the class scores), a node's probability is the sum over the leaves below it,
P(v) = Σ_{i ∈ L(v)} p_i, computed bottom up, one vectorised step per depth level on the breadth-first parent array
(:class:`~haf.frame.tree_arrays.TreeArrays`): O(B · N) time and memory, never a node × class matrix.

* **Climbing** with threshold θ: from the predicted leaf, walk up to the first node v with P(v) ≥ θ (the root, whose
  probability is 1 by definition, always qualifies; θ > 1 predicts the root).
* Along a leaf's path P never decreases, so correctness is monotone in θ: with a = LCA(predicted leaf, true leaf) and
  c the child of a on the path (the highest wrong node), the climb is right iff θ > P(c). That per-sample
  *tight threshold* (0 for a correct leaf) is what calibration ranks (:func:`tight_thresholds`).
* **Hierarchical coverage** of a node (the paper's information-content coverage): 1 − ln|L(v)| / ln K, 1 at a leaf,
  0 at the root. **Risk** = 1 − hierarchical accuracy of the node predictions.
* **Risk–coverage curve**: both as θ sweeps from 0 (every prediction a leaf: coverage 1, risk = 1 − top-1) to above 1
  (every prediction the root: coverage 0, risk 0); computed exactly from each sample's path (its breakpoints are the
  path probabilities). **hAURC** = ∫₀¹ risk d(coverage), trapezoids over the exact curve's points.
* **Coverage at accuracy A**: the largest mean coverage of a threshold whose accuracy on the same data is ≥ A (an
  in-sample figure for comparing models, not a guarantee; :func:`calibrate_threshold` gives the guarantee).

The calibration and its assumptions are documented in docs/PREDICTION.md.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["NodeTree", "calibrate_threshold", "climb", "coverage_at_accuracy", "node_probabilities",
           "risk_coverage_curve", "selective_summary", "node_correct", "tight_from_paths", "climb_paths",
           "row_chunks", "curve_from_paths", "path_records", "haurc", "tight_thresholds", "path_table", "DEFAULT_TARGETS"]

DEFAULT_TARGETS = (0.9, 0.95, 0.99)


@dataclass(frozen=True, eq=False)
class NodeTree:
    """The class tree as breadth-first arrays plus node names: what selective prediction needs, nothing K × K.

    ``parent[0] = −1`` (the root), ``parent[v] < v``, each depth level a contiguous range (``level_offsets``);
    ``leaf_node[k]`` is the node of class k; ``leaf_count[v]`` = |L(v)|; ``names[v]`` the node's name (or None).
    """

    parent: np.ndarray
    leaf_node: np.ndarray
    level_offsets: np.ndarray
    depth: np.ndarray
    leaf_count: np.ndarray
    names: tuple[str, ...] | None = None

    @property
    def num_nodes(self) -> int:
        return int(self.parent.size)

    @property
    def num_classes(self) -> int:
        return int(self.leaf_node.size)

    @property
    def height(self) -> int:
        return int(self.depth[self.leaf_node].max())

    @property
    def coverage(self) -> np.ndarray:
        """Per node: 1 − ln|L(v)| / ln K (float64)."""
        return 1.0 - np.log(self.leaf_count.astype(np.float64)) / math.log(max(self.num_classes, 2))

    def path(self, node: int) -> list[int]:
        """Node, its parent, ... the root."""
        out = [int(node)]
        while self.parent[out[-1]] >= 0:
            out.append(int(self.parent[out[-1]]))
        return out

    @classmethod
    def from_arrays(cls, parent: np.ndarray, leaf_node: np.ndarray, names=None) -> "NodeTree":
        """From breadth-first arrays (checked by :class:`~haf.frame.tree_arrays.TreeArrays`)."""
        from haf.frame.tree_arrays import TreeArrays

        tree = TreeArrays(parent, leaf_node)
        return cls._from_tree(tree, names)

    @classmethod
    def _from_tree(cls, tree, names=None) -> "NodeTree":
        counts = np.zeros(tree.num_nodes, dtype=np.int64)
        counts[tree.leaf_node] = 1
        for lo, hi, plo, phi in reversed(tree.levels()):
            counts[plo:phi] += np.bincount(tree.parent[lo:hi] - plo, weights=counts[lo:hi],
                                           minlength=phi - plo).astype(np.int64)
        return cls(np.asarray(tree.parent), np.asarray(tree.leaf_node), np.asarray(tree.level_offsets),
                   np.asarray(tree.depth), counts, tuple(names) if names is not None else None)

    @classmethod
    def from_hierarchy(cls, hierarchy) -> "NodeTree":
        """Nodes in the hierarchy's breadth-first edge order (root first), classes in its class order."""
        from haf.frame.tree_arrays import TreeArrays

        names = [hierarchy.root]
        index = {hierarchy.root: 0}
        parents = [-1]
        for par, child in hierarchy.edges():
            index[child] = len(names)
            names.append(child)
            parents.append(index[par])
        leaf_node = np.array([index[c] for c in hierarchy.classes], dtype=np.int64)
        return cls._from_tree(TreeArrays(np.array(parents, dtype=np.int64), leaf_node), names)

    @classmethod
    def from_tree_distances(cls, distances) -> "NodeTree":
        """From a :class:`~haf.hierarchy.tree_distances.TreeDistances` (the tree frame's distances; no names)."""
        return cls._from_tree(distances.tree)


def _levels(tree: NodeTree):
    o = tree.level_offsets
    return [(int(o[d]), int(o[d + 1]), int(o[d - 1]), int(o[d])) for d in range(len(o) - 2, 0, -1)]


def node_probabilities(probs: np.ndarray, tree: NodeTree) -> np.ndarray:
    """P(v) for every node (B × N float64): leaves scattered in, then summed up level by level (deepest first).

    The root is set to exactly 1 (the probabilities of a softmax sum to 1 up to rounding)."""
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != tree.num_classes:
        raise ValueError(f"probs must be B × K with K = {tree.num_classes}, got {tuple(p.shape)}")
    if not np.isfinite(p).all():
        raise ValueError("probs has non-finite values")
    out = np.zeros((p.shape[0], tree.num_nodes), dtype=np.float64)
    out[:, tree.leaf_node] = p
    for lo, hi, plo, phi in _levels(tree):
        _segment_add(out, tree.parent[lo:hi], lo, hi)
    out[:, 0] = 1.0
    return out


def _segment_add(out: np.ndarray, parents: np.ndarray, lo: int, hi: int) -> None:
    """out[:, parents[j]] += out[:, lo + j]; ``parents`` is non-decreasing (breadth first), so a cumulative sum
    split at the parents' boundaries adds each run of siblings in one pass (no per-row Python loop)."""
    if hi <= lo:
        return
    block = out[:, lo:hi]
    starts = np.flatnonzero(np.r_[True, parents[1:] != parents[:-1]])
    sums = np.add.reduceat(block, starts, axis=1)
    out[:, parents[starts]] += sums


def path_table(tree: NodeTree, leaves: np.ndarray) -> np.ndarray:
    """B × (H + 1) nodes on each leaf's path, leaf first, then its ancestors, then the root repeated."""
    leaves = np.asarray(leaves, dtype=np.int64)
    table = np.empty((leaves.size, tree.height + 1), dtype=np.int64)
    node = tree.leaf_node[leaves]
    for j in range(table.shape[1]):
        table[:, j] = node
        node = np.where(tree.parent[node] >= 0, tree.parent[node], node)
    return table


def climb(node_probs: np.ndarray, tree: NodeTree, leaves: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """(node, its probability) per sample: the first node on the predicted leaf's path with P ≥ ``threshold``."""
    paths = path_table(tree, leaves)
    rows = np.arange(paths.shape[0])[:, None]
    probs = node_probs[rows, paths]
    passes = probs >= threshold
    passes[:, -1] = True  # the root always qualifies
    first = passes.argmax(axis=1)
    chosen = paths[np.arange(paths.shape[0]), first]
    return chosen, node_probs[np.arange(paths.shape[0]), chosen]


def _correct_table(tree: NodeTree, paths: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """B × (H + 1) bool: is path node j an ancestor-or-self of the true leaf."""
    truth = path_table(tree, targets)
    # v is an ancestor-or-self of the true leaf iff the true leaf's ancestor at depth(v) is v.
    depth = tree.depth[paths]
    true_depth = tree.depth[truth[:, 0]][:, None]
    steps = true_depth - depth  # how far above the true leaf depth(v) lies
    ok = steps >= 0
    ancestor = np.take_along_axis(truth, np.clip(steps, 0, truth.shape[1] - 1), axis=1)
    return ok & (ancestor == paths)


def node_correct(tree: NodeTree, nodes: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Per sample: is the predicted node an ancestor-or-self of the true class's leaf (bool)."""
    nodes = np.asarray(nodes, dtype=np.int64)
    return _correct_table(tree, nodes[:, None], np.asarray(targets, dtype=np.int64))[:, 0]


def tight_thresholds(node_probs: np.ndarray, tree: NodeTree, leaves: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Per sample the largest wrong path probability P(c): the climb is right iff θ > it (0 for a right leaf)."""
    probs, _, correct = path_records(node_probs, tree, leaves, targets)
    return tight_from_paths(probs, correct)


def tight_from_paths(probs: np.ndarray, correct: np.ndarray) -> np.ndarray:
    """:func:`tight_thresholds` from :func:`path_records`' probabilities and correctness."""
    wrong = np.where(correct, -np.inf, probs)
    out = wrong.max(axis=1)
    return np.where(np.isfinite(out), out, 0.0)


def climb_paths(probs: np.ndarray, threshold: float) -> np.ndarray:
    """Per row of :func:`path_records`' probabilities: the index along the path where the climb stops."""
    passes = probs >= threshold
    passes[:, -1] = True
    return passes.argmax(axis=1)


def row_chunks(rows: int, nodes: int, max_elements: int = 1 << 22):
    """Row slices whose B × N float64 node-probability block stays under ``max_elements`` (32 MiB)."""
    step = max(1, max_elements // max(nodes, 1))
    return [slice(start, min(start + step, rows)) for start in range(0, rows, step)]


def calibrate_threshold(thresholds: np.ndarray, target_accuracy: float, confidence: float | None = None) -> float:
    """θ̂ from the calibration samples' tight thresholds (the climb on sample i is right iff θ > t_i).

    Let t_(1) ≤ … ≤ t_(n) and θ̂ = the next float above t_(k), so that at least k calibration samples are right.

    * ``confidence`` None: k = ⌈(n + 1)·A⌉ (the paper's split-conformal quantile): for a new sample exchangeable
      with the calibration set, P(correct) ≥ A, the probability taken over both.
    * ``confidence`` 1 − δ: the smallest k with P(Binomial(n, A) ≤ k − 1) ≥ 1 − δ; then, for i.i.d. data, the
      accuracy at θ̂ (a Beta(k, n + 1 − k) variable) is ≥ A with probability ≥ 1 − δ over the calibration set.

    k > n (too few samples for A): θ̂ = 1.0 + ε, every prediction the root (always right).
    """
    t = np.sort(np.asarray(thresholds, dtype=np.float64))
    n = t.size
    if n == 0:
        raise ValueError("calibration needs at least one sample")
    if not 0.0 < target_accuracy < 1.0:
        raise ValueError(f"target accuracy must lie in (0, 1), got {target_accuracy}")
    if confidence is None:
        k = math.ceil((n + 1) * target_accuracy)
    else:
        if not 0.0 < confidence < 1.0:
            raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
        k = _binomial_rank(n, target_accuracy, confidence)
    if k > n:
        return float(np.nextafter(1.0, 2.0))
    return float(np.nextafter(t[k - 1], np.inf))


def _binomial_rank(n: int, accuracy: float, confidence: float) -> int:
    """Smallest k in 1..n with P(Binomial(n, accuracy) ≤ k − 1) ≥ confidence, else n + 1 (log-space pmf)."""
    log_p, log_q = math.log(accuracy), math.log1p(-accuracy)
    cdf = 0.0
    for j in range(n + 1):
        cdf += math.exp(math.lgamma(n + 1) - math.lgamma(j + 1) - math.lgamma(n - j + 1) + j * log_p
                        + (n - j) * log_q)
        if cdf >= confidence:
            return j + 1  # k − 1 = j
    return n + 1


def path_records(node_probs: np.ndarray, tree: NodeTree, leaves: np.ndarray, targets: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per sample and path node (leaf first, root last; B × (H + 1)): its probability, coverage and correctness.
    All a risk–coverage curve needs; small enough to keep for a whole split and to gather over ranks."""
    paths = path_table(tree, leaves)
    b = paths.shape[0]
    correct = _correct_table(tree, paths, np.asarray(targets, dtype=np.int64))
    probs = node_probs[np.arange(b)[:, None], paths]
    return probs, tree.coverage[paths], correct


def curve_from_paths(probs: np.ndarray, cover: np.ndarray, correct: np.ndarray) -> dict[str, np.ndarray]:
    """The exact risk–coverage curve of the climb over every θ from :func:`path_records` (rows = samples).

    ``{"threshold", "coverage", "risk"}``: point 0 is θ = 0 (leaf predictions); each further point is θ just
    above a breakpoint, where some samples move one node up; the last has every prediction at the root."""
    b = probs.shape[0]
    correct = correct.astype(np.float64)
    # Climbing past path node j happens for θ > P(node j): the sample's (coverage, correct) change by the step.
    breaks = probs[:, :-1].reshape(-1)
    d_cover = (cover[:, 1:] - cover[:, :-1]).reshape(-1)
    d_correct = (correct[:, 1:] - correct[:, :-1]).reshape(-1)
    order = np.argsort(breaks, kind="stable")
    thresholds = np.concatenate([[0.0], breaks[order]])
    coverage = (cover[:, 0].sum() + np.concatenate([[0.0], np.cumsum(d_cover[order])])) / max(b, 1)
    accuracy = (correct[:, 0].sum() + np.concatenate([[0.0], np.cumsum(d_correct[order])])) / max(b, 1)
    # Keep the last point of every run of equal breakpoints (the state just above that θ).
    keep = np.r_[thresholds[1:] != thresholds[:-1], True]
    keep[0] = True
    return {"threshold": thresholds[keep], "coverage": np.clip(coverage[keep], 0.0, 1.0),
            "risk": np.clip(1.0 - accuracy[keep], 0.0, 1.0)}


def risk_coverage_curve(node_probs: np.ndarray, tree: NodeTree, leaves: np.ndarray, targets: np.ndarray
                        ) -> dict[str, np.ndarray]:
    """The exact curve of the climb over every θ (:func:`curve_from_paths` of :func:`path_records`)."""
    return curve_from_paths(*path_records(node_probs, tree, leaves, targets))


def haurc(curve: dict[str, np.ndarray]) -> float:
    """∫ risk d(coverage) over the curve (trapezoids, coverage sorted ascending)."""
    order = np.argsort(curve["coverage"], kind="stable")
    c, r = curve["coverage"][order], curve["risk"][order]
    return float(np.sum(np.diff(c) * (r[1:] + r[:-1]) / 2.0)) if c.size > 1 else 0.0


def coverage_at_accuracy(curve: dict[str, np.ndarray], accuracy: float) -> float:
    """Largest coverage among the curve's points whose accuracy (1 − risk) is ≥ ``accuracy`` (0 if none)."""
    ok = 1.0 - curve["risk"] >= accuracy - 1e-12
    return float(curve["coverage"][ok].max()) if ok.any() else 0.0


def selective_summary(curve: dict[str, np.ndarray], targets=DEFAULT_TARGETS, points: int = 101) -> dict:
    """``{"haurc", "coverage@0.95", ..., "curve": {"coverage": [...], "risk": [...]}}``: the curve resampled at
    ``points`` coverages (risk at the largest curve coverage ≤ each level) so records stay small."""
    out: dict = {"haurc": haurc(curve)}
    for a in targets:
        out[f"coverage@{a:g}"] = coverage_at_accuracy(curve, a)
    order = np.argsort(curve["coverage"], kind="stable")
    c, r = curve["coverage"][order], curve["risk"][order]
    grid = np.linspace(0.0, 1.0, points)
    idx = np.clip(np.searchsorted(c, grid, side="right") - 1, 0, c.size - 1)
    out["curve"] = {"coverage": [round(float(x), 6) for x in grid], "risk": [round(float(x), 6) for x in r[idx]]}
    return out
