"""Image-folder reader and the ``load_dataset`` registry: layout, class order, hierarchy files, error paths."""
from __future__ import annotations

import lzma
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from haf.hierarchy import Hierarchy
from haf.pipelines.readers.registry import DATASET_KINDS, load_dataset

# A 3-level tree: root → {birds, planes}; birds → {gull, owl}; planes → {jet, prop}; prop has one leaf only.
EDGES = [("root", "birds"), ("root", "planes"), ("birds", "gull"), ("birds", "owl"), ("planes", "jet"),
         ("planes", "props"), ("props", "cessna")]
CLASSES = ("cessna", "gull", "jet", "owl")  # sorted folder names


def jpeg(path: Path, colour=(200, 30, 30), size=(12, 9)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path, format="JPEG")


def write_isa(path: Path, edges=EDGES) -> Path:
    path.write_text("".join(f"{p} {c}\n" for p, c in edges))
    return path


def make_folders(root: Path, splits=("train", "val", "test"), classes=CLASSES, per_class=2) -> Path:
    for split in splits:
        for name in classes:
            for i in range(per_class):
                jpeg(root / split / name / f"{name}_{i}.jpg")
    return root


def test_reads_layout_in_sorted_class_order(tmp_path):
    root = make_folders(tmp_path / "ds")
    (root / "train" / "owl" / "notes.txt").write_text("not an image")  # ignored
    (root / "train" / "owl" / ".hidden.jpg").write_bytes(b"")  # ignored
    jpeg(root / "train" / "owl" / "extra.PNG")  # upper-case extension counts
    data = load_dataset("image-folder", root, hierarchy=write_isa(tmp_path / "tree_isa.txt"))
    assert data.classes == CLASSES and data.name == "ds"
    assert set(data.splits) == {"train", "val", "test"}
    train = data["train"]
    assert len(train) == 9 and train.arrays is None and train.crop_bottom == 0
    assert train.labels.dtype == np.int64
    assert np.array_equal(train.labels, [0, 0, 1, 1, 2, 2, 3, 3, 3])
    for path, label in zip(train.files, train.labels):
        assert Path(path).is_absolute() and Path(path).parent.name == CLASSES[label]
    assert data.hierarchy.classes == CLASSES and data.distances.classes == CLASSES
    # lca-height: cessna–jet meet at planes (subtree height 2); gull–owl siblings; birds vs planes at the root (3).
    d = dict(zip([(a, b) for a in CLASSES for b in CLASSES], data.distances.matrix.ravel().tolist()))
    assert d[("gull", "owl")] == 1 and d[("cessna", "jet")] == 2 and d[("gull", "jet")] == 3


def test_fixed_depth_convention_and_split_subset(tmp_path):
    root = make_folders(tmp_path / "ds", splits=("train", "val"))
    isa = write_isa(tmp_path / "tree_isa.txt")
    data = load_dataset("image-folder", root, hierarchy=isa, convention="fixed-depth", splits=["train"])
    assert set(data.splits) == {"train"} and data.distances.convention == "fixed-depth"
    i, j = CLASSES.index("gull"), CLASSES.index("owl")
    assert data.distances.matrix[i, j] == 2  # H − depth(LCA) = 3 − depth(birds) = 3 − 1 (lca-height would say 1)
    with pytest.raises(FileNotFoundError, match="split 'test'"):
        load_dataset("image-folder", root, hierarchy=isa, splits=["train", "test"])


def test_default_hierarchy_json_and_crop_bottom(tmp_path):
    root = make_folders(tmp_path / "ds", splits=("train",))
    Hierarchy.from_edges(EDGES).to_json(root / "hierarchy.json")
    data = load_dataset("image-folder", root, crop_bottom=20)
    assert data["train"].crop_bottom == 20 and data.hierarchy.height == 3


def test_distance_only_file_gives_no_tree(tmp_path):
    root = make_folders(tmp_path / "ds", splits=("train",))
    pairs = {(a, b): (0 if a == b else 2 if {a, b} <= {"cessna", "jet"} else 1 if {a, b} <= {"gull", "owl"} else 3)
             for a in CLASSES for b in CLASSES}
    path = tmp_path / "toy_distances.pkl.xz"
    path.write_bytes(lzma.compress(pickle.dumps(pairs, protocol=2)))
    data = load_dataset("image-folder", root, hierarchy=path)
    assert data.hierarchy is None and data.distances.convention == "file"
    assert data.distances.matrix[CLASSES.index("gull"), CLASSES.index("owl")] == 1


def test_class_missing_from_a_split_is_named(tmp_path):
    root = make_folders(tmp_path / "ds")
    for f in (root / "val" / "jet").iterdir():
        f.unlink()
    (root / "val" / "jet").rmdir()
    with pytest.raises(ValueError, match=r"class 'jet' is missing from split 'val'"):
        load_dataset("image-folder", root, hierarchy=write_isa(tmp_path / "t_isa.txt"))


def test_class_without_hierarchy_entry_is_named(tmp_path):
    root = make_folders(tmp_path / "ds", classes=CLASSES + ("zeppelin",), splits=("train",))
    with pytest.raises(ValueError, match="zeppelin"):
        load_dataset("image-folder", root, hierarchy=write_isa(tmp_path / "t_isa.txt"))


def test_empty_class_and_missing_inputs_are_named(tmp_path):
    isa = write_isa(tmp_path / "t_isa.txt")
    root = make_folders(tmp_path / "ds", splits=("train",))
    for f in (root / "train" / "owl").iterdir():
        f.unlink()
    with pytest.raises(ValueError, match="class 'owl' has no images in split 'train'"):
        load_dataset("image-folder", root, hierarchy=isa)
    with pytest.raises(FileNotFoundError, match="dataset folder not found"):
        load_dataset("image-folder", tmp_path / "nowhere", hierarchy=isa)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="no split folder"):
        load_dataset("image-folder", empty, hierarchy=isa)
    good = make_folders(tmp_path / "good", splits=("train",))
    with pytest.raises(FileNotFoundError, match="hierarchy.json"):
        load_dataset("image-folder", good)
    with pytest.raises(FileNotFoundError, match="missing_isa.txt"):
        load_dataset("image-folder", good, hierarchy=tmp_path / "missing_isa.txt")
    with pytest.raises(ValueError, match="convention"):
        load_dataset("image-folder", good, hierarchy=isa, convention="lca")


def test_registry_names_unknown_kind_and_option(tmp_path):
    assert DATASET_KINDS == ("image-folder", "fgvc-aircraft", "inat2019", "tiered-imagenet", "cifar100", "demo",
                             "synthetic-tree")
    with pytest.raises(ValueError, match="unknown dataset kind 'imagenet'.*image-folder"):
        load_dataset("imagenet", tmp_path)
    with pytest.raises(ValueError, match="unknown option 'hierachy'.*hierarchy"):
        load_dataset("image-folder", tmp_path, hierachy="x")


@pytest.mark.parametrize("file_name", ["tree.json", "tree_isa.txt", "tree_tree.pkl", "tree_distances.pkl.xz"])
def test_every_hierarchy_format_gives_the_same_distances(tmp_path, file_name):
    from haf.hierarchy import ClassDistances, write_distances_pickle, write_isa as write_isa_file, write_tree_pickle

    root = make_folders(tmp_path / "ds", splits=("train",))
    tree = Hierarchy.from_edges(EDGES)
    path = tmp_path / file_name
    if file_name.endswith(".json"):
        tree.to_json(path)
    elif file_name.endswith("_isa.txt"):
        write_isa_file(tree, path)
    elif file_name.endswith("_tree.pkl"):
        write_tree_pickle(tree, path)
    else:
        write_distances_pickle(ClassDistances.from_hierarchy(tree, "lca-height"), path)
    data = load_dataset("image-folder", root, hierarchy=path)
    assert tree.classes == CLASSES == data.classes
    assert np.array_equal(data.distances.matrix, tree.distance_matrix("lca-height"))
    assert (data.hierarchy is None) == file_name.endswith(".pkl.xz")
