"""Batched prediction over image files, sharded over ranks, and the calibration of the climbing threshold.

* :func:`map_batches`: a torch ``DataLoader`` over files (or H × W × 3 arrays) through the model's eval transform,
  each batch's probabilities turned into small per-item results at once (records, calibration paths); this rank's
  shard (items ``rank::world_size``) when ``torch.distributed`` runs several ranks, gathered on rank 0 in order.
* :func:`calibrate` (docs/PREDICTION.md): the tight thresholds of a labelled calibration set (the checkpoint's
  validation split, or a folder ``<DIR>/<class name>/<images>``) and the threshold θ̂ of
  :func:`haf.metrics.selective.calibrate_threshold`.
* :func:`write_records`: JSON (a list of records) or CSV, written atomically.
"""
from __future__ import annotations

import csv
import io
import json
import os
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader

from haf.inference.classifier import HafClassifier

__all__ = ["CSV_COLUMNS", "FORMATS", "calibrate", "calibration_items", "calibration_paths", "map_batches",
           "write_records"]

FORMATS = ("json", "csv")
CSV_COLUMNS = ("image", "class", "score", "path", "top_k", "node", "node_score", "node_path", "threshold")


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


@torch.no_grad()
def map_batches(classifier: HafClassifier, items: Sequence[Any], fn: Callable[[torch.Tensor, list[int]], list],
                *, batch_size: int = 64, num_workers: int = 0, progress: bool = False, description: str = "predict"
                ) -> list | None:
    """``fn(probabilities B × K, item indices)`` → one result per item, batch by batch (so nothing K-wide is kept
    for all items), over this rank's shard (items ``rank::world_size``); all results on rank 0 in item order, None
    on the other ranks."""
    from haf.inference.images import PredictionImages
    from haf.log_setup import progress_bar

    if batch_size < 1 or num_workers < 0:
        raise ValueError(f"batch size must be ≥ 1 and workers ≥ 0, got {batch_size} and {num_workers}")
    rank, world = _world()
    indices = list(range(rank, len(items), world))
    shard = PredictionImages([items[i] for i in indices], classifier.transform)
    loader = DataLoader(shard, batch_size=batch_size, num_workers=num_workers, shuffle=False)
    bar = progress_bar(len(loader), description, progress and rank == 0)
    results: list = []
    device = classifier.device
    for images, positions in loader:
        probs = classifier.probabilities(images.to(device)).cpu()
        results.extend(fn(probs, [indices[int(p)] for p in positions]))
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    if world == 1:
        return results
    gathered: list | None = [None] * world if rank == 0 else None
    dist.gather_object((indices, results), gathered, dst=0)
    if rank != 0:
        return None
    merged: list = [None] * len(items)
    for shard_indices, shard_results in gathered:
        for index, result in zip(shard_indices, shard_results):
            merged[index] = result
    return merged


def calibration_items(classifier: HafClassifier, folder: str | None = None, data_root: str | None = None
                      ) -> tuple[list, np.ndarray, str]:
    """(items, labels, description) of the calibration set: ``folder``'s class subfolders (names must be classes
    of the model), or else the checkpoint's validation split (``data_root`` overrides the stored root)."""
    from haf.inference.images import find_images

    index = {name: i for i, name in enumerate(classifier.classes)}
    if folder is not None:
        root = Path(folder).expanduser()
        if not root.is_dir():
            raise FileNotFoundError(f"calibration folder not found: {root}")
        items, labels = [], []
        for sub in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            if sub.name not in index:
                raise ValueError(f"{sub}: calibration folder {sub.name!r} is not a class of the model")
            try:
                files = find_images([sub])
            except FileNotFoundError:
                continue
            items.extend(files)
            labels.extend([index[sub.name]] * len(files))
        if not items:
            raise ValueError(f"{root}: no images in class folders (layout <DIR>/<class>/<image>)")
        return items, np.asarray(labels, dtype=np.int64), str(root)
    config = classifier.config
    if config is None:
        raise ValueError("no calibration set: pass a calibration folder (this model has no stored config)")
    from haf.training.assemble import prepare_dataset
    from haf.training.portable import substitute_missing_hierarchy, temporary_folder

    if data_root is not None:
        import dataclasses

        config = config.replace(dataset=dataclasses.replace(config.dataset, root=str(data_root)))
    state = {"hierarchy": classifier.hierarchy.to_json(indent=None)} if classifier.hierarchy is not None else {}
    with temporary_folder() as tmp:
        config, _ = substitute_missing_hierarchy(config, state, tmp)
        try:
            data = prepare_dataset(config, generate=False)
        except FileNotFoundError as error:
            raise FileNotFoundError(f"{_os_text(error)} (calibration reads the checkpoint's "
                                    f"{config.dataset.val_split!r} split: pass --data-root DIR where that dataset "
                                    "is, or --calibration DIR/<class>/<images>)") from None
    split_name = config.dataset.val_split
    if split_name not in data.dataset.splits:
        raise ValueError(f"dataset {config.dataset.root!r} has no validation split {split_name!r}; pass "
                         "--calibration DIR")
    if tuple(data.dataset.classes) != classifier.classes:
        raise ValueError(f"dataset {config.dataset.root!r}: its classes differ from the model's; pass --calibration")
    split = data.dataset.splits[split_name]
    items = list(split.files) if split.files else list(split.arrays)
    return items, np.asarray(split.labels, dtype=np.int64), f"{config.dataset.root} ({split_name} split)"


def _os_text(error: OSError) -> str:
    """An OSError's own message, or ``PATH: reason`` for one raised by the system."""
    if error.filename is not None and error.strerror:
        return f"{error.filename}: {error.strerror}"
    return str(error)


def leaf_decisions(classifier: HafClassifier, probs: torch.Tensor, decode: str) -> np.ndarray:
    """The predicted class per row: argmax, or the CRM decision under the model's distances."""
    from haf.metrics import crm_predict

    if decode == "crm":
        distances = classifier.distances
        if isinstance(distances, np.ndarray):
            distances = torch.from_numpy(distances)
        return crm_predict(probs, distances).cpu().numpy()
    return probs.argmax(dim=1).cpu().numpy()


def calibration_paths(classifier: HafClassifier, labels: np.ndarray, decode: str = "argmax"
                      ) -> Callable[[torch.Tensor, list[int]], list]:
    """The per-batch function of :func:`map_batches` for calibration: each item's climbing path record
    (probabilities, coverages, correctness along the path; :func:`haf.metrics.selective.path_records`)."""
    from haf.metrics.selective import node_probabilities, path_records, row_chunks

    if classifier.tree is None:
        raise ValueError("selective prediction needs the class tree; this checkpoint has distances only")
    tree = classifier.tree

    def fn(probs: torch.Tensor, indices: list[int]) -> list:
        leaves = leaf_decisions(classifier, probs, decode)
        y = labels[np.asarray(indices, dtype=np.int64)]
        out = []
        for rows in row_chunks(len(indices), tree.num_nodes):
            nodes = node_probabilities(probs[rows].double().numpy(), tree)
            p, c, ok = path_records(nodes, tree, leaves[rows], y[rows])
            out.extend(zip(p, c, ok))
        return out

    return fn


def calibrate(paths: list, target_accuracy: float, confidence: float | None) -> dict:
    """θ̂ from the calibration items' path records, with the calibration set's own accuracy and coverage at θ̂."""
    from haf.metrics.selective import calibrate_threshold, climb_paths, tight_from_paths

    probs = np.stack([p for p, _, _ in paths])
    cover = np.stack([c for _, c, _ in paths])
    correct = np.stack([ok for _, _, ok in paths])
    threshold = calibrate_threshold(tight_from_paths(probs, correct), target_accuracy, confidence)
    stop = climb_paths(probs, threshold)
    rows = np.arange(probs.shape[0])
    return {"threshold": threshold, "target_accuracy": target_accuracy, "confidence": confidence,
            "images": int(probs.shape[0]), "calibration_accuracy": float(correct[rows, stop].mean()),
            "calibration_coverage": float(cover[rows, stop].mean()),
            "flat_accuracy": float(correct[:, 0].mean()), "leaf_coverage": float(cover[:, 0].mean())}


def _csv_row(record: dict) -> list:
    cells = []
    for column in CSV_COLUMNS:
        value = record.get(column, "")
        if column in ("path", "node_path") and isinstance(value, list):
            value = " > ".join(value)
        elif column == "top_k":
            value = ";".join(f"{t['class']}:{t['score']:.6g}" for t in value)
        elif isinstance(value, float):
            value = f"{value:.6g}"
        cells.append(value)
    return cells


def render_records(records: list[dict], fmt: str) -> str:
    """JSON (a list of records, one per image) or CSV (columns :data:`CSV_COLUMNS`; paths joined by " > ",
    top-k as ``class:score;...``)."""
    if fmt not in FORMATS:
        raise ValueError(f"format {fmt!r}; expected one of {', '.join(FORMATS)}")
    if fmt == "json":
        return json.dumps(records, indent=1, ensure_ascii=False, allow_nan=False) + "\n"
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for record in records:
        writer.writerow(_csv_row(record))
    return buffer.getvalue()


def write_records(records: list[dict], fmt: str, output: str | None, overwrite: bool = False) -> str | None:
    """Write to ``output`` atomically (an existing file only with ``overwrite``), or to stdout when None."""
    from haf.safe_files import atomic_write_text

    text = render_records(records, fmt)
    if output is None:
        sys.stdout.write(text)
        return None
    target = Path(output)
    if target.exists() and not overwrite:
        raise FileExistsError(f"output file exists: {target} (pass --overwrite to replace it)")
    atomic_write_text(target, text)
    return str(target)


def start_ranks(device: str) -> tuple[int, int, torch.device, bool]:
    """Join the process group torchrun describes (WORLD_SIZE > 1): gloo on CPU, NCCL on GPUs. Returns (rank,
    world size, this rank's device, whether this call started the group)."""
    from haf.training.devices import choose_device

    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    torch_device = choose_device(device, local_rank if world > 1 else None)
    started = False
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if torch_device.type == "cuda" else "gloo"
        if torch_device.type == "cuda":
            torch.cuda.set_device(torch_device)
        dist.init_process_group(backend)
        started = True
    rank = dist.get_rank() if dist.is_initialized() else 0
    return rank, (dist.get_world_size() if dist.is_initialized() else 1), torch_device, started
