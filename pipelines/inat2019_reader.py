"""Reader for iNaturalist 2019's JSON annotations (``train2019.json``, ``val2019.json``).

Each annotation file is COCO-like::

    {"images": [{"id": 7, "file_name": "train_val2019/Plants/644/716a69...d5.jpg", ...}, ...],
     "annotations": [{"image_id": 7, "category_id": 644, ...}, ...],
     "categories": [{"id": 644, "name": ..., "kingdom": ..., "phylum": ..., "class": ..., "order": ...,
                     "family": ..., "genus": ...}, ...]}

The 7-level taxonomy (1010 species) is built by ``haf.hierarchy``'s ``inat2019_hierarchy`` from the training
file's categories; classes are ordered by category id (the annotations' label). ``file_name`` is relative to the
folder holding the extracted ``train_val2019/`` tree (``images_root``, default ``root``). The official test set
has no labels, so the splits are the official train and val; the field's re-split (Bertinetto et al.) ships as
image folders and reads with the ``image-folder`` kind.
"""
from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from haf.hierarchy.builders import inat2019_hierarchy

from .reader_common import (
    check_convention,
    check_listed_files_exist,
    check_split_covers_classes,
    dataset_splits,
    distances_of,
    make_file_split,
    require_dir,
    require_file,
)
from .splits import DatasetSplits

INAT_SPLITS = ("train", "val")


def load_annotations(path: Path) -> Mapping:
    require_file(path, "iNat2019 annotation file")
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON: {error}") from None
    if not isinstance(document, Mapping):
        raise ValueError(f"{path}: expected a JSON object with 'images', 'annotations' and 'categories'")
    for key in ("images", "annotations"):
        if not isinstance(document.get(key), list):
            raise ValueError(f"{path}: key {key!r} must be a list")
    return document


def labelled_images(
    document: Mapping, path: Path, class_of_category: Mapping[int, int], images_root: Path
) -> tuple[list[str], list[int], list[str]]:
    """(files, labels, origins) of one annotation file, in the order of its ``images`` list."""
    category_of_image: dict[int, int] = {}
    for n, annotation in enumerate(document["annotations"]):
        if not isinstance(annotation, Mapping) or "image_id" not in annotation or "category_id" not in annotation:
            raise ValueError(f"{path}: annotations[{n}] needs 'image_id' and 'category_id'")
        image_id, category = annotation["image_id"], annotation["category_id"]
        if category not in class_of_category:
            raise ValueError(
                f"{path}: annotations[{n}] (image {image_id}) has category_id {category!r}, which has no "
                "hierarchy entry (not among the training file's categories)"
            )
        if image_id in category_of_image and category_of_image[image_id] != category:
            raise ValueError(f"{path}: image {image_id} is annotated with two categories")
        category_of_image[image_id] = category
    files, labels, origins = [], [], []
    seen: set = set()
    for n, image in enumerate(document["images"]):
        if not isinstance(image, Mapping) or "id" not in image or not isinstance(image.get("file_name"), str):
            raise ValueError(f"{path}: images[{n}] needs 'id' and a string 'file_name'")
        image_id = image["id"]
        if image_id in seen:
            raise ValueError(f"{path}: images[{n}]: image id {image_id} appears twice")
        seen.add(image_id)
        if image_id not in category_of_image:
            raise ValueError(f"{path}: images[{n}] ({image['file_name']}) has no annotation")
        files.append(str(images_root / image["file_name"]))
        labels.append(class_of_category[category_of_image[image_id]])
        origins.append(f"{path.name} images[{n}]")
    unknown = set(category_of_image) - seen
    if unknown:
        raise ValueError(f"{path}: an annotation names image id {min(unknown)!r}, which is not in 'images'")
    return files, labels, origins


def read_inat2019(
    root: str | os.PathLike,
    images_root: str | os.PathLike | None = None,
    splits: Sequence[str] = INAT_SPLITS,
    leaf_name: str = "id",
    convention: str = "lca-height",
    check_files: bool = True,
    name: str = "inat2019",
) -> DatasetSplits:
    """Read ``<root>/train2019.json`` (+ ``val2019.json``) and the images they list.

    Args:
        images_root: folder the ``file_name`` entries are relative to (default ``root``).
        leaf_name: class names, ``"id"`` (the category id as text) or ``"name"`` (the species name).
        check_files: stat every listed image (an absent one is an error naming it); off for a quick look.
    """
    root = require_dir(Path(root).expanduser().absolute(), "iNat2019 folder")
    images_root = require_dir(Path(images_root).expanduser().absolute() if images_root else root, "iNat2019 images")
    check_convention(convention)
    if isinstance(splits, str):
        splits = [splits]
    for split in splits:
        if split not in INAT_SPLITS:
            raise ValueError(
                f"iNat2019 has no labelled split {split!r}; choose from {', '.join(INAT_SPLITS)} "
                "(test2019 is unlabelled)"
            )
    train_path = root / "train2019.json"
    train_doc = load_annotations(train_path)
    hierarchy = inat2019_hierarchy(train_doc, leaf_name=leaf_name)
    classes = hierarchy.classes
    index = {c: i for i, c in enumerate(classes)}
    # Category id → class index: the builder names leaves by id or by species name, in id order.
    class_of_category = {}
    for category in train_doc["categories"]:
        leaf = str(category["id"]) if leaf_name == "id" else str(category["name"]).strip()
        class_of_category[category["id"]] = index[leaf]

    out = {}
    for split in splits:
        path = train_path if split == "train" else root / f"{split}2019.json"
        document = train_doc if split == "train" else load_annotations(path)
        files, labels, origins = labelled_images(document, path, class_of_category, images_root)
        if not files:
            raise ValueError(f"{path}: no images")
        if check_files:
            check_listed_files_exist(files, str(path), origins)
        check_split_covers_classes(split, labels, classes, str(path))
        out[split] = make_file_split(split, files, labels)
    return dataset_splits(name, classes, hierarchy, distances_of(hierarchy, convention, str(train_path)), out)
