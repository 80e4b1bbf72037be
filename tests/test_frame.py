"""haf.frame: S, the reference's s_min grid (bisection == literal scan), the HAFrame factorisation, the fixed ETF."""
from __future__ import annotations

import numpy as np
import pytest

import haf.frame.dense as frame_module
from haf.frame import (
    PSD_TOLERANCE,
    build_frame,
    find_s_min,
    find_s_min_full_scan,
    fixed_etf,
    hierarchy_frame,
    reference_grid,
    similarity_matrix,
)


def random_tree_distances(num_leaves: int, rng: np.random.Generator, convention: str = "lca-height") -> np.ndarray:
    """Distances between the leaves of a random rooted tree (unbalanced, unary chains included).

    Grown by attaching each new node under a random existing inner node; leaves are the nodes without children.
    lca-height: height of the LCA's subtree; fixed-depth: H − depth(LCA), H the tree height.
    """
    parent = [-1]
    while True:
        children = {}
        for node, p in enumerate(parent):
            children.setdefault(p, []).append(node)
        leaves = [n for n in range(len(parent)) if n not in children]
        if len(leaves) >= num_leaves and len(parent) > 1:
            break
        inner = [n for n in range(len(parent)) if n in children] or [0]
        attach = inner[rng.integers(len(inner))] if rng.random() < 0.7 else int(rng.integers(len(parent)))
        parent.append(attach)
    leaves = leaves[:num_leaves]
    depth = [0] * len(parent)
    for node in range(1, len(parent)):
        depth[node] = depth[parent[node]] + 1
    height = [0] * len(parent)
    for node in reversed(range(1, len(parent))):
        height[parent[node]] = max(height[parent[node]], height[node] + 1)
    tree_height = max(depth[leaf] for leaf in leaves)

    def ancestors(node):
        chain = [node]
        while parent[chain[-1]] != -1:
            chain.append(parent[chain[-1]])
        return chain

    chains = [ancestors(leaf) for leaf in leaves]
    d = np.zeros((num_leaves, num_leaves), dtype=np.int64)
    for i in range(num_leaves):
        for j in range(i + 1, num_leaves):
            on_path = set(chains[j])
            lca = next(n for n in chains[i] if n in on_path)
            d[i, j] = d[j, i] = height[lca] if convention == "lca-height" else tree_height - depth[lca]
    return d


def balanced_tree_distances(branching: tuple[int, ...]) -> np.ndarray:
    """Leaves of a balanced tree with the given branching per level; d = height of the LCA."""
    labels = np.array(np.meshgrid(*[np.arange(b) for b in branching], indexing="ij")).reshape(len(branching), -1).T
    k = labels.shape[0]
    d = np.zeros((k, k), dtype=np.int64)
    for level in range(len(branching)):
        differs = labels[:, None, level] != labels[None, :, level]
        d = np.where((d == 0) & differs, len(branching) - level, d)
    return d


# ----------------------------------------------------------------------------------------------- similarity


def test_similarity_hand_worked():
    d = np.array([[0, 1, 2], [1, 0, 2], [2, 2, 0]])
    s = similarity_matrix(d, gamma=2.0, s_min=-0.5)
    e1, e2 = np.exp(-1.0), np.exp(-2.0)  # γ·d/d_max = 1 for siblings, 2 for cousins
    expected = np.array([[1, 1.5 * e1 - 0.5, 1.5 * e2 - 0.5], [1.5 * e1 - 0.5, 1, 1.5 * e2 - 0.5], [0, 0, 1.0]])
    expected[2, :2] = expected[:2, 2]
    np.testing.assert_allclose(s, expected, rtol=1e-15)
    assert s.dtype == np.float64 and (np.diag(s) == 1.0).all()


def test_reference_grid():
    grid = reference_grid(11)
    assert grid.shape == (100,) and grid[0] == pytest.approx(-0.1) and grid[-1] == -1.0
    assert (np.diff(grid) < 0).all()
    assert (reference_grid(2) == -1.0).all()


# ---------------------------------------------------------------------------------------------------- s_min


def test_bisection_equals_literal_scan_on_many_random_trees():
    rng = np.random.default_rng(2023)
    checked = set()
    for trial in range(60):
        k = int(rng.integers(3, 48))
        convention = "lca-height" if trial % 2 else "fixed-depth"
        d = random_tree_distances(k, rng, convention)
        gamma = float(rng.choice([0.25, 1.0, 2.0, 3.0, 5.0, 9.0]))
        expected = find_s_min_full_scan(d, gamma)
        assert find_s_min(d, gamma, psd_test="cholesky") == expected
        assert find_s_min(d, gamma, psd_test="eigvalsh") == expected
        checked.add(int(np.argmin(np.abs(reference_grid(k) - expected))))
    # The trees must exercise interior grid indices, not only the two ends.
    assert len(checked - {0, 99}) >= 5


def test_psd_grid_points_form_a_prefix():
    """The monotonicity that justifies bisection, checked on the literal per-point eigenvalue rule."""
    rng = np.random.default_rng(7)
    for _ in range(10):
        d = random_tree_distances(int(rng.integers(4, 30)), rng)
        for gamma in (0.5, 3.0):
            grid = reference_grid(d.shape[0])
            psd = [np.linalg.eigvalsh(similarity_matrix(d, gamma, s))[0] > -PSD_TOLERANCE for s in grid]
            first_bad = psd.index(False) if False in psd else len(psd)
            assert all(psd[:first_bad]) and not any(psd[first_bad:])


def test_bisection_uses_at_most_nine_psd_tests(monkeypatch):
    calls = []
    original = frame_module._PSD_TESTS["eigvalsh"]
    monkeypatch.setitem(frame_module._PSD_TESTS, "eigvalsh", lambda s: calls.append(1) or original(s))
    d = balanced_tree_distances((4, 5, 3))
    assert find_s_min(d, 2.0, psd_test="eigvalsh") == find_s_min_full_scan(d, 2.0)
    assert 0 < len(calls) <= 9


def test_star_tree_closed_form():
    """All K leaves siblings (d = 1): S(s) has eigenvalue (1−s)(1−c) on sum-zero vectors and
    (1−s)(1 + (K−1)c) + sK along 1, c = e^{−γ}; the latter vanishes at s* = −(1 + (K−1)c) / ((K−1)(1−c))."""
    k = 10
    d = np.ones((k, k), dtype=np.int64) - np.eye(k, dtype=np.int64)
    grid = reference_grid(k)
    for gamma in (1.0, 4.0):
        c = np.exp(-gamma)
        boundary = -(1 + (k - 1) * c) / ((k - 1) * (1 - c))
        assert -1 < boundary < grid[0]
        assert find_s_min(d, gamma) == grid[grid >= boundary].min() == find_s_min_full_scan(d, gamma)


def test_two_classes_take_the_whole_grid():
    d = np.array([[0, 1], [1, 0]])
    assert find_s_min(d, 1.0) == -1.0 == find_s_min_full_scan(d, 1.0)


def test_cholesky_test_defers_to_eigvalsh_near_the_threshold(monkeypatch):
    """Matrices whose λ_min sits 1e-13 either side of −1e-6: Cholesky alone cannot be trusted there."""
    rng = np.random.default_rng(0)
    k = 40
    basis, _ = np.linalg.qr(rng.standard_normal((k, k)))
    deferred = []
    original = frame_module._is_psd_eigvalsh
    monkeypatch.setattr(frame_module, "_is_psd_eigvalsh", lambda s: deferred.append(1) or original(s))
    for offset in (-1e-13, 1e-13, -1e-7, 1e-7, -0.3, 0.3):
        eigenvalues = np.concatenate([[-PSD_TOLERANCE + offset], rng.uniform(0.1, 3.0, k - 1)])
        s = (basis * eigenvalues) @ basis.T
        s = (s + s.T) / 2
        assert frame_module._is_psd_cholesky(s) == original(s) == (offset > 0)
    assert len(deferred) >= 2  # at least the two near-threshold cases went to eigvalsh


def test_no_psd_grid_point_is_a_clear_error():
    # Not a tree metric: 0–3 are "far" but share two "near" neighbours.
    d = np.array([[0, 1, 1, 4], [1, 0, 4, 1], [1, 4, 0, 1], [4, 1, 1, 0]])
    for fn in (find_s_min, find_s_min_full_scan):
        with pytest.raises(ValueError, match=r"K = 4, gamma = 1\.0.*smallest eigenvalue is -0\.25"):
            fn(d, 1.0)
    with pytest.raises(ValueError, match="no s_min on the reference grid"):
        build_frame(d, 1.0)


@pytest.mark.parametrize(
    "distances, message",
    [
        (np.zeros((1, 1)), "at least 2 classes"),
        (np.zeros((3, 3)), "d_max = 0"),
        (np.array([[0, 1], [2, 0]]), r"not symmetric: \[0, 1\] = 1\.0 but \[1, 0\] = 2\.0"),
        (np.array([[0, np.nan], [np.nan, 0]]), r"distances\[0, 1\] = nan is not finite"),
        (np.array([[0, np.inf], [np.inf, 0]]), "is not finite"),
        (np.array([[0, -1], [-1, 0]]), r"distances\[0, 1\] = -1\.0 is negative"),
        (np.array([[1, 1], [1, 0]]), r"distances\[0, 0\] = 1\.0"),
        (np.zeros((2, 3)), "square"),
    ],
)
def test_bad_distances(distances, message):
    with pytest.raises(ValueError, match=message):
        find_s_min(distances, 1.0)
    with pytest.raises(ValueError, match=message):
        build_frame(distances, 1.0)


@pytest.mark.parametrize("gamma", [0.0, -1.0, np.nan, np.inf])
def test_bad_gamma(gamma):
    with pytest.raises(ValueError, match="gamma must be a positive finite number"):
        find_s_min(balanced_tree_distances((2, 2)), gamma)


def test_bad_s_min_and_psd_test():
    d = balanced_tree_distances((2, 3))
    for s_min in (1.0, -1.5, np.nan):
        with pytest.raises(ValueError, match="s_min must be a finite number"):
            similarity_matrix(d, 1.0, s_min)
    with pytest.raises(ValueError, match="psd_test must be one of"):
        find_s_min(d, 1.0, psd_test="lu")


# ---------------------------------------------------------------------------------------------------- frames


def test_hierarchy_frame_properties_and_determinism():
    d = balanced_tree_distances((3, 4, 5))  # K = 60, many repeated eigenvalues
    s = similarity_matrix(d, 3.0, find_s_min(d, 3.0))
    w = hierarchy_frame(s, seed=5)
    assert w.shape == (60, 60) and w.dtype == np.float64
    np.testing.assert_allclose(np.linalg.norm(w, axis=1), 1.0, atol=1e-12)
    np.testing.assert_allclose(w @ w.T, s, atol=2e-6)  # s_min is at the PSD boundary: λ_min clipped (< 1e-6)
    assert np.array_equal(hierarchy_frame(s, seed=5), w)
    other = hierarchy_frame(s, seed=6)
    assert not np.allclose(other, w)
    np.testing.assert_allclose(other @ other.T, w @ w.T, atol=1e-12)  # same Gram, different rotation


def test_hierarchy_frame_exact_for_strictly_positive_definite_s():
    rng = np.random.default_rng(1)
    d = random_tree_distances(25, rng)
    s = similarity_matrix(d, 2.0, -0.01)  # well inside the PSD region
    assert np.linalg.eigvalsh(s)[0] > 1e-3
    w = hierarchy_frame(s, seed=0)
    np.testing.assert_allclose(w @ w.T, s, atol=1e-12)


def test_hierarchy_frame_depends_on_s_and_seed_only():
    """W = S^{1/2} Q_gᵀ: the unique PSD square root (here from scipy's sqrtm, an independent algorithm) times the
    seeded rotation, so the eigenvector basis LAPACK picks inside repeated eigenvalues cannot change W."""
    scipy_linalg = pytest.importorskip("scipy.linalg")
    d = balanced_tree_distances((2, 3, 2))  # repeated eigenvalues
    s = similarity_matrix(d, 1.0, -0.05)
    assert np.linalg.eigvalsh(s)[0] > 1e-3
    rotation = frame_module._seeded_orthogonal(s.shape[0], s.shape[0], 9)
    np.testing.assert_allclose(rotation.T @ rotation, np.eye(s.shape[0]), atol=1e-12)
    expected = np.real(scipy_linalg.sqrtm(s)) @ rotation.T
    np.testing.assert_allclose(hierarchy_frame(s, seed=9), expected, atol=1e-10)


def test_hierarchy_frame_errors():
    d = balanced_tree_distances((3, 3))
    s = similarity_matrix(d, 2.0, -0.9)  # far below the grid's choice: not PSD
    smallest = np.linalg.eigvalsh(s)[0]
    with pytest.raises(ValueError, match=f"eigenvalue {smallest:.6g} < 0"):
        hierarchy_frame(s)
    bad = np.eye(3) * 2
    with pytest.raises(ValueError, match=r"similarity\[0, 0\] = 2\.0.*unit diagonal"):
        hierarchy_frame(bad)
    with pytest.raises(ValueError, match="not finite"):
        hierarchy_frame(np.array([[1.0, np.nan], [np.nan, 1.0]]))
    with pytest.raises(ValueError, match="not symmetric"):
        hierarchy_frame(np.array([[1.0, 0.5], [0.2, 1.0]]))


@pytest.mark.parametrize("k, dim", [(2, 1), (5, 4), (10, 10), (7, 19), (100, 99)])
def test_fixed_etf(k, dim):
    m = fixed_etf(k, dim, seed=3)
    assert m.shape == (k, dim)
    gram = m @ m.T
    expected = np.full((k, k), -1.0 / (k - 1))
    np.fill_diagonal(expected, 1.0)
    np.testing.assert_allclose(gram, expected, atol=1e-12)
    np.testing.assert_allclose(m.sum(axis=0), 0.0, atol=1e-12)  # centred simplex
    assert np.array_equal(fixed_etf(k, dim, seed=3), m)
    if dim > 1:
        assert not np.allclose(fixed_etf(k, dim, seed=4), m)


def test_fixed_etf_errors():
    with pytest.raises(ValueError, match=r"dim >= K - 1 = 9, got 8"):
        fixed_etf(10, 8)
    with pytest.raises(ValueError, match="at least 2 classes"):
        fixed_etf(1, 5)


def test_build_frame():
    d = balanced_tree_distances((4, 6))
    result = build_frame(d, gamma=2.0, seed=1)
    assert result.s_min == find_s_min_full_scan(d, 2.0) and result.s_min_searched
    assert result.d_max == 2.0 and result.gamma == 2.0 and result.seed == 1 and result.num_classes == 24
    assert not hasattr(result, "frame") and not hasattr(result, "similarity")  # one pair of names: W, S
    np.testing.assert_array_equal(result.S, similarity_matrix(d, 2.0, result.s_min))
    assert result.min_eigenvalue == pytest.approx(np.linalg.eigvalsh(result.S)[0], abs=1e-12)
    assert result.min_eigenvalue > -PSD_TOLERANCE
    assert result.max_gram_error == pytest.approx(np.abs(result.W @ result.W.T - result.S).max(), abs=0)
    assert result.max_gram_error < 1e-5
    assert np.array_equal(result.W, hierarchy_frame(result.S, seed=1))

    given = build_frame(d, gamma=2.0, s_min=-0.02, seed=1)
    assert given.s_min == -0.02 and not given.s_min_searched and given.max_gram_error < 1e-12
    with pytest.raises(ValueError, match="not positive semi-definite"):
        build_frame(d, gamma=2.0, s_min=-0.95)


@pytest.mark.parametrize(
    "k, index, published, tolerance",
    [(100, 60, -0.6100, 5e-5), (100, 29, -0.3001, 5e-5), (1010, 3, -0.03126, 5e-6), (608, 7, -0.07224, 5e-6)],
)
def test_papers_s_min_values_are_points_of_the_grid(k, index, published, tolerance):
    """docs/METHOD.md's published s_min (FGVC, CIFAR-100, iNat2019, tieredImageNet-H) each sit on this grid."""
    grid = reference_grid(k)
    assert abs(grid[index] - published) < tolerance
    assert np.sum(np.abs(grid - published) < tolerance) == 1
