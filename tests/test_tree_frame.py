"""haf.frame.tree: the exact O(N) tree factorisation against the dense eigen-route, on shipped and random trees."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import haf.frame.tree as tree_module
from haf.frame import (
    PSD_TOLERANCE,
    TreeArrays,
    build_frame,
    find_s_min,
    find_s_min_full_scan,
    find_s_min_tree,
    reference_grid,
    similarity_matrix,
)
from haf.frame.tree import tree_is_psd
from haf.hierarchy import Hierarchy, load_hierarchy

HIERARCHIES = Path(__file__).resolve().parents[1] / "hierarchies"
SHIPPED = [  # file, γ, convention, the paper's s_min (to its printed digits)
    ("fgvc_aircraft.json", 1.0, "lca-height", -0.6100),
    ("cifar100_l5.json", 2.0, "lca-height", -0.3001),
    ("inaturalist19_isa.txt", 5.0, "lca-height", -0.03126),
    ("tiered_imagenet_isa.txt", 3.0, "fixed-depth", -0.07224),
]


def random_hierarchy(num_leaves: int, seed: int, unary_root: bool = False) -> Hierarchy:
    """Random unbalanced tree: each new node hangs under a random inner node (or any node: unary chains appear)."""
    rng = np.random.default_rng(seed)
    parent = {"n1": "n0"}
    nodes, inner = ["n0", "n1"], {"n0"}
    while True:
        leaves = [n for n in nodes if n not in inner]
        if len(leaves) >= num_leaves:
            break
        pool = sorted(inner) if rng.random() < 0.6 else nodes
        attach = pool[int(rng.integers(len(pool)))]
        name = f"n{len(nodes)}"
        parent[name] = attach
        inner.add(attach)
        nodes.append(name)
    if unary_root:
        parent["n0"] = "top"
    classes = [n for n in nodes if n not in inner]
    rng.shuffle(classes)
    return Hierarchy.from_parents(parent, classes)


@pytest.mark.parametrize("file,gamma,convention,paper", SHIPPED, ids=[s[0] for s in SHIPPED])
def test_shipped_hierarchies_same_s_min_as_dense(file, gamma, convention, paper):
    hierarchy = load_hierarchy(HIERARCHIES / file)
    frame = build_frame(hierarchy, gamma, factorization="tree", convention=convention)
    assert frame.s_min == find_s_min(hierarchy.distance_matrix(convention), gamma)
    assert abs(frame.s_min - paper) < 5e-5
    assert frame.width == len(hierarchy.nodes) - 1
    assert frame.max_gram_error < 1e-12
    assert frame.gram_pairs == hierarchy.num_classes ** 2


@pytest.mark.parametrize("convention", ["lca-height", "fixed-depth"])
@pytest.mark.parametrize("seed", range(6))
def test_random_unbalanced_trees_match_dense(seed, convention):
    hierarchy = random_hierarchy(int(np.random.default_rng(seed).integers(5, 40)), seed, unary_root=seed % 3 == 0)
    gamma = [0.5, 1.0, 3.0, 7.0][seed % 4]
    d = hierarchy.distance_matrix(convention)
    tree = TreeArrays.from_hierarchy(hierarchy)
    assert find_s_min_tree(tree, gamma, convention) == find_s_min_full_scan(d, gamma)
    frame = build_frame(hierarchy, gamma, factorization="tree", convention=convention)
    w = frame.materialise()
    s = similarity_matrix(d, gamma, frame.s_min)  # the dense route's S, from the distance matrix
    assert w.shape == (hierarchy.num_classes, len(hierarchy.nodes) - 1)
    assert np.abs(w @ w.T - s).max() < 1e-12
    assert np.abs(np.linalg.norm(w, axis=1) - 1).max() < 1e-12
    assert np.allclose(frame.similarity_matrix(), s, atol=1e-14)
    # The identities behind β: F u = 1 and q = u·u.
    f = w + frame.beta * frame.u[1:]
    assert np.allclose(f @ frame.u[1:], 1.0, atol=1e-10)
    assert np.isclose(frame.q, frame.u @ frame.u, rtol=1e-12)


@pytest.mark.parametrize("seed", range(4))
def test_psd_test_is_the_thresholded_eigenvalue_rule(seed):
    """At every grid point, and at points right beside the boundary, the O(N) test agrees with eigvalsh > −τ."""
    hierarchy = random_hierarchy(25, 100 + seed)
    d = hierarchy.distance_matrix("lca-height")
    tree = TreeArrays.from_hierarchy(hierarchy)
    dist, d_max = tree_module._node_distances(tree, "lca-height")
    points = list(reference_grid(d.shape[0])) + [find_s_min_full_scan(d, 2.0) - 1e-9]
    for s in points:
        g = tree_module._node_similarity(dist, d_max, tree.is_leaf, 2.0, s)
        dense = np.linalg.eigvalsh(similarity_matrix(d, 2.0, s))[0] > -PSD_TOLERANCE
        assert tree_is_psd(tree, g) == dense, s


def test_sampled_gram_check_agrees_with_all_pairs(monkeypatch):
    hierarchy = random_hierarchy(60, 7)
    exact = build_frame(hierarchy, 2.0, factorization="tree", convention="fixed-depth")
    monkeypatch.setattr(tree_module, "ALL_PAIRS_MAX_CLASSES", 0)
    monkeypatch.setattr(tree_module, "SAMPLED_PAIRS", 500)
    sampled = build_frame(hierarchy, 2.0, factorization="tree", convention="fixed-depth")
    assert sampled.gram_pairs > 500 + hierarchy.num_classes  # random pairs + the diagonal + sibling pairs
    assert 0 <= sampled.max_gram_error < 1e-12 and exact.max_gram_error < 1e-12
    # The expanded dot product is the materialised one.
    i, j = np.meshgrid(np.arange(60), np.arange(60), indexing="ij")
    w = exact.materialise()
    assert np.allclose(exact.gram(i.ravel(), j.ravel()).reshape(60, 60), w @ w.T, atol=1e-13)


def test_renumbering_and_parent_arrays():
    """Any numbering of the same tree gives the same S and s_min; from_parents accepts parents anywhere."""
    rng = np.random.default_rng(3)
    hierarchy = random_hierarchy(30, 11)
    base = TreeArrays.from_hierarchy(hierarchy)
    perm = rng.permutation(base.num_nodes)  # new name of old node v is perm[v]
    parent = np.full(base.num_nodes, -1)
    parent[perm[1:]] = perm[base.parent[1:]]
    shuffled = TreeArrays.from_parents(parent, perm[base.leaf_node])
    a = tree_module.build_tree_frame(base, 3.0, "lca-height")
    b = tree_module.build_tree_frame(shuffled, 3.0, "lca-height")
    assert a.s_min == b.s_min
    assert np.allclose(a.similarity_matrix(), b.similarity_matrix(), atol=1e-15)
    wb = b.materialise()
    assert np.abs(wb @ wb.T - a.similarity_matrix()).max() < 1e-12


def test_given_s_min_and_c_non_negative():
    hierarchy = random_hierarchy(12, 5)
    frame = build_frame(hierarchy, 1.0, s_min=0.2, factorization="tree", convention="lca-height")
    assert frame.c > 0 and frame.beta < 0 and frame.max_gram_error < 1e-12
    with pytest.raises(ValueError, match="not positive semi-definite"):
        build_frame(hierarchy, 1.0, s_min=-1.0, factorization="tree", convention="lca-height")


def test_errors():
    hierarchy = random_hierarchy(8, 1)
    with pytest.raises(ValueError, match="needs the class tree"):
        build_frame(hierarchy.distance_matrix("lca-height"), 1.0, factorization="tree")
    with pytest.raises(ValueError, match="convention"):
        build_frame(hierarchy, 1.0, factorization="tree")
    with pytest.raises(ValueError, match="factorization must be"):
        build_frame(hierarchy, 1.0, factorization="sparse", convention="lca-height")
    with pytest.raises(ValueError, match="cycle"):
        TreeArrays.from_parents(np.array([-1, 2, 1]))
    with pytest.raises(ValueError, match="breadth first"):
        TreeArrays(np.array([-1, 0, 2, 0]), np.array([1, 2]))
    assert build_frame(hierarchy, 1.0, factorization="auto", convention="lca-height").W.shape == (8, 8)  # dense
