"""CRM decoding (Karthik et al., ICLR 2021; docs/METHOD.md §7): the Bayes decision under the hierarchical cost.

ŷ = argmin_j Σ_i p_i d(i, j) for class probabilities p; :func:`crm_scores` gives −Σ_i p_i d(i, j), so it ranks
like any other score in :mod:`haf.metrics`. With tree distances the expected distance is one pass of subtree sums
(docs/TREE_FRAME.md), no K × K array.
"""
from __future__ import annotations

import torch

from haf.metrics.inputs import as_distance_tensor, is_tree_distances

__all__ = ["crm_predict", "crm_scores"]


def _expected_distance(probs: torch.Tensor, distances) -> torch.Tensor:
    if probs.dim() != 2 or not probs.is_floating_point():
        raise ValueError(f"probs must be a floating-point B × K tensor, got {tuple(probs.shape)} {probs.dtype}")
    dtype = torch.float64 if probs.dtype == torch.float64 else torch.float32
    if is_tree_distances(distances):
        return as_distance_tensor(distances, probs.shape[1]).expected(probs)
    if isinstance(distances, torch.Tensor) and distances.device == probs.device and distances.dtype == dtype:
        d = distances  # the per-batch fast path (eval loops pass a ready tensor): no validation copy
        if d.dim() != 2 or d.shape != (probs.shape[1], probs.shape[1]):
            raise ValueError(f"distances must be K × K with K = {probs.shape[1]}, got {tuple(d.shape)}")
    else:
        d = as_distance_tensor(distances, probs.shape[1]).to(device=probs.device, dtype=dtype)
    # E[d(ŷ = j)] = Σ_i p_i d(i, j): one (B × K)·(K × K) product, in fp32 (fp64 for fp64 probs).
    return probs.to(dtype) @ d


def crm_scores(probs: torch.Tensor, distances) -> torch.Tensor:
    """−Σ_i p_i d(i, j) for every class j (B × K, higher is better): CRM as scores for the other metrics."""
    return -_expected_distance(probs, distances)


def crm_predict(probs: torch.Tensor, distances) -> torch.Tensor:
    """CRM decision argmin_j Σ_i p_i d(i, j) (B int64; ties to the lower class index)."""
    return torch.argmin(_expected_distance(probs, distances), dim=1)
