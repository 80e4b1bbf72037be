"""Evaluation over a (sharded) loader: streaming hierarchical metrics, merged exactly across ranks.

Each rank updates a :class:`haf.metrics.HierarchicalMetrics` on its shard (evaluation shards are disjoint and
unpadded, see ``pipelines/epoch_plan.py``), and the accumulators' sums are all-reduced, so every rank returns the
metrics of the whole split. For probabilistic methods (cross-entropy and its relatives) the same pass also scores
CRM decoding (Karthik et al., ICLR 2021): the classes ranked by −Σ_i p_i d(i, j), which gives the "crm" section
of metrics.json.
"""
from __future__ import annotations

import time
from typing import Any, Iterable

import numpy as np
import torch
import torch.distributed as dist

DEFAULT_KS = (1, 5, 20)

def method_supports_crm(method: Any) -> bool:
    """Whether CRM decoding applies: the method declares it (``Method.supports_crm``)."""
    return bool(getattr(method, "supports_crm", False))


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    loader: Iterable,
    distances: np.ndarray,
    *,
    ks: tuple[int, ...] = DEFAULT_KS,
    crm: bool = False,
    autocast: Any = None,
    max_steps: int | None = None,
    progress: Any = None,
) -> dict:
    """Evaluate ``model`` (a HierarchyClassifier) on ``loader``.

    Returns ``{"metrics": {top1, mistake_severity, hierdist@k...}, "crm": {...} or None, "loss": mean loss,
    "images": count, "seconds": wall time}``; all merged over ranks.
    """
    from haf.metrics import HierarchicalMetrics, crm_scores

    was_training = model.training
    model.eval()
    distance_tensor = torch.as_tensor(np.asarray(distances))
    ks = tuple(k for k in ks if k <= distance_tensor.shape[0])
    plain = HierarchicalMetrics(distance_tensor, ks)
    decoded = HierarchicalMetrics(distance_tensor, ks) if crm else None
    crm_distances = None
    loss_sum = torch.zeros((), dtype=torch.float64)
    count = 0
    start = time.perf_counter()
    for step, (images, targets) in enumerate(loader):
        if max_steps is not None and step >= max_steps:
            break
        context = autocast() if autocast is not None else torch.autocast(images.device.type, enabled=False)
        with context:
            outputs = model(images)
            loss = model.loss(outputs, targets)
        scores = model.scores(outputs).float()
        plain.update(scores, targets)
        if decoded is not None:
            if crm_distances is None:
                crm_distances = distance_tensor.to(device=scores.device, dtype=torch.float32)
            probs = model.probabilities(outputs).float()
            decoded.update(crm_scores(probs, crm_distances), targets)
        batch = int(targets.shape[0])
        loss_sum += float(loss.detach().float()) * batch
        count += batch
        if progress is not None:
            progress.update(1)
    totals = torch.tensor([float(loss_sum), float(count)], dtype=torch.float64)
    if dist.is_initialized() and dist.get_world_size() > 1:
        device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
        totals = totals.to(device)
        dist.all_reduce(totals)
        totals = totals.cpu()
    # Sums and counts only (HierarchicalMetrics.state): one all-reduce gives every rank the whole split's metrics.
    plain.all_reduce_()
    if decoded is not None:
        decoded.all_reduce_()
    model.train(was_training)
    images_seen = int(totals[1].item())
    return {
        "metrics": plain.compute(),
        "crm": decoded.compute() if decoded is not None else None,
        "loss": float(totals[0] / max(images_seen, 1)),
        "images": images_seen,
        "seconds": time.perf_counter() - start,
    }


def format_metric_table(results: dict[str, dict | None], title: str = "") -> str:
    """A plain-text table: one row per decoding (``plain``, ``crm``), one column per metric key."""
    rows = {name: values for name, values in results.items() if values}
    if not rows:
        return ""
    keys = list(next(iter(rows.values())))
    header = ["decoding", *keys]
    lines = [header] + [[name] + [_fmt(values.get(key)) for key in keys] for name, values in rows.items()]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    text = [" | ".join(cell.rjust(widths[i]) if i else cell.ljust(widths[i]) for i, cell in enumerate(line))
            for line in lines]
    text.insert(1, "-+-".join("-" * w for w in widths))
    return (title + "\n" if title else "") + "\n".join(text)


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}" if np.isfinite(value) else str(value)
    return str(value)
