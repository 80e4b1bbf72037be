"""Hierarchical selective classification on the tree: node probabilities, climbing, tight thresholds, the
risk–coverage curve and the calibrated threshold, each against a plain dense (node × class ancestor matrix)
reference on small random trees; and the tree path at 10⁶ classes without any N × K array."""
from __future__ import annotations

import math
import tracemalloc

import numpy as np
import pytest

from haf.metrics.selective import (
    NodeTree,
    calibrate_threshold,
    climb,
    coverage_at_accuracy,
    haurc,
    node_probabilities,
    risk_coverage_curve,
    selective_summary,
    tight_thresholds,
)


def random_hierarchy(seed: int, classes: int = 13):
    """A random unbalanced tree: every node gets a random parent among earlier inner nodes."""
    from haf.hierarchy import Hierarchy

    rng = np.random.default_rng(seed)
    edges, inner = [], ["r"]
    for i in range(5):
        edges.append((inner[rng.integers(len(inner))], f"n{i}"))
        inner.append(f"n{i}")
    used = set()
    for k in range(classes):
        parent = inner[rng.integers(len(inner))]
        edges.append((parent, f"c{k}"))
        used.add(parent)
    # inner nodes without children would be leaves that are not classes: give each one class
    for node in inner:
        if node not in {p for p, _ in edges}:
            edges.append((node, f"x{node}"))
    return Hierarchy.from_edges(edges)


def dense_reference(tree: NodeTree) -> np.ndarray:
    """A[v, k] = 1 when node v is an ancestor-or-self of class k."""
    a = np.zeros((tree.num_nodes, tree.num_classes))
    for k, leaf in enumerate(tree.leaf_node):
        a[tree.path(leaf), k] = 1.0
    return a


def softmax(x):
    e = np.exp(x - x.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def brute_climb(node_probs, tree, leaf, theta):
    for v in tree.path(tree.leaf_node[leaf]):
        if v == 0 or node_probs[v] >= theta:
            return v
    return 0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_node_probabilities_climb_and_thresholds_match_the_dense_reference(seed):
    tree = NodeTree.from_hierarchy(random_hierarchy(seed))
    rng = np.random.default_rng(seed)
    b = 37
    probs = softmax(rng.normal(size=(b, tree.num_classes)) * 3)
    a = dense_reference(tree)
    nodes = node_probabilities(probs, tree)
    reference = probs @ a.T
    reference[:, 0] = 1.0
    np.testing.assert_allclose(nodes, reference, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(tree.leaf_count, a.sum(1))
    leaves = probs.argmax(1)
    targets = rng.integers(tree.num_classes, size=b)
    for theta in (0.0, 0.3, 0.5, 0.8, 0.99, 1.5):
        chosen, conf = climb(nodes, tree, leaves, theta)
        assert chosen.tolist() == [brute_climb(nodes[i], tree, leaves[i], theta) for i in range(b)]
        np.testing.assert_allclose(conf, nodes[np.arange(b), chosen])
    t = tight_thresholds(nodes, tree, leaves, targets)
    for i in range(b):
        right_above = brute_climb(nodes[i], tree, leaves[i], np.nextafter(t[i], 2))
        assert a[right_above, targets[i]] == 1.0
        if t[i] > 0:
            wrong_at = brute_climb(nodes[i], tree, leaves[i], t[i])
            assert a[wrong_at, targets[i]] == 0.0
        else:
            assert leaves[i] == targets[i]


@pytest.mark.parametrize("seed", [3, 4])
def test_risk_coverage_curve_matches_a_brute_force_sweep(seed):
    tree = NodeTree.from_hierarchy(random_hierarchy(seed, classes=9))
    rng = np.random.default_rng(seed)
    b = 25
    probs = softmax(rng.normal(size=(b, tree.num_classes)) * 2)
    nodes = node_probabilities(probs, tree)
    leaves, targets = probs.argmax(1), rng.integers(tree.num_classes, size=b)
    a = dense_reference(tree)
    cov = 1 - np.log(a.sum(1)) / math.log(tree.num_classes)
    curve = risk_coverage_curve(nodes, tree, leaves, targets)
    for theta, c, r in zip(curve["threshold"], curve["coverage"], curve["risk"]):
        above = np.nextafter(theta, 2) if theta > 0 else 0.0
        chosen = [brute_climb(nodes[i], tree, leaves[i], above) for i in range(b)]
        assert c == pytest.approx(np.mean(cov[chosen]), abs=1e-12)
        assert r == pytest.approx(1 - np.mean([a[v, y] for v, y in zip(chosen, targets)]), abs=1e-12)
    assert curve["coverage"][0] == pytest.approx(1.0) and curve["risk"][0] == pytest.approx(np.mean(leaves != targets))
    assert curve["coverage"][-1] == pytest.approx(0.0) and curve["risk"][-1] == 0.0
    # hAURC by an independent trapezoid over the brute force at every breakpoint: θ = 0 (the leaves) and just
    # above each node probability on a prediction's path (coverage and risk only change there; both fall as θ
    # grows), so a curve that left out a point or mis-placed one gives a different area
    breaks = sorted({0.0} | {float(nodes[i, v]) for i in range(b) for v in tree.path(tree.leaf_node[leaves[i]])})
    points = []
    for theta in breaks:
        above = np.nextafter(theta, 2) if theta > 0 else 0.0
        chosen = [brute_climb(nodes[i], tree, leaves[i], above) for i in range(b)]
        points.append((np.mean(cov[chosen]), 1 - np.mean([a[v, y] for v, y in zip(chosen, targets)])))
    brute_c, brute_r = np.array(points).T
    brute_area = float(np.sum(-np.diff(brute_c) * (brute_r[1:] + brute_r[:-1]) / 2))
    area = haurc(curve)
    assert area == pytest.approx(brute_area, abs=1e-12)
    assert 0.0 < area <= np.mean(leaves != targets) + 1e-12
    summary = selective_summary(curve)
    assert summary["haurc"] == area and len(summary["curve"]["risk"]) == 101
    assert summary["coverage@0.9"] == coverage_at_accuracy(curve, 0.9)
    ok = 1 - curve["risk"] >= 0.9
    assert summary["coverage@0.9"] == (curve["coverage"][ok].max() if ok.any() else 0.0)


def test_haurc_of_a_known_curve():
    curve = {"coverage": np.array([0.0, 0.5, 1.0]), "risk": np.array([0.0, 0.1, 0.3]), "threshold": np.zeros(3)}
    assert haurc(curve) == pytest.approx(0.5 * 0.05 + 0.5 * 0.2)


def binomial_cdf(j, n, p):
    return sum(math.comb(n, i) * p ** i * (1 - p) ** (n - i) for i in range(j + 1))


def test_calibrated_threshold_ranks():
    t = np.linspace(0.01, 0.99, 50)
    rng = np.random.default_rng(0)
    rng.shuffle(t)
    n = t.size
    # conformal rank ⌈(n + 1) A⌉
    theta = calibrate_threshold(t, 0.8)
    k = math.ceil((n + 1) * 0.8)
    assert (t < theta).sum() == k and theta == np.nextafter(np.sort(t)[k - 1], np.inf)
    # the binomial rank: smallest k with P(Bin(n, A) <= k - 1) >= 1 - delta, brute force with exact binomials
    theta = calibrate_threshold(t, 0.8, confidence=0.9)
    k = next(k for k in range(1, n + 1) if binomial_cdf(k - 1, n, 0.8) >= 0.9)
    assert (t < theta).sum() == k
    assert calibrate_threshold(t, 0.99) > 1.0  # too few samples: the root
    with pytest.raises(ValueError, match="target accuracy"):
        calibrate_threshold(t, 1.0)
    with pytest.raises(ValueError, match="confidence"):
        calibrate_threshold(t, 0.5, confidence=1.5)


def test_calibrated_climb_reaches_the_target_on_exchangeable_data():
    """Calibrate on one half of a synthetic classifier's outputs, test on the other: accuracy ≥ target (with the
    margin the guarantee leaves), and the flat leaf predictions are right less often."""
    tree = NodeTree.from_hierarchy(random_hierarchy(7, classes=20))
    rng = np.random.default_rng(7)
    n = 4000
    targets = rng.integers(tree.num_classes, size=n)
    logits = rng.normal(size=(n, tree.num_classes))
    logits[np.arange(n), targets] += 1.5
    probs = softmax(logits)
    nodes = node_probabilities(probs, tree)
    leaves = probs.argmax(1)
    cal, test = slice(0, n // 2), slice(n // 2, n)
    theta = calibrate_threshold(tight_thresholds(nodes[cal], tree, leaves[cal], targets[cal]), 0.9, confidence=0.95)
    chosen, _ = climb(nodes[test], tree, leaves[test], theta)
    a = dense_reference(tree)
    accuracy = np.mean(a[chosen, targets[test]])
    flat = np.mean(leaves[test] == targets[test])
    assert accuracy >= 0.88 and accuracy > flat


def wide_deep_tree(fanouts):
    """A breadth-first parent array of a complete tree with the given fan-out per level."""
    parents = [np.array([-1])]
    first, count = 0, 1
    for fan in fanouts:
        parents.append(np.repeat(np.arange(first, first + count), fan))
        first, count = first + count, count * fan
    parent = np.concatenate(parents)
    return parent, np.arange(first, first + count)


def test_million_classes_without_a_node_by_class_matrix():
    parent, leaves = wide_deep_tree([10, 10, 100, 100])  # K = 10⁶ leaves, N ≈ 1.01·10⁶ nodes, depth 4
    tree = NodeTree.from_arrays(parent, leaves)
    k, n = tree.num_classes, tree.num_nodes
    assert k == 10 ** 6
    rng = np.random.default_rng(0)
    b = 3
    logits = rng.normal(size=(b, k)).astype(np.float32)
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    targets = rng.integers(k, size=b)
    tracemalloc.start()
    try:
        nodes = node_probabilities(probs, tree)
        leaves = probs.argmax(1)
        chosen, _ = climb(nodes, tree, leaves, 0.5)
        thresholds = tight_thresholds(nodes, tree, leaves, targets)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # B × N float64 and a few B-long arrays; an N × K matrix would be 10¹² entries.
    assert peak < 8 * b * n * 4, peak
    # spot-check against per-node sums of the leaves below (the tree is complete: node v's leaves are a range)
    assert nodes[:, 0].tolist() == [1.0] * b
    level1 = nodes[:, 1:11]
    np.testing.assert_allclose(level1, probs.reshape(b, 10, -1).sum(2), rtol=1e-5)
    # Each row's climb and tight threshold against the path computed here: every class's ancestor at each level by
    # following the parent array, a path node's probability the float64 sum over the classes below it.
    ancestors = [np.asarray(tree.leaf_node)]  # ancestors[j][c]: class c's node j steps up
    for _ in range(4):
        ancestors.append(parent[ancestors[-1]])
    assert chosen.tolist() == [0] * b  # no node below the root holds half of 10⁶ near-uniform probabilities
    for i in range(b):
        row = probs[i].astype(np.float64)
        leaf = int(row.argmax())
        path = [int(ancestors[j][leaf]) for j in range(5)]
        path_p = [float(row[ancestors[j] == v].sum()) for j, v in enumerate(path)]
        np.testing.assert_allclose(nodes[i, path], path_p, rtol=1e-5)
        truth = {int(ancestors[j][targets[i]]) for j in range(5)}
        wrong = [q for v, q in zip(path, path_p) if v not in truth]
        assert thresholds[i] == pytest.approx(max(wrong) if wrong else 0.0, rel=1e-5)
        theta = 0.5 * (path_p[1] + path_p[2])  # between the leaf's parent and grandparent: it stops at the latter
        assert leaf == leaves[i] and climb(nodes[i:i + 1], tree, np.array([leaf]), theta)[0].tolist() == [path[2]]


def test_evaluation_keeps_no_selective_metrics_for_non_finite_probabilities():
    import torch

    from haf.training.evaluation import _selective_compute, _selective_update

    tree = NodeTree.from_hierarchy(random_hierarchy(5))
    k = tree.num_classes
    paths = {"plain": [], "crm": []}
    good = torch.softmax(torch.randn(4, k), dim=1)
    _selective_update(paths, tree, good, good, None, torch.arange(4) % k)
    assert set(_selective_compute(dict(paths))) == {"plain"}
    bad = good.clone()
    bad[1, 0] = float("nan")
    _selective_update(paths, tree, bad, bad, None, torch.arange(4) % k)
    assert _selective_compute(paths) is None


def test_evaluation_and_prediction_give_the_same_results_in_row_chunks(monkeypatch):
    """Evaluation's kept paths, calibration's path records and a classifier's selective records, computed a few
    rows at a time (as a 10⁶-class tree forces), equal the one-chunk results (odd batch: the last chunk is short)."""
    import types

    import torch

    from haf.inference.classifier import records_from_probabilities
    from haf.inference.predict import calibration_paths
    from haf.metrics import selective
    from haf.training.evaluation import _selective_compute, _selective_update

    tree = NodeTree.from_hierarchy(random_hierarchy(6, classes=11))
    k = tree.num_classes
    probs = torch.softmax(3 * torch.randn(23, k, generator=torch.Generator().manual_seed(6)), dim=1)
    targets = torch.randint(0, k, (23,), generator=torch.Generator().manual_seed(7))
    names = [f"v{v}" for v in range(tree.num_nodes)]
    classifier = types.SimpleNamespace(classes=tuple(names[v] for v in tree.leaf_node), tree=tree, distances=None,
                                       node_name=lambda v: names[v],
                                       path_to_root=lambda v: [names[u] for u in tree.path(v)])

    def run():
        paths = {"plain": []}
        _selective_update(paths, tree, probs, probs, None, targets)
        calibration = calibration_paths(classifier, targets.numpy())(probs, list(range(23)))
        return (_selective_compute(paths), records_from_probabilities(classifier, probs, top_k=2, threshold=0.45),
                calibration)

    whole = run()
    real = selective.row_chunks
    seen = []

    def small(rows, nodes, max_elements=0):
        chunks = real(rows, nodes, max_elements=4 * nodes)  # 4 rows a chunk
        seen.append(len(chunks))
        return chunks

    monkeypatch.setattr(selective, "row_chunks", small)
    chunked = run()
    assert seen == [6, 6, 6]  # 23 rows in chunks of 4, in each of the three paths
    assert chunked[1] == whole[1]
    assert json_ready(chunked[0]) == json_ready(whole[0]) and json_ready(chunked[2]) == json_ready(whole[2])


def json_ready(value):
    import json

    return json.loads(json.dumps(value, default=lambda a: np.asarray(a).tolist()))
