"""Fixed simplex-ETF classifier with plain cross-entropy (Yang et al., NeurIPS 2022, with CE instead of DR).

The last layer is the fixed ETF M = sqrt(K/(K−1))·P(I − 11ᵀ/K) (rows are class vectors, unit norm, pairwise
cosine −1/(K−1): the hierarchy-blind special case of HAFrame with S_ij = −1/(K−1)), built by
:func:`haf.frame.fixed_etf` with P seeded by ``context.seed``; z = h Mᵀ and L = CE(z, y), i.e. the HAFrame
loss with α = 0 through the same fused kernel. Any feature width D ≥ K − 1 works (the ETF spans K − 1 dims).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from haf.kernels import BACKENDS
from haf.methods.base import MethodContext, register_method
from haf.methods.haframe import FixedFrameMethod, _check_backend

__all__ = ["FixedETFCrossEntropy", "simplex_etf_frame"]


def simplex_etf_frame(method: str, context: MethodContext, in_features: int) -> np.ndarray:
    """The seeded simplex ETF (K × D, float64) of a fixed-ETF method, or an error naming the method and widths."""
    num_classes = context.num_classes
    if in_features < num_classes - 1:
        raise ValueError(
            f"{method}: a simplex ETF of K = {num_classes} classes needs features of width ≥ K − 1 = "
            f"{num_classes - 1}, but the head gives in_features = {in_features} (the type2 head's width is K)"
        )
    from haf.frame import fixed_etf  # numpy only; imported here to keep the registry's import light

    frame = np.asarray(fixed_etf(num_classes, in_features, seed=context.seed), dtype=np.float64)
    if frame.shape != (num_classes, in_features) or not np.isfinite(frame).all():
        raise ValueError(f"{method}: fixed_etf gave a {frame.shape} frame, expected K × D = "
                         f"{num_classes} × {in_features}, finite")
    return frame


@register_method("etf-ce")
class FixedETFCrossEntropy(FixedFrameMethod):
    """Fixed simplex ETF (a buffer) + cross-entropy."""

    @dataclass(frozen=True)
    class Options:
        backend: Literal[BACKENDS] = "auto"

        def __post_init__(self) -> None:
            _check_backend(self.backend)

    def __init__(self, in_features: int, context: MethodContext, options: Options | None = None) -> None:
        super().__init__(in_features, context, options)
        frame = simplex_etf_frame(self.name, context, in_features)
        self.install_frame(frame, frame @ frame.T)  # S = M Mᵀ: 1 on the diagonal, −1/(K−1) elsewhere
        self.loss_alpha = 0.0  # plain cross-entropy: the cosine term is off
        self.loss_backend = self.options.backend
