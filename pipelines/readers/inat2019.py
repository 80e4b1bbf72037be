"""Reader for iNaturalist 2019's JSON annotations (``train2019.json``, ``val2019.json``; docs/METHOD.md §9).

The 7-level taxonomy (1010 species) is built by ``haf.hierarchy``'s ``inat2019_hierarchy`` from the training
file's categories; classes are ordered by category id (the annotations' label). ``file_name`` is relative to the
folder holding the extracted ``train_val2019/`` tree (``images_root``, default ``root``). The official test set
has no labels, so without ``splits_dir`` the splits are the official train and val; with it, the field's re-split
of the train + val images into train / val / test, given as per-class lists (:func:`_read_split_lists`). The
hierarchy comes from ``train2019.json`` either way.
"""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from haf.hierarchy.distance_conventions import DEFAULT_CONVENTION, Convention
from haf.hierarchy.builders import inat2019_hierarchy
from haf.hierarchy.tree import Hierarchy

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
from haf.safe_files import json_loads

INAT_SPLITS = ("train", "val")
LIST_SPLITS = ("train", "val", "test")
LEAF_PREFIX = "nat"  # hierarchy leaves of the field's inaturalist19 files: nat0000 … nat1009 = category id


def load_annotations(path: Path) -> Mapping:
    """One annotation file, checked for its lists::

        {"images": [{"id": 7, "file_name": "train_val2019/Plants/644/716a69...d5.jpg", ...}, ...],
         "annotations": [{"image_id": 7, "category_id": 644, ...}, ...],
         "categories": [{"id": 644, "name": ..., "kingdom": ..., "phylum": ..., "class": ..., "order": ...,
                         "family": ..., "genus": ...}, ...]}
    """
    require_file(path, "iNat2019 annotation file")
    document = json_loads(path.read_text(encoding="utf-8"), str(path))
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
    convention: Convention = DEFAULT_CONVENTION,
    check_files: bool = True,
    name: str = "inat2019",
    splits_dir: str | os.PathLike | None = None,
) -> DatasetSplits:
    """Read ``<root>/train2019.json`` (+ ``val2019.json``) and the images they list.

    Args:
        images_root: folder the ``file_name`` entries are relative to (default ``root``).
        leaf_name: class names, ``"id"`` (the category id as text) or ``"name"`` (the species name).
        check_files: stat every listed image (an absent one is an error naming it); off for a quick look.
        splits_dir: folder of the re-split's per-class lists ``{train,val,test}/<class>.txt``
            (:func:`_read_split_lists`); relative to ``root`` unless absolute. None: the official train / val JSON
            splits.
    """
    root = require_dir(Path(root).expanduser().absolute(), "iNat2019 folder")
    images_root = require_dir(Path(images_root).expanduser().absolute() if images_root else root, "iNat2019 images")
    check_convention(convention)
    if isinstance(splits, str):
        splits = [splits]
    if splits_dir is not None:
        lists_root = require_dir(root / Path(splits_dir).expanduser(), "iNat2019 split-list folder")
        return _read_split_lists(root, images_root, lists_root, splits, leaf_name, convention, check_files, name)
    for split in splits:
        if split not in INAT_SPLITS:
            raise ValueError(
                f"iNat2019 has no labelled split {split!r}; choose from {', '.join(INAT_SPLITS)} "
                "(test2019 is unlabelled)"
            )
    train_path, train_doc, hierarchy = _train_hierarchy(root, leaf_name)
    classes = hierarchy.classes
    index = {c: i for i, c in enumerate(classes)}
    # Category id → class index: the builder names leaves by id or by species name, in id order.
    class_of_category = {}
    for category in train_doc["categories"]:
        class_of_category[category["id"]] = index[_leaf_of(category, leaf_name)]

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


def _leaf_of(category: Mapping, leaf_name: str) -> str:
    """The hierarchy leaf (class name) of an annotation category: its id as text, or its species name."""
    return str(category["id"]) if leaf_name == "id" else str(category["name"]).strip()


def _train_hierarchy(root: Path, leaf_name: str) -> tuple[Path, Mapping, Hierarchy]:
    """(path, document, hierarchy) of the release's train2019.json: the classes and tree of both layouts."""
    train_path = root / "train2019.json"
    train_doc = load_annotations(train_path)
    return train_path, train_doc, inat2019_hierarchy(train_doc, leaf_name=leaf_name)


def list_names(categories: list, leaf_name: str, index: Mapping[str, int]) -> dict[str, int]:
    """Class index of each accepted per-class list name: category id, ``nat<id>`` leaf name, species name."""
    names: dict[str, int] = {}
    for category in categories:
        leaf = _leaf_of(category, leaf_name)
        for alias in (str(category["id"]), f"{LEAF_PREFIX}{int(category['id']):04d}", str(category["name"]).strip()):
            names[alias] = index[leaf]
    return names


def _read_split_lists(
    root: Path, images_root: Path, lists_root: Path, splits: Sequence[str], leaf_name: str, convention: str,
    check_files: bool, name: str,
) -> DatasetSplits:
    """The re-split of the train + val images given by per-class lists.

    The field's re-split (Making Better Mistakes' ``splits_inat19``) uses the per-class list layout of its
    tieredImageNet-H lists::

        <splits_dir>/{train,val,test}/<class>.txt      one image per line, e.g. 716a69...d5.jpg or
                                                        train_val2019/Plants/644/716a69...d5.jpg

    ``<class>`` is the category id (``644``), the same as a hierarchy leaf (``nat0644``) or the species name. A
    line is matched against the annotation files' ``file_name`` entries, whole or by file name; a list or line that
    matches nothing is an error naming it (file and line).
    """
    if tuple(splits) == INAT_SPLITS:  # the default of the JSON layout: here every list folder present
        splits = [s for s in LIST_SPLITS if (lists_root / s).is_dir()]
    for split in splits:
        if split not in LIST_SPLITS:
            raise ValueError(f"{lists_root}: unknown split {split!r}; choose from {', '.join(LIST_SPLITS)}")
    train_path, train_doc, hierarchy = _train_hierarchy(root, leaf_name)
    classes = hierarchy.classes
    class_of_list = list_names(train_doc["categories"], leaf_name, {c: i for i, c in enumerate(classes)})
    # Every annotated image of the release, by its file_name and by its bare file name.
    by_path: dict[str, str] = {}
    by_name: dict[str, str] = {}
    for document_name in ("train2019.json", "val2019.json"):
        document = train_doc if document_name == "train2019.json" else load_annotations(root / document_name)
        for image in document["images"]:
            file_name = str(image.get("file_name", ""))
            by_path[file_name] = by_name[os.path.basename(file_name)] = str(images_root / file_name)
    out = {}
    for split in splits:
        folder = require_dir(lists_root / split, f"split {split!r} list folder")
        lists = sorted(folder.glob("*.txt"))
        if not lists:
            raise ValueError(f"{folder}: split {split!r} has no per-class .txt lists")
        files, labels, origins = [], [], []
        for listing in lists:
            label = class_of_list.get(listing.stem)
            if label is None:
                raise ValueError(f"{listing}: list name {listing.stem!r} is no category of {train_path.name} "
                                 f"(expected a category id, {LEAF_PREFIX}<id> or a species name)")
            for number, raw in enumerate(listing.read_text(encoding="utf-8").splitlines(), start=1):
                entry = raw.strip()
                if not entry:
                    continue
                path = by_path.get(entry) or by_name.get(os.path.basename(entry))
                if path is None:
                    raise FileNotFoundError(f"{listing}:{number}: listed image {entry!r} is not in train2019.json "
                                            "or val2019.json (neither as file_name nor by file name)")
                files.append(path)
                labels.append(label)
                origins.append(f"{listing}:{number}")
        if check_files:
            check_listed_files_exist(files, str(folder), origins)
        check_split_covers_classes(split, labels, classes, str(folder))
        out[split] = make_file_split(split, files, labels)
    return dataset_splits(name, classes, hierarchy, distances_of(hierarchy, convention, str(train_path)), out)
