"""Per-level class structure shared by the hierarchical methods (Flamingo, HAFeature, hierarchical CE).

``MethodContext.level_labels`` is K × L: column l holds, for every leaf class, the index of its ancestor at depth
l + 1 (coarse → fine; shallow leaves of an unbalanced tree repeat themselves down to the last column). From it
:func:`class_levels` derives the levels the methods train on:

* every column is relabelled to contiguous node ids 0..n_l − 1 (first-seen order is irrelevant: ``np.unique``);
* the finest level is always the leaf classes themselves in class order (ids = class indices), so the finest
  classifier's logits are directly the K class scores. When the last column already is the leaf level (a
  bijection onto the K classes, as for balanced trees) it is replaced by the identity instead of kept twice;
* levels must nest: all leaves under one node at level l share one node at level l − 1. A violation is an error
  naming the class and the two levels (a table that is not a tree would silently train nonsense).

This module is private to ``haf.methods`` (the registry skips modules starting with ``_``).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["ClassLevels", "class_levels"]


@dataclass(frozen=True)
class ClassLevels:
    """Levels coarse → fine; ``assignments[-1]`` is ``arange(K)`` (the leaves themselves)."""

    assignments: tuple[np.ndarray, ...]  # per level: K int64 node ids in [0, n_l)
    parents: tuple[np.ndarray, ...]  # per level l ≥ 1: n_l int64 ids of each node's parent at level l − 1;
    #                                  parents[0] is all zeros (the root, which is not a level)

    @property
    def num_levels(self) -> int:
        return len(self.assignments)

    @property
    def sizes(self) -> tuple[int, ...]:
        return tuple(int(a.max()) + 1 for a in self.assignments)

    @property
    def num_classes(self) -> int:
        return int(self.assignments[-1].shape[0])


def class_levels(level_labels: np.ndarray | None, num_classes: int, method: str, classes=None) -> ClassLevels:
    """Validate ``level_labels`` (K × L) and build the per-level assignments and parent maps.

    ``method`` and ``classes`` only make error messages name the method and the class at fault.
    """
    if level_labels is None:
        raise ValueError(
            f"method {method!r} needs the class tree (MethodContext.level_labels), but the dataset's hierarchy "
            f"gives only a distance matrix; use a hierarchy file with a tree (.json, *_tree.pkl or *_isa.txt)"
        )
    labels = np.asarray(level_labels)
    if labels.ndim != 2 or labels.shape[0] != num_classes or labels.shape[1] < 1:
        raise ValueError(
            f"method {method!r}: level_labels must be K × L with K = {num_classes} rows and L ≥ 1, "
            f"got shape {labels.shape}"
        )
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"method {method!r}: level_labels must hold integer node ids, got dtype {labels.dtype}")

    columns = [np.unique(labels[:, col], return_inverse=True)[1].astype(np.int64) for col in range(labels.shape[1])]
    if len(np.unique(columns[-1])) == num_classes:
        columns.pop()  # the leaf level itself: replaced by the identity below
    columns.append(np.arange(num_classes, dtype=np.int64))

    parents = [np.zeros(int(columns[0].max()) + 1, dtype=np.int64)]
    for level in range(1, len(columns)):
        fine, coarse = columns[level], columns[level - 1]
        parent = np.full(int(fine.max()) + 1, -1, dtype=np.int64)
        parent[fine] = coarse  # last write wins; checked for consistency just below
        bad = np.nonzero(parent[fine] != coarse)[0]
        if bad.size:
            first = int(bad[0])
            other = int(np.nonzero((fine == fine[first]) & (coarse != coarse[first]))[0][0])
            a, b = sorted((first, other))
            name_a, name_b = (classes[a], classes[b]) if classes is not None else (a, b)
            raise ValueError(
                f"method {method!r}: level_labels is not a tree: classes {name_a!r} and {name_b!r} share their "
                f"level-{level} node but not their level-{level - 1} ancestor"
            )
        parents.append(parent)
    return ClassLevels(assignments=tuple(columns), parents=tuple(parents))
