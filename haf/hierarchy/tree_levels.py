"""The per-level view of a class tree: each class's ancestor on every level below the root.

Level l (0-based) holds the nodes at depth l + 1; a class shallower than that stands for itself on that level and
every deeper one, so every class has a label on all H levels and the last level is the classes themselves. The
per-level methods (Flamingo, HAFeature, hierarchical cross-entropy) train on these labels.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def level_nodes(paths: Sequence[Sequence[str]], height: int) -> tuple[np.ndarray, list[tuple[str, ...]]]:
    """(K × H int64 label table, node names per level) from each class's path root → class, in class order.

    See ``Hierarchy.level_labels`` for the numbering.
    """
    labels = np.empty((len(paths), height), dtype=np.int64)
    names: list[tuple[str, ...]] = []
    for level in range(height):
        depth = level + 1
        index: dict[str, int] = {}
        for k, path in enumerate(paths):
            # A leaf shallower than this level stands for itself on every deeper level.
            node = path[depth] if depth < len(path) else path[-1]
            labels[k, level] = index.setdefault(node, len(index))
        names.append(tuple(index))
    return labels, names
