"""HAFeature (Garg et al., ECCV 2022, "Learning hierarchy aware features for reducing mistake severity").

One learnable classifier per level, coarse → fine, all on the same feature h, with row-normalised weights:
z_l = h ŵ_lᵀ + b_l. The loss (:func:`haf.method_losses.hafeature_loss`):

    L = CE(z_fine, y)                                              finest level only
      + w_jsd · Σ_l JSD(p̂_{l−1}, p_{l−1})                          p̂: level-l probabilities summed to parents
      − w_wc  · Σ_l mean_c cos(ŵ_c, normalize(Σ_{j child of c} ŵ_j))  classifier-weight consistency
      + w_dis · Σ_{intermediate l} hinge_m(dissimilar pairs of level l)

The weights (all 1) and margin m = 3 are those of the implementation the HAFrame paper compares with, as are the
levels each term covers: JSD and weight consistency on every adjacent pair of levels, the dissimilarity hinge on
``hinge_levels`` (1-based, l1 = the coarsest level below the root, lL = the leaves; default l2 … l(L−1); the
reference uses l1–l4 on CIFAR-100 and l5–l11 on tieredImageNet-H, set in those configs). Dissimilar pairs are neighbours in a random permutation
of the batch with different labels at that level (drawn from torch's global RNG, which the training loop seeds).
Levels come from ``context.level_labels`` (``haf/methods/_levels.py``). Prediction, scores and the probabilities
CRM decodes are those of the finest level.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from haf.method_losses import hafeature_loss
from haf.methods._levels import class_levels
from haf.methods.base import Method, MethodContext, register_method

__all__ = ["HAFeature"]


@register_method("hafeature")
class HAFeature(Method):
    """Per-level normalised classifiers on a shared feature; CE + JSD consistency − weight consistency + hinge."""

    # Trained with a log-likelihood of the (finest-level) softmax: a class posterior, so the evaluation also
    # reports CRM decoding (haf/eval_loop.py reads this flag).
    supports_crm = True

    @dataclass(frozen=True)
    class Options:
        jsd_weight: float = 1.0  # weight of the adjacent-level Jensen–Shannon consistency
        weight_consistency_weight: float = 1.0  # weight of the parent/children cosine (subtracted)
        dissimilarity_weight: float = 1.0  # weight of the dissimilar-pair hinge
        dissimilarity_margin: float = 3.0  # hinge margin m on KL(p ‖ mixture) (≤ log 2, so always active)
        # Levels of the hinge, 1-based coarse → fine (l1 … lL, lL = leaves); null: the intermediate l2 … l(L−1).
        hinge_levels: list[int] | None = None

        def __post_init__(self) -> None:
            for key in ("jsd_weight", "weight_consistency_weight", "dissimilarity_weight", "dissimilarity_margin"):
                value = getattr(self, key)
                if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                    raise ValueError(f"{key} must be a non-negative number, got {value!r}")
            if self.hinge_levels is not None:
                levels = tuple(self.hinge_levels)
                if not levels or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in levels):
                    raise ValueError(f"hinge_levels must be a non-empty list of level numbers >= 1, got {levels!r}")
                if len(set(levels)) != len(levels):
                    raise ValueError(f"hinge_levels lists a level twice: {levels!r}")
                object.__setattr__(self, "hinge_levels", list(levels))

    assignments: torch.Tensor

    def __init__(self, in_features: int, context: MethodContext, options: Options | None = None) -> None:
        super().__init__(in_features, context, options)
        levels = class_levels(context.level_labels, context.num_classes, "hafeature", context.classes)
        self.num_levels = levels.num_levels
        hinge = self.options.hinge_levels
        if hinge is not None and max(hinge) > self.num_levels:
            raise ValueError(f"hafeature: hinge_levels {list(hinge)} name level {max(hinge)}, but the hierarchy has "
                             f"{self.num_levels} levels (l1 … l{self.num_levels})")
        self.hinge_indices = None if hinge is None else tuple(level - 1 for level in hinge)
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
            hinge_levels=self.hinge_indices,
        )

    def scores(self, outputs: tuple[torch.Tensor, ...]) -> torch.Tensor:
        return outputs[-1]
