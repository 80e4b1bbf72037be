"""Helpers every dataset reader shares: image listing, the hierarchy/distances pair, split assembly.

Readers turn one on-disk format into a :class:`~haf.pipelines.readers.splits.DatasetSplits`; these helpers keep their
error messages uniform (each names the file, folder, class or split at fault) and their class order explicit.
"""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from haf.hierarchy import ClassDistances, Hierarchy, load_class_distances, load_hierarchy, resolve_hierarchy_path
from haf.hierarchy.distance_conventions import check_convention

from haf.pipelines.readers.splits import DatasetSplits, Split

# What the loaders decode (DALI's and Pillow's common ground); other files in a class folder are not images.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
SPLIT_NAMES = ("train", "val", "test")
DISTANCE_FILE_SUFFIXES = (".pkl.xz", ".pkl.lzma", "_distances.pkl")


def is_image_file(name: str) -> bool:
    return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


def require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        if path.exists():
            raise ValueError(f"{what} {path} is not a folder")
        raise FileNotFoundError(f"{what} not found: {path}")
    return path


def require_file(path: Path, what: str) -> Path:
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    return path


def is_distance_file(path: str | os.PathLike) -> bool:
    return str(path).lower().endswith(DISTANCE_FILE_SUFFIXES)


def hierarchy_from_file(
    path: str | os.PathLike, classes: Sequence[str], convention: str
) -> tuple[Hierarchy | None, ClassDistances]:
    """Tree (None for a distance-only file) and distances for ``classes``, in that order, from any hierarchy file
    (or shipped hierarchy name).

    A class the file does not hold is an error naming the class and the file (raised by ``haf.hierarchy``).
    Distance-only files (``*_distances.pkl.xz``) give their stored values whatever ``convention`` says.
    """
    path = resolve_hierarchy_path(path)  # a path, or a shipped hierarchy's name
    check_convention(convention)
    if is_distance_file(path):
        return None, load_class_distances(path, list(classes))
    hierarchy = load_hierarchy(path, list(classes))
    return hierarchy, ClassDistances.from_hierarchy(hierarchy, convention, source=str(path))


def distances_of(hierarchy: Hierarchy, convention: str, source: str) -> ClassDistances:
    check_convention(convention)
    return ClassDistances.from_hierarchy(hierarchy, convention, source=source)


def list_images(folder: Path) -> list[str]:
    """Absolute paths of the image files directly in ``folder``, sorted by name (the loaders' stable order)."""
    with os.scandir(folder) as entries:
        names = sorted(e.name for e in entries if is_image_file(e.name) and e.is_file())
    base = str(folder.absolute())
    return [os.path.join(base, name) for name in names]


def list_class_folders(split_dir: Path) -> list[str]:
    """Sorted names of the class folders of one split (hidden folders ignored)."""
    with os.scandir(split_dir) as entries:
        return sorted(e.name for e in entries if e.is_dir() and not e.name.startswith("."))


def check_same_classes(per_split: Mapping[str, Sequence[str]], where: str) -> tuple[str, ...]:
    """The common class set of all splits, sorted; a class missing from some split is an error naming both."""
    union = sorted(set().union(*(set(c) for c in per_split.values())))
    for split, names in per_split.items():
        missing = sorted(set(union) - set(names))
        if missing:
            holder = next(s for s, n in per_split.items() if missing[0] in n)
            more = f" (and {len(missing) - 1} more: {missing[1:6]})" if len(missing) > 1 else ""
            raise ValueError(
                f"{where}: class {missing[0]!r} is missing from split {split!r} (it is in split {holder!r}){more}; "
                "every split must have the same classes"
            )
    return tuple(union)


def make_file_split(
    name: str, files: Sequence[str], labels: Sequence[int] | np.ndarray, crop_bottom: int = 0
) -> Split:
    return Split(
        name=name,
        labels=np.asarray(labels, dtype=np.int64),
        files=tuple(files),
        crop_bottom=int(crop_bottom),
    )


def check_listed_files_exist(
    files: Sequence[str], where: str, origins: Sequence[str] | None = None, limit: int = 5
) -> None:
    """Every listed image must exist: the first absent ones are named, with where each was listed, and the count."""
    missing = [i for i, f in enumerate(files) if not os.path.isfile(f)]
    if missing:
        named = [f"{files[i]} (listed at {origins[i]})" if origins is not None else files[i] for i in missing[:limit]]
        extra = f" and {len(missing) - limit} more" if len(missing) > limit else ""
        raise FileNotFoundError(f"{where}: {len(missing)} listed image(s) are absent: {', '.join(named)}{extra}")


def dataset_splits(
    name: str,
    classes: Sequence[str],
    hierarchy: Hierarchy | None,
    distances: ClassDistances,
    splits: Mapping[str, Split],
) -> DatasetSplits:
    """Assemble and cross-check: the distances (and tree) must follow the readers' class order exactly."""
    classes = tuple(classes)
    if tuple(distances.classes) != classes:
        raise ValueError(f"dataset {name!r}: the distances' class order differs from the dataset's class order")
    if hierarchy is not None and tuple(hierarchy.classes) != classes:
        raise ValueError(f"dataset {name!r}: the hierarchy's class order differs from the dataset's class order")
    k = len(classes)
    for split in splits.values():
        if len(split) and (split.labels.min() < 0 or split.labels.max() >= k):
            raise ValueError(f"dataset {name!r}: split {split.name!r} has labels outside 0..{k - 1}")
    return DatasetSplits(name=name, classes=classes, distances=distances, hierarchy=hierarchy, splits=dict(splits))


def check_split_covers_classes(split: str, labels: np.ndarray, classes: Sequence[str], where: str) -> None:
    """List-based formats: every class must appear in every split read (as for image folders)."""
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=len(classes))
    absent = np.flatnonzero(counts == 0)
    if absent.size:
        more = f" (and {absent.size - 1} more)" if absent.size > 1 else ""
        raise ValueError(
            f"{where}: class {classes[int(absent[0])]!r} is missing from split {split!r}{more}; "
            "every split must have the same classes"
        )
