"""Helpers shared by the methods' reference losses (plain PyTorch).

Dtype policy (as ``haf.losses``): inputs in bf16/fp16/fp32 are computed and returned in fp32, fp64 stays fp64
(the tests compare against fp64 autograd); half precision is never used for the arithmetic.
"""
from __future__ import annotations

import math

import torch

from haf.kernels.dense.reference import compute_dtype  # noqa: F401  (one owner of the dtype policy)


def check_batch(name: str, tensor: torch.Tensor, target: torch.Tensor) -> None:
    if tensor.dim() != 2:
        raise ValueError(f"{name} must be B × N, got shape {tuple(tensor.shape)}")
    if target.dim() != 1 or target.shape[0] != tensor.shape[0]:
        raise ValueError(f"target must have shape ({tensor.shape[0]},) to match {name}, got {tuple(target.shape)}")


# ----------------------------------------------------------------------------------------------------------------
# Probabilities of cosine classifiers
# ----------------------------------------------------------------------------------------------------------------


def normface_scale(num_classes: int, target_probability: float = 0.99) -> float:
    """Smallest softmax scale s at which a perfectly collapsed sample reaches ``target_probability``.

    A cosine classifier (HUG proxies, a fixed ETF) predicts by max cosine, with no temperature; CRM needs
    probabilities. With cos = 1 to its own class and −1/(K−1) to the K − 1 others (simplex collapse), softmax(s·cos)
    gives the true class p when s = (K−1)/K · log((K−1)·p/(1−p)) (Wang et al., NormFace, 2017, Prop. 2).
    """
    if num_classes < 2:
        raise ValueError(f"num_classes must be at least 2, got {num_classes}")
    if not 0.0 < target_probability < 1.0:
        raise ValueError(f"target_probability must lie in (0, 1), got {target_probability}")
    k = float(num_classes)
    return (k - 1.0) / k * math.log((k - 1.0) * target_probability / (1.0 - target_probability))
