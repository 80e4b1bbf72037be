"""What makes a checkpoint usable on its own: the class tree, the preprocessing, and the checks against a dataset.

A training checkpoint (docs/ARCHITECTURE.md, "Training outputs") carries, besides the weights and the config:

* ``classes`` — the class names in the model's output order;
* ``distances`` — the K × K leaf distances (or the tree arrays of tree distances);
* ``hierarchy`` — the class tree as our JSON text (``Hierarchy.to_json``), None for a distance-only dataset;
* ``preprocessing`` — image size, the evaluation transform, its crop fraction, mean/std and ``crop_bottom``;
* the frame is a buffer of the model, so it is in ``model`` (the weights) exactly as trained.

So the model, its class names, its tree and its input transform are rebuilt from the file alone
(:func:`model_from_checkpoint`), from any directory. Checkpoints written before these fields existed still load:
their tree and distances then come from the dataset the config names, as before.
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["HierarchyChanged", "check_same_hierarchy", "distances_from_state", "hierarchy_from_state",
           "model_from_checkpoint", "portable_fields", "preprocessing_of", "substitute_missing_hierarchy"]

EVAL_CROP_FRACTION = 0.875  # TransformSpec's default; stored so a later change of the default cannot alter a model


class HierarchyChanged(ValueError):
    """The dataset's classes or distances differ from those the checkpoint was trained with."""


def portable_fields(config: Any, data: Any) -> dict:
    """The checkpoint entries that make it self-contained (see the module docstring)."""
    dataset = data.dataset
    hierarchy = getattr(dataset, "hierarchy", None)
    crop_bottom = 0
    for split in getattr(dataset, "splits", {}).values():
        crop_bottom = int(getattr(split, "crop_bottom", 0))
        break
    return {
        "hierarchy": hierarchy.to_json(indent=None) if hierarchy is not None else None,
        "preprocessing": preprocessing_of(config, crop_bottom),
    }


def preprocessing_of(config: Any, crop_bottom: int = 0) -> dict:
    """The evaluation input transform of a run config as plain values."""
    d = config.data
    return {
        "image_size": int(d.image_size),
        "transform": str(d.transforms.eval),
        "eval_crop_fraction": EVAL_CROP_FRACTION,
        "mean": [float(v) for v in d.normalize.mean],
        "std": [float(v) for v in d.normalize.std],
        "crop_bottom": int(crop_bottom),
    }


def hierarchy_from_state(state: dict, source: str = "<checkpoint>"):
    """The checkpoint's class tree (a Hierarchy), or None when it stores none."""
    from haf.hierarchy import Hierarchy

    text = state.get("hierarchy")
    if not text:
        return None
    return Hierarchy.from_json(text, source=f"{source}: hierarchy")


def distances_from_state(state: dict, source: str = "<checkpoint>") -> Any:
    """The stored distances: a K × K int64 array, or TreeDistances for a tree-frame run; None when absent."""
    stored = state.get("distances")
    if stored is None:
        return None
    if isinstance(stored, dict):
        from haf.frame.tree_arrays import TreeArrays
        from haf.hierarchy.tree_distances import TreeDistances

        try:
            tree = TreeArrays(stored["parent"].numpy(), stored["leaf_node"].numpy(),
                              tuple(state.get("classes") or ()) or None)
            return TreeDistances(tree, stored["convention"])
        except (KeyError, ValueError, AttributeError) as error:
            raise ValueError(f"{source}: the stored tree distances are unreadable: {error}") from None
    matrix = stored.numpy() if isinstance(stored, torch.Tensor) else np.asarray(stored)
    return np.asarray(matrix, dtype=np.int64)


@dataclass
class _StoredDataset:
    """The two things model building reads off a dataset, from a checkpoint."""

    classes: tuple[str, ...]
    hierarchy: Any


def model_from_checkpoint(state: dict, path: str | Path) -> tuple[torch.nn.Module, Any, Any, Any]:
    """(model with the checkpoint's weights, config, dataset-like (classes, hierarchy), distances) from the
    checkpoint alone.

    A checkpoint without a stored tree (written before it carried one) is rebuilt from the dataset its config
    names; that dataset must then be readable."""
    from haf.training.assemble import build_model, prepare_dataset
    from haf.training.run_config import load_config

    config = load_config(None, [], data=state["config"], validate_method=True)
    config = config.replace(source=state.get("config_source") or str(path))
    classes = tuple(state.get("classes") or ())
    distances = distances_from_state(state, str(path))
    if "hierarchy" in state and classes and distances is not None:
        dataset = _StoredDataset(classes, hierarchy_from_state(state, str(path)))
    else:
        data = prepare_dataset(config, generate=False)
        dataset, distances = data.dataset, data.distances
    model = build_model(config, dataset, distances)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as error:
        raise ValueError(f"{path}: weights do not fit the model its config describes: {error}") from None
    return model, config, dataset, distances


def substitute_missing_hierarchy(config: Any, state: dict, folder: str | os.PathLike) -> tuple[Any, str | None]:
    """When the config's hierarchy file is gone and the checkpoint carries the tree, point the dataset at a copy of
    the checkpoint's tree written into ``folder``; returns (config, a note for the user or None)."""
    from haf.pipelines.readers.registry import dataset_reader
    import inspect

    text = state.get("hierarchy")
    if not text:
        return config, None
    reader = dataset_reader(config.dataset.kind)
    if "hierarchy" not in inspect.signature(reader).parameters:
        return config, None
    options = dict(config.dataset.options)
    named = options.get("hierarchy")
    if named is not None:
        from haf.hierarchy import resolve_hierarchy_path

        try:
            resolve_hierarchy_path(named)  # a file, or a shipped hierarchy's name
            return config, None
        except FileNotFoundError:
            pass
    elif config.dataset.kind != "image-folder" or (Path(config.dataset.root) / "hierarchy.json").is_file():
        return config, None
    copy = Path(folder) / "hierarchy.json"
    copy.write_text(text)
    import dataclasses

    options["hierarchy"] = str(copy)
    dataset = dataclasses.replace(config.dataset, options=options)
    what = f"hierarchy file {named}" if named is not None else f"{Path(config.dataset.root) / 'hierarchy.json'}"
    return config.replace(dataset=dataset), f"note: {what} not found; using the class tree stored in the checkpoint"


def check_same_hierarchy(state: dict, classes, distances, *, path: str, dataset: str) -> None:
    """The dataset's classes and distances must be the checkpoint's: otherwise one line naming the first
    difference (a class, or a pair of classes and both distances). Silent for checkpoints that store neither."""
    stored_classes = list(state.get("classes") or [])
    classes = list(classes)
    if stored_classes and stored_classes != classes:
        first = next((i for i, (a, b) in enumerate(zip(stored_classes, classes)) if a != b),
                     min(len(stored_classes), len(classes)))
        def name(seq, i):
            return repr(seq[i]) if i < len(seq) else "nothing"
        raise HierarchyChanged(
            f"{path}: the checkpoint's classes differ from dataset {dataset!r} ({len(stored_classes)} vs "
            f"{len(classes)} classes; first difference at index {first}: {name(stored_classes, first)} vs "
            f"{name(classes, first)}): evaluate on the dataset it was trained on")
    stored = distances_from_state(state, path)
    if stored is None:
        return
    from haf.hierarchy.tree_distances import TreeDistances

    if isinstance(stored, TreeDistances) or isinstance(distances, TreeDistances):
        if isinstance(stored, TreeDistances) and isinstance(distances, TreeDistances) and stored.same_as(distances):
            return
        if isinstance(stored, TreeDistances) and isinstance(distances, TreeDistances):
            raise HierarchyChanged(f"{path}: the class tree of dataset {dataset!r} differs from the checkpoint's "
                                   "(tree distances differ)")
        return  # one side dense, the other a tree: the same convention cannot be compared cheaply; nothing to say
    current = np.asarray(distances, dtype=np.int64)
    if current.shape != stored.shape:
        raise HierarchyChanged(f"{path}: the distances of dataset {dataset!r} are {current.shape}, the "
                               f"checkpoint's {stored.shape}")
    differ = np.argwhere(current != stored)
    if differ.size:
        i, j = (int(x) for x in differ[0])
        raise HierarchyChanged(
            f"{path}: the hierarchy of dataset {dataset!r} changed since training: d({classes[i]!r}, "
            f"{classes[j]!r}) is {current[i, j]}, the checkpoint's is {stored[i, j]} ({len(differ) // 2 or 1} "
            "pair(s) differ); pass --allow-hierarchy-change to evaluate with the dataset's hierarchy")


def temporary_folder() -> tempfile.TemporaryDirectory:
    return tempfile.TemporaryDirectory(prefix="haf-ckpt-")
