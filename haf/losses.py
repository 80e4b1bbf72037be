"""Reference losses in plain PyTorch: the ground truth every fused kernel is tested against.

The HAFrame loss (Liang & Davis, ICCV 2023) for features ``h`` (B × D), a fixed frame ``W`` (K × D), targets ``y``
and the class similarity ``S`` (K × K)::

    z      = h Wᵀ                                   (h is NOT normalised: the logits see its norm)
    cos_bi = (w_i · h_b) / (max(‖w_i‖, ε) · max(‖h_b‖, ε))
    ℓ_b    = (1 − α) · CE(z_b, y_b) + α · Σ_i (cos_bi − S[i, y_b])²

summed over classes, then reduced over the batch like ``F.cross_entropy`` (mean over non-ignored rows, sum, or
per-sample). Two forms are kept:

* :func:`hierarchy_frame_loss`, vectorised over classes (one B × K product): the reference path of
  ``haf.kernels.frame_loss``;
* :func:`hierarchy_frame_loss_loop`, the paper's literal per-class Python loop, kept only as the benchmarks'
  baseline (a); same arguments, same results.

Dtype policy: bf16/fp16 inputs are upcast and everything is accumulated and returned in fp32; fp64 inputs stay
fp64 (the tests compare against fp64 autograd). Near convergence the cosine term is a difference of nearly equal
numbers, which is why half precision is never used for the arithmetic.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = [
    "COSINE_EPS",
    "REDUCTIONS",
    "check_frame_loss_inputs",
    "check_target_range",
    "cross_entropy",
    "hierarchy_frame_loss",
    "hierarchy_frame_loss_loop",
]

#: Floor for ‖h‖ and ‖w_i‖ in the cosine. The same value and the same per-norm clamp as ``F.cosine_similarity``'s
#: default (x·y / (max(‖x‖, ε)·max(‖y‖, ε))), so the vectorised form and the literal loop agree bit-for-bit in
#: spirit even at zero features. With ‖h‖ < ε the cosine becomes the linear map h·ŵ/ε: the loss is finite
#: (Σ_i S[i, y]² at h = 0) and so is its gradient (≤ 2·Σ_i|S[i, y]|/ε ≈ 2e8·K, far inside fp32's range), instead
#: of the 0/0 = NaN an unguarded division gives.
COSINE_EPS = 1e-8

REDUCTIONS = ("mean", "sum", "none")


def _compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """fp64 if any input is fp64, else fp32: half-precision inputs are accumulated in fp32."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def check_target(target: torch.Tensor, batch: int) -> None:
    """Shape and dtype of ``target`` (no host synchronisation)."""
    if target.dim() != 1 or target.shape[0] != batch:
        raise ValueError(f"target must have shape ({batch},) to match features, got {tuple(target.shape)}")
    if target.dtype not in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8):
        raise ValueError(f"target must be an integer tensor of class indices, got dtype {target.dtype}")


def check_target_range(target: torch.Tensor, num_classes: int, ignore_index: int) -> torch.Tensor:
    """Every non-ignored target is a class index; returns the mask of rows that count.

    Synchronises with the device (``bool(...)``): fast paths call it only for CPU tensors.
    """
    valid = target != ignore_index
    bad = valid & ((target < 0) | (target >= num_classes))
    if bool(bad.any()):
        row = int(torch.nonzero(bad)[0, 0])
        raise ValueError(
            f"target[{row}] = {int(target[row])} is not a class index in [0, {num_classes}) "
            f"nor ignore_index ({ignore_index})"
        )
    return valid


def _validate_target(target: torch.Tensor, batch: int, num_classes: int, ignore_index: int) -> torch.Tensor:
    check_target(target, batch)
    return check_target_range(target, num_classes, ignore_index)


def check_frame_loss_inputs(
    features: torch.Tensor,
    frame: torch.Tensor,
    target: torch.Tensor,
    similarity: torch.Tensor,
    alpha: float,
    reduction: str,
) -> None:
    """Shapes, dtypes, devices, α and reduction of a frame-loss call, without any host synchronisation.

    Shared by the reference path and the fused kernels so both reject bad input with the same messages.
    """
    if features.dim() != 2:
        raise ValueError(f"features must be B × D, got shape {tuple(features.shape)}")
    if frame.dim() != 2 or frame.shape[1] != features.shape[1]:
        raise ValueError(
            f"frame must be K × D with D = {features.shape[1]} (the feature width), got shape {tuple(frame.shape)}"
        )
    num_classes = frame.shape[0]
    if similarity.shape != (num_classes, num_classes):
        raise ValueError(
            f"similarity must be K × K with K = {num_classes} (frame rows), got shape {tuple(similarity.shape)}"
        )
    for name, tensor in (("features", features), ("frame", frame), ("similarity", similarity)):
        if not tensor.is_floating_point():
            raise ValueError(f"{name} must be a floating-point tensor, got dtype {tensor.dtype}")
        if tensor.device != features.device:
            raise ValueError(f"{name} is on {tensor.device} but features are on {features.device}")
    check_target(target, features.shape[0])
    if target.device != features.device:
        raise ValueError(f"target is on {target.device} but features are on {features.device}")
    if not 0.0 <= float(alpha) <= 1.0:
        raise ValueError(f"alpha is the weight of the cosine term and must lie in [0, 1], got {alpha}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")


def _validate(
    features: torch.Tensor,
    frame: torch.Tensor,
    target: torch.Tensor,
    similarity: torch.Tensor,
    alpha: float,
    reduction: str,
    ignore_index: int,
) -> torch.Tensor:
    check_frame_loss_inputs(features, frame, target, similarity, alpha, reduction)
    return check_target_range(target, frame.shape[0], ignore_index)


def _prepare(
    features: torch.Tensor,
    frame: torch.Tensor,
    target: torch.Tensor,
    similarity: torch.Tensor,
    alpha: float,
    reduction: str,
    ignore_index: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Validate, upcast to the compute dtype, and map ignored targets to class 0 (masked out later).

    Returns (h, W, S, safe_target, valid) for both forms of the loss.
    """
    valid = _validate(features, frame, target, similarity, alpha, reduction, ignore_index)
    dtype = _compute_dtype(features, frame, similarity)
    target = target.long()
    safe_target = torch.where(valid, target, torch.zeros_like(target))
    return features.to(dtype), frame.to(dtype), similarity.to(dtype), safe_target, valid


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
    logits = logits.to(_compute_dtype(logits))
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
    h, w, s, safe_target, valid = _prepare(features, frame, target, similarity, alpha, reduction, ignore_index)

    logits = h @ w.T  # z, B × K
    ce = F.cross_entropy(logits, safe_target, reduction="none")

    # cos_bi = z_bi / (max(‖h_b‖, ε) · max(‖w_i‖, ε)): the cosine reuses the logits, no second product.
    h_norm = torch.linalg.vector_norm(h, dim=1).clamp_min(COSINE_EPS)
    w_norm = torch.linalg.vector_norm(w, dim=1).clamp_min(COSINE_EPS)
    cosine = logits / (h_norm[:, None] * w_norm[None, :])
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
) -> torch.Tensor:
    """The paper's literal form: a Python loop over classes i, cosine of h with w_i, squared error to S[i, y].

    K small kernels per call (K launches forward and backward on a GPU): kept only as the benchmarks' baseline
    (a). Same arguments, dtype policy and results as :func:`hierarchy_frame_loss`.
    """
    h, w, s, safe_target, valid = _prepare(features, frame, target, similarity, alpha, reduction, ignore_index)

    ce = F.cross_entropy(h @ w.T, safe_target, reduction="none")
    cosine_term = torch.zeros(h.shape[0], dtype=h.dtype, device=h.device)
    for i in range(w.shape[0]):
        cos_i = F.cosine_similarity(h, w[i].unsqueeze(0), dim=1, eps=COSINE_EPS)
        cosine_term = cosine_term + (cos_i - s[i, safe_target]) ** 2

    per_sample = (1.0 - alpha) * ce + alpha * cosine_term
    return _reduce(per_sample, valid, reduction)
