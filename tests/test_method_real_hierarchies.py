"""The hierarchical methods on the paper's four shipped hierarchies (hierarchies/): levels, shapes, finite losses.

The synthetic trees of the other tests are balanced; these are the real ones — iNat2019's 7 levels over 1010
species, and tieredImageNet-H's WordNet tree whose 608 leaves sit at depths 7–12 (shallow leaves repeat down the
level table). Features are random and 600-d, the width of the type-I head the configs use.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from haf.hierarchy import load_hierarchy
from haf.methods.flamingo import flamingo_chunk_bounds
from haf.methods.hierarchical_ce import hierarchical_ce_weights, hierarchical_cross_entropy
from haf.methods import MethodContext, get_method
from haf.methods._levels import class_levels

HIERARCHIES = Path(__file__).resolve().parents[1] / "hierarchies"
# file, K, levels below the root (docs/METHOD.md: FGVC h = 3, CIFAR-100 h = 5, iNat2019 h = 7, tieredImageNet-H h = 12)
TREES = [
    ("fgvc_aircraft.json", 100, 3),
    ("cifar100_l5.json", 100, 5),
    ("inaturalist19_isa.txt", 1010, 7),
    ("tiered_imagenet_isa.txt", 608, 12),
]
WIDTH = 600


pytestmark = pytest.mark.usefixtures("single_torch_thread")  # see conftest.py


@pytest.fixture(scope="module", params=TREES, ids=[t[0] for t in TREES])
def tree(request):
    name, num_classes, height = request.param
    hierarchy = load_hierarchy(HIERARCHIES / name)
    assert (hierarchy.num_classes, hierarchy.height) == (num_classes, height)
    context = MethodContext(
        classes=hierarchy.classes,
        distances=hierarchy.distance_matrix("lca-height"),
        level_labels=hierarchy.level_labels(),
    )
    return hierarchy, context


def test_levels_follow_the_tree(tree):
    hierarchy, context = tree
    levels = class_levels(context.level_labels, context.num_classes, "test", context.classes)
    names = hierarchy.level_names()
    assert levels.num_levels == hierarchy.height
    assert levels.sizes == tuple(len(level) for level in names)
    for level in range(1, levels.num_levels):  # every node's parent is its tree parent
        for child, parent in enumerate(levels.parents[level]):
            child_leaf = int(np.nonzero(levels.assignments[level] == child)[0][0])
            child_name = names[level][context.level_labels[child_leaf, level]]
            parent_name = names[level - 1][context.level_labels[child_leaf, level - 1]]
            assert child_name == parent_name or hierarchy.parent(child_name) == parent_name
            assert int(parent) == int(levels.assignments[level - 1][child_leaf])


def test_hxe_weights_give_every_leaf_its_true_depth(tree):
    hierarchy, context = tree
    levels = class_levels(context.level_labels, context.num_classes, "test").assignments
    weights = hierarchical_ce_weights(levels, alpha=1.0)
    # The deepest edge that carries weight is the leaf's own edge, at the leaf's depth, unless its parent has
    # that single child (then p(leaf | parent) = 1 and the edge is dropped).
    for k, leaf in enumerate(hierarchy.classes):
        nonzero = np.nonzero(weights[k])[0]
        single_child = len(hierarchy.children(hierarchy.parent(leaf))) == 1
        if not single_child:
            assert nonzero.max() + 1 == hierarchy.depth(leaf)
            assert weights[k, nonzero.max()] == pytest.approx(np.exp(-hierarchy.depth(leaf)))


def test_hierarchical_methods_build_and_train_on_the_tree(tree):
    hierarchy, context = tree
    gen = torch.Generator().manual_seed(0)
    features = torch.randn(16, WIDTH, generator=gen, requires_grad=True)
    targets = torch.randint(0, context.num_classes, (16,), generator=gen)
    for name in ("flamingo", "hafeature", "hierarchical-ce", "soft-labels"):
        torch.manual_seed(0)
        method = get_method(name)(WIDTH, context)
        outputs = method(features)
        loss = method.loss(outputs, targets)
        assert torch.isfinite(loss), name
        (grad,) = torch.autograd.grad(loss, features)
        assert torch.isfinite(grad).all() and grad.abs().sum() > 0, name
        probs = method.probabilities(outputs)
        assert probs.shape == (16, context.num_classes)
        torch.testing.assert_close(probs.sum(1), torch.ones(16))
    flamingo = get_method("flamingo")(WIDTH, context)
    chunk_starts = [start for start, _ in flamingo_chunk_bounds(WIDTH, hierarchy.height)]
    assert [c.in_features for c in flamingo.classifiers] == [WIDTH - start for start in chunk_starts]


def test_hxe_with_unit_weights_is_cross_entropy_on_the_tree(tree):
    _, context = tree
    levels = class_levels(context.level_labels, context.num_classes, "test").assignments
    assignments = torch.from_numpy(np.stack(levels))
    ones = torch.from_numpy(hierarchical_ce_weights(levels, alpha=0.0))
    gen = torch.Generator().manual_seed(1)
    logits = 5 * torch.randn(8, context.num_classes, dtype=torch.float64, generator=gen)
    targets = torch.randint(0, context.num_classes, (8,), generator=gen)
    value = hierarchical_cross_entropy(logits, targets, assignments, ones)
    torch.testing.assert_close(value, F.cross_entropy(logits, targets))
