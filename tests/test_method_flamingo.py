"""Flamingo (Chang et al., CVPR 2021): chunking, stop-gradients that actually stop, per-level CE, finest prediction."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from haf.methods.flamingo import flamingo_chunk_bounds, flamingo_level_inputs, flamingo_loss
from haf.methods import MethodContext, get_method
from method_fixtures import DISTANCES, LEVEL_LABELS, THREE_LEVELS  # the 4-leaf test tree

# K = 4, two levels: {0, 1} / {2, 3}. THREE_LEVELS: 2 → 3 → 4 nodes.


pytestmark = pytest.mark.usefixtures("single_torch_thread")  # see conftest.py


def _context(level_labels=LEVEL_LABELS) -> MethodContext:
    return MethodContext(classes=("a", "b", "c", "d"), distances=DISTANCES, level_labels=level_labels)


def test_chunk_bounds_follow_the_reference():
    # D = 600, L = 7 (iNat2019's type-I feature): six chunks of 85, the species chunk 90.
    assert flamingo_chunk_bounds(600, 7) == [(85 * i, 85 * (i + 1)) for i in range(6)] + [(510, 600)]
    assert flamingo_chunk_bounds(7, 3) == [(0, 2), (2, 4), (4, 7)]
    with pytest.raises(ValueError, match="needs D ≥ L"):
        flamingo_chunk_bounds(2, 3)


def test_level_inputs_values_and_stop_gradients():
    features = torch.arange(14.0).reshape(2, 7).requires_grad_(True)
    inputs = flamingo_level_inputs(features, 3)
    assert [x.shape[1] for x in inputs] == [7, 5, 3]
    for x, start in zip(inputs, (0, 2, 4)):
        torch.testing.assert_close(x, features[:, start:].detach())
    # The coarsest input's gradient reaches only its own chunk (columns 0–1).
    (grad,) = torch.autograd.grad(inputs[0].sum(), features)
    assert grad[:, :2].eq(1).all() and grad[:, 2:].eq(0).all()
    (grad,) = torch.autograd.grad(inputs[1].sum(), features)
    assert grad[:, 2:4].eq(1).all() and grad[:, :2].eq(0).all() and grad[:, 4:].eq(0).all()


def test_loss_is_the_sum_of_per_level_cross_entropies():
    # Zero logits: log 2 + log 4 = log 8.
    loss = flamingo_loss([torch.zeros(3, 2), torch.zeros(3, 4)], [torch.tensor([0, 1, 1]), torch.tensor([0, 2, 3])])
    assert loss.item() == pytest.approx(math.log(8), abs=1e-6)
    gen = torch.Generator().manual_seed(0)
    z = [torch.randn(3, 2, dtype=torch.float64, generator=gen), torch.randn(3, 4, dtype=torch.float64, generator=gen)]
    y = [torch.tensor([0, 1, 1]), torch.tensor([0, 2, 3])]
    torch.testing.assert_close(flamingo_loss(z, y), F.cross_entropy(z[0], y[0]) + F.cross_entropy(z[1], y[1]))


def test_method_coarse_loss_does_not_reach_the_finer_chunks():
    method = get_method("flamingo")(7, _context(THREE_LEVELS))
    assert [c.in_features for c in method.classifiers] == [7, 5, 3]
    assert [c.out_features for c in method.classifiers] == [2, 3, 4]
    features = torch.randn(5, 7, requires_grad=True)
    outputs = method(features)
    targets = torch.tensor([0, 1, 2, 3, 3])
    coarse = F.cross_entropy(outputs[0], method.assignments[0][targets])
    (grad,) = torch.autograd.grad(coarse, features)
    assert grad[:, :2].abs().sum() > 0
    assert torch.equal(grad[:, 2:], torch.zeros_like(grad[:, 2:]))  # finer chunks: exactly zero
    fine = F.cross_entropy(outputs[2], targets)
    (grad,) = torch.autograd.grad(fine, features)
    assert torch.equal(grad[:, :4], torch.zeros_like(grad[:, :4])) and grad[:, 4:].abs().sum() > 0
    # The coarse classifier still *reads* the finer chunks: its weights on them get a gradient.
    coarse = F.cross_entropy(method(features)[0], method.assignments[0][targets])
    coarse.backward()
    assert method.classifiers[0].weight.grad[:, 2:].abs().sum() > 0


def test_method_loss_targets_and_finest_level_prediction():
    method = get_method("flamingo")(6, _context())
    for classifier in method.classifiers:
        torch.nn.init.zeros_(classifier.weight)
        torch.nn.init.zeros_(classifier.bias)
    outputs = method(torch.randn(4, 6))
    assert method.loss(outputs, torch.tensor([0, 1, 2, 3])).item() == pytest.approx(math.log(8), abs=1e-6)
    with torch.no_grad():
        method.classifiers[-1].bias.copy_(torch.tensor([0.0, 0.0, 5.0, 0.0]))
        method.classifiers[0].bias.copy_(torch.tensor([9.0, 0.0]))  # the coarse level does not decide
    outputs = method(torch.randn(4, 6))
    assert torch.equal(method.scores(outputs), outputs[-1])
    probs = method.probabilities(outputs)
    torch.testing.assert_close(probs.sum(1), torch.ones(4))
    assert probs.argmax(1).eq(2).all()


def test_method_errors():
    cls = get_method("flamingo")
    with pytest.raises(ValueError, match="cannot be split into one chunk per level"):
        cls(2, _context(THREE_LEVELS))
    with pytest.raises(ValueError, match="needs the class tree"):
        cls(6, MethodContext(classes=("a", "b", "c", "d"), distances=DISTANCES))
    with pytest.raises(TypeError):
        cls.Options(weights=1.0)  # Flamingo has no hyperparameters
