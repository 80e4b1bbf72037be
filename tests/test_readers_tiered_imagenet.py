"""tieredImageNet-H reader: per-class split lists over a fake ImageNet tree, WordNet-like unbalanced hierarchy."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from haf.pipelines.readers.registry import load_dataset

# Unbalanced: n02 sits at depth 2, n03/n04 at depth 4 (height 4). n01 is a leaf of the full tree but not a class.
EDGES = [("n00000001", "n10"), ("n00000001", "n11"), ("n10", "n01"), ("n10", "n02"), ("n11", "n12"),
         ("n12", "n13"), ("n13", "n03"), ("n13", "n04")]
CLASSES = ("n02", "n03", "n04")


def jpeg(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (16, 16), (1, 2, 3)).save(path, format="JPEG")


def make_tiered(tmp_path: Path) -> tuple[Path, Path, Path]:
    imagenet, lists = tmp_path / "imagenet", tmp_path / "splits_tieredImageNet-H"
    val_counter = 0
    for wnid in CLASSES:
        train_names = [f"{wnid}_{i}.JPEG" for i in range(4)]
        for name in train_names:
            jpeg(imagenet / "train" / wnid / name)
        val_names = []
        for _ in range(2):  # the flat official validation folder
            val_counter += 1
            val_names.append(f"ILSVRC2012_val_{val_counter:08d}.JPEG")
            jpeg(imagenet / "val" / val_names[-1])
        for split, names in (("train", train_names[:3]), ("val", train_names[3:]), ("test", val_names)):
            (lists / split).mkdir(parents=True, exist_ok=True)
            (lists / split / f"{wnid}.txt").write_text("\n".join(names) + "\n")
    isa = tmp_path / "tiered_isa.txt"
    isa.write_text("".join(f"{p} {c}\n" for p, c in EDGES))
    return imagenet, lists, isa


def test_lists_over_imagenet_with_fixed_depth_default(tmp_path):
    imagenet, lists, isa = make_tiered(tmp_path)
    data = load_dataset("tiered-imagenet", imagenet, hierarchy=isa, splits_dir=lists)
    assert data.classes == CLASSES
    assert {k: len(v) for k, v in data.splits.items()} == {"train": 9, "val": 3, "test": 6}
    assert np.array_equal(data["test"].labels, [0, 0, 1, 1, 2, 2])
    assert data["train"].files[0] == str(imagenet / "train" / "n02" / "n02_0.JPEG")
    assert data["test"].files[0] == str(imagenet / "val" / "ILSVRC2012_val_00000001.JPEG")
    assert data.distances.convention == "fixed-depth" and data.hierarchy.height == 4
    d = data.distances.matrix
    # fixed-depth: d = H − depth(LCA); n03/n04 meet at n13 (depth 3) → 1; n02/n03 meet at the root → 4.
    assert d[1, 2] == 1 and d[0, 1] == 4
    lca = load_dataset("tiered-imagenet", imagenet, hierarchy=isa, splits_dir=lists, convention="lca-height")
    assert lca.distances.matrix[0, 1] == 4 and lca.distances.matrix[1, 2] == 1


def test_default_split_folder_and_val_class_folders(tmp_path):
    imagenet, lists, isa = make_tiered(tmp_path)
    lists.rename(imagenet / "splits_tieredImageNet-H")
    # A validation tree re-sorted into class folders (valprep) is found as well.
    (imagenet / "val" / "n03").mkdir()
    name = "ILSVRC2012_val_00000003.JPEG"
    (imagenet / "val" / name).rename(imagenet / "val" / "n03" / name)
    data = load_dataset("tiered-imagenet", imagenet, hierarchy=isa, splits=["test"])
    assert str(imagenet / "val" / "n03" / "ILSVRC2012_val_00000003.JPEG") in data["test"].files


def test_errors_name_image_list_class_and_split(tmp_path):
    imagenet, lists, isa = make_tiered(tmp_path)
    with pytest.raises(FileNotFoundError, match="needs hierarchy"):
        load_dataset("tiered-imagenet", imagenet, splits_dir=lists)
    (imagenet / "train" / "n03" / "n03_1.JPEG").unlink()
    with pytest.raises(FileNotFoundError, match=r"n03_1\.JPEG \(.*n03\.txt:2\)"):
        load_dataset("tiered-imagenet", imagenet, hierarchy=isa, splits_dir=lists)
    (lists / "val" / "n04.txt").unlink()
    with pytest.raises(ValueError, match="class 'n04' is missing from split 'val'"):
        load_dataset("tiered-imagenet", imagenet, hierarchy=isa, splits_dir=lists)
    (lists / "test" / "n99.txt").write_text("x.JPEG\n")
    with pytest.raises(ValueError, match="n99"):
        load_dataset("tiered-imagenet", imagenet, hierarchy=isa, splits_dir=lists, splits=["test"])
    with pytest.raises(FileNotFoundError, match="split-list folder not found"):
        load_dataset("tiered-imagenet", imagenet, hierarchy=isa)
