"""iNaturalist 2019 reader over tiny fakes of train2019.json / val2019.json and the train_val2019/ tree."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from haf.pipelines.readers.registry import load_dataset

# Category ids deliberately not in file order.
CATEGORIES = [
    {"id": 2, "name": "Aves sp. b", "kingdom": "Animalia", "phylum": "Chordata", "class": "Aves",
     "order": "Passeriformes", "family": "Corvidae", "genus": "Corvus"},
    {"id": 0, "name": "Aves sp. a", "kingdom": "Animalia", "phylum": "Chordata", "class": "Aves",
     "order": "Passeriformes", "family": "Corvidae", "genus": "Pica"},
    {"id": 1, "name": "Plant sp.", "kingdom": "Plantae", "phylum": "Tracheophyta", "class": "Pinopsida",
     "order": "Pinales", "family": "Pinaceae", "genus": "Abies"},
]


def make_inat(root: Path, per_class=(3, 1)) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    next_id = 100
    for split, count in zip(("train", "val"), per_class):
        images, annotations = [], []
        for category in CATEGORIES:
            for _ in range(count):
                next_id += 1
                file_name = f"train_val2019/{category['kingdom']}/{category['id']}/{next_id:x}.jpg"
                (root / file_name).parent.mkdir(parents=True, exist_ok=True)
                Image.new("RGB", (20, 16), (10, 120, 10)).save(root / file_name)
                images.append({"id": next_id, "file_name": file_name, "width": 20, "height": 16})
                annotations.append({"id": next_id, "image_id": next_id, "category_id": category["id"]})
        document = {"info": {}, "images": images, "annotations": annotations, "categories": CATEGORIES}
        (root / f"{split}2019.json").write_text(json.dumps(document))
    return root


def test_json_layout_labels_and_taxonomy(tmp_path):
    root = make_inat(tmp_path / "inat")
    data = load_dataset("inat2019", root)
    assert data.classes == ("0", "1", "2")  # category ids, in id order
    assert {k: len(v) for k, v in data.splits.items()} == {"train": 9, "val": 3}
    train = data["train"]
    # File order = the images list; category 2 comes first in the file.
    assert train.labels.tolist() == [2, 2, 2, 0, 0, 0, 1, 1, 1]
    assert all(Path(f).is_file() and f.startswith(str(root)) for f in train.files)
    assert data.hierarchy.height == 7
    d = data.distances.matrix
    # LCA(Pica sp., Corvus sp.) = family Corvidae, whose subtree height is 2 (family → genus → species).
    assert d[0, 2] == 2
    assert d[0, 1] == 7  # different kingdoms: the root


def test_species_names_and_images_root(tmp_path):
    root = make_inat(tmp_path / "ann")
    data = load_dataset("inat2019", root, images_root=root, leaf_name="name", splits=["val"])
    assert data.classes == ("Aves sp. a", "Plant sp.", "Aves sp. b") and set(data.splits) == {"val"}


def test_errors_name_the_image_category_and_split(tmp_path):
    root = make_inat(tmp_path / "inat")
    with pytest.raises(ValueError, match="test2019 is unlabelled"):
        load_dataset("inat2019", root, splits=["test"])
    val = json.loads((root / "val2019.json").read_text())
    missing = root / val["images"][1]["file_name"]
    missing.unlink()
    with pytest.raises(FileNotFoundError, match=rf"{missing.name} \(listed at val2019.json images\[1\]\)"):
        load_dataset("inat2019", root)
    assert len(load_dataset("inat2019", root, check_files=False)["val"]) == 3
    val["annotations"][0]["category_id"] = 99
    (root / "val2019.json").write_text(json.dumps(val))
    with pytest.raises(ValueError, match="category_id 99, which has no hierarchy entry"):
        load_dataset("inat2019", root, check_files=False)
    (root / "val2019.json").unlink()
    with pytest.raises(FileNotFoundError, match="val2019.json"):
        load_dataset("inat2019", root)
    train = json.loads((root / "train2019.json").read_text())
    train["annotations"] = [a for a in train["annotations"] if a["category_id"] != 1]
    train["images"] = [i for i in train["images"] if i["id"] in {a["image_id"] for a in train["annotations"]}]
    (root / "train2019.json").write_text(json.dumps(train))
    with pytest.raises(ValueError, match="class '1' is missing from split 'train'"):
        load_dataset("inat2019", root, splits=["train"])


def make_split_lists(root: Path, name_of=lambda c: str(c["id"]), full_path=False) -> Path:
    """The field's re-split layout over the fake release: train + val images spread over train / val / test."""
    images = []
    for split in ("train", "val"):
        document = json.loads((root / f"{split}2019.json").read_text())
        category = {a["image_id"]: a["category_id"] for a in document["annotations"]}
        images += [(image["file_name"], category[image["id"]]) for image in document["images"]]
    lists = root / "splits_inat19"
    for c in CATEGORIES:
        mine = [f for f, cat in images if cat == c["id"]]  # 4 per class: 2 train, 1 val, 1 test
        for split, chosen in (("train", mine[:2]), ("val", mine[2:3]), ("test", mine[3:])):
            (lists / split).mkdir(parents=True, exist_ok=True)
            lines = chosen if full_path else [Path(f).name for f in chosen]
            (lists / split / f"{name_of(c)}.txt").write_text("\n".join(lines) + "\n")
    return lists


@pytest.mark.parametrize("name_of", [lambda c: str(c["id"]), lambda c: f"nat{c['id']:04d}", lambda c: c["name"]])
def test_split_lists_give_train_val_test(tmp_path, name_of):
    root = make_inat(tmp_path / "inat")
    make_split_lists(root, name_of, full_path=name_of(CATEGORIES[0]) == "2")
    data = load_dataset("inat2019", root, splits_dir="splits_inat19")
    assert {k: len(v) for k, v in data.splits.items()} == {"train": 6, "val": 3, "test": 3}
    assert data.classes == ("0", "1", "2")
    all_files = [f for split in data.splits.values() for f in split.files]
    assert len(set(all_files)) == 12 and all(Path(f).is_file() for f in all_files)  # disjoint splits
    test = data["test"]
    for path, label in zip(test.files, test.labels):
        assert f"/{data.classes[label]}/" in path  # the fake tree keeps images under their category id


def test_split_lists_name_what_they_cannot_match(tmp_path):
    root = make_inat(tmp_path / "inat")
    lists = make_split_lists(root)
    (lists / "val" / "0.txt").write_text("nope.jpg\n")
    with pytest.raises(FileNotFoundError, match=r"val/0.txt:1: listed image 'nope.jpg'"):
        load_dataset("inat2019", root, splits_dir=lists)
    (lists / "val" / "0.txt").unlink()
    (lists / "val" / "Quercus.txt").write_text("x.jpg\n")
    with pytest.raises(ValueError, match=r"Quercus.txt: list name 'Quercus' is no category"):
        load_dataset("inat2019", root, splits_dir=lists)
