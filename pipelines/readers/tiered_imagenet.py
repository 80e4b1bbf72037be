"""Reader for tieredImageNet-H: per-class split lists over an ImageNet (ILSVRC-2012) tree.

The split lists (``splits_tieredImageNet-H`` from "making better mistakes") hold one file per class and split::

    <splits_dir>/{train,val,test}/<wnid>.txt      one image file name per line, e.g. n01440764_10026.JPEG

The images live in the usual ImageNet tree under ``root``; each name is looked up, in order, in
``train/<wnid>/``, ``val/<wnid>/``, ``val/`` (the flat official validation folder) and ``<wnid>/``. A line that
holds a relative path (with ``/``) is taken relative to ``root``. Class order = sorted wnids (the prepared folders'
sorted names). The hierarchy is a file option (``tiered_imagenet_tree.pkl``, ``*_isa.txt``, our ``.json`` or
``*_distances.pkl.xz``); the default convention is "fixed-depth", d = 12 − depth(LCA), as the field's distance
files use for this unbalanced tree (docs/METHOD.md).
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from haf.hierarchy.distance_conventions import Convention
from haf.pipelines.readers.common import (
    SPLIT_NAMES,
    check_same_classes,
    dataset_splits,
    hierarchy_from_file,
    make_file_split,
    require_dir,
)
from haf.pipelines.readers.splits import DatasetSplits

DEFAULT_SPLITS_DIR = "splits_tieredImageNet-H"


class ImageLocator:
    """Finds an ImageNet file by name, listing each candidate folder once (not one stat per image)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._listings: dict[Path, frozenset[str]] = {}

    def _names(self, folder: Path) -> frozenset[str]:
        if folder not in self._listings:
            try:
                with os.scandir(folder) as entries:
                    self._listings[folder] = frozenset(e.name for e in entries)
            except (FileNotFoundError, NotADirectoryError):
                self._listings[folder] = frozenset()
        return self._listings[folder]

    def candidates(self, wnid: str) -> tuple[Path, ...]:
        return (self.root / "train" / wnid, self.root / "val" / wnid, self.root / "val", self.root / wnid)

    def find(self, wnid: str, entry: str) -> str | None:
        if "/" in entry:
            path = self.root / entry
            return str(path) if path.is_file() else None
        for folder in self.candidates(wnid):
            if entry in self._names(folder):
                return str(folder / entry)
        return None


def read_tiered_imagenet(
    root: str | os.PathLike,
    hierarchy: str | os.PathLike | None = None,
    splits_dir: str | os.PathLike | None = None,
    convention: Convention = "fixed-depth",
    splits: Sequence[str] | None = None,
    name: str = "tiered-imagenet",
) -> DatasetSplits:
    """Read tieredImageNet-H from its per-class lists over the ImageNet tree at ``root``.

    Args:
        hierarchy: the WordNet tree or distance file (required).
        splits_dir: folder of ``{train,val,test}/<wnid>.txt`` (default ``<root>/splits_tieredImageNet-H``).
        convention: "fixed-depth" (the field's, default) or "lca-height".
        splits: which splits to read (default: those present among train/val/test).
    """
    root = require_dir(Path(root).expanduser().absolute(), "ImageNet folder")
    if hierarchy is None:
        raise FileNotFoundError(
            "tieredImageNet-H needs hierarchy=<file> (e.g. tiered_imagenet_tree.pkl, tiered_imagenet_isa.txt "
            "or tiered_imagenet_ilsvrc_distances.pkl.xz from 'making better mistakes')"
        )
    lists_root = Path(splits_dir).expanduser().absolute() if splits_dir is not None else root / DEFAULT_SPLITS_DIR
    require_dir(lists_root, "tieredImageNet-H split-list folder")
    if splits is None:
        splits = [s for s in SPLIT_NAMES if (lists_root / s).is_dir()]
        if not splits:
            raise FileNotFoundError(f"{lists_root}: no train/val/test folders of per-class lists")
    elif isinstance(splits, str):
        splits = [splits]
    per_split_lists: dict[str, dict[str, Path]] = {}
    for split in splits:
        folder = require_dir(lists_root / split, f"split {split!r} list folder")
        lists = {p.stem: p for p in sorted(folder.glob("*.txt"))}
        if not lists:
            raise ValueError(f"{folder}: split {split!r} has no per-class .txt lists")
        per_split_lists[split] = lists
    classes = check_same_classes({s: sorted(l) for s, l in per_split_lists.items()}, str(lists_root))
    tree, distances = hierarchy_from_file(hierarchy, classes, convention)

    locator = ImageLocator(root)
    out = {}
    for split in splits:
        files, labels, absent = [], [], []
        for label, wnid in enumerate(classes):
            listing = per_split_lists[split][wnid]
            count = 0
            for number, raw in enumerate(listing.read_text(encoding="utf-8").splitlines(), start=1):
                entry = raw.strip()
                if not entry:
                    continue
                path = locator.find(wnid, entry)
                if path is None:
                    absent.append(f"{entry} ({listing}:{number})")
                    continue
                files.append(path)
                labels.append(label)
                count += 1
            if count == 0 and not absent:
                raise ValueError(f"{listing}: class {wnid!r} lists no images for split {split!r}")
        if absent:
            searched = ", ".join(str(p.relative_to(root)) + "/" for p in locator.candidates("<wnid>"))
            raise FileNotFoundError(
                f"{root}: {len(absent)} listed image(s) not found (searched {searched}): "
                f"{', '.join(absent[:5])}{' ...' if len(absent) > 5 else ''}"
            )
        out[split] = make_file_split(split, files, labels)
    return dataset_splits(name, classes, tree, distances, out)
