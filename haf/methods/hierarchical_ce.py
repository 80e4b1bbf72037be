"""Hierarchical cross-entropy, HXE (Bertinetto et al., CVPR 2020, "Making better mistakes"; docs/METHOD.md §8).

A learnable linear classifier over the K leaves; the probability of an inner node C is the sum of its leaves'
softmax probabilities, and the loss factorises the label's probability along its path leaf → root:

    L = −Σ_{edges C → parent(C) on the path of y} λ(C) · log p(C | parent(C)),   p(C | parent) = p(C) / p(parent)

(:func:`hierarchical_cross_entropy`, masked logsumexps over the leaves: exact for any probability). Levels come
from ``context.level_labels`` (``haf/methods/_levels.py``). λ(C) = exp(−α·depth(C)) as in the authors' code, or
the paper's printed exp(−α·height(C)): the ``weighting`` option, checked against both sources in
:func:`hierarchical_ce_weights`. α's published range and default: METHOD.md §8. Scores are the leaf logits,
probabilities the leaf softmax, which CRM decodes.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from haf.methods._loss_common import check_batch, compute_dtype
from haf.methods._levels import class_levels
from haf.methods._full_precision import FullPrecisionBuffersMethod
from haf.methods.base import MethodContext, register_method

__all__ = ["HierarchicalCrossEntropy"]


@register_method("hierarchical-ce")
class HierarchicalCrossEntropy(FullPrecisionBuffersMethod):
    """Learnable Linear(D, K) + hierarchical cross-entropy with exponentially decaying edge weights."""

    # Trained with a log-likelihood of the (finest-level) softmax: a class posterior, so the evaluation also
    # reports CRM decoding (haf/training/evaluation.py reads this flag).
    supports_crm = True

    @dataclass(frozen=True)
    class Options:
        alpha: float = 0.1  # decay α of λ = exp(−α·depth); published range: docs/METHOD.md §8
        weighting: Literal["depth", "height"] = "depth"  # "depth": the authors' code; "height": paper's formula
        normalize_weights: bool = False  # the authors' code divides by the sum over all nodes
        # Dropout probability on the features before the classifier (MBM's --dropout: 0.5 in its iNat2019 HXE runs,
        # nn.Dropout before the Linear of its ResNet-18 fc); 0: none.
        dropout: float = 0.0

        def __post_init__(self) -> None:
            if not (isinstance(self.alpha, (int, float)) and math.isfinite(self.alpha) and self.alpha >= 0):
                raise ValueError(f"alpha must be a non-negative number, got {self.alpha!r}")
            if not (isinstance(self.dropout, (int, float)) and 0.0 <= self.dropout < 1.0):
                raise ValueError(f"dropout must lie in [0, 1), got {self.dropout!r}")
            if self.weighting not in ("depth", "height"):
                raise ValueError(f"weighting must be one of depth, height, got {self.weighting!r}")

    assignments: torch.Tensor
    edge_weights: torch.Tensor
    full_precision_buffers = ("edge_weights",)

    def __init__(self, in_features: int, context: MethodContext, options: Options | None = None) -> None:
        super().__init__(in_features, context, options)
        levels = class_levels(context.level_labels, context.num_classes, "hierarchical-ce", context.classes)
        weights = hierarchical_ce_weights(
            levels.assignments, float(self.options.alpha), self.options.weighting, self.options.normalize_weights
        )
        self.dropout = nn.Dropout(float(self.options.dropout)) if self.options.dropout else nn.Identity()
        self.classifier = nn.Linear(in_features, context.num_classes)
        # Derived from the tree and the options, both in the config: rebuilt, not stored in checkpoints.
        self.register_buffer("assignments", torch.from_numpy(np.stack(levels.assignments)), persistent=False)
        self.register_buffer("edge_weights", torch.from_numpy(weights).float(), persistent=False)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(features))

    def classifier_weights(self) -> torch.Tensor:
        return self.classifier.weight  # the learnable Linear(D, K)

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return hierarchical_cross_entropy(outputs, targets, self.assignments, self.edge_weights)

    def scores(self, outputs: torch.Tensor) -> torch.Tensor:
        return outputs


# ----------------------------------------------------------------------------------------------------------------
# Hierarchical cross-entropy (Bertinetto et al., CVPR 2020)
# ----------------------------------------------------------------------------------------------------------------


def hierarchical_ce_weights(
    assignments: Sequence[np.ndarray],
    alpha: float,
    weighting: Literal["depth", "height"] = "depth",
    normalize: bool = False,
) -> np.ndarray:
    """K × L float64 edge weights λ for each leaf's path, levels coarse → fine (last level = the leaves).

    The edge into the level-l node (depth l + 1, root depth 0) gets
    * ``"depth"`` (default): λ = exp(−α·(l + 1)) — what the authors' code does (``get_exponential_weighting``:
      ``exp(-value * len(position))`` over nltk tree positions): weights shrink going *down* the tree, so larger
      α favours the coarse decisions — the behaviour the paper describes, and the code its numbers came from;
    * ``"height"``: λ = exp(−α·h(C)) with h(C) = L − (l + 1) — the formula as printed in the paper
      (λ(C) = exp(−α h(C)), h the height of C), using the fixed-scale height of the "fixed-depth" distance
      convention, which equals the subtree height on balanced trees.
    Edges whose child has the same leaves as its parent (single-child chains, or a shallow leaf repeated down
    the levels) have p(C | parent) = 1 and get weight 0, so they add exactly nothing.
    ``normalize``: divide by the sum of the weights of all nodes of the tree, root included, as the reference's
    default does (a constant factor: harmless with the reference's Adam, a 1/Z learning-rate cut under SGD, hence
    off by default here). Nodes
    are counted per level, so on an unbalanced tree a shallow leaf repeated down the levels counts once per level
    (the level table cannot tell a repeat from a single-child chain): the constant differs, nothing else does.
    """
    if not (math.isfinite(alpha) and alpha >= 0):
        raise ValueError(f"alpha must be a non-negative number, got {alpha}")
    if weighting not in ("depth", "height"):
        raise ValueError(f"weighting must be 'depth' or 'height', got {weighting!r}")
    levels = [np.asarray(a, dtype=np.int64) for a in assignments]
    num_levels, num_classes = len(levels), levels[-1].shape[0]
    depth = np.arange(1, num_levels + 1, dtype=np.float64)
    exponent = depth if weighting == "depth" else num_levels - depth
    per_level = np.exp(-alpha * exponent)
    weights = np.tile(per_level, (num_classes, 1))
    parent_size = np.full(num_classes, num_classes)  # the root holds every leaf
    for level, assignment in enumerate(levels):
        size = np.bincount(assignment)[assignment]  # leaves under each leaf's level-l node
        weights[size == parent_size, level] = 0.0
        parent_size = size
    if normalize:
        root_weight = 1.0 if weighting == "depth" else math.exp(-alpha * num_levels)
        nodes_per_level = np.array([int(a.max()) + 1 for a in levels], dtype=np.float64)
        weights /= root_weight + float((nodes_per_level * per_level).sum())
    return weights


def hierarchical_cross_entropy(
    logits: torch.Tensor, target: torch.Tensor, assignments: torch.Tensor, weights: torch.Tensor
) -> torch.Tensor:
    """HXE: −Σ_{l} λ_l(y) · log p(C_l(y) | C_{l−1}(y)), averaged over the batch.

    ``assignments`` (L × K, long): node id of every leaf at each level, coarse → fine, last row = arange(K);
    ``weights`` (K × L): λ per leaf and level (:func:`hierarchical_ce_weights`). The probability of a node is the
    sum of its leaves' softmax probabilities, computed in log space as a masked logsumexp over the leaves that
    share the target's node (exact, no underflow); p(C | parent) = p(C)/p(parent), and p(root) = 1.
    """
    check_batch("logits", logits, target)
    num_levels, num_classes = assignments.shape
    if num_classes != logits.shape[1] or weights.shape != (num_classes, num_levels):
        raise ValueError(
            f"assignments must be L × K and weights K × L with K = {logits.shape[1]}, "
            f"got {tuple(assignments.shape)} and {tuple(weights.shape)}"
        )
    dtype = compute_dtype(logits)
    log_p = torch.log_softmax(logits.to(dtype), dim=1)  # B × K
    assignments = assignments.to(logits.device)
    same_node = assignments[:, None, :] == assignments[:, target][:, :, None]  # L × B × K
    masked = torch.where(same_node, log_p.unsqueeze(0), torch.full_like(log_p, -math.inf).unsqueeze(0))
    log_p_node = torch.logsumexp(masked, dim=2).T  # B × L: log p of the target's ancestor at each level
    log_p_parent = F.pad(log_p_node[:, :-1], (1, 0))  # log p(root) = 0
    conditional = log_p_node - log_p_parent
    lam = weights.to(device=logits.device, dtype=dtype)[target]
    return -(lam * conditional).sum(dim=1).mean()
