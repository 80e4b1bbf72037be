"""Cross-entropy baseline: a learnable linear classifier on the head's features.

z = h Aᵀ + b (``nn.Linear(D, K)`` with bias, initialised as torchvision initialises ``fc``);
L = CE(z, y) with optional label smoothing ε: the target distribution is (1 − ε)·onehot(y) + ε/K.
Scores are the logits; CRM decoding (Karthik et al., ICLR 2021) works on their softmax. ``frozen_classifier``
keeps A and b at their random initialisation (never trained): the baseline the CIFAR-LT code of Yang et al.
actually runs, where the paper describes a learnable one (the default here). ``classifier_init: kaiming-normal``
draws A from N(0, 2/D) as their code does (b keeps ``nn.Linear``'s uniform init); ``default`` keeps ``nn.Linear``'s.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from haf.methods.base import Method, MethodContext, register_method

__all__ = ["CrossEntropy"]


@register_method("cross-entropy")
class CrossEntropy(Method):
    """Learnable Linear(D, K) + (label-smoothed) cross-entropy."""

    supports_crm = True  # softmax of a CE-trained linear layer is the posterior CRM decodes (Karthik et al., 2021)

    @dataclass(frozen=True)
    class Options:
        label_smoothing: float = 0.0  # ε in [0, 1); 0 is the paper's baseline
        frozen_classifier: bool = False  # keep the random Linear(D, K) fixed (weight and bias not trained)
        # The weight's initialisation: nn.Linear's ("default"), or kaiming_normal_ (fan-in, gain √2: the CIFAR-LT
        # code of Yang et al.)
        classifier_init: Literal["default", "kaiming-normal"] = "default"

        def __post_init__(self) -> None:
            if not 0.0 <= self.label_smoothing < 1.0:
                raise ValueError(f"label_smoothing must lie in [0, 1), got {self.label_smoothing}")
            if self.classifier_init not in ("default", "kaiming-normal"):
                raise ValueError(f"classifier_init must be one of default, kaiming-normal, got {self.classifier_init!r}")

    def __init__(self, in_features: int, context: MethodContext, options: Options | None = None) -> None:
        super().__init__(in_features, context, options)
        self.classifier = nn.Linear(in_features, context.num_classes)
        if self.options.classifier_init == "kaiming-normal":
            nn.init.kaiming_normal_(self.classifier.weight)
        self.classifier.requires_grad_(not self.options.frozen_classifier)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.classifier(features)

    def classifier_weights(self) -> torch.Tensor:
        return self.classifier.weight  # the learnable Linear(D, K)

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        # Logits may be bf16 under autocast: the log-softmax is accumulated in fp32.
        return F.cross_entropy(outputs.float(), targets, label_smoothing=self.options.label_smoothing)

    def scores(self, outputs: torch.Tensor) -> torch.Tensor:
        return outputs
