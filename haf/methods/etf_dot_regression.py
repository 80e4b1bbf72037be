"""Fixed simplex ETF + dot-regression loss (Yang et al., NeurIPS 2022; docs/METHOD.md §3 and §8).

Last layer: the fixed ETF M (rows m_c of unit norm, pairwise cosine −1/(K−1); :func:`haf.frame.fixed_etf` seeded
by ``context.seed``), a persistent buffer: saved in checkpoints, never trained. The features pass the method's own
BatchNorm1d (the authors' ``BN_H``) and, in their CIFAR variant, L2 normalisation (``normalize_features``); then

    ℓ_b = ½ (h_bᵀ w_{y_b} − ‖w_{y_b}‖·‖h_b‖)² / ‖h_b‖,     ‖h‖, ‖w‖ detached,   w_c = m_c  or  E_w[c]·m_c

(:func:`dot_regression_loss`; E_w with ``class_rescaling``, on training steps only — the authors' validation
regresses onto the plain rows: :func:`batch_class_rescaling`). Prediction:
argmax_c h·m_c (= max cosine, the rows sharing one norm). The loss trains only the direction of h and fits no
likelihood, so CRM decodes softmax(s · cos(h, m_c)), s the NormFace scale of ``target_probability`` (our choice,
the paper gives no probabilities; :func:`haf.methods._loss_common.normface_scale`), and only with ``report_crm``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from haf.methods._loss_common import check_batch, compute_dtype, normface_scale
from haf.losses import REDUCTIONS
from haf.methods._full_precision import FullPrecisionBuffersMethod
from haf.methods.base import MethodContext, register_method
from haf.methods.etf_ce import simplex_etf_frame

__all__ = ["ETFDotRegression"]


@register_method("etf-dot-regression")
class ETFDotRegression(FullPrecisionBuffersMethod):
    """BatchNorm (+ optional L2 normalisation) → fixed simplex ETF, trained with the dot-regression loss."""

    @dataclass(frozen=True)
    class Options:
        # The authors normalise the BN'd features on CIFAR and not on ImageNet-scale data.
        normalize_features: bool = False
        # The authors' BN_H on the features before the ETF; off only for ablations.
        batch_norm: bool = True
        # Per-batch class lengths E_w on every training step (the authors' long-tailed setting: their train.py
        # applies produce_Ew to each batch); balanced data does not need them.
        class_rescaling: bool = False
        # Probability a perfectly collapsed sample gets under softmax(s·cos) for CRM decoding (see module doc).
        target_probability: float = 0.99
        # Also report CRM decoding of softmax(s·cos). Off: the loss fits no likelihood, so these probabilities
        # carry the scale chosen above rather than a learnt posterior; on, they are decoded like any other.
        report_crm: bool = False

        def __post_init__(self) -> None:
            if not (isinstance(self.target_probability, (int, float)) and 0.0 < self.target_probability < 1.0):
                raise ValueError(f"target_probability must lie in (0, 1), got {self.target_probability}")

    frame: torch.Tensor
    full_precision_buffers = ("frame",)

    def __init__(self, in_features: int, context: MethodContext, options: Options | None = None) -> None:
        super().__init__(in_features, context, options)
        num_classes = context.num_classes
        frame = simplex_etf_frame(self.name, context, in_features)
        self.register_buffer("frame", torch.from_numpy(frame).float(), persistent=True)
        self.batch_norm = nn.BatchNorm1d(in_features) if self.options.batch_norm else nn.Identity()
        self.supports_crm = bool(self.options.report_crm)  # read by haf/training/evaluation.py
        self.probability_scale = normface_scale(num_classes, self.options.target_probability)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """The outputs are the processed features h (the loss needs their norm and direction)."""
        h = self.batch_norm(features)
        return F.normalize(h, dim=1) if self.options.normalize_features else h

    def classifier_weights(self) -> torch.Tensor:
        return self.frame  # the fixed frame W is the classifier

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        vectors = self.frame
        if self.options.class_rescaling and self.training:  # training steps only, as the authors' train()
            vectors = vectors * batch_class_rescaling(targets, self.context.num_classes).to(vectors)[:, None]
        return dot_regression_loss(outputs, vectors, targets)

    def scores(self, outputs: torch.Tensor) -> torch.Tensor:
        """h Mᵀ in fp32 (the rows of M share one norm, so this ranks classes as the cosine does)."""
        with torch.autocast(device_type=outputs.device.type, enabled=False):
            return outputs.float() @ self.frame.float().T

    def probabilities(self, outputs: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=outputs.device.type, enabled=False):
            cosine = F.normalize(outputs.float(), dim=1) @ self.frame.float().T
            return torch.softmax(self.probability_scale * cosine, dim=1)


#: Floor of ‖h‖ in the dot-regression loss: the value the reference clamps the (detached) feature norm with,
#: so an all-zero feature gives the finite loss ½·(0 − ‖w‖ε)²/ε = ½‖w‖²ε instead of 0/0.
NORM_EPS = 1e-8


# ----------------------------------------------------------------------------------------------------------------
# Fixed ETF + dot regression (Yang et al., NeurIPS 2022)
# ----------------------------------------------------------------------------------------------------------------


def batch_class_rescaling(target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Per-batch class lengths E_w for imbalanced data (Yang et al., §"imbalanced learning").

    With B samples of n_u distinct classes in the batch and n_c samples of class c, E_w[c] = sqrt((B/n_u)/n_c) for
    classes in the batch and 1 for the others; the ETF rows are used as E_w[c]·m_c, which weights each sample of
    the dot-regression loss by (B/n_u)/n_c: every present class carries the same total weight.
    """
    counts = torch.bincount(target, minlength=num_classes).to(torch.float32)
    present = counts > 0
    mean_count = target.shape[0] / present.sum().clamp_min(1).to(torch.float32)
    return torch.where(present, (mean_count / counts.clamp_min(1)).sqrt(), torch.ones_like(counts))


def dot_regression_loss(
    features: torch.Tensor,
    class_vectors: torch.Tensor,
    target: torch.Tensor,
    reduction: Literal[REDUCTIONS] = "mean",
) -> torch.Tensor:
    """Dot-regression loss: ½ · mean_b (h_bᵀ w_{y_b} − ‖w_{y_b}‖·‖h_b‖)² / ‖h_b‖, with ‖h‖ and ‖w‖ detached.

    ``features`` h (B × D) are the BN'd (and, in the CIFAR variant, L2-normalised) features; ``class_vectors``
    (K × D) the fixed ETF rows, optionally rescaled per batch (:func:`batch_class_rescaling`). Only the dot
    product carries gradient: ∂ℓ_b/∂h_b = (h_bᵀw_y − ‖w_y‖‖h_b‖)/‖h_b‖ · w_y, which pulls h_b towards the
    direction of w_y and vanishes once cos(h_b, w_y) = 1, whatever ‖h_b‖ is.
    """
    check_batch("features", features, target)
    if class_vectors.dim() != 2 or class_vectors.shape[1] != features.shape[1]:
        raise ValueError(
            f"class_vectors must be K × D with D = {features.shape[1]}, got shape {tuple(class_vectors.shape)}"
        )
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of mean, sum, none, got {reduction!r}")
    dtype = compute_dtype(features, class_vectors)
    h = features.to(dtype)
    w_y = class_vectors.to(dtype)[target]
    dot = (h * w_y).sum(dim=1)
    with torch.no_grad():
        h_norm = torch.linalg.vector_norm(h, dim=1).clamp_min(NORM_EPS)
        w_norm = torch.linalg.vector_norm(w_y, dim=1)
    per_sample = 0.5 * (dot - w_norm * h_norm).square() / h_norm
    if reduction == "none":
        return per_sample
    return per_sample.sum() if reduction == "sum" else per_sample.mean()
