"""Hierarchical cross-entropy, HXE (Bertinetto et al., CVPR 2020, "Making better mistakes").

A learnable linear classifier over the K leaves; the probability of an inner node C is the sum of its leaves'
softmax probabilities, and the loss factorises the label's probability along its path leaf → root:

    L = −Σ_{edges C → parent(C) on the path of y} λ(C) · log p(C | parent(C)),   p(C | parent) = p(C) / p(parent)

(:func:`haf.method_losses.hierarchical_cross_entropy`, computed as masked logsumexps over the leaves: exact for
any probability). Levels come from ``context.level_labels`` (``haf/methods/_levels.py``).

Which exponent λ uses — checked against both sources, the choice is the ``weighting`` option:
* the paper prints λ(C) = exp(−α·h(C)) with h(C) the *height* of node C;
* the authors' code (``get_exponential_weighting``) uses exp(−α·len(position)), the node's *depth* below the
  root, so weights shrink towards the leaves and a larger α emphasises coarse decisions — the behaviour the
  paper describes and the code its numbers came from. ``"depth"`` is therefore the default; ``"height"`` gives
  the printed formula (fixed-scale height L − depth, equal to the subtree height on balanced trees).
The code also divides all weights by their sum over the whole tree (``normalize_weights``): a constant that the
authors' Adam optimiser ignores, off by default here because under SGD it would only shrink the step.

α: the authors ran α ∈ {0.1, …, 0.7, 0.9} (iNaturalist19) and {0.1, …, 0.6} (tieredImageNet-H); the issue asks
for their 0.1 and 0.5. 0.1 (closest to cross-entropy in top-1) is the default. Scores are the leaf logits,
probabilities the leaf softmax, which CRM decodes.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import nn

from haf.method_losses import hierarchical_ce_weights, hierarchical_cross_entropy
from haf.methods._levels import class_levels
from haf.methods._full_precision import FullPrecisionBuffersMethod
from haf.methods.base import MethodContext, register_method

__all__ = ["HierarchicalCrossEntropy"]


@register_method("hierarchical-ce")
class HierarchicalCrossEntropy(FullPrecisionBuffersMethod):
    """Learnable Linear(D, K) + hierarchical cross-entropy with exponentially decaying edge weights."""

    # Trained with a log-likelihood of the (finest-level) softmax: a class posterior, so the evaluation also
    # reports CRM decoding (haf/eval_loop.py reads this flag).
    supports_crm = True

    @dataclass(frozen=True)
    class Options:
        alpha: float = 0.1  # decay α of λ = exp(−α·depth); the paper's values include 0.1 and 0.5
        weighting: Literal["depth", "height"] = "depth"  # "depth": the authors' code; "height": paper's formula
        normalize_weights: bool = False  # the authors' code divides by the sum over all nodes (module doc)

        def __post_init__(self) -> None:
            if not (isinstance(self.alpha, (int, float)) and math.isfinite(self.alpha) and self.alpha >= 0):
                raise ValueError(f"alpha must be a non-negative number, got {self.alpha!r}")
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
        self.classifier = nn.Linear(in_features, context.num_classes)
        # Derived from the tree and the options, both in the config: rebuilt, not stored in checkpoints.
        self.register_buffer("assignments", torch.from_numpy(np.stack(levels.assignments)), persistent=False)
        self.register_buffer("edge_weights", torch.from_numpy(weights).float(), persistent=False)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.classifier(features)

    def classifier_weights(self) -> torch.Tensor:
        return self.classifier.weight  # the learnable Linear(D, K)

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return hierarchical_cross_entropy(outputs, targets, self.assignments, self.edge_weights)

    def scores(self, outputs: torch.Tensor) -> torch.Tensor:
        return outputs
