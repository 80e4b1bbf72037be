"""Reader for FGVC-Aircraft's original release (``fgvc-aircraft-2013b``).

Layout (``root`` is the release folder or its ``data/`` folder)::

    data/images/<image_id>.jpg
    data/images_variant_{train,val,test,trainval}.txt       "<image_id> <variant>" per line
    data/images_family_*.txt, data/images_manufacturer_*.txt   the same images' coarser labels
    data/variants.txt, families.txt, manufacturers.txt        the label lists (official order)

The 3-level tree (manufacturer → family → variant; 30/70/100) is built by ``haf.hierarchy``'s
``fgvc_aircraft_hierarchy`` from these files; class order is ``variants.txt``'s (torchvision's label order). Every
image carries a 20-pixel copyright banner at the bottom, which the loaders crop (``Split.crop_bottom``) before any
resize, as the field does.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from haf.hierarchy.distance_conventions import DEFAULT_CONVENTION, Convention
from haf.hierarchy.builders import fgvc_aircraft_hierarchy, read_fgvc_label_file

from haf.pipelines.readers.common import (
    check_convention,
    check_listed_files_exist,
    check_split_covers_classes,
    dataset_splits,
    distances_of,
    make_file_split,
    require_dir,
    require_file,
)
from haf.pipelines.readers.splits import DatasetSplits

BANNER_PX = 20  # height of the copyright banner at the bottom of every FGVC-Aircraft image
FGVC_SPLITS = ("train", "val", "test", "trainval")


def fgvc_data_dir(root: Path) -> Path:
    """``root`` itself or its ``data/`` folder, whichever holds the variant lists."""
    root = require_dir(root, "FGVC-Aircraft folder")
    for candidate in (root / "data", root):
        if any((candidate / f"images_variant_{s}.txt").is_file() for s in FGVC_SPLITS):
            return candidate
    raise FileNotFoundError(
        f"{root}: no images_variant_{{train,val,test}}.txt here or in {root / 'data'} "
        "(expected the original fgvc-aircraft-2013b release)"
    )


def read_fgvc_aircraft(
    root: str | os.PathLike,
    splits: Sequence[str] = ("train", "val", "test"),
    convention: Convention = DEFAULT_CONVENTION,
    crop_bottom: int = BANNER_PX,
    name: str = "fgvc-aircraft",
) -> DatasetSplits:
    """Read the original FGVC-Aircraft release: image lists per split, the 3-level tree, the banner crop.

    Args:
        splits: which lists to read; ``("trainval", "test")`` is the dataset's other official protocol.
        crop_bottom: pixels cropped at the bottom after decoding (20 = the banner; 0 for banner-free copies).
    """
    data_dir = fgvc_data_dir(Path(root).expanduser().absolute())
    check_convention(convention)
    if isinstance(splits, str):
        splits = [splits]
    for split in splits:
        if split not in FGVC_SPLITS:
            raise ValueError(f"FGVC-Aircraft has no split {split!r}; choose from {', '.join(FGVC_SPLITS)}")
    hierarchy = fgvc_aircraft_hierarchy(data_dir)
    classes = hierarchy.classes
    index = {c: i for i, c in enumerate(classes)}
    image_dir = require_dir(data_dir / "images", "FGVC-Aircraft image folder")

    out = {}
    for split in splits:
        listing = require_file(data_dir / f"images_variant_{split}.txt", f"FGVC-Aircraft {split!r} list")
        files, labels, origins = [], [], []
        for image_id, variant, number in read_fgvc_label_file(listing):
            if variant not in index:
                raise ValueError(f"{listing}:{number}: variant {variant!r} has no hierarchy entry")
            files.append(str(image_dir / f"{image_id}.jpg"))
            labels.append(index[variant])
            origins.append(f"{listing.name}:{number}")
        if not files:
            raise ValueError(f"{listing}: the list is empty")
        check_listed_files_exist(files, str(listing), origins)
        check_split_covers_classes(split, labels, classes, str(listing))
        out[split] = make_file_split(split, files, labels, crop_bottom)
    return dataset_splits(name, classes, hierarchy, distances_of(hierarchy, convention, str(data_dir)), out)
