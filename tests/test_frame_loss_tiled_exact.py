"""The tiled regime keeps the frame exact: near convergence (h ≈ c·w_y + 2⁻⁹ noise, where cos − S is itself about
2⁻⁹) half-precision features give the float64 loss within 1e-3 and dL/dh within 1e-2 of its largest element, like
the launch-bound regime. The tiled regime is forced on tiny shapes by ``row_block_max_classes=0``."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from haf.kernels.dense import fused as fused
from haf.losses import hierarchy_frame_loss

from test_frame_loss_triton import DEVICE, SMALL_TILES

#: The tiled regime with the interpreter's tiles (row_block_max_classes=0 forces it at any size).
INTERPRETER_TILED = fused.KernelConfig(
    logits_block_b=32, logits_block_k=64, logits_block_d=32, grad_block_b=32, grad_block_d=32, grad_block_k=64,
    rows_block=32, cols_block=64, row_block_max_classes=0,
)


def near_convergence(batch, dim, classes, seed, dtype):
    """h = c_b·(w_y + 2⁻⁹·noise) in ``dtype``; S = W Wᵀ (so cos − S ≈ 2⁻⁹ for every class)."""
    gen = torch.Generator().manual_seed(seed)
    frame = F.normalize(torch.randn(classes, dim, generator=gen, dtype=torch.float64), dim=1)
    target = torch.randint(0, classes, (batch,), generator=gen)
    scale = 1.0 + 4.0 * torch.rand(batch, 1, generator=gen, dtype=torch.float64)
    features = (scale * (frame[target] + 2.0**-9 * torch.randn(batch, dim, generator=gen, dtype=torch.float64)))
    similarity = frame @ frame.T
    return features.to(dtype), frame.float(), target, (0.5 * (similarity + similarity.T)).float()


def fused_and_truth(features, frame, target, similarity, alpha, config):
    h = features.detach().to(DEVICE).requires_grad_()
    loss = fused.triton_frame_loss(h, frame.to(DEVICE), target.to(DEVICE), similarity.to(DEVICE), alpha, "mean",
                                   config=config)
    loss.backward()
    exact_h = features.detach().double().requires_grad_()
    exact = hierarchy_frame_loss(exact_h, frame.double(), target, similarity.double(), alpha, "mean")
    exact.backward()
    return loss.detach().cpu().double(), h.grad.cpu().double(), exact.detach(), exact_h.grad


@pytest.mark.parametrize("config", [INTERPRETER_TILED, SMALL_TILES], ids=["tiles", "small-tiles"])
@pytest.mark.parametrize("alpha", [0.4, 1.0])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_tiled_regime_is_exact_near_convergence(dtype, alpha, config):
    features, frame, target, similarity = near_convergence(40, 24, 70, seed=11, dtype=dtype)
    loss, grad, exact_loss, exact_grad = fused_and_truth(features, frame, target, similarity, alpha, config)
    assert abs(loss - exact_loss) <= 1e-3 * abs(exact_loss)
    assert (grad - exact_grad).abs().max() <= 1e-2 * exact_grad.abs().max()


def test_tiled_plan_keeps_frame_and_g_in_fp32():
    """The plan behind the test above: fp32 frame copy, fp32-accurate products, G never in the input dtype."""
    from haf.kernels.dense import tiled

    plan = tiled.tiled_plan(64, 24, 70, torch.bfloat16, torch.device(DEVICE), True, False, INTERPRETER_TILED)
    assert plan.precision in ("tf32x3", "ieee") and plan.upcast
    assert tiled.g_dtype(torch.bfloat16) == torch.float32


@pytest.mark.parametrize("regime", ["row-block", "tiled", "reference"])
def test_finite_huge_features_give_finite_exact_results(regime):
    """fp32 features of ~1e30 square to inf; norms are taken of rows scaled by their largest element, so the loss
    and dL/dh stay finite and match float64 on the same values."""
    gen = torch.Generator().manual_seed(12)
    frame = F.normalize(torch.randn(30, 16, generator=gen, dtype=torch.float64), dim=1)
    similarity = (frame @ frame.T).float()
    target = torch.randint(0, 30, (12,), generator=gen)
    features = (1e30 * torch.randn(12, 16, generator=gen)).float()
    features[3] = frame[target[3]].float() * 3e30  # converged row: its cosine term is 0, not Σ S²
    h = features.clone().to(DEVICE).requires_grad_()
    args = (frame.float().to(DEVICE), target.to(DEVICE), similarity.to(DEVICE), 0.4, "none")
    if regime == "reference":
        loss = hierarchy_frame_loss(h, *args)
    else:
        loss = fused.triton_frame_loss(h, *args, config=INTERPRETER_TILED if regime == "tiled" else None)
    weights = torch.rand(12, generator=gen, dtype=torch.float64)
    (loss.double().cpu() * weights).sum().backward()
    exact_h = features.double().requires_grad_()
    exact = hierarchy_frame_loss(exact_h, frame, target, similarity.double(), 0.4, "none")
    (exact * weights).sum().backward()
    assert torch.isfinite(loss).all() and torch.isfinite(h.grad).all()
    torch.testing.assert_close(loss.detach().double().cpu(), exact.detach(), rtol=1e-5, atol=1e-6)
    # the cosine term itself (the loss is CE-dominated): the α-part of the converged row is ~0
    assert float(loss.detach()[3]) <= 1e-5 * float(exact.detach().abs().max())
    assert (h.grad.cpu().double() - exact_h.grad).abs().max() <= 1e-4 * exact_h.grad.abs().max()


def test_scaled_norm_of_the_reference():
    from haf.kernels.dense.reference import scaled_norm

    rows = torch.tensor([[3e30, 4e30], [0.0, 0.0], [3.0, -4.0]])
    torch.testing.assert_close(scaled_norm(rows), torch.tensor([5e30, 0.0, 5.0]))
