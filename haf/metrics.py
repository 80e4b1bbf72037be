"""Evaluation metrics of the hierarchical-classification field, streaming and DDP-mergeable.

For scores s (B × K, higher is better), targets y and the class distance matrix d (K × K, d(i, i) = 0):

* ``top1``              = 100 · mean_b [ŷ_b = y_b],  ŷ_b = argmax_j s_bj                      (percent)
* ``mistake_severity``  = mean of d(ŷ_b, y_b) over the misclassified samples only (NaN when there are none:
                          an average over an empty set; 0 would claim "mistakes of severity 0")
* ``hierdist@k``        = mean_b (1/k) Σ_{j ∈ top-k(s_b)} d(j, y_b)                           (all samples)

so ``hierdist@1 = mistake_severity · (1 − top1/100)``. On long-tailed data the same metrics are also split by the
true class's training-image count n (:class:`GroupedHierarchicalMetrics`): many-shot n > 100, medium 20–100,
few-shot n < 20. Keys for k > K are omitted. Ties in the scores are broken
toward the lower class index (a stable sort), so every metric is a deterministic function of its inputs.

CRM decoding (Karthik et al., ICLR 2021): ŷ = argmin_j Σ_i p_i d(i, j), the Bayes decision under the hierarchical
cost; :func:`crm_scores` gives −Σ_i p_i d(i, j) so it ranks like any other score.

``distances`` is a K × K matrix or, for very many classes, a :class:`haf.hierarchy.tree_distances.TreeDistances`
(d read off the tree: HierDist@k needs only the B·k pairs, CRM one pass of subtree sums; no K × K array).

Neural-collapse diagnostics (Liang & Davis, ICCV 2023, §5): the mean and std over class pairs i < j of
|cos(μ_i, μ_j) − S_ij| for class means μ (raw for HAFrame, whose S has no centre; centred on the mean of class
means for ETF / cross-entropy models, whose target geometry is the simplex around that centre), and self-duality
‖W/‖W‖_F − M/‖M‖_F‖_F between the classifier W and the class means M.
"""
from __future__ import annotations

import math
from typing import Iterable, Sequence

import numpy as np
import torch

from haf.hierarchy.tree_distances import pair_distances

__all__ = [
    "DEFAULT_KS",
    "as_distances",
    "ClassMeans",
    "GroupedHierarchicalMetrics",
    "HierarchicalMetrics",
    "SHOT_GROUPS",
    "class_means",
    "crm_predict",
    "crm_scores",
    "hierarchical_metrics",
    "ranked_top_k",
    "neural_collapse_metrics",
    "self_duality",
    "shot_groups",
]

DEFAULT_KS = (1, 5, 20)
#: Floor for vector norms in cosines and in self-duality: a zero class mean gives cosine 0, not 0/0.
_NORM_EPS = 1e-12


def _is_tree(distances) -> bool:
    from haf.hierarchy.tree_distances import TreeDistances

    return isinstance(distances, TreeDistances)


def _as_distance_tensor(distances, num_classes: int | None = None):
    """A float64 K × K tensor, or the TreeDistances itself (checked against ``num_classes``)."""
    if _is_tree(distances):
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
    if _is_tree(distances) or isinstance(distances, torch.Tensor):
        return distances
    return torch.as_tensor(np.asarray(distances))


def _normalise_ks(ks: Iterable[int]) -> tuple[int, ...]:
    result: list[int] = []
    for k in ks:
        if isinstance(k, bool) or int(k) != k or int(k) < 1:
            raise ValueError(f"every k in ks must be a positive integer, got {k!r}")
        if int(k) not in result:
            result.append(int(k))
    if not result:
        raise ValueError("ks must name at least one k (e.g. (1, 5, 20))")
    return tuple(result)


def _validate_batch(scores: torch.Tensor, targets: torch.Tensor, num_classes: int) -> None:
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


class HierarchicalMetrics:
    """Streaming top-1 / mistake severity / HierDist@k: ``update`` per batch, ``compute`` at the end.

    Holds only sums and counts (no scores), in one float64 vector ``state`` (exact for integer distances up to
    2**53), so ranks can combine with ``merge`` or with one ``torch.distributed.all_reduce(metric.state)``
    (see :meth:`all_reduce_`). Layout: [samples, correct, mistake_severity_sum, hierdist_sum@k for k in ks].
    """

    def __init__(self, distances, ks: Sequence[int] = DEFAULT_KS):
        self.distances = _as_distance_tensor(distances)
        self.num_classes = int(self.distances.shape[0])
        # k > K has no top-k: those keys are omitted, as hierarchical_metrics does.
        self.ks = tuple(k for k in _normalise_ks(ks) if k <= self.num_classes)
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
        _validate_batch(scores, targets, self.num_classes)
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
    if _is_tree(a) or _is_tree(b):
        return _is_tree(a) and a.same_as(b)
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
        self.distances = _as_distance_tensor(distances)
        self.num_classes = int(self.distances.shape[0])
        self.groups = torch.as_tensor(np.asarray(groups), dtype=torch.long)
        if self.groups.shape != (self.num_classes,):
            raise ValueError(f"groups must give one group per class ({self.num_classes}), got {tuple(self.groups.shape)}")
        self.names = tuple(names)
        if self.num_classes and not 0 <= int(self.groups.min()) <= int(self.groups.max()) < len(self.names):
            raise ValueError(f"group indices must lie in [0, {len(self.names)}) for names {self.names}")
        self.ks = tuple(k for k in _normalise_ks(ks) if k <= self.num_classes)
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


# ------------------------------------------------------------------------------------------------------- CRM


def _expected_distance(probs: torch.Tensor, distances) -> torch.Tensor:
    if probs.dim() != 2 or not probs.is_floating_point():
        raise ValueError(f"probs must be a floating-point B × K tensor, got {tuple(probs.shape)} {probs.dtype}")
    dtype = torch.float64 if probs.dtype == torch.float64 else torch.float32
    if _is_tree(distances):
        return _as_distance_tensor(distances, probs.shape[1]).expected(probs)
    if isinstance(distances, torch.Tensor) and distances.device == probs.device and distances.dtype == dtype:
        d = distances  # the per-batch fast path (eval loops pass a ready tensor): no validation copy
        if d.dim() != 2 or d.shape != (probs.shape[1], probs.shape[1]):
            raise ValueError(f"distances must be K × K with K = {probs.shape[1]}, got {tuple(d.shape)}")
    else:
        d = _as_distance_tensor(distances, probs.shape[1]).to(device=probs.device, dtype=dtype)
    # E[d(ŷ = j)] = Σ_i p_i d(i, j): one (B × K)·(K × K) product, in fp32 (fp64 for fp64 probs).
    return probs.to(dtype) @ d


def crm_scores(probs: torch.Tensor, distances) -> torch.Tensor:
    """−Σ_i p_i d(i, j) for every class j (B × K, higher is better): CRM as scores for the other metrics."""
    return -_expected_distance(probs, distances)


def crm_predict(probs: torch.Tensor, distances) -> torch.Tensor:
    """CRM decision argmin_j Σ_i p_i d(i, j) (B int64; ties to the lower class index)."""
    return torch.argmin(_expected_distance(probs, distances), dim=1)


# ------------------------------------------------------------------------------------------- neural collapse


def class_means(features: torch.Tensor, targets: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-class feature means (K × D, fp32/fp64) and counts (K int64); a class without samples has mean 0."""
    accumulator = ClassMeans(num_classes, features.shape[-1])
    accumulator.update(features, targets)
    return accumulator.compute()


class ClassMeans:
    """Streaming per-class feature sums and counts (mergeable like :class:`HierarchicalMetrics`)."""

    def __init__(self, num_classes: int, dim: int):
        self.num_classes, self.dim = int(num_classes), int(dim)
        self.sums = torch.zeros(self.num_classes, self.dim, dtype=torch.float64)
        self.counts = torch.zeros(self.num_classes, dtype=torch.int64)

    @torch.no_grad()
    def update(self, features: torch.Tensor, targets: torch.Tensor) -> None:
        if features.dim() != 2 or features.shape[1] != self.dim:
            raise ValueError(f"features must be B × D with D = {self.dim}, got shape {tuple(features.shape)}")
        _validate_batch(features.new_zeros(features.shape[0], self.num_classes), targets, self.num_classes)
        if self.sums.device != features.device:
            self.sums, self.counts = self.sums.to(features.device), self.counts.to(features.device)
        targets = targets.to(device=features.device, dtype=torch.long)
        self.sums.index_add_(0, targets, features.to(torch.float64))
        self.counts += torch.bincount(targets, minlength=self.num_classes)

    def merge(self, other: "ClassMeans") -> "ClassMeans":
        if (other.num_classes, other.dim) != (self.num_classes, self.dim):
            raise ValueError(f"cannot merge class means of shape {(other.num_classes, other.dim)} into "
                             f"{(self.num_classes, self.dim)}")
        self.sums += other.sums.to(self.sums.device)
        self.counts += other.counts.to(self.counts.device)
        return self

    def compute(self) -> tuple[torch.Tensor, torch.Tensor]:
        means = self.sums / self.counts.clamp_min(1)[:, None].to(torch.float64)
        return means, self.counts.clone()


def neural_collapse_metrics(
    means: torch.Tensor, similarity, centred: bool = False, counts: torch.Tensor | None = None
) -> dict[str, float]:
    """``{"nc_mean", "nc_std"}``: mean and (population) std over pairs i < j of |cos(μ_i, μ_j) − S_ij|.

    Args:
        means: class means μ, K × D (e.g. from :func:`class_means`).
        similarity: the target cosines S (K × K): the HAFrame's S, or −1/(K−1) off the diagonal for an ETF.
        centred: subtract the mean of the class means first (ETF / cross-entropy); False for HAFrame.
        counts: per-class sample counts; classes with 0 samples are left out of the pairs.
    """
    if means.dim() != 2:
        raise ValueError(f"means must be K × D, got shape {tuple(means.shape)}")
    k = means.shape[0]
    s = torch.as_tensor(np.asarray(similarity) if not isinstance(similarity, torch.Tensor) else similarity)
    if s.shape != (k, k):
        raise ValueError(f"similarity must be K × K with K = {k} (class means), got shape {tuple(s.shape)}")
    mu = means.detach().to(torch.float64)
    s = s.detach().to(device=mu.device, dtype=torch.float64)
    present = torch.ones(k, dtype=torch.bool, device=mu.device) if counts is None else counts.to(mu.device) > 0
    if int(present.sum()) < 2:
        raise ValueError(f"neural-collapse diagnostics need at least 2 classes with samples, got {int(present.sum())}")
    mu, s = mu[present], s[present][:, present]
    if not bool(torch.isfinite(mu).all()):
        raise ValueError("class means contain NaN or inf")
    if centred:
        mu = mu - mu.mean(dim=0, keepdim=True)
    unit = mu / torch.linalg.vector_norm(mu, dim=1, keepdim=True).clamp_min(_NORM_EPS)
    gaps = (unit @ unit.T - s).abs()
    i, j = torch.triu_indices(mu.shape[0], mu.shape[0], offset=1, device=mu.device)
    pair_gaps = gaps[i, j]
    return {"nc_mean": float(pair_gaps.mean()), "nc_std": float(pair_gaps.std(correction=0))}


def self_duality(frame: torch.Tensor, means: torch.Tensor) -> float:
    """‖W/‖W‖_F − M/‖M‖_F‖_F: 0 when the class means are a scaled copy of the classifier (NC3), at most 2."""
    w = torch.as_tensor(frame).detach().to(torch.float64)
    m = torch.as_tensor(means).detach().to(device=w.device, dtype=torch.float64)
    if w.shape != m.shape or w.dim() != 2:
        raise ValueError(f"frame and means must both be K × D of the same shape, got {tuple(w.shape)} and "
                         f"{tuple(m.shape)}")
    w_unit = w / torch.linalg.matrix_norm(w).clamp_min(_NORM_EPS)
    m_unit = m / torch.linalg.matrix_norm(m).clamp_min(_NORM_EPS)
    return float(torch.linalg.matrix_norm(w_unit - m_unit))
