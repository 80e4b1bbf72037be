"""Neural-collapse diagnostics (Papyan et al., PNAS 2020; Liang & Davis, ICCV 2023, §5; docs/METHOD.md §7).

From the class means μ of the features: the mean and std over class pairs i < j of |cos(μ_i, μ_j) − S_ij| (raw
means for HAFrame, whose S has no centre; centred on the mean of class means for ETF / cross-entropy models,
whose target geometry is the simplex around that centre), and self-duality ‖W/‖W‖_F − M/‖M‖_F‖_F between the
classifier W and the class means M. :class:`ClassMeans` accumulates the means per batch, mergeable across ranks.
"""
from __future__ import annotations

import numpy as np
import torch

from haf.metrics.inputs import validate_batch

__all__ = ["ClassMeans", "class_means", "neural_collapse_metrics", "self_duality"]

#: Floor for vector norms in cosines and in self-duality: a zero class mean gives cosine 0, not 0/0.
_NORM_EPS = 1e-12


def class_means(features: torch.Tensor, targets: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-class feature means (K × D, fp32/fp64) and counts (K int64); a class without samples has mean 0."""
    accumulator = ClassMeans(num_classes, features.shape[-1])
    accumulator.update(features, targets)
    return accumulator.compute()


class ClassMeans:
    """Streaming per-class feature sums and counts (mergeable like :class:`HierarchicalMetrics`)."""

    def __init__(self, num_classes: int, dim: int):
        self.num_classes, self.dim = int(num_classes), int(dim)
        self.sums = torch.zeros(self.num_classes, self.dim, dtype=torch.float64)
        self.counts = torch.zeros(self.num_classes, dtype=torch.int64)

    @torch.no_grad()
    def update(self, features: torch.Tensor, targets: torch.Tensor) -> None:
        if features.dim() != 2 or features.shape[1] != self.dim:
            raise ValueError(f"features must be B × D with D = {self.dim}, got shape {tuple(features.shape)}")
        validate_batch(features.new_zeros(features.shape[0], self.num_classes), targets, self.num_classes)
        if self.sums.device != features.device:
            self.sums, self.counts = self.sums.to(features.device), self.counts.to(features.device)
        targets = targets.to(device=features.device, dtype=torch.long)
        self.sums.index_add_(0, targets, features.to(torch.float64))
        self.counts += torch.bincount(targets, minlength=self.num_classes)

    def merge(self, other: "ClassMeans") -> "ClassMeans":
        if (other.num_classes, other.dim) != (self.num_classes, self.dim):
            raise ValueError(f"cannot merge class means of shape {(other.num_classes, other.dim)} into "
                             f"{(self.num_classes, self.dim)}")
        self.sums += other.sums.to(self.sums.device)
        self.counts += other.counts.to(self.counts.device)
        return self

    def compute(self) -> tuple[torch.Tensor, torch.Tensor]:
        means = self.sums / self.counts.clamp_min(1)[:, None].to(torch.float64)
        return means, self.counts.clone()


def neural_collapse_metrics(
    means: torch.Tensor, similarity, centred: bool = False, counts: torch.Tensor | None = None
) -> dict[str, float]:
    """``{"nc_mean", "nc_std"}``: mean and (population) std over pairs i < j of |cos(μ_i, μ_j) − S_ij|.

    Args:
        means: class means μ, K × D (e.g. from :func:`class_means`).
        similarity: the target cosines S (K × K): the HAFrame's S, or −1/(K−1) off the diagonal for an ETF.
        centred: subtract the mean of the class means first (ETF / cross-entropy); False for HAFrame.
        counts: per-class sample counts; classes with 0 samples are left out of the pairs.
    """
    if means.dim() != 2:
        raise ValueError(f"means must be K × D, got shape {tuple(means.shape)}")
    k = means.shape[0]
    s = torch.as_tensor(np.asarray(similarity) if not isinstance(similarity, torch.Tensor) else similarity)
    if s.shape != (k, k):
        raise ValueError(f"similarity must be K × K with K = {k} (class means), got shape {tuple(s.shape)}")
    mu = means.detach().to(torch.float64)
    s = s.detach().to(device=mu.device, dtype=torch.float64)
    present = torch.ones(k, dtype=torch.bool, device=mu.device) if counts is None else counts.to(mu.device) > 0
    if int(present.sum()) < 2:
        raise ValueError(f"neural-collapse diagnostics need at least 2 classes with samples, got {int(present.sum())}")
    mu, s = mu[present], s[present][:, present]
    if not bool(torch.isfinite(mu).all()):
        raise ValueError("class means contain NaN or inf")
    if centred:
        mu = mu - mu.mean(dim=0, keepdim=True)
    unit = mu / torch.linalg.vector_norm(mu, dim=1, keepdim=True).clamp_min(_NORM_EPS)
    gaps = (unit @ unit.T - s).abs()
    i, j = torch.triu_indices(mu.shape[0], mu.shape[0], offset=1, device=mu.device)
    pair_gaps = gaps[i, j]
    return {"nc_mean": float(pair_gaps.mean()), "nc_std": float(pair_gaps.std(correction=0))}


def self_duality(frame: torch.Tensor, means: torch.Tensor) -> float:
    """‖W/‖W‖_F − M/‖M‖_F‖_F: 0 when the class means are a scaled copy of the classifier (NC3), at most 2."""
    w = torch.as_tensor(frame).detach().to(torch.float64)
    m = torch.as_tensor(means).detach().to(device=w.device, dtype=torch.float64)
    if w.shape != m.shape or w.dim() != 2:
        raise ValueError(f"frame and means must both be K × D of the same shape, got {tuple(w.shape)} and "
                         f"{tuple(m.shape)}")
    w_unit = w / torch.linalg.matrix_norm(w).clamp_min(_NORM_EPS)
    m_unit = m / torch.linalg.matrix_norm(m).clamp_min(_NORM_EPS)
    return float(torch.linalg.matrix_norm(w_unit - m_unit))
