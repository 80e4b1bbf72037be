"""Soft labels (Bertinetto et al., CVPR 2020, "Making better mistakes: leveraging class hierarchies with deep
networks").

A learnable linear classifier (``nn.Linear(D, K)``, as the cross-entropy baseline) trained towards soft targets
that spread the label's mass over its hierarchical neighbours:

    q_i(y) = exp(−β · d(i, y)/d_max) / Σ_j exp(−β · d(j, y)/d_max),     L = mean_b KL(q(y_b) ‖ softmax(z_b))

(:func:`haf.methods.soft_labels.soft_label_targets`, :func:`haf.methods.soft_labels.soft_label_loss`). The K × K target
matrix is a buffer built from ``context.distances`` (whatever distance convention the dataset config chose).
Scores are the logits; probabilities their softmax (the default), which CRM decodes.

β: the authors swept β ∈ {4, 5, 10, 15, 20, 30} on iNaturalist19 and tieredImageNet-H (their experiment
scripts); small β trades top-1 for milder mistakes, β = 30 is the end of that sweep closest to cross-entropy
in top-1 and is the default here. The reference reduces the KL with ``nn.KLDivLoss()``'s element-wise mean
(÷ K) under Adam, which ignores constant loss scales; under this project's SGD recipe the loss is the KL itself.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from haf.methods._loss_common import check_batch, compute_dtype
from haf.methods._full_precision import FullPrecisionBuffersMethod
from haf.methods.base import MethodContext, register_method

__all__ = ["SoftLabels"]


@register_method("soft-labels")
class SoftLabels(FullPrecisionBuffersMethod):
    """Learnable Linear(D, K) + KL divergence to hierarchy-derived soft targets."""

    # Trained with a log-likelihood of the (finest-level) softmax: a class posterior, so the evaluation also
    # reports CRM decoding (haf/training/evaluation.py reads this flag).
    supports_crm = True

    @dataclass(frozen=True)
    class Options:
        beta: float = 30.0  # hardness β of the soft targets; see the module docstring for the published sweep

        def __post_init__(self) -> None:
            if not (isinstance(self.beta, (int, float)) and math.isfinite(self.beta) and self.beta >= 0):
                raise ValueError(f"beta must be a non-negative number, got {self.beta!r}")

    soft_targets: torch.Tensor
    full_precision_buffers = ("soft_targets",)

    def __init__(self, in_features: int, context: MethodContext, options: Options | None = None) -> None:
        super().__init__(in_features, context, options)
        distances = np.asarray(context.distances)
        if distances.shape != (context.num_classes, context.num_classes):
            raise ValueError(
                f"soft-labels: context.distances must be K × K = {context.num_classes} × {context.num_classes}, "
                f"got shape {distances.shape}"
            )
        self.classifier = nn.Linear(in_features, context.num_classes)
        targets = soft_label_targets(distances, float(self.options.beta)).float()
        # Derived from the distances and β, both in the config: rebuilt, not stored in checkpoints.
        self.register_buffer("soft_targets", targets, persistent=False)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.classifier(features)

    def classifier_weights(self) -> torch.Tensor:
        return self.classifier.weight  # the learnable Linear(D, K)

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return soft_label_loss(outputs, targets, self.soft_targets)

    def scores(self, outputs: torch.Tensor) -> torch.Tensor:
        return outputs


# ----------------------------------------------------------------------------------------------------------------
# Soft labels (Bertinetto et al., CVPR 2020)
# ----------------------------------------------------------------------------------------------------------------


def soft_label_targets(distances: np.ndarray | torch.Tensor, beta: float) -> torch.Tensor:
    """K × K float64 matrix whose row y is the soft target of label y: q_i(y) ∝ exp(−β · d(i, y) / d_max).

    d_max is the largest distance in the matrix (the reference normalises the distances by it, so β means the
    same on trees of any height). Larger β → closer to one-hot.
    """
    d = torch.as_tensor(np.asarray(distances), dtype=torch.float64)
    if d.dim() != 2 or d.shape[0] != d.shape[1]:
        raise ValueError(f"distances must be a square K × K matrix, got shape {tuple(d.shape)}")
    if not bool(torch.isfinite(d).all()) or bool((d < 0).any()):
        raise ValueError("distances must be finite and non-negative")
    d_max = float(d.max())
    if d_max <= 0:
        raise ValueError("distances are all zero: soft labels need at least two classes at positive distance")
    if not (math.isfinite(beta) and beta >= 0):
        raise ValueError(f"beta must be a non-negative number, got {beta}")
    return torch.softmax(-beta * d / d_max, dim=1)


def soft_label_loss(logits: torch.Tensor, target: torch.Tensor, soft_targets: torch.Tensor) -> torch.Tensor:
    """KL(q(y) ‖ softmax(z)) = Σ_i q_i (log q_i − log p_i), summed over classes and averaged over the batch.

    Same gradient as the soft cross-entropy −Σ q_i log p_i (they differ by the constant entropy of q). The
    reference calls ``nn.KLDivLoss()`` with its default element-wise mean, i.e. this divided by K — a constant
    factor that the reference's Adam optimiser ignores but SGD would not; the batch mean is the KL itself.
    """
    check_batch("logits", logits, target)
    if soft_targets.shape != (logits.shape[1], logits.shape[1]):
        raise ValueError(f"soft_targets must be K × K with K = {logits.shape[1]}, got {tuple(soft_targets.shape)}")
    dtype = compute_dtype(logits)
    log_p = torch.log_softmax(logits.to(dtype), dim=1)
    q = soft_targets.to(device=logits.device, dtype=dtype)[target]
    return (torch.special.xlogy(q, q) - q * log_p).sum(dim=1).mean()
