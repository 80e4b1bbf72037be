"""Reader kind ``synthetic-tree``: a random class tree of any size with a few tiny images per class, in memory.

For exercising large-K training end to end on a CPU (10⁴–10⁵ classes): nothing is written to disk. The tree has
``depth`` levels with sizes growing geometrically to ``num_classes`` leaves (every inner node ≥ 1 child, names
``L<depth>_<index>``). Each class gets a fixed random colour pattern (a ``pattern_size``² grid of RGB cells,
upsampled to ``image_size``); its images are that pattern plus Gaussian noise, so the task is learnable and the
classes are distinct; ``eval_classes`` (None: all) limits val/test to that many evenly spaced classes, so a
10⁵-class run can validate in seconds. Deterministic in ``seed``. Distances: the tree's, under ``convention``, read off the tree
(:class:`haf.hierarchy.tree_distances.TreeDistances`, never a K × K matrix unless ``.matrix`` is asked for).
"""
from __future__ import annotations

import os

import numpy as np

from haf.hierarchy.distance_conventions import DEFAULT_CONVENTION, Convention
from haf.hierarchy import Hierarchy
from haf.hierarchy.tree_distances import TreeDistances

from haf.pipelines.readers.splits import DatasetSplits, Split


def _random_parents(num_classes: int, depth: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Parent index (into the previous level) of every node, level by level; the last level has K nodes."""
    levels, previous = [], 1
    for level in range(1, depth + 1):
        size = num_classes if level == depth else max(int(round(num_classes ** (level / depth))), previous)
        parents = np.sort(np.concatenate([np.arange(previous), rng.integers(0, previous, size - previous)]))
        levels.append(parents)
        previous = size
    return levels


def read_synthetic_tree(root: str | os.PathLike, num_classes: int = 10_000, depth: int = 4, image_size: int = 8,
                        pattern_size: int = 2, train_per_class: int = 2, val_per_class: int = 1,
                        test_per_class: int = 1, noise: float = 0.15, seed: int = 0,
                        convention: Convention = DEFAULT_CONVENTION, eval_classes: int | None = None) -> DatasetSplits:
    """``root`` is unused (the data live in memory); see the module docstring for the options."""
    del root
    if eval_classes is not None and not 1 <= eval_classes <= num_classes:
        raise ValueError(f"synthetic-tree: eval_classes must lie in [1, num_classes = {num_classes}], got {eval_classes}")
    if num_classes < 2 or depth < 1 or image_size < pattern_size or train_per_class < 1:
        raise ValueError(f"synthetic-tree: need num_classes ≥ 2, depth ≥ 1, image_size ≥ pattern_size, "
                         f"train_per_class ≥ 1; got {num_classes}, {depth}, {image_size}, {train_per_class}")
    rng = np.random.default_rng(seed)
    parent_of: dict[str, str] = {}
    for level, parents in enumerate(_random_parents(num_classes, depth, rng), start=1):
        above = "root" if level == 1 else None
        for index, p in enumerate(parents):
            parent_of[f"L{level}_{index}"] = above or f"L{level - 1}_{p}"
    classes = tuple(f"L{depth}_{i}" for i in range(num_classes))
    hierarchy = Hierarchy.from_parents(parent_of, classes, source=f"synthetic-tree(K={num_classes}, seed={seed})")
    patterns = rng.random((num_classes, pattern_size, pattern_size, 3))
    scale = image_size // pattern_size

    evaluated = np.arange(num_classes) if eval_classes is None else np.unique(
        np.linspace(0, num_classes - 1, eval_classes).round().astype(np.int64))

    def images(count: int, split_seed: int, which: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        labels = np.repeat(which, count)
        noisy = patterns[labels] + noise * np.random.default_rng(split_seed).standard_normal(
            (labels.size, pattern_size, pattern_size, 3))
        pixels = np.kron(np.clip(noisy, 0, 1), np.ones((1, scale, scale, 1)))
        canvas = np.zeros((labels.size, image_size, image_size, 3))
        canvas[:, : pixels.shape[1], : pixels.shape[2]] = pixels
        return labels.astype(np.int64), (canvas * 255).round().astype(np.uint8)

    splits = {}
    for offset, (name, count) in enumerate((("train", train_per_class), ("val", val_per_class),
                                            ("test", test_per_class))):
        if count:
            labels, arrays = images(count, seed * 7919 + offset + 1,
                                    np.arange(num_classes) if name == "train" else evaluated)
            splits[name] = Split(name, labels, arrays=arrays)
    distances = TreeDistances.from_hierarchy(hierarchy, convention)
    return DatasetSplits(name="synthetic-tree", classes=classes, distances=distances, hierarchy=hierarchy,
                         splits=splits)
