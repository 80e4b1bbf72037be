"""Mixup for every method (Zhang et al., ICLR 2018), as the CIFAR-LT recipe applies it.

Per micro-batch: λ ~ Beta(α, α), a permutation π of the batch, x̃ = λ·x + (1 − λ)·x_π, one forward pass, and

    L = λ · L_method(out, y) + (1 − λ) · L_method(out, y_π)

so any method's loss is mixed without knowing about it (for dot regression ‖h‖ comes once from the mixed
features). λ and π come from a generator seeded by (seed, epoch, micro-step, rank) alone, not from the global
stream: a resumed run replays them exactly, whatever else drew random numbers before.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

MIXUP_STREAM = 1  # keeps the mixup stream apart from the data-order stream ([seed, epoch, 0])


@dataclass(frozen=True)
class MixedBatch:
    images: torch.Tensor  # λ·x + (1 − λ)·x_π
    targets: torch.Tensor  # y
    permuted_targets: torch.Tensor  # y_π
    lam: float  # λ


def mixup_generator(seed: int, epoch: int, step: int, rank: int) -> np.random.Generator:
    """The generator of one micro-batch's (λ, π): a function of (seed, epoch, step, rank) only."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, epoch, step, rank, MIXUP_STREAM])))


def mix_batch(images: torch.Tensor, targets: torch.Tensor, alpha: float, rng: np.random.Generator) -> MixedBatch:
    """λ ~ Beta(α, α) and π from ``rng``; the images are mixed in their own dtype and memory format."""
    if alpha <= 0:
        raise ValueError(f"mixup alpha must be > 0, got {alpha}")
    lam = float(rng.beta(alpha, alpha))
    perm = torch.from_numpy(rng.permutation(images.shape[0])).to(images.device)
    mixed = images * lam + images[perm] * (1.0 - lam)
    return MixedBatch(mixed, targets, targets[perm.to(targets.device)], lam)


def mixed_loss(loss: Callable[[object, torch.Tensor], torch.Tensor], outputs: object, batch: MixedBatch) -> torch.Tensor:
    """λ·loss(outputs, y) + (1 − λ)·loss(outputs, y_π) on the outputs of one forward pass."""
    return batch.lam * loss(outputs, batch.targets) + (1.0 - batch.lam) * loss(outputs, batch.permuted_targets)
