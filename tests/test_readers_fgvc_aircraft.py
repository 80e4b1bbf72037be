"""FGVC-Aircraft reader over a tiny fake of the original release (names with spaces and slashes, as the real)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from haf.pipelines.readers.registry import load_dataset

# variant -> (family, manufacturer); "F/A-18" and "Fokker 100" (variant and family share a name) as in the real lists.
VARIANTS = {
    "707-320": ("Boeing 707", "Boeing"),
    "727-200": ("Boeing 727", "Boeing"),
    "737-300": ("Boeing 737", "Boeing"),
    "A300B4": ("A300", "Airbus"),
    "F/A-18": ("F/A-18", "McDonnell Douglas"),
    "Fokker 100": ("Fokker 100", "Fokker"),
}
ORDER = ("707-320", "727-200", "737-300", "A300B4", "F/A-18", "Fokker 100")  # variants.txt order


def make_fgvc(root: Path, per_split=2, splits=("train", "val", "test")) -> Path:
    data = root / "fgvc-aircraft-2013b" / "data"
    (data / "images").mkdir(parents=True)
    (data / "variants.txt").write_text("\n".join(ORDER) + "\n")
    (data / "families.txt").write_text("\n".join(sorted({f for f, _ in VARIANTS.values()})) + "\n")
    (data / "manufacturers.txt").write_text("\n".join(sorted({m for _, m in VARIANTS.values()})) + "\n")
    image_id = 1000000
    for split in splits:
        lines = {"variant": [], "family": [], "manufacturer": []}
        for variant in ORDER:
            family, manufacturer = VARIANTS[variant]
            for _ in range(per_split):
                image_id += 1
                Image.new("RGB", (40, 30), (90, 90, 200)).save(data / "images" / f"{image_id:07d}.jpg")
                lines["variant"].append(f"{image_id:07d} {variant}")
                lines["family"].append(f"{image_id:07d} {family}")
                lines["manufacturer"].append(f"{image_id:07d} {manufacturer}")
        for level, rows in lines.items():
            (data / f"images_{level}_{split}.txt").write_text("\n".join(rows) + "\n")
    return root / "fgvc-aircraft-2013b"


def test_release_layout_tree_order_and_banner(tmp_path):
    root = make_fgvc(tmp_path)
    data = load_dataset("fgvc-aircraft", root)
    assert data.classes == ORDER and set(data.splits) == {"train", "val", "test"}
    train = data["train"]
    assert len(train) == 12 and train.crop_bottom == 20  # the copyright banner
    assert np.array_equal(train.labels, np.repeat(np.arange(6), 2))
    listed = (root / "data" / "images_variant_train.txt").read_text().split("\n")[0].split()[0]
    assert train.files[0] == str(root / "data" / "images" / f"{listed}.jpg")
    assert data.hierarchy.height == 3
    d = data.distances.matrix
    i = {c: n for n, c in enumerate(ORDER)}
    assert d[i["707-320"], i["727-200"]] == 2  # same manufacturer, different family
    assert d[i["707-320"], i["A300B4"]] == 3
    # The data/ folder itself is accepted too, and the banner crop can be switched off.
    again = load_dataset("fgvc-aircraft", root / "data", crop_bottom=0, splits=["test"])
    assert set(again.splits) == {"test"} and again["test"].crop_bottom == 0


def test_absent_image_is_named_with_its_line(tmp_path):
    root = make_fgvc(tmp_path)
    first = (root / "data" / "images_variant_val.txt").read_text().split("\n")[2].split()[0]
    (root / "data" / "images" / f"{first}.jpg").unlink()
    with pytest.raises(FileNotFoundError, match=rf"{first}\.jpg \(listed at images_variant_val\.txt:3\)"):
        load_dataset("fgvc-aircraft", root)


def test_missing_files_and_bad_split_are_named(tmp_path):
    root = make_fgvc(tmp_path, splits=("train", "test"))
    with pytest.raises(FileNotFoundError, match="images_variant_val.txt"):
        load_dataset("fgvc-aircraft", root)
    with pytest.raises(ValueError, match="no split 'validation'"):
        load_dataset("fgvc-aircraft", root, splits=["validation"])
    (root / "data" / "images_family_test.txt").unlink()
    with pytest.raises(FileNotFoundError, match="images_family_test.txt"):
        load_dataset("fgvc-aircraft", root, splits=["train"])
    with pytest.raises(FileNotFoundError, match="images_variant"):
        load_dataset("fgvc-aircraft", tmp_path)


def test_unlisted_variant_has_no_hierarchy_entry(tmp_path):
    root = make_fgvc(tmp_path)
    path = root / "data" / "images_variant_test.txt"
    lines = path.read_text().split("\n")
    lines[0] = lines[0].split()[0] + " 747-400"
    path.write_text("\n".join(lines))
    with pytest.raises(ValueError, match="747-400"):
        load_dataset("fgvc-aircraft", root)
