"""HUG: hyperspherical uniformity gap (Liu et al., ICLR 2023, "Generalizing and decoupling neural collapse via
hyperspherical uniformity gap"), the MHE variant, with learnable class proxies.

HUG replaces cross-entropy by two decoupled terms on the unit sphere:

    L = α · (1 / #pairs) Σ_{i<j} 1 / ‖ŵ_i − ŵ_j‖²                    inter-class: MHE of the proxies
      + β · mean_{c in batch} mean_{b: y_b = c} ‖x̂_b − sg(ŵ_c)‖      intra-class: features to their proxy

with ŵ, x̂ the L2-normalised proxies and features and sg the stop-gradient (the inter term moves only the
proxies, the intra term only the features). α = 0.15, β = 0.015: the paper's setting for MHE-HUG (and MHS-HUG).
Prediction is the nearest proxy: scores are cos(h, w_c). For CRM the probabilities are softmax(s · cos) with the
NormFace scale s at which a perfectly collapsed sample gets ``target_probability`` — the paper defines no
probabilities; this scale is our choice, explained in :func:`haf.methods._loss_common.normface_scale`. The evaluation
reports CRM decoding of them only with ``report_crm: true``: the loss fits no likelihood, so they are not a learnt
posterior.

Implemented: MHE-HUG (Riesz s = 2 energy between the proxies, Euclidean distance to the proxy inside a class),
one of the three variants whose α, β the paper states, with the authors' class-balanced intra-class mean.
Not implemented: the MHS (maximum hyperspherical separation) and MGD (maximum Gram determinant) variants.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from haf.methods._loss_common import check_batch, compute_dtype, normface_scale
from haf.methods.base import Method, MethodContext, register_method

__all__ = ["HUG"]


@register_method("hug")
class HUG(Method):
    """Learnable class proxies (K × D) trained with the MHE-HUG loss; prediction by maximum cosine."""

    @dataclass(frozen=True)
    class Options:
        inter_weight: float = 0.15  # α, weight of the proxies' hyperspherical energy (paper, MHE-HUG)
        intra_weight: float = 0.015  # β, weight of the features' distance to their proxy (paper, MHE-HUG)
        # Probability a perfectly collapsed sample gets under softmax(s·cos), for CRM decoding only.
        target_probability: float = 0.99
        # Also report CRM decoding of softmax(s·cos). Off: the loss fits no likelihood, so these probabilities
        # carry the scale chosen above rather than a learnt posterior; on, they are decoded like any other.
        report_crm: bool = False

        def __post_init__(self) -> None:
            for key in ("inter_weight", "intra_weight"):
                value = getattr(self, key)
                if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                    raise ValueError(f"{key} must be a non-negative number, got {value!r}")
            if self.inter_weight == 0 and self.intra_weight == 0:
                raise ValueError("inter_weight and intra_weight are both 0: the loss would be identically zero")
            if not (isinstance(self.target_probability, (int, float)) and 0.0 < self.target_probability < 1.0):
                raise ValueError(f"target_probability must lie in (0, 1), got {self.target_probability}")

    def __init__(self, in_features: int, context: MethodContext, options: Options | None = None) -> None:
        super().__init__(in_features, context, options)
        if context.num_classes < 2:
            raise ValueError(f"hug needs at least 2 classes, got {context.num_classes}")
        self.proxies = nn.Parameter(torch.empty(context.num_classes, in_features))
        # U(−1/√D, 1/√D): nn.Linear's default weight range, as the authors' proxies.
        bound = 1.0 / math.sqrt(in_features)
        nn.init.uniform_(self.proxies, -bound, bound)
        self.supports_crm = bool(self.options.report_crm)  # read by haf/training/evaluation.py
        self.probability_scale = normface_scale(context.num_classes, self.options.target_probability)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """The outputs are the features: both loss terms and the cosine scores work on their direction."""
        return features

    def classifier_weights(self) -> torch.Tensor:
        return self.proxies  # prediction is by maximum cosine to these class proxies

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return hug_loss(outputs, self.proxies, targets, self.options.inter_weight, self.options.intra_weight)

    def scores(self, outputs: torch.Tensor) -> torch.Tensor:
        """cos(h, w_c) in fp32: prediction by the nearest proxy."""
        with torch.autocast(device_type=outputs.device.type, enabled=False):
            return F.normalize(outputs.float(), dim=1) @ F.normalize(self.proxies.float(), dim=1).T

    def probabilities(self, outputs: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.probability_scale * self.scores(outputs), dim=1)


#: Floor of the squared distance between two normalised HUG proxies. The reference drops exactly coincident
#: pairs; clamping instead keeps the energy finite (≤ 1e6 per pair) with the same value for any pair that is
#: not (numerically) coincident: unit vectors of random init are ~√2 apart.
PROXY_DISTANCE_EPS = 1e-6


# ----------------------------------------------------------------------------------------------------------------
# HUG: hyperspherical uniformity gap, MHE variant (Liu et al., ICLR 2023)
# ----------------------------------------------------------------------------------------------------------------


def hyperspherical_energy(proxies: torch.Tensor) -> torch.Tensor:
    """Inter-class term: Riesz-2 energy of the normalised proxies, mean over pairs i < j of 1/‖ŵ_i − ŵ_j‖².

    Minimising it spreads the K proxies uniformly over the sphere (minimum hyperspherical energy, MHE).
    ‖ŵ_i − ŵ_j‖² = 2 − 2·ŵ_iᵀŵ_j (one K × K Gram matrix instead of K² difference vectors), floored at
    ``PROXY_DISTANCE_EPS``.
    """
    if proxies.dim() != 2 or proxies.shape[0] < 2:
        raise ValueError(f"proxies must be K × D with K ≥ 2, got shape {tuple(proxies.shape)}")
    unit = F.normalize(proxies.to(compute_dtype(proxies)), dim=1)
    squared = (2.0 - 2.0 * unit @ unit.T).clamp_min(PROXY_DISTANCE_EPS)
    rows, cols = torch.triu_indices(unit.shape[0], unit.shape[0], offset=1, device=unit.device)
    return squared[rows, cols].reciprocal().mean()


def hug_intra_class_distance(features: torch.Tensor, proxies: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Intra-class term: class-balanced mean distance ‖x̂_b − sg(ŵ_{y_b})‖ of normalised features to their proxy.

    For every class present in the batch, the mean distance of its samples; then the mean over those classes
    (the authors' HUG-MHE loop, vectorised). The proxy is detached (sg = stop-gradient): this term moves only the
    features, the inter-class term only the proxies.
    """
    check_batch("features", features, target)
    dtype = compute_dtype(features, proxies)
    unit_features = F.normalize(features.to(dtype), dim=1)
    unit_proxies = F.normalize(proxies.detach().to(dtype), dim=1)
    distance = torch.linalg.vector_norm(unit_features - unit_proxies[target], dim=1)
    counts = torch.bincount(target, minlength=proxies.shape[0]).to(dtype)
    num_present = (counts > 0).sum().to(dtype)
    return (distance / counts[target]).sum() / num_present


def hug_loss(
    features: torch.Tensor,
    proxies: torch.Tensor,
    target: torch.Tensor,
    inter_weight: float = 0.15,
    intra_weight: float = 0.015,
) -> torch.Tensor:
    """L = α · MHE(ŵ) + β · intra(x̂, sg(ŵ), y): ``inter_weight`` α, ``intra_weight`` β (paper: 0.15 and 0.015)."""
    return inter_weight * hyperspherical_energy(proxies) + intra_weight * hug_intra_class_distance(
        features, proxies, target
    )
