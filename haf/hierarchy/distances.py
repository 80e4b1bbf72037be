"""``ClassDistances``: the K × K leaf distance matrix every hierarchy file yields, with its class order."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .tree import CONVENTIONS, Hierarchy, check_convention

#: "file" marks distances taken as stored in a distance-only file (no tree known, so no convention to apply).
DISTANCE_KINDS = (*CONVENTIONS, "file")


@dataclass(frozen=True)
class ClassDistances:
    """Leaf distances d(i, j) in the order of ``classes``; rows of D, S and the frame all follow that order.

    Checked on construction: ``matrix`` is K × K int64 with a zero diagonal, symmetric, non-negative, and
    positive off the diagonal (two distinct classes at distance 0 would make their frame rows identical).
    """

    classes: tuple[str, ...]
    matrix: np.ndarray
    height: int | None
    convention: str
    source: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "classes", tuple(self.classes))
        k = len(self.classes)
        if len(set(self.classes)) != k:
            seen: set[str] = set()
            duplicate = next(c for c in self.classes if c in seen or seen.add(c))  # type: ignore[func-returns-value]
            raise ValueError(f"{self.source}: class {duplicate!r} appears twice in the class list")
        if self.convention not in DISTANCE_KINDS:
            raise ValueError(
                f"{self.source}: convention must be one of {', '.join(map(repr, DISTANCE_KINDS))}, "
                f"got {self.convention!r}"
            )
        matrix = np.asarray(self.matrix)
        if matrix.shape != (k, k):
            raise ValueError(f"{self.source}: distance matrix has shape {matrix.shape}, expected ({k}, {k})")
        if not np.issubdtype(matrix.dtype, np.integer):
            raise ValueError(f"{self.source}: distances must be integers, got dtype {matrix.dtype}")
        matrix = matrix.astype(np.int64, copy=False)
        if np.any(np.diagonal(matrix) != 0):
            i = int(np.flatnonzero(np.diagonal(matrix))[0])
            raise ValueError(f"{self.source}: d({self.classes[i]!r}, {self.classes[i]!r}) must be 0")
        bad = np.argwhere(matrix != matrix.T)
        if bad.size:
            i, j = map(int, bad[0])
            raise ValueError(
                f"{self.source}: distances are not symmetric: d({self.classes[i]!r}, {self.classes[j]!r}) = "
                f"{matrix[i, j]} but d({self.classes[j]!r}, {self.classes[i]!r}) = {matrix[j, i]}"
            )
        # The diagonal is all zeros (checked above), so any further entry ≤ 0 is a pair of distinct classes.
        nonpositive = np.argwhere(matrix <= 0)
        bad = nonpositive[nonpositive[:, 0] != nonpositive[:, 1]]
        if bad.size:
            i, j = map(int, bad[0])
            raise ValueError(
                f"{self.source}: d({self.classes[i]!r}, {self.classes[j]!r}) = {matrix[i, j]}; distinct classes "
                "must be at a positive distance"
            )
        if self.height is not None and (not isinstance(self.height, (int, np.integer)) or self.height < 1):
            raise ValueError(f"{self.source}: height must be a positive int or None, got {self.height!r}")
        object.__setattr__(self, "matrix", matrix)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def d_max(self) -> int:
        """Largest distance between two classes (0 when K = 1)."""
        return int(self.matrix.max()) if self.matrix.size else 0

    @classmethod
    def from_hierarchy(cls, hierarchy: Hierarchy, convention: str, source: str | None = None) -> ClassDistances:
        """Distances of a tree under an explicitly chosen convention (``"lca-height"`` or ``"fixed-depth"``)."""
        check_convention(convention)
        return cls(
            classes=hierarchy.classes,
            matrix=hierarchy.distance_matrix(convention),
            height=hierarchy.height,
            convention=convention,
            source=source if source is not None else hierarchy.source,
        )

    def reorder(self, classes: tuple[str, ...] | list[str]) -> ClassDistances:
        """The same distances restricted to / reordered by ``classes``; a class not held is an error naming it."""
        index = {name: i for i, name in enumerate(self.classes)}
        missing = [c for c in classes if c not in index]
        if missing:
            raise ValueError(f"{self.source}: class {missing[0]!r} is absent from the distances")
        rows = np.array([index[c] for c in classes], dtype=np.int64)
        return ClassDistances(
            tuple(classes), self.matrix[np.ix_(rows, rows)], self.height, self.convention, self.source
        )
