"""Reference losses in plain PyTorch: the ground truth every fused kernel is tested against.

HAFrame loss (Liang & Davis, ICCV 2023) for features h (B × D), a fixed frame W (K × D), targets y, similarity S::

    z      = h Wᵀ                                   (h is NOT normalised: the logits see its norm)
    cos_bi = (w_i · h_b) / (max(‖w_i‖, ε) · ‖h_b‖)        (0 when ‖h_b‖ < FEATURE_EPS: no direction)
    ℓ_b    = (1 − α) · CE(z_b, y_b) + α · Σ_i (cos_bi − S[i, y_b])²

reduced over the batch like ``F.cross_entropy``. :func:`hierarchy_frame_loss` is vectorised over classes (the
reference path of ``haf.kernels.frame_loss``); :func:`hierarchy_frame_loss_loop` is the paper's per-class loop, the
benchmarks' baseline (a). Dtype policy: bf16/fp16 inputs are upcast and accumulated and returned in fp32, fp64
stays fp64; near convergence the cosine term is a difference of nearly equal numbers (docs/METHOD.md §4), which is
why half precision is never used for the arithmetic.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from haf.kernels.dense.inputs import (
    REDUCTIONS, check_constants, check_frame_loss_inputs, check_target, check_target_range,
)

__all__ = [
    "COSINE_EPS",
    "FEATURE_EPS",
    "REDUCTIONS",
    "check_frame_loss_inputs",
    "check_target",
    "check_target_range",
    "compute_dtype",
    "cross_entropy",
    "hierarchy_frame_loss",
    "hierarchy_frame_loss_loop",
    "hierarchy_frame_loss_with_grad",
]

#: Floor for ‖w_i‖ in the cosine (the per-norm clamp of ``F.cosine_similarity``).
COSINE_EPS = 1e-8
#: The rule for a feature without a direction: where ‖h‖ < FEATURE_EPS (‖h‖ of the fp32-upcast values, in every
#: input dtype) every cosine is taken as 0, so the row's cosine term is the constant Σ_i S[i, y]² and contributes
#: nothing to dL/dh; the cross-entropy part is unchanged. No NaN at h = 0 and no 1/ε-sized gradient below ε.
FEATURE_EPS = 1e-6


def compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """fp64 if any input is fp64, else fp32: half-precision inputs are accumulated in fp32 (every reference loss)."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def _validate_target(target: torch.Tensor, batch: int, num_classes: int, ignore_index: int) -> torch.Tensor:
    check_target(target, batch)
    return check_target_range(target, num_classes, ignore_index)


def _validate(features, frame, target, similarity, alpha, reduction, ignore_index, unit_frame=False):
    """All input rules (the value checks synchronise: this is the reference path). Returns (valid, α)."""
    alpha = check_frame_loss_inputs(features, frame, target, similarity, alpha, reduction, ignore_index)
    check_constants(frame, similarity, unit_frame)
    if not bool(torch.isfinite(features.detach()).all()):
        raise ValueError("features has non-finite values (NaN or inf)")
    return check_target_range(target, frame.shape[0], ignore_index), alpha


def _prepare(features, frame, target, similarity, alpha, reduction, ignore_index, unit_frame=False):
    """Validate, upcast to the compute dtype, and map ignored targets to class 0 (masked out later).

    Returns (h, W, S, safe_target, valid, α) for both forms of the loss.
    """
    valid, alpha = _validate(features, frame, target, similarity, alpha, reduction, ignore_index, unit_frame)
    dtype = compute_dtype(features, frame, similarity)
    target = target.long()
    safe_target = torch.where(valid, target, torch.zeros_like(target))
    return features.to(dtype), frame.to(dtype), similarity.to(dtype), safe_target, valid, alpha


def scaled_norm(h: torch.Tensor) -> torch.Tensor:
    """‖h_b‖ per row, each row divided by its largest |h| before squaring: finite for every finite row whose norm
    is representable (fp32 features of 1e30 square to inf, scaled ones do not)."""
    if h.shape[1] == 0:
        return torch.linalg.vector_norm(h, dim=1)
    scale = h.detach().abs().amax(dim=1)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    return torch.linalg.vector_norm(h / scale[:, None], dim=1) * scale


def _directed(h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(‖h‖ clamped to FEATURE_EPS, mask of rows with a direction) — the FEATURE_EPS rule."""
    norm = scaled_norm(h)
    return norm.clamp_min(FEATURE_EPS), norm >= FEATURE_EPS


def _reduce(per_sample: torch.Tensor, valid: torch.Tensor, reduction: str) -> torch.Tensor:
    """Reduce like ``F.cross_entropy`` with ``ignore_index``: ignored rows are 0 and do not count in the mean.

    An all-ignored batch gives a mean of 0 (with zero gradient), not ``F.cross_entropy``'s 0/0 = NaN: a batch
    with no labelled row carries no signal, and a NaN would poison the running loss and the optimizer state.
    """
    per_sample = torch.where(valid, per_sample, torch.zeros_like(per_sample))
    if reduction == "none":
        return per_sample
    total = per_sample.sum()
    if reduction == "sum":
        return total
    return total / valid.sum().clamp_min(1).to(total.dtype)


def cross_entropy(
    logits: torch.Tensor, target: torch.Tensor, reduction: str = "mean", ignore_index: int = -100
) -> torch.Tensor:
    """``F.cross_entropy`` under this module's conventions: fp32 accumulation, all-ignored mean = 0.

    Used for the cross-entropy baselines so that their loss values are reduced exactly like the HAFrame loss's.
    """
    if logits.dim() != 2:
        raise ValueError(f"logits must be B × K, got shape {tuple(logits.shape)}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    valid = _validate_target(target, logits.shape[0], logits.shape[1], ignore_index)
    logits = logits.to(compute_dtype(logits))
    per_sample = F.cross_entropy(logits, target.long(), reduction="none", ignore_index=ignore_index)
    return _reduce(per_sample, valid, reduction)


def hierarchy_frame_loss(
    features: torch.Tensor,
    frame: torch.Tensor,
    target: torch.Tensor,
    similarity: torch.Tensor,
    alpha: float = 0.5,
    reduction: str = "mean",
    ignore_index: int = -100,
    *,
    unit_frame: bool = False,
) -> torch.Tensor:
    """HAFrame loss, vectorised over classes (reference path of ``haf.kernels.frame_loss``).

    Args:
        features: h, B × D (any float dtype; not normalised).
        frame: W, K × D. Its rows are normalised inside the cosine only, so a frame that is not unit-norm
            still gives true cosines; the logits use W as given.
        target: B class indices; rows equal to ``ignore_index`` contribute 0 and are not counted.
        similarity: S, K × K; the cosine target of class i for a sample of class y is S[i, y].
        alpha: weight of the cosine term, in [0, 1] (paper: 0.5 FGVC / tieredImageNet-H, 0.4 CIFAR-100 / iNat).
        reduction: "mean" (over non-ignored rows; 0 if there are none), "sum", or "none" (B values, 0 at
            ignored rows).

    Returns:
        The loss in fp32 (fp64 if any input is fp64).
    """
    h, w, s, safe_target, valid, alpha = _prepare(
        features, frame, target, similarity, alpha, reduction, ignore_index, unit_frame
    )

    logits = h @ w.T  # z, B × K
    ce = F.cross_entropy(logits, safe_target, reduction="none")

    # cos_bi = z_bi / (‖h_b‖ · max(‖w_i‖, ε)), 0 where ‖h_b‖ < FEATURE_EPS: the cosine reuses the logits.
    h_norm, directed = _directed(h)
    w_norm = torch.linalg.vector_norm(w, dim=1).clamp_min(COSINE_EPS)
    cosine = torch.where(directed[:, None], logits / (h_norm[:, None] * w_norm[None, :]), 0.0)
    cosine_target = s.T[safe_target]  # row b holds S[i, y_b] over i
    cosine_term = (cosine - cosine_target).square().sum(dim=1)

    per_sample = (1.0 - alpha) * ce + alpha * cosine_term
    return _reduce(per_sample, valid, reduction)


def hierarchy_frame_loss_loop(
    features: torch.Tensor,
    frame: torch.Tensor,
    target: torch.Tensor,
    similarity: torch.Tensor,
    alpha: float = 0.5,
    reduction: str = "mean",
    ignore_index: int = -100,
    *,
    unit_frame: bool = False,
) -> torch.Tensor:
    """The paper's literal form: a Python loop over classes i, cosine of h with w_i, squared error to S[i, y].

    K small kernels per call (K launches forward and backward on a GPU): kept only as the benchmarks' baseline
    (a). Same arguments, dtype policy and results as :func:`hierarchy_frame_loss`.
    """
    h, w, s, safe_target, valid, alpha = _prepare(
        features, frame, target, similarity, alpha, reduction, ignore_index, unit_frame
    )

    ce = F.cross_entropy(h @ w.T, safe_target, reduction="none")
    cosine_term = torch.zeros(h.shape[0], dtype=h.dtype, device=h.device)
    directed = _directed(h)[1]
    for i in range(w.shape[0]):
        cos_i = F.cosine_similarity(h, w[i].unsqueeze(0), dim=1, eps=COSINE_EPS)
        cos_i = torch.where(directed, cos_i, 0.0)
        cosine_term = cosine_term + (cos_i - s[i, safe_target]) ** 2

    per_sample = (1.0 - alpha) * ce + alpha * cosine_term
    return _reduce(per_sample, valid, reduction)


def hierarchy_frame_loss_with_grad(
    features: torch.Tensor,
    frame: torch.Tensor,
    target: torch.Tensor,
    similarity: torch.Tensor,
    alpha: float = 0.5,
    reduction: str = "mean",
    ignore_index: int = -100,
    *,
    unit_frame: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The loss, the per-row gradient dℓ_b/dh_b written out (no autograd), and the batch weight (1,).

    dL/dh = grad_output · weight · dℓ/dh, with g = (1 − α)(p − δ_y) + 2α (cos − S[·, y]) r / ‖h‖,
    a = −(2α/‖h‖²) Σ_i (cos_i − S[i, y]) cos_i and dℓ/dh = g W + a h (rows below FEATURE_EPS: a = 0, no cosine
    part). Used where autograd cannot run (inside the registered operator); tested against autograd.
    """
    h, w, s, safe_target, valid, alpha = _prepare(
        features, frame, target, similarity, alpha, reduction, ignore_index, unit_frame
    )
    logits = h @ w.T
    h_norm, directed = _directed(h)
    inv_w = 1.0 / torch.linalg.vector_norm(w, dim=1).clamp_min(COSINE_EPS)
    cosine = torch.where(directed[:, None], logits * inv_w / h_norm[:, None], 0.0)
    diff = cosine - s.T[safe_target]
    ce = F.cross_entropy(logits, safe_target, reduction="none")
    loss = _reduce((1.0 - alpha) * ce + alpha * diff.square().sum(dim=1), valid, reduction)
    p = torch.softmax(logits, dim=1) - F.one_hot(safe_target, w.shape[0]).to(h.dtype)
    g = (1.0 - alpha) * p + torch.where(directed[:, None], 2.0 * alpha * diff * inv_w / h_norm[:, None], 0.0)
    a = torch.where(directed, -2.0 * alpha * (diff * cosine).sum(dim=1) / h_norm / h_norm, 0.0)
    grad = torch.where(valid[:, None], g @ w + a[:, None] * h, 0.0).to(features.dtype)
    count = valid.sum().clamp_min(1).to(torch.float32)
    scale = (1.0 / count if reduction == "mean" else torch.ones((), device=h.device)).reshape(1).float()
    return loss, grad, scale
