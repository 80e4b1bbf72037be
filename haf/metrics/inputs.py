"""Input checks shared by the metrics: the class distances (K × K or off the tree), ks, a batch of scores."""
from __future__ import annotations

from typing import Iterable

import numpy as np
import torch

__all__ = ["as_distance_tensor", "as_distances", "is_tree_distances", "normalise_ks", "validate_batch"]


def is_tree_distances(distances) -> bool:
    from haf.hierarchy.tree_distances import TreeDistances

    return isinstance(distances, TreeDistances)


def as_distance_tensor(distances, num_classes: int | None = None):
    """A float64 K × K tensor, or the TreeDistances itself (checked against ``num_classes``)."""
    if is_tree_distances(distances):
        if num_classes is not None and distances.num_classes != num_classes:
            raise ValueError(f"distances are over {distances.num_classes} classes but the scores have K = "
                             f"{num_classes} columns")
        return distances
    d = torch.as_tensor(np.asarray(distances) if not isinstance(distances, torch.Tensor) else distances)
    if d.dim() != 2 or d.shape[0] != d.shape[1]:
        raise ValueError(f"distances must be a square K × K matrix, got shape {tuple(d.shape)}")
    if num_classes is not None and d.shape[0] != num_classes:
        raise ValueError(f"distances are {d.shape[0]} × {d.shape[0]} but the scores have K = {num_classes} columns")
    d = d.to(torch.float64)
    bad = ~torch.isfinite(d)
    if bool(bad.any()):
        i, j = (int(v) for v in torch.nonzero(bad)[0])
        raise ValueError(f"distances[{i}, {j}] = {float(d[i, j])} is not finite")
    return d


def as_distances(distances):
    """``distances`` as the metrics hold them: a K × K tensor (as given, no copy), or the TreeDistances."""
    if is_tree_distances(distances) or isinstance(distances, torch.Tensor):
        return distances
    return torch.as_tensor(np.asarray(distances))


def normalise_ks(ks: Iterable[int]) -> tuple[int, ...]:
    result: list[int] = []
    for k in ks:
        if isinstance(k, bool) or int(k) != k or int(k) < 1:
            raise ValueError(f"every k in ks must be a positive integer, got {k!r}")
        if int(k) not in result:
            result.append(int(k))
    if not result:
        raise ValueError("ks must name at least one k (e.g. (1, 5, 20))")
    return tuple(result)


def validate_batch(scores: torch.Tensor, targets: torch.Tensor, num_classes: int) -> None:
    if scores.dim() != 2 or scores.shape[1] != num_classes:
        raise ValueError(f"scores must be B × K with K = {num_classes}, got shape {tuple(scores.shape)}")
    if not scores.is_floating_point():
        raise ValueError(f"scores must be floating point, got dtype {scores.dtype}")
    if targets.dim() != 1 or targets.shape[0] != scores.shape[0]:
        raise ValueError(f"targets must have shape ({scores.shape[0]},) to match scores, got {tuple(targets.shape)}")
    if targets.is_floating_point() or targets.is_complex() or targets.dtype == torch.bool:
        raise ValueError(f"targets must be integer class indices, got dtype {targets.dtype}")
    bad = (targets < 0) | (targets >= num_classes)
    if bool(bad.any()):
        row = int(torch.nonzero(bad)[0, 0])
        raise ValueError(f"targets[{row}] = {int(targets[row])} is not a class index in [0, {num_classes})")
    nan_rows = torch.isnan(scores).any(dim=1)
    if bool(nan_rows.any()):
        row = int(torch.nonzero(nan_rows)[0, 0])
        raise ValueError(f"scores row {row} contains NaN: a ranking of the classes is undefined")
