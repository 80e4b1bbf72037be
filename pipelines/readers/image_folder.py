"""Reader for image folders ``<root>/{train,val,test}/<class>/<image>`` plus a hierarchy file.

The layout of every prepared dataset of the field (FGVC-Aircraft prepared, iNaturalist 2019 prepared after the
"making better mistakes" re-split, tieredImageNet-H) and of the demo dataset. Class order = sorted folder names,
and the distance matrix, S and the frame rows all follow it. Every split must hold the same classes; a class folder
without images is an error (it could be neither learned nor evaluated).
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from haf.hierarchy.distance_conventions import DEFAULT_CONVENTION, Convention
from haf.pipelines.readers.common import (
    SPLIT_NAMES,
    check_same_classes,
    dataset_splits,
    hierarchy_from_file,
    list_class_folders,
    list_images,
    make_file_split,
    require_dir,
)
from haf.pipelines.readers.splits import DatasetSplits

DEFAULT_HIERARCHY_NAMES = ("hierarchy.json",)  # looked for in <root> when no hierarchy option is given


def find_split_dirs(root: Path, splits: Sequence[str] | None) -> dict[str, Path]:
    """The split folders to read: ``splits`` (each required) or whichever of train/val/test exist."""
    if splits is None:
        found = {s: root / s for s in SPLIT_NAMES if (root / s).is_dir()}
        if not found:
            raise FileNotFoundError(
                f"{root}: no split folder found; expected at least one of {', '.join(SPLIT_NAMES)} "
                "(layout <root>/<split>/<class>/<image>)"
            )
        return found
    if isinstance(splits, str):
        splits = [splits]
    return {s: require_dir(root / s, f"split {s!r} folder") for s in splits}


def default_hierarchy_file(root: Path) -> Path:
    for name in DEFAULT_HIERARCHY_NAMES:
        if (root / name).is_file():
            return root / name
    raise FileNotFoundError(
        f"{root}: no hierarchy given and no {' or '.join(DEFAULT_HIERARCHY_NAMES)} in the dataset folder; pass "
        "hierarchy=<file> (our .json, *_isa.txt, *_tree.pkl or *_distances.pkl.xz)"
    )


def read_image_folder(
    root: str | os.PathLike,
    hierarchy: str | os.PathLike | None = None,
    convention: Convention = DEFAULT_CONVENTION,
    splits: str | Sequence[str] | None = None,
    crop_bottom: int = 0,
    name: str | None = None,
) -> DatasetSplits:
    """Read ``<root>/<split>/<class>/<image>`` with the hierarchy in ``hierarchy`` (default ``<root>/hierarchy.json``).

    Args:
        hierarchy: any file ``haf.hierarchy`` reads; its leaves must include every class folder.
        convention: distance convention for tree files, "lca-height" or "fixed-depth".
        splits: split folders to read (each must exist); default: those of train/val/test that exist.
        crop_bottom: pixels the loaders drop at the bottom of each decoded image (e.g. an un-cropped banner).
        name: dataset name in messages and logs (default: the folder name).
    """
    root = require_dir(Path(root).expanduser().absolute(), "dataset folder")
    if crop_bottom < 0:
        raise ValueError(f"crop_bottom must be ≥ 0, got {crop_bottom}")
    split_dirs = find_split_dirs(root, splits)
    per_split = {split: list_class_folders(path) for split, path in split_dirs.items()}
    for split, names in per_split.items():
        if not names:
            raise ValueError(f"{split_dirs[split]}: split {split!r} has no class folders")
    classes = check_same_classes(per_split, str(root))

    hierarchy_path = Path(hierarchy).expanduser() if hierarchy is not None else default_hierarchy_file(root)
    tree, distances = hierarchy_from_file(hierarchy_path, classes, convention)

    out = {}
    for split, split_dir in split_dirs.items():
        files: list[str] = []
        labels: list[int] = []
        for label, class_name in enumerate(classes):
            images = list_images(split_dir / class_name)
            if not images:
                raise ValueError(f"{split_dir / class_name}: class {class_name!r} has no images in split {split!r}")
            files.extend(images)
            labels.extend([label] * len(images))
        out[split] = make_file_split(split, files, labels, crop_bottom)
    return dataset_splits(name or root.name, classes, tree, distances, out)
