"""Distances read off the tree equal the dense matrix, and the metrics on them equal the dense metrics."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from haf.hierarchy.tree_distances import TreeDistances
from haf.metrics import GroupedHierarchicalMetrics, HierarchicalMetrics, crm_predict, crm_scores, hierarchical_metrics
from test_tree_frame import random_hierarchy


@pytest.mark.parametrize("convention", ["lca-height", "fixed-depth"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_tree_distances_equal_the_dense_matrix(seed, convention):
    hierarchy = random_hierarchy(40 + 13 * seed, seed, unary_root=seed == 2)
    tree = TreeDistances.from_hierarchy(hierarchy, convention)
    dense = hierarchy.distance_matrix(convention)
    assert tree.shape == dense.shape and tree.classes == tuple(hierarchy.classes)
    np.testing.assert_array_equal(tree.matrix, dense)
    i = torch.randint(0, tree.num_classes, (7, 5))
    np.testing.assert_array_equal(tree.pairs(i, i.flip(0)).numpy(), dense[i.numpy(), i.flip(0).numpy()])


@pytest.mark.parametrize("convention", ["lca-height", "fixed-depth"])
def test_metrics_on_tree_distances_equal_dense_metrics(convention):
    hierarchy = random_hierarchy(57, 3)
    tree, dense = TreeDistances.from_hierarchy(hierarchy, convention), hierarchy.distance_matrix(convention)
    gen = torch.Generator().manual_seed(0)
    scores = torch.randn(33, 57, generator=gen)
    scores[:4, :] = 0.0  # ties: both paths must break them toward the lower index
    targets = torch.randint(0, 57, (33,), generator=gen)
    targets[5] = int(scores[5].argmax())  # a correct row
    ks = (1, 5, 20)
    assert hierarchical_metrics(scores, targets, tree, ks) == hierarchical_metrics(scores, targets, dense, ks)

    probs = torch.softmax(scores, dim=1).double()
    torch.testing.assert_close(crm_scores(probs, tree), crm_scores(probs, dense), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(crm_scores(probs.float(), tree), crm_scores(probs.float(), dense))
    assert torch.equal(crm_predict(probs, tree), crm_predict(probs, dense))

    groups = np.arange(57) % 3
    a, b = GroupedHierarchicalMetrics(tree, groups, ks=ks), GroupedHierarchicalMetrics(dense, groups, ks=ks)
    a.update(scores, targets)
    b.update(scores, targets)
    assert a.compute() == b.compute()

    first, second = HierarchicalMetrics(tree, ks), HierarchicalMetrics(TreeDistances.from_hierarchy(hierarchy,
                                                                                                    convention), ks)
    first.update(scores[:10], targets[:10])
    second.update(scores[10:], targets[10:])
    assert first.merge(second).compute() == pytest.approx(hierarchical_metrics(scores, targets, dense, ks), rel=1e-12)
    with pytest.raises(ValueError, match="different distance"):
        first.merge(HierarchicalMetrics(dense, ks))
    with pytest.raises(ValueError, match="57 classes but the scores have K = 56"):
        crm_scores(probs[:, :56], tree)


def test_ranked_top_k_is_the_stable_sort_prefix():
    from haf.metrics import ranked_top_k

    gen = torch.Generator().manual_seed(1)
    scores = torch.randint(-3, 4, (40, 23), generator=gen).float()  # many ties
    scores[0] = 0.0
    scores[1, 5] = float("inf")
    scores[2] = -float("inf")
    for k in (1, 2, 7, 23):
        expected = torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :k]
        assert torch.equal(ranked_top_k(scores, k), expected)
