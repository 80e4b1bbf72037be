"""Flamingo (Chang et al., CVPR 2021, "Your 'Flamingo' is my 'Bird': fine-grained, or not").

The head's feature h (B × D) is split into one chunk per level, coarse → fine: ⌊D/L⌋ columns each, the finest
chunk taking the remainder, as the implementation the HAFrame paper compares with does for its ResNet-50 and
type-II heads, or the explicit widths of ``chunk_widths`` (its WRN-28-8 type-I model hard-codes 102×3 + 103×2 of
the 512-d feature). The level-l classifier, a
learnable ``nn.Linear``, sees its own chunk and all finer chunks with stopped gradients:

    z_l = A_l [h_l, sg(h_{l+1}), …, sg(h_{L−1})] + b_l,        L = Σ_l CE(z_l, y_l)

so the finest chunk is trained by the finest labels only, and coarse labels shape only their own chunks while
still reading the fine evidence (:func:`haf.methods.flamingo.flamingo_level_inputs`, :func:`flamingo_loss`).
Levels come from ``context.level_labels`` (``haf/methods/_levels.py``; the finest level is the leaf classes).
Prediction, scores and the probabilities CRM decodes are those of the finest level.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from haf.methods._loss_common import compute_dtype
from haf.methods._levels import class_levels
from haf.methods.base import Method, MethodContext, register_method

__all__ = ["Flamingo"]


@register_method("flamingo")
class Flamingo(Method):
    """One classifier per level on nested feature chunks with stop-gradients; sum of per-level CE."""

    # Trained with a log-likelihood of the (finest-level) softmax: a class posterior, so the evaluation also
    # reports CRM decoding (haf/training/evaluation.py reads this flag).
    supports_crm = True

    @dataclass(frozen=True)
    class Options:
        # Widths of the per-level chunks, coarse → fine (must sum to D, one per level); null: ⌊D/L⌋ each, the
        # finest taking the remainder. The loss has no hyperparameters (equal-weight sum of the per-level CEs).
        chunk_widths: list[int] | None = None

        def __post_init__(self) -> None:
            widths = self.chunk_widths
            if widths is not None and (not isinstance(widths, (list, tuple)) or not widths
                                       or not all(isinstance(w, int) and not isinstance(w, bool) and w >= 1
                                                  for w in widths)):
                raise ValueError(f"chunk_widths must be a list of positive ints or null, got {widths!r}")

    assignments: torch.Tensor

    def __init__(self, in_features: int, context: MethodContext, options: Options | None = None) -> None:
        super().__init__(in_features, context, options)
        levels = class_levels(context.level_labels, context.num_classes, "flamingo", context.classes)
        self.num_levels = levels.num_levels
        if in_features < self.num_levels:
            raise ValueError(
                f"flamingo: the {in_features}-d feature cannot be split into one chunk per level "
                f"({self.num_levels} levels)"
            )
        self.chunk_widths = None if self.options.chunk_widths is None else tuple(self.options.chunk_widths)
        bounds = flamingo_chunk_bounds(in_features, self.num_levels, self.chunk_widths)
        self.classifiers = nn.ModuleList(
            nn.Linear(in_features - start, size) for (start, _), size in zip(bounds, levels.sizes)
        )
        self.register_buffer("assignments", torch.from_numpy(np.stack(levels.assignments)), persistent=False)

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Per-level logits, coarse → fine; the last are the K class logits."""
        inputs = flamingo_level_inputs(features, self.num_levels, self.chunk_widths)
        return tuple(classifier(x) for classifier, x in zip(self.classifiers, inputs))

    def loss(self, outputs: tuple[torch.Tensor, ...], targets: torch.Tensor) -> torch.Tensor:
        return flamingo_loss(outputs, [assignment[targets] for assignment in self.assignments])

    def scores(self, outputs: tuple[torch.Tensor, ...]) -> torch.Tensor:
        return outputs[-1]


# ----------------------------------------------------------------------------------------------------------------
# Flamingo (Chang et al., CVPR 2021)
# ----------------------------------------------------------------------------------------------------------------


def flamingo_chunk_bounds(dim: int, num_levels: int,
                          widths: Sequence[int] | None = None) -> list[tuple[int, int]]:
    """Column ranges of the per-level feature chunks, coarse → fine.

    As the reference: chunks of ⌊D/L⌋ columns, the finest chunk takes the remainder (D = 600, L = 7: six chunks
    of 85 and a last one of 90; D = 100, L = 5: five of 20), or the given ``widths`` (WRN-28-8 type-I: D = 512,
    L = 5, widths 102, 102, 102, 103, 103).
    """
    if num_levels < 1 or dim < num_levels:
        raise ValueError(f"Flamingo splits the {dim}-d feature into {num_levels} chunks: needs D ≥ L ≥ 1")
    if widths is not None:
        if len(widths) != num_levels or sum(widths) != dim or min(widths) < 1:
            raise ValueError(f"flamingo chunk_widths {list(widths)} must be {num_levels} positive widths (one per "
                             f"level) summing to the feature width {dim}")
        starts = np.cumsum([0, *widths])
        return [(int(starts[i]), int(starts[i + 1])) for i in range(num_levels)]
    size = dim // num_levels
    return [(level * size, (level + 1) * size if level < num_levels - 1 else dim) for level in range(num_levels)]


def flamingo_level_inputs(features: torch.Tensor, num_levels: int,
                          widths: Sequence[int] | None = None) -> list[torch.Tensor]:
    """Input of the level-l classifier: [chunk_l, sg(chunk_{l+1}), …, sg(chunk_{L−1})], coarse → fine.

    The coarse classifiers see the finer chunks but cannot train them (sg = stop-gradient): the finest chunk is
    shaped only by the finest labels, and each coarser chunk only by its own level's labels.
    """
    if features.dim() != 2:
        raise ValueError(f"features must be B × D, got shape {tuple(features.shape)}")
    bounds = flamingo_chunk_bounds(features.shape[1], num_levels, widths)
    inputs = []
    for level, (start, end) in enumerate(bounds):
        finer_start = bounds[level + 1][0] if level + 1 < num_levels else features.shape[1]
        own = features[:, start:end]
        if finer_start < features.shape[1]:
            own = torch.cat([own, features[:, finer_start:].detach()], dim=1)
        inputs.append(own)
    return inputs


def flamingo_loss(level_logits: Sequence[torch.Tensor], level_targets: Sequence[torch.Tensor]) -> torch.Tensor:
    """Σ_l CE(z_l, y_l): one cross-entropy per level, unweighted, as the reference sums them."""
    if len(level_logits) != len(level_targets) or not level_logits:
        raise ValueError(f"need one target per level: {len(level_logits)} logits, {len(level_targets)} targets")
    dtype = compute_dtype(*level_logits)
    return sum(F.cross_entropy(z.to(dtype), y) for z, y in zip(level_logits, level_targets))
