"""Fixed ETF + dot-regression loss (Yang et al., NeurIPS 2022): hand-worked values, gradient, method behaviour."""
from __future__ import annotations

import math

import pytest
import torch

from haf.methods._loss_common import normface_scale
from haf.methods.etf_dot_regression import batch_class_rescaling, dot_regression_loss
from haf.methods import MethodContext, get_method
from method_fixtures import DISTANCES  # the 4-leaf test tree



pytestmark = pytest.mark.usefixtures("single_torch_thread")  # see conftest.py


def _context(num_classes: int = 4) -> MethodContext:
    return MethodContext(classes=tuple(f"c{i}" for i in range(num_classes)), distances=DISTANCES, seed=3)


def test_dot_regression_hand_worked_value_and_gradient():
    # Sample 0: h = (3, 4), w_y = (1, 0): ‖h‖ = 5, hᵀw = 3 → ½(3 − 5)²/5 = 0.4; ∂/∂h = (3 − 5)/5 · w = (−0.4, 0).
    # Sample 1: h = (0, 1), w_y = (0, 2): hᵀw = 2 = ‖w‖‖h‖ → 0 and zero gradient.
    vectors = torch.tensor([[1.0, 0.0], [0.0, 2.0]], dtype=torch.float64)
    h = torch.tensor([[3.0, 4.0], [0.0, 1.0]], dtype=torch.float64, requires_grad=True)
    target = torch.tensor([0, 1])
    loss = dot_regression_loss(h, vectors, target)
    assert loss.item() == pytest.approx(0.2, abs=1e-15)  # mean of 0.4 and 0
    loss.backward()
    torch.testing.assert_close(h.grad, torch.tensor([[-0.2, 0.0], [0.0, 0.0]], dtype=torch.float64))
    per_sample = dot_regression_loss(h.detach(), vectors, target, reduction="none")
    torch.testing.assert_close(per_sample, torch.tensor([0.4, 0.0], dtype=torch.float64))


def test_dot_regression_gradient_detaches_the_norms():
    # With ‖h‖ and ‖w‖ detached the gradient is exactly (hᵀw − ‖w‖‖h‖)/‖h‖ · w / B (not the full derivative).
    gen = torch.Generator().manual_seed(0)
    h = torch.randn(7, 5, dtype=torch.float64, generator=gen, requires_grad=True)
    vectors = torch.randn(3, 5, dtype=torch.float64, generator=gen)
    target = torch.tensor([0, 1, 2, 2, 1, 0, 0])
    dot_regression_loss(h, vectors, target).backward()
    w = vectors[target]
    n = h.detach().norm(dim=1, keepdim=True)
    expected = ((h.detach() * w).sum(1, keepdim=True) - w.norm(dim=1, keepdim=True) * n) / n * w / h.shape[0]
    torch.testing.assert_close(h.grad, expected)
    assert vectors.grad is None


def test_dot_regression_zero_feature_is_finite_and_low_precision_accumulates_in_fp32():
    vectors = torch.eye(3)
    loss = dot_regression_loss(torch.zeros(2, 3, requires_grad=True), vectors, torch.tensor([0, 1]))
    assert loss.item() == pytest.approx(0.5e-8)  # ½·‖w‖²·ε with ε = 1e-8, not 0/0
    h = torch.randn(4, 3)
    half = dot_regression_loss(h.bfloat16(), vectors, torch.tensor([0, 1, 2, 0]))
    assert half.dtype == torch.float32


def test_dot_regression_rejects_bad_shapes():
    with pytest.raises(ValueError, match="class_vectors must be K × D"):
        dot_regression_loss(torch.zeros(2, 3), torch.zeros(4, 5), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="target must have shape"):
        dot_regression_loss(torch.zeros(2, 3), torch.zeros(4, 3), torch.tensor([0, 1, 2]))


def test_batch_class_rescaling_hand_worked():
    # B = 4 samples of 2 distinct classes: γ = B/n_u = 2; class 0 seen 3×: sqrt(2/3); class 1 once: sqrt(2).
    scale = batch_class_rescaling(torch.tensor([0, 0, 0, 1]), num_classes=4)
    torch.testing.assert_close(scale, torch.tensor([math.sqrt(2 / 3), math.sqrt(2.0), 1.0, 1.0]))
    # Every present class then carries the same total weight Σ_b E_w[y_b]² = γ · (count/count) = B/n_u.
    weights = scale[torch.tensor([0, 0, 0, 1])] ** 2
    assert weights[:3].sum().item() == pytest.approx(weights[3].item())


def test_method_frame_is_a_fixed_simplex_etf_buffer():
    method = get_method("etf-dot-regression")(6, _context())
    frame = method.frame.double()
    gram = frame @ frame.T
    expected = torch.full((4, 4), -1 / 3, dtype=torch.float64).fill_diagonal_(1.0)
    torch.testing.assert_close(gram, expected, atol=1e-6, rtol=0)
    assert "frame" in method.state_dict()
    assert all(p is not method.frame for p in method.parameters())
    assert not any(name.endswith("frame") for name, _ in method.named_parameters())


def test_method_loss_trains_features_not_the_frame_and_predicts_the_class_direction():
    torch.manual_seed(0)
    method = get_method("etf-dot-regression")(
        4, _context(), get_method("etf-dot-regression").Options(normalize_features=True)
    )
    features = torch.randn(8, 4, requires_grad=True)
    targets = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    outputs = method(features)
    torch.testing.assert_close(outputs.norm(dim=1), torch.ones(8))  # CIFAR variant: L2-normalised
    loss = method.loss(outputs, targets)
    loss.backward()
    assert features.grad is not None and features.grad.abs().sum() > 0
    assert method.frame.grad is None
    # A feature equal to its class vector has zero loss and is predicted as that class.
    method.eval()
    aligned = method.frame.clone()
    zero = get_method("etf-dot-regression")(
        4, _context(), get_method("etf-dot-regression").Options(batch_norm=False)
    )
    zero.frame.copy_(method.frame)
    out = zero(aligned)
    assert zero.loss(out, torch.arange(4)).item() == pytest.approx(0.0, abs=1e-6)
    assert torch.equal(zero.scores(out).argmax(1), torch.arange(4))


def test_method_probabilities_use_the_normface_scale():
    Options = get_method("etf-dot-regression").Options
    method = get_method("etf-dot-regression")(4, _context(), Options(batch_norm=False, target_probability=0.9))
    probs = method.probabilities(method.frame.clone())
    torch.testing.assert_close(probs.sum(1), torch.ones(4))
    # A collapsed sample (cos 1 to its class, −1/(K−1) to the others) gets exactly target_probability.
    torch.testing.assert_close(probs.diagonal(), torch.full((4,), 0.9), atol=1e-5, rtol=0)
    assert normface_scale(4, 0.9) == pytest.approx(0.75 * math.log(3 * 0.9 / 0.1))


def test_method_class_rescaling_weights_samples_by_class_frequency():
    Options = get_method("etf-dot-regression").Options
    cls = get_method("etf-dot-regression")
    plain = cls(4, _context(), Options(batch_norm=False))
    rescaled = cls(4, _context(), Options(batch_norm=False, class_rescaling=True))
    h = torch.randn(4, 4, generator=torch.Generator().manual_seed(1))
    targets = torch.tensor([0, 0, 0, 1])
    per_sample = dot_regression_loss(h, plain.frame, targets, reduction="none")
    expected = (per_sample * torch.tensor([2 / 3, 2 / 3, 2 / 3, 2.0])).mean()
    torch.testing.assert_close(rescaled.loss(rescaled(h), targets), expected)


def test_method_options_and_width_errors():
    cls = get_method("etf-dot-regression")
    with pytest.raises(ValueError, match="target_probability"):
        cls.Options(target_probability=1.0)
    with pytest.raises(ValueError, match="width ≥ K − 1 = 3"):
        cls(2, _context())


def test_frame_survives_module_wide_half_casts():
    # DeepSpeed's bf16 weights mode casts the whole model: the frame must keep full precision, BN may not.
    method = get_method("etf-dot-regression")(4, _context())
    frame = method.frame.clone()
    method.bfloat16()
    assert method.frame.dtype == torch.float32 and torch.equal(method.frame, frame)
    assert method.batch_norm.weight.dtype == torch.bfloat16
    outputs = method(torch.randn(4, 4, dtype=torch.bfloat16))
    loss = method.loss(outputs, torch.arange(4))
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert method.double().frame.dtype == torch.float64  # lossless casts still apply


def test_fixed_buffers_are_the_frame_only():
    # The training loop restores fixed_buffers() to fp32 after DeepSpeed's casts: BN running statistics must not
    # be among them, or a bf16 BatchNorm would meet fp32 running stats.
    method = get_method("etf-dot-regression")(4, _context())
    assert set(method.fixed_buffers()) == {"frame"}
    assert torch.equal(method.fixed_buffers()["frame"], method.frame)
