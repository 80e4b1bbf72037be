"""haf.losses: the reference HAFrame loss against fp64 autograd, the paper's loop, and docs/METHOD.md's identity."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from haf.losses import (
    COSINE_EPS,
    cross_entropy,
    hierarchy_frame_loss,
    hierarchy_frame_loss_loop,
)

LOSSES = [hierarchy_frame_loss, hierarchy_frame_loss_loop]


def make_problem(batch: int, dim: int, classes: int, seed: int = 0, dtype=torch.float64, ignored: int = 0):
    """Random features, a unit-row frame W and its Gram matrix S = W Wᵀ (a valid similarity, unit diagonal)."""
    gen = torch.Generator().manual_seed(seed)
    frame = F.normalize(torch.randn(classes, dim, generator=gen, dtype=torch.float64), dim=1)
    similarity = frame @ frame.T
    features = torch.randn(batch, dim, generator=gen, dtype=torch.float64) * 3.0
    target = torch.randint(0, classes, (batch,), generator=gen)
    if ignored:
        target[torch.randperm(batch, generator=gen)[:ignored]] = -100
    return features.to(dtype), frame.to(dtype), target, similarity.to(dtype)


def naive_loss_float64(features, frame, target, similarity, alpha):
    """Per-sample loss written straight from docs/METHOD.md, one sample and one class at a time, in fp64."""
    h, w, s = features.double(), frame.double(), similarity.double()
    out = []
    for b in range(h.shape[0]):
        y = int(target[b])
        z = w @ h[b]
        ce = torch.logsumexp(z, 0) - z[y]
        cos_term = sum(
            (torch.dot(w[i], h[b]) / (w[i].norm() * h[b].norm()) - s[i, y]) ** 2 for i in range(w.shape[0])
        )
        out.append((1 - alpha) * ce + alpha * cos_term)
    return torch.stack(out)


@pytest.mark.parametrize("loss_fn", LOSSES)
@pytest.mark.parametrize("shape", [(7, 13, 5), (16, 37, 23), (3, 100, 100)])
def test_value_matches_naive_float64(loss_fn, shape):
    features, frame, target, similarity = make_problem(*shape, seed=sum(shape))
    expected = naive_loss_float64(features, frame, target, similarity, alpha=0.4)
    got = loss_fn(features, frame, target, similarity, alpha=0.4, reduction="none")
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("loss_fn", LOSSES)
def test_fp32_value_and_gradient_against_float64_autograd(loss_fn):
    features64, frame64, target, similarity64 = make_problem(33, 61, 29, seed=3, ignored=4)
    h64 = features64.clone().requires_grad_(True)
    ref = loss_fn(h64, frame64, target, similarity64, alpha=0.5)
    ref.backward()

    h32 = features64.float().requires_grad_(True)
    got = loss_fn(h32, frame64.float(), target, similarity64.float(), alpha=0.5)
    got.backward()
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), ref.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(h32.grad.double(), h64.grad, rtol=1e-4, atol=1e-6)


def test_gradcheck_float64():
    features, frame, target, similarity = make_problem(5, 7, 4, seed=11, ignored=1)
    features.requires_grad_(True)
    for reduction in ("mean", "sum", "none"):
        assert torch.autograd.gradcheck(
            lambda h: hierarchy_frame_loss(h, frame, target, similarity, alpha=0.3, reduction=reduction),
            (features,),
        )


def test_analytic_gradient():
    """∂ℓ/∂h = (1−α)·Wᵀ(softmax(z) − e_y) + α·(2/n)(I − ĥĥᵀ)(Wᵀz/n − P[y]),  P = S W."""
    features, frame, target, similarity = make_problem(9, 17, 11, seed=5)
    alpha = 0.45
    h = features.clone().requires_grad_(True)
    hierarchy_frame_loss(h, frame, target, similarity, alpha=alpha, reduction="sum").backward()

    z = features @ frame.T
    n = features.norm(dim=1, keepdim=True)
    h_hat = features / n
    p_rows = (similarity @ frame)[target]
    ce_grad = (torch.softmax(z, 1) - F.one_hot(target, frame.shape[0]).double()) @ frame
    v = z @ frame / n - p_rows
    cos_grad = (2 / n) * (v - h_hat * (h_hat * v).sum(1, keepdim=True))
    torch.testing.assert_close(h.grad, (1 - alpha) * ce_grad + alpha * cos_grad, rtol=1e-10, atol=1e-12)


def test_identity_of_design_section_2():
    """Cosine term per sample = Σ z_i²/n² − 2 h·P[y]/n + c_y with P = S W, c_y = ‖S[y]‖² (unit-row W)."""
    features, frame, target, similarity = make_problem(12, 31, 19, seed=8)
    # A similarity that is not W Wᵀ, so the identity is exercised with a nonzero residual.
    similarity = 0.5 * (similarity + torch.eye(19, dtype=torch.float64))
    cos_term = hierarchy_frame_loss(features, frame, target, similarity, alpha=1.0, reduction="none")

    z = features @ frame.T
    n = features.norm(dim=1)
    p = similarity @ frame
    c = similarity.square().sum(1)
    identity = (z.square().sum(1) / n**2) - 2 * (features * p[target]).sum(1) / n + c[target]
    torch.testing.assert_close(cos_term, identity, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("shape", [(64, 123, 123), (10, 45, 77), (1, 3, 2)])
def test_vectorised_matches_loop(reduction, shape):
    features, frame, target, similarity = make_problem(*shape, seed=shape[1], dtype=torch.float32, ignored=shape[0] // 5)
    # A frame that is not unit-norm: rows are normalised inside the cosine, logits use it as given.
    frame = frame * torch.linspace(0.5, 2.0, shape[2])[:, None]
    results, grads = [], []
    for loss_fn in LOSSES:
        h = features.clone().requires_grad_(True)
        out = loss_fn(h, frame, target, similarity, alpha=0.4, reduction=reduction)
        out.sum().backward()
        results.append(out)
        grads.append(h.grad)
    torch.testing.assert_close(results[0], results[1], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-5, atol=1e-6)


def test_converged_features_give_cross_entropy_only():
    """h = c·w_y with S = W Wᵀ: every cosine equals its target, only the CE part remains."""
    _, frame, _, similarity = make_problem(1, 20, 8, seed=2)
    target = torch.arange(8)
    features = 50.0 * frame[target]
    got = hierarchy_frame_loss(features, frame, target, similarity, alpha=0.5, reduction="none")
    ce = F.cross_entropy(features @ frame.T, target, reduction="none")
    torch.testing.assert_close(got, 0.5 * ce, rtol=1e-12, atol=1e-12)


def test_unit_norm_invariance_of_cosine_term():
    """Scaling frame rows changes only the logits, not the cosine term (alpha = 1)."""
    features, frame, target, similarity = make_problem(6, 9, 5, seed=4)
    scaled = frame * torch.tensor([0.1, 1.0, 3.0, 7.0, 0.5], dtype=torch.float64)[:, None]
    a = hierarchy_frame_loss(features, frame, target, similarity, alpha=1.0, reduction="none")
    b = hierarchy_frame_loss(features, scaled, target, similarity, alpha=1.0, reduction="none")
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("loss_fn", LOSSES)
def test_alpha_zero_is_cross_entropy(loss_fn):
    features, frame, target, similarity = make_problem(8, 10, 6, seed=9, ignored=2)
    got = loss_fn(features, frame, target, similarity, alpha=0.0)
    expected = F.cross_entropy(features @ frame.T, target, ignore_index=-100)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("loss_fn", LOSSES)
def test_zero_features_are_finite(loss_fn):
    features, frame, target, similarity = make_problem(4, 6, 5, seed=1, dtype=torch.float32)
    h = torch.zeros_like(features).requires_grad_(True)
    out = loss_fn(h, frame, target, similarity, alpha=0.5, reduction="none")
    out.sum().backward()
    assert torch.isfinite(out).all() and torch.isfinite(h.grad).all()
    # At h = 0 every cosine is 0 and every logit is 0: ℓ = (1−α)·log K + α·Σ_i S[i, y]².
    expected = 0.5 * math.log(5) + 0.5 * similarity.T[target].square().sum(1)
    torch.testing.assert_close(out, expected)
    # Below the eps floor the cosine is h·ŵ/eps, so the gradient is bounded by (1−α)·‖W‖ + 2α·Σ|S|/eps.
    bound = 0.5 * frame.norm(dim=1).sum() + 2 * 0.5 * similarity.abs().sum(0).max() / COSINE_EPS
    assert float(h.grad.norm(dim=1).max()) <= float(bound) * 1.001


@pytest.mark.parametrize("loss_fn", LOSSES)
def test_reductions_and_ignore_index(loss_fn):
    features, frame, target, similarity = make_problem(10, 8, 6, seed=6)
    target[[1, 4, 7]] = 3  # make sure the ignore value differs from the default in this test
    target[[0, 5]] = -1
    none = loss_fn(features, frame, target, similarity, reduction="none", ignore_index=-1)
    assert none.shape == (10,) and none[0] == 0 and none[5] == 0 and (none[target != -1] > 0).all()
    total = loss_fn(features, frame, target, similarity, reduction="sum", ignore_index=-1)
    mean = loss_fn(features, frame, target, similarity, reduction="mean", ignore_index=-1)
    torch.testing.assert_close(total, none.sum())
    torch.testing.assert_close(mean, none.sum() / 8)


@pytest.mark.parametrize("loss_fn", LOSSES)
def test_all_ignored_mean_is_zero_not_nan(loss_fn):
    features, frame, _, similarity = make_problem(4, 5, 3, seed=7)
    target = torch.full((4,), -100)
    h = features.clone().requires_grad_(True)
    out = loss_fn(h, frame, target, similarity)
    out.backward()
    assert out.item() == 0.0
    assert torch.equal(h.grad, torch.zeros_like(h))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_inputs_accumulate_and_return_fp32(dtype):
    features, frame, target, similarity = make_problem(16, 24, 12, seed=12, dtype=dtype)
    got = hierarchy_frame_loss(features, frame, target, similarity, reduction="none")
    assert got.dtype == torch.float32
    # Same rounded inputs, computed in fp64: the only error left is fp32 accumulation.
    expected = naive_loss_float64(features, frame, target, similarity, alpha=0.5)
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-5)
    h = features.clone().requires_grad_(True)
    hierarchy_frame_loss(h, frame, target, similarity).backward()
    assert h.grad.dtype == dtype and torch.isfinite(h.grad.float()).all()


def test_cross_entropy_wrapper():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(9, 7, generator=gen, dtype=torch.bfloat16)
    target = torch.randint(0, 7, (9,), generator=gen)
    target[2] = -100
    got = cross_entropy(logits, target)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, F.cross_entropy(logits.float(), target))
    torch.testing.assert_close(cross_entropy(logits, target, reduction="sum"), F.cross_entropy(logits.float(), target, reduction="sum"))
    assert cross_entropy(logits, torch.full((9,), -100)).item() == 0.0
    with pytest.raises(ValueError, match=r"target\[0\] = 7"):
        cross_entropy(logits, torch.full((9,), 7))


@pytest.mark.parametrize("loss_fn", LOSSES)
def test_errors(loss_fn):
    features, frame, target, similarity = make_problem(4, 6, 5, seed=0)
    with pytest.raises(ValueError, match="features must be B × D"):
        loss_fn(features[0], frame, target, similarity)
    with pytest.raises(ValueError, match="frame must be K × D with D = 6"):
        loss_fn(features, frame[:, :5], target, similarity)
    with pytest.raises(ValueError, match="similarity must be K × K with K = 5"):
        loss_fn(features, frame, target, similarity[:4])
    with pytest.raises(ValueError, match=r"target must have shape \(4,\)"):
        loss_fn(features, frame, target[:3], similarity)
    with pytest.raises(ValueError, match="integer tensor"):
        loss_fn(features, frame, target.double(), similarity)
    bad = target.clone()
    bad[2] = 5
    with pytest.raises(ValueError, match=r"target\[2\] = 5 is not a class index in \[0, 5\)"):
        loss_fn(features, frame, bad, similarity)
    bad[2] = -3
    with pytest.raises(ValueError, match=r"target\[2\] = -3"):
        loss_fn(features, frame, bad, similarity)
    with pytest.raises(ValueError, match="features must be a floating-point"):
        loss_fn(features.long(), frame, target, similarity)
    with pytest.raises(ValueError, match="alpha"):
        loss_fn(features, frame, target, similarity, alpha=1.5)
    with pytest.raises(ValueError, match="reduction must be one of"):
        loss_fn(features, frame, target, similarity, reduction="batchmean")


@pytest.mark.parametrize("loss_fn", LOSSES)
def test_confident_nearly_converged_fp32_matches_float64(loss_fn):
    """‖h‖ ≈ 200 along w_y plus noise: CE ≈ 0 and the cosine term is a small difference of O(1) numbers."""
    _, frame, _, similarity = make_problem(1, 48, 37, seed=13)
    gen = torch.Generator().manual_seed(14)
    target = torch.randint(0, 37, (64,), generator=gen)
    features = 200.0 * frame[target] + 0.5 * torch.randn(64, 48, generator=gen, dtype=torch.float64)
    h64 = features.clone().requires_grad_(True)
    ref = loss_fn(h64, frame, target, similarity, reduction="none")
    ref.sum().backward()
    h32 = features.float().requires_grad_(True)
    got = loss_fn(h32, frame.float(), target, similarity.float(), reduction="none")
    got.sum().backward()
    assert float(ref.detach().max()) < 0.05  # really near convergence
    torch.testing.assert_close(got.double(), ref.detach(), rtol=1e-3, atol=2e-6)
    torch.testing.assert_close(h32.grad.double(), h64.grad, rtol=1e-3, atol=1e-6)


@pytest.mark.parametrize("loss_fn", LOSSES)
def test_device_and_dtype_mismatch_errors(loss_fn):
    features, frame, target, similarity = make_problem(4, 6, 5, seed=0)
    with pytest.raises(ValueError, match="frame is on meta but features are on cpu"):
        loss_fn(features, frame.to("meta"), target, similarity)
    with pytest.raises(ValueError, match="target is on meta"):
        loss_fn(features, frame, target.to("meta"), similarity)
    with pytest.raises(ValueError, match="similarity must be a floating-point tensor"):
        loss_fn(features, frame, target, similarity.long())


def test_cross_entropy_wrapper_errors():
    with pytest.raises(ValueError, match="logits must be B × K"):
        cross_entropy(torch.zeros(3), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="reduction must be one of"):
        cross_entropy(torch.zeros(3, 2), torch.zeros(3, dtype=torch.long), reduction="avg")
