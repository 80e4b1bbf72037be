"""Evaluation metrics of the hierarchical-classification field, streaming and DDP-mergeable.

For scores s (B × K, higher is better), targets y and class distances d: ``top1`` (%), ``mistake_severity`` (mean
d(ŷ, y) over the misclassified samples only; NaN when there are none: an average over an empty set, where 0 would
claim "mistakes of severity 0") and ``hierdist@k`` (mean over all samples of the mean d over the top k), as defined
in docs/METHOD.md §7; keys for k > K are omitted. Ties in the scores are broken toward the lower class index (a
stable sort), so every metric is a deterministic function of its inputs. On long-tailed data the same metrics are
also split by the true class's training-image count n (:class:`GroupedHierarchicalMetrics`): many-shot n > 100,
medium 20–100, few-shot n < 20.

``distances`` is a K × K matrix or, for very many classes, a :class:`haf.hierarchy.tree_distances.TreeDistances`
(d read off the tree: HierDist@k needs only the B·k pairs; no K × K array). CRM decoding and the neural-collapse
diagnostics live beside this module in :mod:`haf.metrics.crm` and :mod:`haf.metrics.collapse`.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch

from haf.hierarchy.tree_distances import pair_distances
from haf.metrics.inputs import as_distance_tensor, as_distances, is_tree_distances, normalise_ks, validate_batch

__all__ = ["DEFAULT_KS", "GroupedHierarchicalMetrics", "HierarchicalMetrics", "SHOT_GROUPS", "hierarchical_metrics",
           "ranked_top_k", "shot_groups"]

DEFAULT_KS = (1, 5, 20)


class HierarchicalMetrics:
    """Streaming top-1 / mistake severity / HierDist@k: ``update`` per batch, ``compute`` at the end.

    Holds only sums and counts (no scores), in one float64 vector ``state`` (exact for integer distances up to
    2**53), so ranks can combine with ``merge`` or with one ``torch.distributed.all_reduce(metric.state)``
    (see :meth:`all_reduce_`). Layout: [samples, correct, mistake_severity_sum, hierdist_sum@k for k in ks].
    """

    def __init__(self, distances, ks: Sequence[int] = DEFAULT_KS):
        self.distances = as_distance_tensor(distances)
        self.num_classes = int(self.distances.shape[0])
        # k > K has no top-k: those keys are omitted, as hierarchical_metrics does.
        self.ks = tuple(k for k in normalise_ks(ks) if k <= self.num_classes)
        self.state = torch.zeros(3 + len(self.ks), dtype=torch.float64)

    # -- accumulation ------------------------------------------------------------------------------------------

    @torch.no_grad()
    def update(self, scores: torch.Tensor, targets: torch.Tensor) -> None:
        """Add one batch: scores B × K (higher is better, any float dtype), targets B class indices (tensors or
        numpy arrays)."""
        batch = self._batch(scores, targets)
        if batch is not None:
            self.state += _sample_parts(*batch, self.distances, self.ks).sum(dim=0)

    def _batch(self, scores, targets) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The validated batch (targets as int64) with the accumulator moved to the scores' device; None if empty."""
        scores, targets = torch.as_tensor(scores), torch.as_tensor(targets)
        validate_batch(scores, targets, self.num_classes)
        if scores.shape[0] == 0:
            return None
        self._follow(scores.device)
        return scores, targets.to(device=scores.device, dtype=torch.long)

    def _follow(self, device: torch.device) -> None:
        if self.distances.device != device:
            self.distances = self.distances.to(device)
        if self.state.device != device:
            self.state = self.state.to(device)

    def merge(self, other: "HierarchicalMetrics") -> "HierarchicalMetrics":
        """Add another accumulator's counts (same distances and ks); returns self."""
        if other.ks != self.ks or other.num_classes != self.num_classes:
            raise ValueError(f"cannot merge metrics over K={other.num_classes}, ks={other.ks} into "
                             f"K={self.num_classes}, ks={self.ks}")
        if not _same_distances(other.distances, self.distances):
            raise ValueError("cannot merge metrics computed with different distance matrices")
        self.state += other.state.to(self.state.device)
        return self

    def all_reduce_(self, group=None) -> "HierarchicalMetrics":
        """Sum ``state`` over the ranks of ``group`` in place (a no-op without an initialised process group)."""
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized() and dist.get_world_size(group) > 1:
            if dist.get_backend(group) == "nccl" and self.state.device.type != "cuda":
                self.state = self.state.to(torch.device("cuda", torch.cuda.current_device()))
            dist.all_reduce(self.state, group=group)
        return self

    def reset(self) -> None:
        self.state = torch.zeros_like(self.state)

    def __getstate__(self) -> dict:
        # Pickled (e.g. all_gather_object) on the CPU, so a rank can unpickle another rank's accumulator.
        return {"distances": self.distances.cpu(), "num_classes": self.num_classes, "ks": self.ks,
                "state": self.state.cpu()}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)

    # -- result ------------------------------------------------------------------------------------------------

    def compute(self) -> dict[str, float]:
        """``{"top1", "mistake_severity", "hierdist@k"..., "num_samples"}``; ValueError if nothing was added."""
        if float(self.state[0]) == 0:
            raise ValueError("no samples were added to the metrics (empty evaluation split?)")
        return _metrics_of(self.state.cpu().tolist(), self.ks)


def _same_distances(a, b) -> bool:
    if is_tree_distances(a) or is_tree_distances(b):
        return is_tree_distances(a) and a.same_as(b)
    return torch.equal(a.cpu(), b.cpu())


def _sample_parts(scores: torch.Tensor, targets: torch.Tensor, distances: torch.Tensor,
                  ks: tuple[int, ...]) -> torch.Tensor:
    """B × (3 + len(ks)) float64: per sample [1, correct, d(ŷ, y), (1/k) Σ_{top-k} d(j, y) for k in ks]."""
    ranked = ranked_top_k(scores, max(ks, default=1))
    # d(j, y_b) for the ranked predictions j, B × k_max
    ranked_distances = pair_distances(distances, ranked, targets[:, None]).to(torch.float64)
    cumulative = ranked_distances.cumsum(dim=1)
    columns = [
        torch.ones(scores.shape[0], dtype=torch.float64, device=scores.device),
        (ranked[:, 0] == targets).to(torch.float64),
        ranked_distances[:, 0],  # correct rows add d(y, y) = 0: the column sums to the sum over mistakes
    ] + [cumulative[:, k - 1] / k for k in ks]
    return torch.stack(columns, dim=1)


def ranked_top_k(scores: torch.Tensor, k: int) -> torch.Tensor:
    """The k best classes per row, best first, ties toward the lower class index: the first k columns of a stable
    descending sort, in O(B·K) instead of O(B·K log K). torch.topk finds the k-th value t; every score > t is
    in, and of the scores = t the lowest-indexed ones (a running count over the row) fill the rest."""
    k = min(int(k), scores.shape[1])
    values, columns = torch.topk(scores, min(k + 1, scores.shape[1]), dim=1)
    threshold = values[:, k - 1:k]
    # Rows whose (k + 1)-th score ties the k-th: topk's pick among the ties is unspecified, so redo them.
    crowded = torch.nonzero(values[:, k:].eq(threshold).any(dim=1))[:, 0]
    columns = columns[:, :k].contiguous()
    if crowded.numel():
        rows, t = scores[crowded], threshold[crowded]
        tied = rows == t
        room = k - (rows > t).sum(dim=1, keepdim=True)
        chosen = (rows > t) | (tied & (tied.cumsum(dim=1) <= room))
        columns[crowded] = chosen.nonzero()[:, 1].view(crowded.numel(), k)
    columns = torch.sort(columns, dim=1).values  # ascending index, so the stable sort below breaks ties by it
    order = torch.sort(scores.gather(1, columns), dim=1, descending=True, stable=True).indices
    return columns.gather(1, order)


def _metrics_of(values: Sequence[float], ks: tuple[int, ...]) -> dict[str, float]:
    """The metric dict of one summed state row [samples, correct, severity_sum, hierdist_sum@k...]."""
    samples, correct, severity_sum = values[:3]
    mistakes = samples - correct
    result: dict[str, float] = {
        "top1": 100.0 * correct / samples,
        "mistake_severity": severity_sum / mistakes if mistakes > 0 else math.nan,
    }
    for k, total in zip(ks, values[3:]):
        result[f"hierdist@{k}"] = total / samples
    result["num_samples"] = int(samples)
    return result


# ------------------------------------------------------------------------------------- long-tail shot groups

#: Shot groups of long-tailed recognition (Liu et al., CVPR 2019) by a class's training images n:
#: many-shot n > 100, medium-shot 20 ≤ n ≤ 100, few-shot n < 20.
SHOT_GROUPS = ("many", "medium", "few")
MANY_SHOT_ABOVE = 100
FEW_SHOT_BELOW = 20


def shot_groups(train_counts) -> np.ndarray:
    """Group index (0 many, 1 medium, 2 few; :data:`SHOT_GROUPS`) of every class from its training-image count."""
    counts = np.asarray(train_counts)
    if counts.ndim != 1 or (counts.size and counts.min() < 0):
        raise ValueError(f"train_counts must be K non-negative counts, got shape {counts.shape}")
    return np.where(counts > MANY_SHOT_ABOVE, 0, np.where(counts >= FEW_SHOT_BELOW, 1, 2)).astype(np.int64)


class GroupedHierarchicalMetrics:
    """:class:`HierarchicalMetrics` per class group (a sample counts in the group of its true class).

    ``state`` is G × (3 + len(ks)) float64 sums, merged like the ungrouped state (``merge``, ``all_reduce_``);
    ``compute`` gives ``{group name: metrics}`` for the groups that received samples.
    """

    def __init__(self, distances, groups, names: Sequence[str] = SHOT_GROUPS, ks: Sequence[int] = DEFAULT_KS):
        self.distances = as_distance_tensor(distances)
        self.num_classes = int(self.distances.shape[0])
        self.groups = torch.as_tensor(np.asarray(groups), dtype=torch.long)
        if self.groups.shape != (self.num_classes,):
            raise ValueError(f"groups must give one group per class ({self.num_classes}), got {tuple(self.groups.shape)}")
        self.names = tuple(names)
        if self.num_classes and not 0 <= int(self.groups.min()) <= int(self.groups.max()) < len(self.names):
            raise ValueError(f"group indices must lie in [0, {len(self.names)}) for names {self.names}")
        self.ks = tuple(k for k in normalise_ks(ks) if k <= self.num_classes)
        self.state = torch.zeros(len(self.names), 3 + len(self.ks), dtype=torch.float64)

    @torch.no_grad()
    def update(self, scores: torch.Tensor, targets: torch.Tensor) -> None:
        batch = self._batch(scores, targets)
        if batch is not None:
            self.state.index_add_(0, self.groups[batch[1]], _sample_parts(*batch, self.distances, self.ks))

    _batch = HierarchicalMetrics._batch

    def _follow(self, device: torch.device) -> None:
        HierarchicalMetrics._follow(self, device)
        if self.groups.device != device:
            self.groups = self.groups.to(device)

    def merge(self, other: "GroupedHierarchicalMetrics") -> "GroupedHierarchicalMetrics":
        if (other.ks, other.names) != (self.ks, self.names) or not torch.equal(other.groups.cpu(), self.groups.cpu()):
            raise ValueError("cannot merge grouped metrics with different ks, group names or class groups")
        if not _same_distances(other.distances, self.distances):
            raise ValueError("cannot merge metrics computed with different distance matrices")
        self.state += other.state.to(self.state.device)
        return self

    all_reduce_ = HierarchicalMetrics.all_reduce_

    def compute(self) -> dict[str, dict[str, float]]:
        rows = self.state.cpu().tolist()
        return {name: _metrics_of(row, self.ks) for name, row in zip(self.names, rows) if row[0] > 0}


def hierarchical_metrics(
    scores: torch.Tensor, targets: torch.Tensor, distances, ks: Sequence[int] = DEFAULT_KS
) -> dict[str, float]:
    """top1 (percent), mistake_severity, hierdist@k for k in ks (k ≤ K), num_samples — see the module docstring."""
    metric = HierarchicalMetrics(distances, ks)
    metric.update(scores, targets)
    return metric.compute()
