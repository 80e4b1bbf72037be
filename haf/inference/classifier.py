"""A trained model as a plain classifier: ``load_classifier(checkpoint)`` → :class:`HafClassifier`.

The module maps preprocessed images (B × 3 × S × S, see ``.transform``) to class scores (B × K, the scores
``haf eval`` ranks); it carries the class names, the class tree and the preprocessing it was trained with, all read
from the checkpoint (docs/ARCHITECTURE.md, "Training outputs"). :meth:`HafClassifier.predict` turns images into
records: the class, its probability, its path to the root, the top-k and, with a threshold, the node the climb
reaches (hierarchical selective prediction, docs/PREDICTION.md).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

__all__ = ["DECODINGS", "HafClassifier", "load_classifier"]

DECODINGS = ("argmax", "crm")


class HafClassifier(nn.Module):
    """images → class scores, with ``classes``, ``hierarchy`` (None for distance-only data), ``preprocessing``,
    ``transform``, ``distances`` and ``tree`` (a :class:`~haf.metrics.selective.NodeTree`, None without a tree)."""

    def __init__(self, model: nn.Module, classes: Sequence[str], hierarchy: Any, distances: Any, preprocessing: dict,
                 config: Any = None) -> None:
        super().__init__()
        from haf.inference.images import ImageTransform
        from haf.metrics.selective import NodeTree

        self.model = model
        self.classes = tuple(classes)
        self.hierarchy = hierarchy
        self.distances = distances
        self.preprocessing = dict(preprocessing)
        self.transform = ImageTransform(self.preprocessing)
        self.config = config
        if hierarchy is not None:
            self.tree = NodeTree.from_hierarchy(hierarchy)
        else:
            from haf.hierarchy.tree_distances import TreeDistances

            self.tree = NodeTree.from_tree_distances(distances) if isinstance(distances, TreeDistances) else None
        self.eval()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.scores(self.model(images)).float()

    @torch.no_grad()
    def probabilities(self, images: torch.Tensor) -> torch.Tensor:
        """Softmax class probabilities (B × K, fp32): what the climb and CRM decoding use."""
        return self.model.probabilities(self.model(images)).float()

    @property
    def device(self) -> torch.device:
        return next(iter(self.parameters()), torch.zeros(())).device

    def node_name(self, node: int) -> str:
        names = self.tree.names if self.tree is not None else None
        return names[node] if names is not None else f"node{node}"

    def path_to_root(self, node: int) -> list[str]:
        """Names from ``node`` (a node of ``tree``) up to the root."""
        return [self.node_name(v) for v in self.tree.path(node)] if self.tree is not None else []

    def prepare(self, images: Any) -> torch.Tensor:
        """A B × 3 × S × S tensor as is; a sequence of files / PIL images / uint8 tensors through ``transform``."""
        if isinstance(images, torch.Tensor) and images.dim() == 4 and images.is_floating_point():
            return images
        if isinstance(images, (str, os.PathLike)) or not isinstance(images, Sequence):
            images = [images]
        return torch.stack([self.transform(image) for image in images])

    @torch.no_grad()
    def predict(self, images: Any, top_k: int = 5, decode: str = "argmax", threshold: float | None = None
                ) -> list[dict]:
        """One record per image: ``class``, ``score`` (its probability), ``path`` (class → root), ``top_k``
        ([{class, score}]); with ``threshold`` θ also ``node``, ``node_score`` and ``node_path``: the first node on
        the class's path whose probability (sum over its leaves) is ≥ θ. ``decode``: "argmax" or "crm"."""
        probs = self.probabilities(self.prepare(images).to(self.device))
        return records_from_probabilities(self, probs, top_k=top_k, decode=decode, threshold=threshold)


def records_from_probabilities(classifier: HafClassifier, probs: torch.Tensor, *, top_k: int = 5,
                               decode: str = "argmax", threshold: float | None = None) -> list[dict]:
    """The records of :meth:`HafClassifier.predict` from B × K class probabilities."""
    from haf.metrics import crm_predict
    from haf.metrics.selective import climb, node_probabilities, row_chunks

    if decode not in DECODINGS:
        raise ValueError(f"decode={decode!r}; expected one of {', '.join(DECODINGS)}")
    if top_k < 1:
        raise ValueError(f"top_k must be ≥ 1, got {top_k}")
    probs = probs.float()
    k = min(top_k, probs.shape[1])
    top_p, top_i = probs.topk(k, dim=1)
    if decode == "crm":
        distances = classifier.distances
        if isinstance(distances, np.ndarray):
            distances = torch.from_numpy(distances)
        predicted = crm_predict(probs, distances.to(probs.device) if hasattr(distances, "to") else distances)
    else:
        predicted = top_i[:, 0]
    predicted = predicted.cpu().numpy()
    probs_cpu = probs.cpu()
    chosen = conf = None
    tree = classifier.tree
    if threshold is not None:
        if tree is None:
            raise ValueError("selective prediction needs the class tree; this checkpoint has distances only")
        chosen, conf = np.empty(len(predicted), dtype=np.int64), np.empty(len(predicted))
        for rows in row_chunks(len(predicted), tree.num_nodes):  # B × N node probabilities, a chunk at a time
            nodes = node_probabilities(probs_cpu[rows].double().numpy(), tree)
            chosen[rows], conf[rows] = climb(nodes, tree, predicted[rows], float(threshold))
    records = []
    for row, cls in enumerate(predicted):
        cls = int(cls)
        record = {
            "class": classifier.classes[cls],
            "score": float(probs_cpu[row, cls]),
            "path": classifier.path_to_root(int(tree.leaf_node[cls])) if tree is not None
            else [classifier.classes[cls]],
            "top_k": [{"class": classifier.classes[int(i)], "score": float(p)}
                      for p, i in zip(top_p[row].tolist(), top_i[row].tolist())],
        }
        if chosen is not None:
            record["node"] = classifier.node_name(int(chosen[row]))
            record["node_score"] = float(conf[row])
            record["node_path"] = classifier.path_to_root(int(chosen[row]))
        records.append(record)
    return records


def load_classifier(checkpoint: str | os.PathLike, device: str | torch.device | None = None) -> HafClassifier:
    """The model of a training checkpoint (``last.pt`` / ``best.pt``) as a :class:`HafClassifier`, in eval mode.

    Needs nothing but the file (classes, tree, distances, frame and preprocessing are stored in it); a checkpoint
    written before it stored its tree is rebuilt from the dataset its config names. ``device``: None → CPU."""
    from haf.training.checkpoints import load_checkpoint
    from haf.training.portable import model_from_checkpoint, preprocessing_of

    path = Path(checkpoint)
    state = load_checkpoint(path)
    model, config, dataset, distances = model_from_checkpoint(state, path)
    preprocessing = state.get("preprocessing") or preprocessing_of(config)
    classifier = HafClassifier(model, dataset.classes, dataset.hierarchy, distances, preprocessing, config)
    return classifier.to(torch.device(device) if device is not None else torch.device("cpu"))
