"""What a dataset reader hands to a loader: labelled splits in one class order, plus the hierarchy.

Readers (one per on-disk format) produce a :class:`DatasetSplits`; loaders (DALI or the reference DataLoader)
consume one :class:`Split`. Nothing here reads images.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

import numpy as np

from haf.errors import MissingSplitError
from haf.hierarchy import ClassDistances, Hierarchy


@dataclass(frozen=True)
class Split:
    """One split. Exactly one of ``files`` (encoded images on disk) or ``arrays`` (decoded, in memory) is set."""

    name: str
    labels: np.ndarray  # (N,) int64 indices into DatasetSplits.classes
    files: tuple[str, ...] | None = None  # absolute paths to JPEG/PNG files
    arrays: np.ndarray | None = None  # (N, H, W, 3) uint8, e.g. CIFAR-100
    crop_bottom: int = 0  # pixels to drop at the bottom after decoding (FGVC-Aircraft's 20-px banner)

    def __post_init__(self) -> None:
        if (self.files is None) == (self.arrays is None):
            raise ValueError(f"split {self.name!r}: exactly one of files or arrays must be given")
        n = len(self.files) if self.files is not None else len(self.arrays)
        if len(self.labels) != n:
            raise ValueError(f"split {self.name!r}: {len(self.labels)} labels for {n} images")

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(frozen=True)
class DatasetSplits:
    name: str
    classes: tuple[str, ...]  # class order = sorted folder names unless the format fixes another
    # Leaf distances in the same class order: a ClassDistances (the matrix), or for very large synthetic trees a
    # haf.hierarchy.tree_distances.TreeDistances (same .convention / .matrix, computed off the tree).
    distances: ClassDistances
    hierarchy: Hierarchy | None  # None when only a distance file is known
    splits: Mapping[str, Split] = field(default_factory=dict)

    def __getitem__(self, split: str) -> Split:
        try:
            return self.splits[split]
        except KeyError:
            raise MissingSplitError(f"dataset {self.name!r} has no split {split!r}; it has {sorted(self.splits)}") \
                from None
