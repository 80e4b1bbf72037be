"""HAFeature (Garg et al., ECCV 2022, "Learning hierarchy aware features for reducing mistake severity").

One learnable classifier per level, coarse → fine, all on the same feature h, with row-normalised weights:
z_l = h ŵ_lᵀ + b_l. The loss (:func:`haf.methods.hafeature.hafeature_loss`):

    L = CE(z_fine, y)                                              finest level only
      + w_jsd · Σ_l JSD(p̂_{l−1}, p_{l−1})                          p̂: level-l probabilities summed to parents
      − w_wc  · Σ_l mean_c cos(ŵ_c, normalize(Σ_{j child of c} ŵ_j))  classifier-weight consistency
      + w_dis · Σ_{intermediate l} hinge_m(dissimilar pairs of level l)

The weights (all 1) and margin m = 3 are those of the implementation the HAFrame paper compares with, as are the
levels each term covers (JSD and weight consistency on every adjacent pair of levels, the dissimilarity hinge on
the levels strictly between the coarsest and the leaves). Dissimilar pairs are neighbours in a random permutation
of the batch with different labels at that level (drawn from torch's global RNG, which the training loop seeds).
Levels come from ``context.level_labels`` (``haf/methods/_levels.py``). Prediction, scores and the probabilities
CRM decodes are those of the finest level.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from haf.methods._loss_common import compute_dtype
from haf.methods._levels import class_levels
from haf.methods.base import Method, MethodContext, register_method

__all__ = ["HAFeature"]


@register_method("hafeature")
class HAFeature(Method):
    """Per-level normalised classifiers on a shared feature; CE + JSD consistency − weight consistency + hinge."""

    # Trained with a log-likelihood of the (finest-level) softmax: a class posterior, so the evaluation also
    # reports CRM decoding (haf/training/evaluation.py reads this flag).
    supports_crm = True

    @dataclass(frozen=True)
    class Options:
        jsd_weight: float = 1.0  # weight of the adjacent-level Jensen–Shannon consistency
        weight_consistency_weight: float = 1.0  # weight of the parent/children cosine (subtracted)
        dissimilarity_weight: float = 1.0  # weight of the dissimilar-pair hinge
        dissimilarity_margin: float = 3.0  # hinge margin m on KL(p ‖ mixture) (≤ log 2, so always active)

        def __post_init__(self) -> None:
            for key in ("jsd_weight", "weight_consistency_weight", "dissimilarity_weight", "dissimilarity_margin"):
                value = getattr(self, key)
                if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                    raise ValueError(f"{key} must be a non-negative number, got {value!r}")

    assignments: torch.Tensor

    def __init__(self, in_features: int, context: MethodContext, options: Options | None = None) -> None:
        super().__init__(in_features, context, options)
        levels = class_levels(context.level_labels, context.num_classes, "hafeature", context.classes)
        self.num_levels = levels.num_levels
        self.classifiers = nn.ModuleList(nn.Linear(in_features, size) for size in levels.sizes)
        self.register_buffer("assignments", torch.from_numpy(np.stack(levels.assignments)), persistent=False)
        for level, parent in enumerate(levels.parents):
            self.register_buffer(f"parent_{level}", torch.from_numpy(parent), persistent=False)

    def _parents(self) -> list[torch.Tensor]:
        return [getattr(self, f"parent_{level}") for level in range(self.num_levels)]

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Per-level logits h ŵ_lᵀ + b_l, coarse → fine; the last are the K class logits."""
        return tuple(F.linear(features, F.normalize(c.weight, dim=1), c.bias) for c in self.classifiers)

    def loss(self, outputs: tuple[torch.Tensor, ...], targets: torch.Tensor) -> torch.Tensor:
        options = self.options
        return hafeature_loss(
            outputs,
            [c.weight for c in self.classifiers],
            [assignment[targets] for assignment in self.assignments],
            self._parents(),
            jsd_weight=options.jsd_weight,
            weight_consistency_weight=options.weight_consistency_weight,
            dissimilarity_weight=options.dissimilarity_weight,
            margin=options.dissimilarity_margin,
        )

    def scores(self, outputs: tuple[torch.Tensor, ...]) -> torch.Tensor:
        return outputs[-1]


# ----------------------------------------------------------------------------------------------------------------
# HAFeature (Garg et al., ECCV 2022)
# ----------------------------------------------------------------------------------------------------------------


def coarsen_probabilities(probs: torch.Tensor, parent: torch.Tensor, num_parents: int | None = None) -> torch.Tensor:
    """p̂_c = Σ_{children j of c} p_j: the finer level's probabilities summed onto its parent level (B × n_parent)."""
    num_parents = int(parent.max()) + 1 if num_parents is None else num_parents
    out = probs.new_zeros(probs.shape[0], num_parents)
    return out.index_add(1, parent.to(probs.device), probs)


def _kl_to_mixture(p: torch.Tensor, log_m: torch.Tensor) -> torch.Tensor:
    """Σ_i p_i (log p_i − log m_i) per row; p_i = 0 contributes 0 (log p is floored at the dtype's tiny)."""
    tiny = torch.finfo(p.dtype).tiny
    return (p * (p.clamp_min(tiny).log() - log_m)).sum(dim=1)


def jensen_shannon_divergence(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """JSD(p, q) = ½ KL(p ‖ m) + ½ KL(q ‖ m), m = (p + q)/2, averaged over the batch (rows are distributions).

    The reference floors m at 1e-7 before the log; here only at the dtype's smallest normal number, which
    changes nothing but entries that are exactly zero in both p and q (and those contribute 0 either way).
    """
    if p.shape != q.shape or p.dim() != 2:
        raise ValueError(f"p and q must be B × N of one shape, got {tuple(p.shape)} and {tuple(q.shape)}")
    log_m = (0.5 * (p + q)).clamp_min(torch.finfo(p.dtype).tiny).log()
    return 0.5 * (_kl_to_mixture(p, log_m) + _kl_to_mixture(q, log_m)).mean()


def dissimilarity_hinge(probs: torch.Tensor, pairs: torch.Tensor, margin: float = 3.0) -> torch.Tensor:
    """½ mean_pairs max(0, m − KL(p_a ‖ mix)) + ½ mean_pairs max(0, m − KL(p_b ‖ mix)) over (a, b) in ``pairs``.

    Pushes apart the predictions of samples with different labels at this level. KL to the mixture is at most
    log 2, so with the reference's margin 3 the hinge is always active and the term equals 3 − mean JSD(p_a, p_b).
    An empty ``pairs`` (P = 0) gives 0.
    """
    if pairs.numel() == 0:
        return probs.sum() * 0.0
    p, q = probs[pairs[:, 0]], probs[pairs[:, 1]]
    log_m = (0.5 * (p + q)).clamp_min(torch.finfo(p.dtype).tiny).log()
    hinge_p = (margin - _kl_to_mixture(p, log_m)).clamp_min(0).mean()
    hinge_q = (margin - _kl_to_mixture(q, log_m)).clamp_min(0).mean()
    return 0.5 * (hinge_p + hinge_q)


def adjacent_dissimilar_pairs(labels: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """P × 2 index pairs: neighbours in a random permutation of the batch whose ``labels`` differ.

    The reference shuffles the batch and takes consecutive samples with different labels, repeating that list
    until it holds 256 pairs (which weights the pairs almost uniformly); here each such pair counts once. Every
    unordered pair of the batch is equally likely to be adjacent, so no pair of classes is favoured.
    """
    perm = torch.randperm(labels.shape[0], generator=generator, device="cpu").to(labels.device)
    first, second = perm[:-1], perm[1:]
    keep = labels[first] != labels[second]
    return torch.stack([first[keep], second[keep]], dim=1)


def weight_consistency(coarse_weight: torch.Tensor, fine_weight: torch.Tensor, parent: torch.Tensor) -> torch.Tensor:
    """mean over coarse nodes c of cos(ŵ_c, normalize(Σ_{children j of c} ŵ_j)), rows normalised first."""
    coarse = F.normalize(coarse_weight, dim=1)
    fine = F.normalize(fine_weight, dim=1)
    summed = fine.new_zeros(coarse.shape).index_add(0, parent.to(fine.device), fine)
    return F.cosine_similarity(coarse, F.normalize(summed, dim=1), dim=1, eps=1e-8).mean()


def hafeature_loss_terms(
    level_logits: Sequence[torch.Tensor],
    level_weights: Sequence[torch.Tensor],
    level_targets: Sequence[torch.Tensor],
    parents: Sequence[torch.Tensor],
    margin: float = 3.0,
    pairs: Sequence[torch.Tensor] | None = None,
    generator: torch.Generator | None = None,
) -> dict[str, torch.Tensor]:
    """The four HAFeature terms for levels coarse → fine (last = leaves); ``parents[l]`` maps level l to l − 1.

    * ``ce``: CE at the finest level only;
    * ``jsd``: Σ over adjacent levels of JSD(p̂_{l−1}, p_{l−1}), p̂ the level-l probabilities summed to parents;
    * ``weight_consistency``: Σ over adjacent levels of :func:`weight_consistency` (to be *maximised*);
    * ``dissimilarity``: Σ over the intermediate levels 1 … L−2 (not the coarsest, not the leaves, as the
      re-implementation the HAFrame paper compares with) of :func:`dissimilarity_hinge` on that level's
      probabilities, pairs from :func:`adjacent_dissimilar_pairs` of that level's labels unless given.
    """
    num_levels = len(level_logits)
    if not (len(level_weights) == len(level_targets) == len(parents) == num_levels):
        raise ValueError("level_logits, level_weights, level_targets and parents need one entry per level")
    dtype = compute_dtype(*level_logits)
    log_probs = [torch.log_softmax(z.to(dtype), dim=1) for z in level_logits]
    probs = [lp.exp() for lp in log_probs]
    zero = log_probs[-1].sum() * 0.0
    terms = {
        "ce": F.nll_loss(log_probs[-1], level_targets[-1]),
        "jsd": zero,
        "weight_consistency": zero,
        "dissimilarity": zero,
    }
    for level in range(1, num_levels):
        coarse_count = probs[level - 1].shape[1]
        coarsened = coarsen_probabilities(probs[level], parents[level], coarse_count)
        terms["jsd"] = terms["jsd"] + jensen_shannon_divergence(coarsened, probs[level - 1])
        terms["weight_consistency"] = terms["weight_consistency"] + weight_consistency(
            level_weights[level - 1].to(dtype), level_weights[level].to(dtype), parents[level]
        )
    for level in range(1, num_levels - 1):
        level_pairs = pairs[level] if pairs is not None else adjacent_dissimilar_pairs(level_targets[level], generator)
        terms["dissimilarity"] = terms["dissimilarity"] + dissimilarity_hinge(probs[level], level_pairs, margin)
    return terms


def hafeature_loss(
    level_logits: Sequence[torch.Tensor],
    level_weights: Sequence[torch.Tensor],
    level_targets: Sequence[torch.Tensor],
    parents: Sequence[torch.Tensor],
    jsd_weight: float = 1.0,
    weight_consistency_weight: float = 1.0,
    dissimilarity_weight: float = 1.0,
    margin: float = 3.0,
    pairs: Sequence[torch.Tensor] | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """L = CE_fine + w_jsd·Σ JSD − w_wc·Σ cos-consistency + w_dis·Σ hinge (all weights 1 in the reference)."""
    terms = hafeature_loss_terms(level_logits, level_weights, level_targets, parents, margin, pairs, generator)
    return (
        terms["ce"]
        + jsd_weight * terms["jsd"]
        - weight_consistency_weight * terms["weight_consistency"]
        + dissimilarity_weight * terms["dissimilarity"]
    )
