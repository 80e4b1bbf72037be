"""Hierarchical cross-entropy (Bertinetto et al., CVPR 2020) and the per-level class structure it is built on."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from haf.methods.hierarchical_ce import hierarchical_ce_weights, hierarchical_cross_entropy
from haf.methods import MethodContext, get_method
from haf.methods._levels import class_levels
from method_fixtures import DISTANCES, LEVEL_LABELS  # the 4-leaf test tree

# K = 4, tree root → {A: {0, 1}, B: {2, 3}}; level_labels coarse → fine, last column = the leaf itself.
CONTEXT = MethodContext(classes=("a", "b", "c", "d"), distances=DISTANCES, level_labels=LEVEL_LABELS)

# Unbalanced: root → {X: {a, Y: {b, c}}, d}; depths a 2, b 3, c 3, d 1; shallow leaves repeat down the columns.
UNBALANCED = np.array([[0, 0, 0], [0, 1, 1], [0, 1, 2], [1, 2, 3]])


pytestmark = pytest.mark.usefixtures("single_torch_thread")  # see conftest.py


def _assignments(level_labels: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.stack(class_levels(level_labels, level_labels.shape[0], "test").assignments))


def test_levels_replace_the_leaf_column_and_nest():
    levels = class_levels(LEVEL_LABELS, 4, "test")
    assert levels.num_levels == 2 and levels.sizes == (2, 4)
    assert levels.assignments[1].tolist() == [0, 1, 2, 3]
    assert levels.parents[1].tolist() == [0, 0, 1, 1]
    # A table without the leaf column gets the leaves appended.
    assert class_levels(LEVEL_LABELS[:, :1], 4, "test").sizes == (2, 4)


def test_levels_errors_name_the_method_and_class():
    with pytest.raises(ValueError, match="method 'flamingo' needs the class tree"):
        class_levels(None, 4, "flamingo")
    not_a_tree = np.array([[0, 0, 0], [1, 0, 1], [1, 1, 2]])  # classes a and b share a level-1 node, not level 0
    with pytest.raises(ValueError, match="classes 'a' and 'b' share their level-1 node but not their level-0"):
        class_levels(not_a_tree, 3, "hierarchical-ce", ("a", "b", "c"))
    with pytest.raises(ValueError, match="K × L with K = 5"):
        class_levels(LEVEL_LABELS, 5, "test")


def test_weights_hand_worked_depth_height_normalised():
    levels = class_levels(LEVEL_LABELS, 4, "test").assignments
    a = 0.5
    depth = hierarchical_ce_weights(levels, a, "depth")
    np.testing.assert_allclose(depth, np.tile([math.exp(-a), math.exp(-2 * a)], (4, 1)))
    height = hierarchical_ce_weights(levels, a, "height")  # coarse node height 1, leaves height 0
    np.testing.assert_allclose(height, np.tile([math.exp(-a), 1.0], (4, 1)))
    # The reference divides by the weights of all 7 nodes: root e⁰, two at depth 1, four at depth 2.
    total = 1 + 2 * math.exp(-a) + 4 * math.exp(-2 * a)
    np.testing.assert_allclose(hierarchical_ce_weights(levels, a, "depth", normalize=True), depth / total)


def test_weights_zero_on_edges_that_do_not_split():
    levels = class_levels(UNBALANCED, 4, "test").assignments
    w = hierarchical_ce_weights(levels, 1.0, "depth")
    e = math.exp
    expected = np.array(
        [
            [e(-1), e(-2), 0.0],  # a: X, then a itself at depth 2; its repeat at level 2 adds nothing
            [e(-1), e(-2), e(-3)],  # b: X, Y, b
            [e(-1), e(-2), e(-3)],  # c: X, Y, c
            [e(-1), 0.0, 0.0],  # d: a depth-1 leaf, repeated below
        ]
    )
    np.testing.assert_allclose(w, expected)


def test_loss_hand_worked_at_zero_logits():
    # p = ¼ each: p(A | root) = ½, p(leaf | A) = ½ → L = (λ_A + λ_leaf)·log 2.
    assignments = _assignments(LEVEL_LABELS)
    a = 0.5
    weights = torch.from_numpy(hierarchical_ce_weights(list(assignments.numpy()), a))
    logits = torch.zeros(1, 4, dtype=torch.float64, requires_grad=True)
    loss = hierarchical_cross_entropy(logits, torch.tensor([0]), assignments, weights)
    assert loss.item() == pytest.approx((math.exp(-a) + math.exp(-2 * a)) * math.log(2), abs=1e-12)
    # L = −λ_leaf log p_0 − (λ_A − λ_leaf) log p(A): ∂/∂z = λ_leaf (p − e_0) + (λ_A − λ_leaf)(p − p·1_A / p(A)).
    loss.backward()
    lam_a, lam_leaf = math.exp(-a), math.exp(-2 * a)
    p = torch.full((4,), 0.25, dtype=torch.float64)
    expected = lam_leaf * (p - torch.tensor([1.0, 0, 0, 0], dtype=torch.float64)) + (lam_a - lam_leaf) * (
        p - torch.tensor([0.5, 0.5, 0, 0], dtype=torch.float64)
    )
    torch.testing.assert_close(logits.grad[0], expected)


def test_alpha_zero_is_cross_entropy_and_gradient_matches_finite_differences():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 4, dtype=torch.float64, generator=gen, requires_grad=True)
    target = torch.tensor([0, 1, 2, 3, 2, 0])
    assignments = _assignments(UNBALANCED)
    ones = torch.from_numpy(hierarchical_ce_weights(list(assignments.numpy()), 0.0))
    # With λ = 1 the conditionals telescope: −log p(leaf) = cross-entropy, even on the unbalanced tree.
    torch.testing.assert_close(
        hierarchical_cross_entropy(logits, target, assignments, ones), F.cross_entropy(logits, target)
    )
    weights = torch.from_numpy(hierarchical_ce_weights(list(assignments.numpy()), 0.7))
    assert torch.autograd.gradcheck(lambda z: hierarchical_cross_entropy(z, target, assignments, weights), (logits,))


def test_loss_is_exact_for_confident_logits():
    # Masked logsumexp, not log of summed probabilities: a target probability of e⁻²⁰⁰ is still finite.
    assignments = _assignments(LEVEL_LABELS)
    weights = torch.from_numpy(hierarchical_ce_weights(list(assignments.numpy()), 0.1)).float()
    logits = torch.tensor([[0.0, 0.0, 200.0, 0.0]])
    loss = hierarchical_cross_entropy(logits, torch.tensor([0]), assignments, weights)
    # log p(A) ≈ log 2 − 200, log p(0 | A) = −log 2.
    expected = math.exp(-0.1) * (200 - math.log(2)) + math.exp(-0.2) * math.log(2)
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_method_probabilities_are_the_leaf_softmax_and_options_validate():
    cls = get_method("hierarchical-ce")
    method = cls(5, CONTEXT, cls.Options(alpha=0.5))
    outputs = method(torch.randn(3, 5))
    probs = method.probabilities(outputs)
    torch.testing.assert_close(probs.sum(1), torch.ones(3))
    torch.testing.assert_close(probs, torch.softmax(outputs, dim=1))
    method.loss(outputs, torch.tensor([0, 2, 3])).backward()
    assert method.classifier.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="alpha must be a non-negative number"):
        cls.Options(alpha=-0.1)
    with pytest.raises(ValueError, match="weighting must be one of depth, height"):
        cls.Options(weighting="width")
    with pytest.raises(ValueError, match="needs the class tree"):
        cls(5, MethodContext(classes=("a", "b", "c", "d"), distances=DISTANCES))


def _random_tree(num_classes: int, num_levels: int, seed: int) -> np.ndarray:
    """Level labels of a random tree: each level merges random groups of the finer one (some single-child)."""
    rng = np.random.default_rng(seed)
    columns = [np.arange(num_classes)]
    for _ in range(num_levels - 1):
        finer = columns[0]
        parent_of = rng.integers(0, max(1, (finer.max() + 1) // 2), size=finer.max() + 1)
        columns.insert(0, parent_of[finer])
    return np.stack(columns, axis=1)


def test_vectorised_loss_matches_a_literal_path_walk_on_random_trees():
    # The literal form: for each sample, walk the levels and add −λ·log(Σ_{leaves of C} p / Σ_{leaves of parent} p).
    for seed, (num_classes, num_levels) in enumerate(((17, 3), (123, 5))):
        labels = _random_tree(num_classes, num_levels, seed)
        assignments = _assignments(labels)
        weights = torch.from_numpy(hierarchical_ce_weights(list(assignments.numpy()), 0.3))
        gen = torch.Generator().manual_seed(seed)
        logits = 3 * torch.randn(9, num_classes, dtype=torch.float64, generator=gen)
        target = torch.randint(0, num_classes, (9,), generator=gen)
        probs = torch.softmax(logits, dim=1)
        expected = 0.0
        for b in range(9):
            parent_mass = 1.0
            for level in range(assignments.shape[0]):
                members = assignments[level] == assignments[level, target[b]]
                mass = float(probs[b, members].sum())
                expected += -float(weights[target[b], level]) * math.log(mass / parent_mass)
                parent_mass = mass
        value = hierarchical_cross_entropy(logits, target, assignments, weights)
        assert value.item() == pytest.approx(expected / 9, rel=1e-10)
