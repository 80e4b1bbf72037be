"""Evaluation over a (sharded) loader: streaming hierarchical metrics, merged exactly across ranks.

Each rank updates a :class:`haf.metrics.HierarchicalMetrics` on its shard (evaluation shards are disjoint and
unpadded, see ``pipelines/loaders/epoch_plan.py``), and the accumulators' sums are all-reduced, so every rank returns the
metrics of the whole split. For probabilistic methods (cross-entropy and its relatives) the same pass also scores
CRM decoding (Karthik et al., ICLR 2021): the classes ranked by −Σ_i p_i d(i, j), which gives the "crm" section
of metrics.json.

With ``collapse=True`` (the training loop's validations) the pass also accumulates the per-class sums of the
method's input features h (one B × D ``index_add`` per batch, no second forward; sums and counts all-reduced over
ranks) and reports the neural-collapse diagnostics ``nc_mean``, ``nc_std`` and ``self_duality`` of the class means
(docs/METHOD.md §7; :func:`collapse_diagnostics`, against the target :func:`collapse_target` picks).
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch
import torch.distributed as dist

from haf.metrics import DEFAULT_KS, as_distances

# A frame counts as centred (a simplex ETF: Σ_k w_k = 0) when ‖Σ_k w_k‖ ≤ this × ‖W‖_F. An fp32 ETF sums to
# ~1e-7·‖W‖_F; HAFrame's rows sum to √(Σ_ij S_ij) ≫ 1e-4·√K unless S is the ETF itself (then both rules agree).
CENTRED_FRAME_TOL = 1e-4


@dataclass(frozen=True)
class CollapseTarget:
    """What the class means of a method's input features are compared with (:func:`collapse_target`)."""

    weights: torch.Tensor  # W, K × D: the classifier's rows
    similarity: torch.Tensor  # S, K × K float64: the target cosines of the class means
    centred: bool  # subtract the mean of the class means first (ETF targets, learnable classifiers)
    on_outputs: bool = False  # class means of the method's outputs (forward(h)), not of h


def collapse_target(method: Any) -> CollapseTarget | None:
    """W, S and the centring rule of ``method``'s single K-row classifier; None when it has none (no diagnostics).

    Fixed W (a buffer): S_ij = cos(w_i, w_j), class means centred iff the frame is (Σ_k w_k = 0: the simplex ETF,
    for which centring leaves the target c·W unchanged); HAFrame's frame is not centred, so its means stay raw.
    Learnable W (a parameter): S = the simplex ETF, 1 on the diagonal and −1/(K−1) elsewhere, means centred: the
    target its collapse converges to (Papyan et al., PNAS 2020).

    The classifier is the method's one K-row classifier (``Method.classifier_weights``); methods without one
    (Flamingo, HAFeature: one classifier per level) get no diagnostics (no keys). The means are always those of h,
    the head's output: for ETF dot-regression, whose frame meets BatchNorm(h), that is the feature before the
    method's own normalisation. A method whose frame acts on its own outputs (``collapse_on_outputs``: HAFrame's
    tree frame, after its projection into R^{N−1}) gets the means of those outputs.
    """
    getter = getattr(method, "classifier_weights", None)
    weights = getter() if callable(getter) else None
    if weights is None:
        return None
    w = weights.detach().to(torch.float64)
    k = w.shape[0]
    on_outputs = bool(getattr(method, "collapse_on_outputs", False))
    if k < 2 or (not on_outputs and w.shape[1] != getattr(method, "in_features", w.shape[1])):
        return None  # W acts on something other than h (or there are no pairs): nothing to compare h's means with
    if isinstance(weights, torch.nn.Parameter) or weights.requires_grad:
        similarity = torch.full((k, k), -1.0 / (k - 1), dtype=torch.float64, device=w.device)
        similarity.fill_diagonal_(1.0)
        return CollapseTarget(weights.detach(), similarity, centred=True)
    unit = w / torch.linalg.vector_norm(w, dim=1, keepdim=True).clamp_min(1e-12)
    centred = bool(torch.linalg.vector_norm(w.sum(0)) <= CENTRED_FRAME_TOL * torch.linalg.matrix_norm(w))
    return CollapseTarget(weights.detach(), unit @ unit.T, centred=centred, on_outputs=on_outputs)


def collapse_diagnostics(means: torch.Tensor, counts: torch.Tensor, target: CollapseTarget) -> dict[str, float]:
    """``{"nc_mean", "nc_std", "self_duality"}`` for class means M (K × D) with sample ``counts`` (K).

    Classes without samples are left out of both (of the pairs, and of the rows of W and M); fewer than two classes
    with samples give ``{}``. M is centred on the mean of the present classes' means when ``target.centred``.
    """
    from haf.metrics import neural_collapse_metrics, self_duality

    present = counts.to(means.device) > 0
    if int(present.sum()) < 2 or means.shape != target.weights.shape:
        return {}
    result = neural_collapse_metrics(means, target.similarity, centred=target.centred, counts=counts)
    m = means[present].to(torch.float64)
    if target.centred:
        m = m - m.mean(dim=0, keepdim=True)
    result["self_duality"] = self_duality(target.weights.to(m.device)[present], m)
    return result


def _all_reduce_(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over all ranks (a copy on the GPU for NCCL); returns the summed tensor on its device."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return tensor
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    reduced = tensor.to(device)
    dist.all_reduce(reduced)
    return reduced.to(tensor.device)


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
    collapse: bool = False,
    class_groups: np.ndarray | None = None,
    selective_tree: Any = None,
) -> dict:
    """Evaluate ``model`` (a HierarchyClassifier) on ``loader``.

    Returns ``{"metrics": {top1, mistake_severity, hierdist@k...}, "crm": {...} or None, "collapse": {nc_mean,
    nc_std, self_duality} or None, "loss": mean loss, "images": count, "seconds": wall time}``; all merged over
    ranks. ``collapse``: also compute the neural-collapse diagnostics (None when the method has no single K-row
    classifier; see :func:`collapse_target`). ``class_groups``: each class's shot group (0 many, 1 medium, 2 few;
    :func:`haf.metrics.shot_groups` of the training counts) adds ``"shots"``: ``{group: metrics}`` of the plain
    decoding, for the groups with samples (None without ``class_groups``). ``selective_tree``: a
    :class:`haf.metrics.selective.NodeTree` of the classes adds ``"selective"``: hierarchical selective metrics
    (hAURC, coverage at target accuracies, the risk–coverage curve) of climbing from the plain prediction and, with
    ``crm``, from the CRM one (None without a tree).
    """
    from haf.metrics import ClassMeans, GroupedHierarchicalMetrics, HierarchicalMetrics, crm_scores

    was_training = model.training
    model.eval()
    distance_tensor = as_distances(distances)
    ks = tuple(k for k in ks if k <= distance_tensor.shape[0])
    plain = HierarchicalMetrics(distance_tensor, ks)
    decoded = HierarchicalMetrics(distance_tensor, ks) if crm else None
    grouped = GroupedHierarchicalMetrics(distance_tensor, class_groups, ks=ks) if class_groups is not None else None
    crm_distances = None
    loss_sum = torch.zeros((), dtype=torch.float64)
    count = 0
    method = getattr(model, "method", None)
    # h is needed separately: forward() = method(features(images)), so split it rather than run a second pass.
    target = collapse_target(method) if collapse and hasattr(model, "features") else None
    means = ClassMeans(distance_tensor.shape[0], target.weights.shape[1]) if target is not None else None
    paths: dict[str, list] = {"plain": [], "crm": []} if selective_tree is not None else {}
    start = time.perf_counter()
    for step, (images, targets) in enumerate(loader):
        if max_steps is not None and step >= max_steps:
            break
        context = autocast() if autocast is not None else torch.autocast(images.device.type, enabled=False)
        with context:
            if means is not None:
                features = model.features(images)
                outputs = method(features)
                means.update(outputs if target.on_outputs else features, targets)
            else:
                outputs = model(images)
            loss = model.loss(outputs, targets)
        scores = model.scores(outputs).float()
        plain.update(scores, targets)
        if grouped is not None:
            grouped.update(scores, targets)
        decoded_scores = None
        if decoded is not None:
            if crm_distances is None:
                crm_distances = distance_tensor.to(scores.device, torch.float32)
            probs = model.probabilities(outputs).float()
            decoded_scores = crm_scores(probs, crm_distances)
            decoded.update(decoded_scores, targets)
        if paths:
            _selective_update(paths, selective_tree, model.probabilities(outputs).float(), scores, decoded_scores,
                              targets)
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
    if grouped is not None:
        grouped.all_reduce_()
    diagnostics = None
    if means is not None:
        means.sums, means.counts = _all_reduce_(means.sums), _all_reduce_(means.counts)
        diagnostics = collapse_diagnostics(*means.compute(), target) or None
    model.train(was_training)
    images_seen = int(totals[1].item())
    selective = _selective_compute(paths) if paths else None
    return {
        "metrics": plain.compute(),
        "crm": decoded.compute() if decoded is not None else None,
        "collapse": diagnostics,
        "shots": grouped.compute() if grouped is not None else None,
        "selective": selective,
        "loss": float(totals[0] / max(images_seen, 1)),
        "images": images_seen,
        "seconds": time.perf_counter() - start,
    }


def _selective_update(paths: dict, tree: Any, probs: torch.Tensor, scores: torch.Tensor,
                      decoded_scores: torch.Tensor | None, targets: torch.Tensor) -> None:
    """Keep each sample's climbing path (probability, coverage, correctness per path node) for the curve."""
    from haf.metrics.selective import node_probabilities, path_records, row_chunks

    probs = probs.detach().cpu().double().numpy()
    if not np.isfinite(probs).all():  # a diverged model: no selective metrics for this evaluation (not a crash)
        paths["nonfinite"] = True
        return
    y = targets.detach().cpu().numpy()
    decided = {name: s.argmax(dim=1).cpu().numpy() for name, s in (("plain", scores), ("crm", decoded_scores))
               if s is not None}
    for rows in row_chunks(probs.shape[0], tree.num_nodes):  # B × N node probabilities, a chunk at a time
        nodes = node_probabilities(probs[rows], tree)
        for name, leaves in decided.items():
            paths[name].append(path_records(nodes, tree, leaves[rows], y[rows]))


def _selective_compute(paths: dict) -> dict | None:
    """Merge the kept paths over ranks (all_gather_object) and summarise each decoding's curve."""
    from haf.metrics.selective import curve_from_paths, selective_summary

    nonfinite = bool(paths.pop("nonfinite", False))
    out = {}
    for name, parts in paths.items():
        local = tuple(np.concatenate([p[i] for p in parts]) for i in range(3)) if parts else None
        if dist.is_initialized() and dist.get_world_size() > 1:
            gathered: list = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, (nonfinite, local))
            nonfinite = any(flag for flag, _ in gathered)
            pieces = [g for _, g in gathered if g is not None]
            local = tuple(np.concatenate([g[i] for g in pieces]) for i in range(3)) if pieces else None
        if local is not None and local[0].shape[0] and not nonfinite:
            out[name] = selective_summary(curve_from_paths(*local))
    return out or None


def selective_tree_of(data: Any) -> Any:
    """The :class:`~haf.metrics.selective.NodeTree` of a prepared dataset (its class tree, or the tree of tree
    distances), or None for a dataset with a distance matrix only."""
    from haf.hierarchy.tree_distances import TreeDistances
    from haf.metrics.selective import NodeTree

    hierarchy = getattr(data.dataset, "hierarchy", None)
    if hierarchy is not None:
        return NodeTree.from_hierarchy(hierarchy)
    if isinstance(data.distances, TreeDistances):
        return NodeTree.from_tree_distances(data.distances)
    return None


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


# ------------------------------------------------------------------------------------ from a checkpoint
def eval_steps(loader: Any, limit: int | None) -> int:
    return len(loader) if limit is None else min(len(loader), limit)


def evaluate_loaded_checkpoint(model: torch.nn.Module, state: dict, path: Path, config: Any, data: Any, split: str, *,
                               device: torch.device, rank: int = 0, world_size: int = 1,
                               dtype: torch.dtype = torch.float32, channels_last: bool = False, autocast: Any = None,
                               crm: bool = False, show_progress: bool = False, max_steps: int | None = None,
                               checkpoint_name: str | None = None, allow_hierarchy_change: bool = False,
                               selective: bool = True) -> tuple[dict, dict]:
    """The one "model and loader from a checkpoint" path of the final test and ``haf eval``: check the classes,
    load the weights into ``model``, evaluate ``split``; returns (result of :func:`evaluate`, metrics.json record)."""
    from haf.training.assemble import make_split_loader
    from haf.log_setup import progress_bar
    from haf.training.run_folder import result_record

    from haf.training.portable import HierarchyChanged, check_same_hierarchy

    try:
        check_same_hierarchy(state, data.dataset.classes, data.distances, path=str(path), dataset=config.dataset.root)
    except HierarchyChanged as error:
        if not allow_hierarchy_change or "classes differ" in str(error):
            raise
        print(f"warning: {error}; evaluating with the dataset's hierarchy (--allow-hierarchy-change)".replace(
            "; pass --allow-hierarchy-change to evaluate with the dataset's hierarchy", ""), file=sys.stderr)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as error:
        raise ValueError(f"{path}: weights do not fit the model its config describes: {error}") from None
    loader = make_split_loader(config, data, split, train=False, rank=rank, world_size=world_size, device=device,
                               dtype=dtype, channels_last=channels_last)
    loader.set_epoch(0)
    bar = progress_bar(eval_steps(loader, max_steps), f"eval {split}", show_progress)
    result = evaluate(model, loader, data.distances, crm=crm, autocast=autocast, max_steps=max_steps, progress=bar,
                      class_groups=data.class_groups, selective_tree=selective_tree_of(data) if selective else None)
    if bar is not None:
        bar.close()
    record = result_record(config, result, epoch=int(state["epoch"]), checkpoint=checkpoint_name or str(path),
                           split=split, output_dir=path.parent, method=getattr(model, "method", None))
    if result.get("selective"):
        record["selective"] = result["selective"]
    return result, record


def evaluate_checkpoint(
    checkpoint: str | Path,
    *,
    split: str | None = None,
    data_root: str | None = None,
    overrides: Sequence[str] = (),
    batch_size: int | None = None,
    device: str = "auto",
    crm: str = "auto",
    json_out: str | Path | None = None,
    progress: bool = True,
    data: Any = None,
    allow_hierarchy_change: bool = False,
) -> dict:
    """``haf eval``: evaluate a training checkpoint on one split in this process; write and return the metrics.

    Returns ``{"record": metrics.json-style dict, "table": printable text, "json_path": Path}``.
    """
    from haf.training.assemble import build_model, prepare_dataset
    from haf.safe_files import atomic_write_text, json_text
    from haf.training.checkpoints import load_checkpoint
    from haf.training.devices import autocast_factory, choose_device, use_channels_last
    from haf.training.run_config import load_config

    path = Path(checkpoint)
    state = load_checkpoint(path)
    extra = list(overrides)
    if data_root is not None:
        extra.append(f"dataset.root={data_root}")
    if batch_size is not None:
        extra.append(f"train.eval_batch_size={batch_size}")
    config = load_config(None, extra, data=state["config"], validate_method=True)
    config = config.replace(source=state.get("config_source") or str(path))
    split = split or config.dataset.test_split
    torch_device = choose_device(device)
    if data is None:
        from haf.training.portable import substitute_missing_hierarchy, temporary_folder

        with temporary_folder() as folder:
            config, note = substitute_missing_hierarchy(config, state, folder)
            if note:
                print(note, file=sys.stderr)
            data = prepare_dataset(config, generate=False)  # evaluation never creates a dataset
    model = build_model(config, data.dataset, data.distances)
    channels_last = use_channels_last(config.data.channels_last, torch_device)
    model = model.to(torch_device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    use_crm = method_supports_crm(model.method) if crm == "auto" else crm == "on"
    result, record = evaluate_loaded_checkpoint(
        model, state, path, config, data, split, device=torch_device, channels_last=channels_last,
        autocast=autocast_factory(config.deepspeed.precision, torch_device), crm=use_crm, show_progress=progress,
        allow_hierarchy_change=allow_hierarchy_change)
    record["loss"] = result["loss"]
    json_path = Path(json_out) if json_out is not None else path.parent / f"eval-{split}.json"
    atomic_write_text(json_path, json_text(record, indent=2) + "\n")
    table = format_metric_table({"plain": result["metrics"], "crm": result["crm"]},
                                title=f"{path} (epoch {state['epoch']}) on {config.dataset.kind}/{split}, "
                                      f"{result['images']} images:")
    if result.get("selective"):
        table += "\n\n" + format_selective_table(result["selective"])
    return {"record": record, "table": table, "json_path": json_path}


def format_selective_table(selective: dict) -> str:
    """hAURC and coverage at the target accuracies per decoding (climbing; docs/PREDICTION.md)."""
    rows = {name: {k: v for k, v in values.items() if k != "curve"} for name, values in selective.items()}
    return format_metric_table(rows, title="hierarchical selective (climbing; coverage = 1 - ln|leaves| / ln K):")
