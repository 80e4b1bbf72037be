"""Hierarchies built from raw dataset metadata: iNaturalist 2019 and FGVC-Aircraft.

Inner nodes are named ``"<rank>:<name>"`` (``"genus:Abies"``, ``"family:Boeing 707"``): names repeat across
ranks in both datasets (FGVC-Aircraft has a family and a variant both called "Fokker 100"; obfuscated iNat2019
names are small integers at every rank), and a bare name would merge two different nodes. Leaves (the classes)
keep their plain names. The root is ``"root"``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from haf.safe_files import json_loads

from .tree import Hierarchy

ROOT = "root"

#: iNaturalist 2019 category keys from the coarsest rank to the species (docs/METHOD.md: 7 levels, 1010 species).
INAT2019_RANKS = ("kingdom", "phylum", "class", "order", "family", "genus", "name")

#: FGVC-Aircraft levels from coarse to fine (30 manufacturers, 70 families, 100 variants).
FGVC_LEVELS = ("manufacturer", "family", "variant")
FGVC_SPLITS = ("trainval", "train", "val", "test")


def _add_edge(
    parent_of: dict[str, str], origin_of: dict[str, str], parent: str, child: str, origin: str, source: str
) -> None:
    """Record parent → child, refusing a second, different parent with both origins named."""
    previous = parent_of.get(child)
    if previous is not None and previous != parent:
        raise ValueError(
            f"{source}: node {child!r} has two parents, {previous!r} ({origin_of[child]}) and {parent!r} ({origin})"
        )
    if previous is None:
        parent_of[child] = parent
        origin_of[child] = origin


# --------------------------------------------------------------------------- iNaturalist 2019


def _inat_categories(categories: str | Path | Sequence[Mapping[str, Any]] | Mapping[str, Any]) -> tuple[list, str]:
    if isinstance(categories, (str, Path)):
        path = Path(categories)
        if not path.is_file():
            raise FileNotFoundError(f"iNat2019 annotation file not found: {path}")
        document = json_loads(path.read_text(encoding="utf-8"), str(path))
        source = str(path)
    else:
        document, source = categories, "<iNat2019 categories>"
    if isinstance(document, Mapping):
        if "categories" not in document:
            raise ValueError(f"{source}: no 'categories' key (expected an iNat annotation file or a category list)")
        document = document["categories"]
    if not isinstance(document, list) or not document:
        raise ValueError(f"{source}: 'categories' must be a non-empty list of category objects")
    return document, source


def inat2019_hierarchy(
    categories: str | Path | Sequence[Mapping[str, Any]] | Mapping[str, Any],
    *,
    leaf_name: str = "id",
    inner_names: str = "rank",
) -> Hierarchy:
    """The 7-level iNat2019 taxonomy: root → kingdom → phylum → class → order → family → genus → species.

    ``categories``: an annotation file (``train2019.json``, ``categories.json``), its decoded object, or the
    category list itself; each category carries ``id`` and the keys of :data:`INAT2019_RANKS`.
    ``leaf_name``: ``"id"`` (``str(category id)``, always unique) or ``"name"`` (the species name; two
    categories with one name are an error naming both ids). Classes are ordered by category id, the label the
    annotations use. ``inner_names``: ``"rank"`` names inner nodes ``"genus:<genus>"``; ``"path"`` names them by
    their whole lineage (``"genus:Animalia/.../Aptenodytes"``), for taxonomies where a name recurs under two
    parents (a rank-named node with two parents is an error naming it).
    """
    if leaf_name not in ("id", "name"):
        raise ValueError(f"leaf_name must be 'id' or 'name', got {leaf_name!r}")
    if inner_names not in ("rank", "path"):
        raise ValueError(f"inner_names must be 'rank' or 'path', got {inner_names!r}")
    items, source = _inat_categories(categories)

    by_id: dict[int, tuple[str, list[str]]] = {}
    for index, category in enumerate(items):
        where = f"categories[{index}]"
        if not isinstance(category, Mapping):
            raise ValueError(f"{source}: {where} must be an object, got {type(category).__name__}")
        cid = category.get("id")
        if isinstance(cid, bool) or not isinstance(cid, int):
            raise ValueError(f"{source}: {where} has no integer 'id' (got {cid!r})")
        where = f"{where} (id {cid})"
        if cid in by_id:
            raise ValueError(f"{source}: {where}: category id {cid} appears twice")
        lineage = []
        for rank in INAT2019_RANKS:
            value = category.get(rank)
            if isinstance(value, bool) or not isinstance(value, (str, int)) or str(value).strip() == "":
                raise ValueError(f"{source}: {where}: key {rank!r} must be a non-empty name, got {value!r}")
            lineage.append(str(value).strip())
        by_id[cid] = (where, lineage)

    parent_of: dict[str, str] = {}
    origin_of: dict[str, str] = {}
    leaf_owner: dict[str, str] = {}
    classes = []
    for cid in sorted(by_id):
        where, lineage = by_id[cid]
        parent = ROOT
        for depth, rank in enumerate(INAT2019_RANKS[:-1]):
            label = "/".join(lineage[: depth + 1]) if inner_names == "path" else lineage[depth]
            node = f"{rank}:{label}"
            _add_edge(parent_of, origin_of, parent, node, where, source)
            parent = node
        leaf = str(cid) if leaf_name == "id" else lineage[-1]
        if leaf in leaf_owner:
            raise ValueError(f"{source}: duplicate leaf name {leaf!r}: {leaf_owner[leaf]} and {where}")
        leaf_owner[leaf] = where
        _add_edge(parent_of, origin_of, parent, leaf, where, source)
        classes.append(leaf)
    return Hierarchy(parent_of, classes, source=source, origins=origin_of)


# --------------------------------------------------------------------------- FGVC-Aircraft


def read_fgvc_label_file(path: Path) -> list[tuple[str, str, int]]:
    """FGVC-Aircraft's ``images_<level>_<split>.txt``: ``<image_id> <label with spaces>`` lines → (image id,
    label, line number); shared with the dataset reader in ``haf.pipelines``."""
    out = []
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        line = raw.strip()
        if not line:
            continue
        fields = line.split(maxsplit=1)
        if len(fields) != 2:
            raise ValueError(f"{path}:{number}: expected '<image_id> <label>', got {raw.strip()!r}")
        out.append((fields[0], fields[1].strip(), number))
    return out


def _read_name_list(path: Path) -> list[str]:
    names: list[str] = []
    seen: dict[str, int] = {}
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        name = raw.strip()
        if not name:
            continue
        if name in seen:
            raise ValueError(f"{path}:{number}: {name!r} is listed twice (first on line {seen[name]})")
        seen[name] = number
        names.append(name)
    return names


def fgvc_aircraft_hierarchy(data_dir: str | Path, classes: Iterable[str] | None = None) -> Hierarchy:
    """The 3-level FGVC-Aircraft tree: root → manufacturer → family → variant, from the dataset's ``data/`` folder.

    Reads every split present among ``images_{variant,family,manufacturer}_{trainval,train,val,test}.txt``
    (lines ``<image_id> <label with spaces>``) and joins the three labels of each image. A variant seen under
    two families, or a family under two manufacturers, is a "node with two parents" error naming it and both
    lines. ``variants.txt``, ``families.txt`` and ``manufacturers.txt``, when present, must list exactly the
    labels the image files use (an unlisted label is an error naming file and line; a listed class with no
    image is an error naming it). Class order: ``classes`` if given, else the order of ``variants.txt`` (the
    official order, also torchvision's ``FGVCAircraft`` label order), else sorted variant names.
    """
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise FileNotFoundError(f"FGVC-Aircraft data folder not found: {data_dir}")
    source = str(data_dir)
    splits = [s for s in FGVC_SPLITS if (data_dir / f"images_variant_{s}.txt").is_file()]
    if not splits:
        raise FileNotFoundError(f"{data_dir}: no images_variant_{{trainval,train,val,test}}.txt found")

    listed: dict[str, list[str] | None] = {}
    for level, file_name in zip(FGVC_LEVELS, ("manufacturers.txt", "families.txt", "variants.txt")):
        path = data_dir / file_name
        listed[level] = _read_name_list(path) if path.is_file() else None

    parent_of: dict[str, str] = {}
    origin_of: dict[str, str] = {}
    seen_labels: dict[str, set[str]] = {level: set() for level in FGVC_LEVELS}
    for split in splits:
        per_level: dict[str, dict[str, tuple[str, str]]] = {}
        for level in FGVC_LEVELS:
            path = data_dir / f"images_{level}_{split}.txt"
            if not path.is_file():
                raise FileNotFoundError(f"{path} is missing (its variant file for split {split!r} exists)")
            allowed = set(listed[level]) if listed[level] is not None else None
            labels: dict[str, tuple[str, str]] = {}
            for image, label, number in read_fgvc_label_file(path):
                origin = f"{path}:{number}"
                if image in labels:
                    raise ValueError(f"{origin}: image {image!r} is labelled twice (also {labels[image][1]})")
                if allowed is not None and label not in allowed:
                    raise ValueError(f"{origin}: {level} {label!r} is not listed in {data_dir / _list_file(level)}")
                labels[image] = (label, origin)
                seen_labels[level].add(label)
            per_level[level] = labels
        variants = per_level["variant"]
        for level in ("family", "manufacturer"):
            other = per_level[level]
            for image in variants.keys() ^ other.keys():
                holder = variants.get(image) or other[image]
                raise ValueError(
                    f"{holder[1]}: image {image!r} has a variant or {level} label in only one of "
                    f"images_variant_{split}.txt and images_{level}_{split}.txt"
                )
        for image, (variant, variant_origin) in variants.items():
            family, family_origin = per_level["family"][image]
            manufacturer, _ = per_level["manufacturer"][image]
            manufacturer_node = f"manufacturer:{manufacturer}"
            family_node = f"family:{family}"
            _add_edge(parent_of, origin_of, ROOT, manufacturer_node, family_origin, source)
            _add_edge(parent_of, origin_of, manufacturer_node, family_node, family_origin, source)
            _add_edge(parent_of, origin_of, family_node, variant, variant_origin, source)

    for level in FGVC_LEVELS:
        names = listed[level]
        if names is not None:
            for name in names:
                if name not in seen_labels[level]:
                    raise ValueError(
                        f"{data_dir / _list_file(level)}: {level} {name!r} is absent from the hierarchy "
                        "(no image carries it)"
                    )

    if classes is None:
        classes = listed["variant"] if listed["variant"] is not None else sorted(seen_labels["variant"])
    return Hierarchy(parent_of, list(classes), source=source, origins=origin_of)


def _list_file(level: str) -> str:
    return {"manufacturer": "manufacturers.txt", "family": "families.txt", "variant": "variants.txt"}[level]
