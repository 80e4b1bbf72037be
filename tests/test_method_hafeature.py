"""HAFeature (Garg et al., ECCV 2022): each term hand-worked, parent probabilities as sums, gradients, the method."""
from __future__ import annotations

import math

import pytest
import torch

from haf.methods.hafeature import (
    adjacent_dissimilar_pairs,
    coarsen_probabilities,
    dissimilarity_hinge,
    hafeature_loss,
    hafeature_loss_terms,
    jensen_shannon_divergence,
    weight_consistency,
)
from haf.methods import MethodContext, get_method
from method_fixtures import DISTANCES, LEVEL_LABELS, THREE_LEVELS  # the 4-leaf test tree



pytestmark = pytest.mark.usefixtures("single_torch_thread")  # see conftest.py


def _context(level_labels=THREE_LEVELS) -> MethodContext:
    return MethodContext(classes=("a", "b", "c", "d"), distances=DISTANCES, level_labels=level_labels)


def test_parent_probabilities_are_sums_of_children():
    probs = torch.tensor([[0.1, 0.2, 0.3, 0.4], [0.7, 0.1, 0.1, 0.1]])
    summed = coarsen_probabilities(probs, torch.tensor([0, 0, 1, 1]))
    torch.testing.assert_close(summed, torch.tensor([[0.3, 0.7], [0.8, 0.2]]))
    method = get_method("hafeature")(5, _context())
    outputs = method(torch.randn(3, 5))
    fine = torch.softmax(outputs[2], dim=1)
    coarse = coarsen_probabilities(fine, method.parent_2, 3)
    torch.testing.assert_close(coarse.sum(1), torch.ones(3))
    torch.testing.assert_close(coarse, torch.stack([fine[:, 0], fine[:, 1], fine[:, 2] + fine[:, 3]], dim=1))


def test_jensen_shannon_hand_worked():
    p, q = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    assert jensen_shannon_divergence(p, q).item() == pytest.approx(math.log(2), abs=1e-7)  # disjoint supports
    assert jensen_shannon_divergence(p, p).item() == pytest.approx(0.0, abs=1e-7)
    # p = (½, ½), q = (1, 0): m = (¾, ¼); ½[½ log(⅔) + ½ log 2] + ½ log(4/3).
    half, one = torch.tensor([[0.5, 0.5]], dtype=torch.float64), torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    value = jensen_shannon_divergence(half, one)
    expected = 0.5 * (0.5 * math.log(2 / 3) + 0.5 * math.log(2)) + 0.5 * math.log(4 / 3)
    assert value.item() == pytest.approx(expected, abs=1e-12)


def test_weight_consistency_hand_worked():
    # Parent A = (1, 0) over children (1, 0), (0, 3): cos to (1, 1)/√2 = 1/√2. Parent B = (0, 2) over (0, 1): 1.
    coarse = torch.tensor([[1.0, 0.0], [0.0, 2.0]], dtype=torch.float64)
    fine = torch.tensor([[1.0, 0.0], [0.0, 3.0], [0.0, 1.0]], dtype=torch.float64)
    value = weight_consistency(coarse, fine, torch.tensor([0, 0, 1]))
    assert value.item() == pytest.approx((1 / math.sqrt(2) + 1) / 2, abs=1e-12)


def test_dissimilarity_hinge_hand_worked_and_pairs():
    probs = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    pairs = torch.tensor([[0, 1]])
    assert dissimilarity_hinge(probs, pairs, margin=3.0).item() == pytest.approx(3 - math.log(2), abs=1e-6)
    assert dissimilarity_hinge(probs, torch.tensor([[0, 2]]), margin=3.0).item() == pytest.approx(3.0)
    assert dissimilarity_hinge(probs, torch.tensor([[0, 1]]), margin=0.5).item() == 0.0  # KL = log 2 > margin
    assert dissimilarity_hinge(probs, torch.zeros(0, 2, dtype=torch.long)).item() == 0.0
    labels = torch.tensor([0, 0, 1, 2, 2, 1, 0])
    found = adjacent_dissimilar_pairs(labels, torch.Generator().manual_seed(0))
    assert found.shape[1] == 2 and len(found) >= 1
    assert (labels[found[:, 0]] != labels[found[:, 1]]).all()
    assert len(adjacent_dissimilar_pairs(torch.zeros(5, dtype=torch.long))) == 0


def _random_levels(dtype=torch.float64):
    gen = torch.Generator().manual_seed(0)
    sizes = (2, 3, 4)
    logits = [torch.randn(5, n, dtype=dtype, generator=gen, requires_grad=True) for n in sizes]
    weights = [torch.randn(n, 6, dtype=dtype, generator=gen, requires_grad=True) for n in sizes]
    leaf = torch.tensor([0, 1, 2, 3, 3])
    targets = [torch.tensor([0, 0, 1, 1])[leaf], torch.tensor([0, 1, 2, 2])[leaf], leaf]
    parents = [torch.zeros(2, dtype=torch.long), torch.tensor([0, 0, 1]), torch.tensor([0, 1, 2, 2])]
    pairs = [torch.zeros(0, 2, dtype=torch.long), torch.tensor([[0, 2], [1, 3]]), torch.zeros(0, 2, dtype=torch.long)]
    return logits, weights, targets, parents, pairs


def test_loss_terms_compose_and_gradient_matches_finite_differences():
    logits, weights, targets, parents, pairs = _random_levels()
    terms = hafeature_loss_terms(logits, weights, targets, parents, margin=3.0, pairs=pairs)
    probs = [torch.softmax(z, dim=1) for z in logits]
    torch.testing.assert_close(terms["ce"], torch.nn.functional.cross_entropy(logits[2], targets[2]))
    expected_jsd = jensen_shannon_divergence(coarsen_probabilities(probs[1], parents[1], 2), probs[0])
    expected_jsd = expected_jsd + jensen_shannon_divergence(coarsen_probabilities(probs[2], parents[2], 3), probs[1])
    torch.testing.assert_close(terms["jsd"], expected_jsd)
    torch.testing.assert_close(terms["dissimilarity"], dissimilarity_hinge(probs[1], pairs[1], 3.0))
    total = hafeature_loss(logits, weights, targets, parents, 0.5, 2.0, 3.0, margin=3.0, pairs=pairs)
    torch.testing.assert_close(
        total, terms["ce"] + 0.5 * terms["jsd"] - 2.0 * terms["weight_consistency"] + 3.0 * terms["dissimilarity"]
    )

    def fn(z0, z1, z2, w0, w1, w2):
        return hafeature_loss([z0, z1, z2], [w0, w1, w2], targets, parents, pairs=pairs)

    assert torch.autograd.gradcheck(fn, (*logits, *weights))


def test_method_forward_uses_row_normalised_weights_and_predicts_the_finest_level():
    method = get_method("hafeature")(5, _context())
    assert [c.out_features for c in method.classifiers] == [2, 3, 4]
    features = torch.randn(3, 5)
    outputs = method(features)
    fine = method.classifiers[2]
    unit_rows = fine.weight / fine.weight.norm(dim=1, keepdim=True)
    torch.testing.assert_close(outputs[2], features @ unit_rows.T + fine.bias)
    with torch.no_grad():
        fine.weight.mul_(7.0)  # rescaling a row changes nothing: the classifier is normalised
    torch.testing.assert_close(method(features)[2], outputs[2])
    assert torch.equal(method.scores(outputs), outputs[2])
    probs = method.probabilities(outputs)
    torch.testing.assert_close(probs.sum(1), torch.ones(3))


def test_method_loss_backpropagates_to_every_level_and_is_seeded_by_the_global_rng():
    method = get_method("hafeature")(5, _context())
    features = torch.randn(8, 5, requires_grad=True)
    targets = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    torch.manual_seed(5)
    loss = method.loss(method(features), targets)
    torch.manual_seed(5)
    again = method.loss(method(features), targets)
    assert loss.item() == again.item()
    loss.backward()
    assert all(c.weight.grad is not None and c.weight.grad.abs().sum() > 0 for c in method.classifiers)
    assert features.grad.abs().sum() > 0


def test_two_level_tree_has_no_dissimilarity_term_and_options_validate():
    logits, weights, targets, parents, _ = _random_levels()
    terms = hafeature_loss_terms(logits[1:], weights[1:], targets[1:], [parents[0][:0], parents[2]])
    assert terms["dissimilarity"].item() == 0.0
    Options = get_method("hafeature").Options
    assert Options().dissimilarity_margin == 3.0
    with pytest.raises(ValueError, match="jsd_weight must be a non-negative number"):
        Options(jsd_weight=-1.0)
    method = get_method("hafeature")(4, _context(LEVEL_LABELS))
    assert method.num_levels == 2
