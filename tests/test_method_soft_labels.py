"""Soft labels (Bertinetto et al., CVPR 2020): hand-worked targets, KL value and gradient, method behaviour."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from haf.methods.soft_labels import soft_label_loss, soft_label_targets
from haf.methods import MethodContext, get_method
from method_fixtures import DISTANCES  # the 4-leaf test tree

# K = 4, two-level tree {0, 1} / {2, 3}, LCA-height distances: siblings 1, cousins 2, d_max = 2.
CONTEXT = MethodContext(classes=("a", "b", "c", "d"), distances=DISTANCES)


pytestmark = pytest.mark.usefixtures("single_torch_thread")  # see conftest.py


def test_soft_targets_hand_worked():
    # β = 2: row 0 ∝ exp(−2·d/2) = (1, e⁻¹, e⁻², e⁻²).
    q = soft_label_targets(DISTANCES, beta=2.0)
    z = 1 + math.exp(-1) + 2 * math.exp(-2)
    expected0 = torch.tensor([1, math.exp(-1), math.exp(-2), math.exp(-2)], dtype=torch.float64) / z
    torch.testing.assert_close(q[0], expected0)
    torch.testing.assert_close(q.sum(1), torch.ones(4, dtype=torch.float64))
    torch.testing.assert_close(q[3], expected0.flip(0))  # row 3 ∝ (e⁻², e⁻², e⁻¹, 1)
    assert torch.equal(soft_label_targets(DISTANCES, beta=0.0), torch.full((4, 4), 0.25, dtype=torch.float64))
    # Large β tends to one-hot.
    assert soft_label_targets(DISTANCES, beta=200.0).diagonal().min().item() > 1 - 1e-12


def test_kl_value_and_gradient_hand_worked():
    # Zero logits → p = ¼: KL(q ‖ p) = Σ q log q + log 4; ∂/∂z = (p − q)/B.
    q = soft_label_targets(DISTANCES, beta=2.0)
    logits = torch.zeros(2, 4, dtype=torch.float64, requires_grad=True)
    target = torch.tensor([0, 3])
    loss = soft_label_loss(logits, target, q)
    expected = sum(float((q[t] * q[t].log()).sum()) + math.log(4) for t in (0, 3)) / 2
    assert loss.item() == pytest.approx(expected, abs=1e-12)
    loss.backward()
    torch.testing.assert_close(logits.grad, (0.25 - q[target]) / 2)


def test_kl_gradient_matches_finite_differences_and_is_zero_at_the_target():
    q = soft_label_targets(DISTANCES, beta=4.0)
    logits = torch.randn(5, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0), requires_grad=True)
    target = torch.tensor([0, 1, 2, 3, 1])
    assert torch.autograd.gradcheck(lambda z: soft_label_loss(z, target, q), (logits,))
    # Logits = log q reproduce the target exactly: KL = 0.
    assert soft_label_loss(q[target].log(), target, q).item() == pytest.approx(0.0, abs=1e-12)


def test_targets_reject_bad_distances_and_beta():
    with pytest.raises(ValueError, match="square"):
        soft_label_targets(np.zeros((2, 3)), 1.0)
    with pytest.raises(ValueError, match="all zero"):
        soft_label_targets(np.zeros((3, 3)), 1.0)
    with pytest.raises(ValueError, match="beta"):
        soft_label_targets(DISTANCES, -1.0)


def test_method_probabilities_and_options():
    cls = get_method("soft-labels")
    method = cls(5, CONTEXT, cls.Options(beta=4.0))
    torch.testing.assert_close(method.soft_targets, soft_label_targets(DISTANCES, 4.0).float())
    features = torch.randn(6, 5)
    outputs = method(features)
    probs = method.probabilities(outputs)
    torch.testing.assert_close(probs.sum(1), torch.ones(6))
    torch.testing.assert_close(probs, torch.softmax(method.scores(outputs), dim=1))
    loss = method.loss(outputs, torch.tensor([0, 1, 2, 3, 0, 1]))
    loss.backward()
    assert method.classifier.weight.grad.abs().sum() > 0
    assert "soft_targets" not in method.state_dict()  # rebuilt from the config, not checkpointed
    with pytest.raises(ValueError, match="beta must be a non-negative number"):
        cls.Options(beta=-2.0)
    with pytest.raises(ValueError, match="K × K = 4 × 4"):
        cls(5, MethodContext(classes=("a", "b", "c", "d"), distances=np.zeros((3, 3))))


def test_soft_targets_survive_module_wide_half_casts():
    # exp(−β) with β = 30 is ~1e-13: fp16 would flush it to zero. The buffer keeps fp32; the classifier casts.
    method = get_method("soft-labels")(5, CONTEXT).half()
    assert method.soft_targets.dtype == torch.float32 and method.soft_targets.min().item() > 0
    assert method.classifier.weight.dtype == torch.float16
    assert get_method("hierarchical-ce")(
        5, MethodContext(classes=("a", "b", "c", "d"), distances=DISTANCES, level_labels=np.array([[0], [0], [1], [1]]))
    ).bfloat16().edge_weights.dtype == torch.float32
