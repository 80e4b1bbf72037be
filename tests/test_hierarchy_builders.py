"""haf.hierarchy builders from raw dataset metadata: iNaturalist 2019 categories and FGVC-Aircraft label files,
with fixture metadata written here, hand-worked structure and distances, and every bad-input error path."""

from __future__ import annotations

import json

import numpy as np
import pytest

from haf.hierarchy import INAT2019_RANKS, fgvc_aircraft_hierarchy, inat2019_hierarchy


def category(cid, kingdom, phylum, cls, order, family, genus, name):
    return dict(zip(("id", *INAT2019_RANKS), (cid, kingdom, phylum, cls, order, family, genus, name)))


# Three species: two share the genus, the third differs from the kingdom down. Rank names repeat across ranks
# ("X" is both an order and a genus) to check that nodes of different ranks never merge.
INAT_CATEGORIES = [
    category(2, "Plantae", "Tracheophyta", "Pinopsida", "Pinales", "Pinaceae", "Abies", "Abies grandis"),
    category(0, "Animalia", "Chordata", "Aves", "X", "Spheniscidae", "Aptenodytes", "Aptenodytes forsteri"),
    category(1, "Animalia", "Chordata", "Aves", "X", "Spheniscidae", "X", "X patagonicus"),
    category(3, "Plantae", "Tracheophyta", "Pinopsida", "Pinales", "Pinaceae", "Abies", "Abies concolor"),
]


def test_inat2019_structure_and_distances(tmp_path):
    path = tmp_path / "train2019.json"
    path.write_text(json.dumps({"images": [], "annotations": [], "categories": INAT_CATEGORIES}))
    h = inat2019_hierarchy(path)
    assert h.classes == ("0", "1", "2", "3")  # category-id order
    assert h.height == 7
    assert h.ancestors("3") == (
        "genus:Abies", "family:Pinaceae", "order:Pinales", "class:Pinopsida", "phylum:Tracheophyta",
        "kingdom:Plantae", "root",
    )  # fmt: skip
    assert h.parent("1") == "genus:X" and h.parent("genus:X") == "family:Spheniscidae"
    assert h.children("order:X") == ("family:Spheniscidae",)
    # Balanced tree: both conventions agree. 0–1 meet at the family (height 2), 2–3 at the genus (1), else root (7).
    expected = np.array([[0, 2, 7, 7], [2, 0, 7, 7], [7, 7, 0, 1], [7, 7, 1, 0]])
    np.testing.assert_array_equal(h.distance_matrix("lca-height"), expected)
    np.testing.assert_array_equal(h.distance_matrix("fixed-depth"), expected)
    labels = h.level_labels()
    assert labels.shape == (4, 7)
    np.testing.assert_array_equal(labels[:, 0], [0, 0, 1, 1])  # kingdoms
    np.testing.assert_array_equal(labels[:, 5], [0, 1, 2, 2])  # genera
    assert h.level_names()[0] == ("kingdom:Animalia", "kingdom:Plantae")


def test_inat2019_species_names_as_leaves_and_category_list_input():
    h = inat2019_hierarchy(INAT_CATEGORIES, leaf_name="name")
    assert h.classes == ("Aptenodytes forsteri", "X patagonicus", "Abies grandis", "Abies concolor")
    paths = inat2019_hierarchy(INAT_CATEGORIES, inner_names="path")
    assert paths.parent("2") == "genus:Plantae/Tracheophyta/Pinopsida/Pinales/Pinaceae/Abies"


def test_inat2019_errors_name_the_category():
    with pytest.raises(ValueError, match=r"categories\[1\] \(id 0\): key 'genus' must be a non-empty name"):
        inat2019_hierarchy([INAT_CATEGORIES[0], {**INAT_CATEGORIES[1], "genus": ""}])
    with pytest.raises(ValueError, match=r"categories\[1\] has no integer 'id'"):
        inat2019_hierarchy([INAT_CATEGORIES[0], {k: v for k, v in INAT_CATEGORIES[1].items() if k != "id"}])
    with pytest.raises(ValueError, match="category id 2 appears twice"):
        inat2019_hierarchy([INAT_CATEGORIES[0], INAT_CATEGORIES[0]])
    twin = {**INAT_CATEGORIES[3], "id": 7, "name": "Abies grandis"}
    with pytest.raises(ValueError, match=r"duplicate leaf name 'Abies grandis': categories\[0\] \(id 2\)"):
        inat2019_hierarchy([INAT_CATEGORIES[0], twin], leaf_name="name")
    # The genus Abies placed under a second family: a node with two parents, named.
    moved = {**INAT_CATEGORIES[3], "family": "Cupressaceae"}
    with pytest.raises(ValueError, match="node 'genus:Abies' has two parents, 'family:Pinaceae'.*'family:Cupressaceae'"):
        inat2019_hierarchy([INAT_CATEGORIES[0], moved])
    assert inat2019_hierarchy([INAT_CATEGORIES[0], moved], inner_names="path").num_classes == 2
    with pytest.raises(ValueError, match="no 'categories' key"):
        inat2019_hierarchy({"images": []})
    with pytest.raises(ValueError, match="leaf_name"):
        inat2019_hierarchy(INAT_CATEGORIES, leaf_name="species")


def test_inat2019_missing_and_bad_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="val2019.json"):
        inat2019_hierarchy(tmp_path / "val2019.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ValueError, match="bad.json: not valid JSON"):
        inat2019_hierarchy(tmp_path / "bad.json")


# --------------------------------------------------------------------------- FGVC-Aircraft

# image → (manufacturer, family, variant). "Fokker 100" is both a family and a variant, as in the real dataset.
FGVC_IMAGES = {
    "0034309": ("Boeing", "Boeing 707", "707-320"),
    "0034958": ("Boeing", "Boeing 737", "737-200"),
    "0037511": ("Boeing", "Boeing 737", "737-300"),
    "0037512": ("Boeing", "Boeing 737", "737-300"),
    "1514522": ("Fokker", "Fokker 100", "Fokker 100"),
    "0711322": ("Cessna", "Cessna 172", "Cessna 172"),
}
SPLIT_OF = {"0034309": "train", "0034958": "train", "0037511": "val", "0037512": "test", "1514522": "test",
            "0711322": "train"}  # fmt: skip


def write_fgvc(root, images=FGVC_IMAGES, lists=True):
    for split in ("train", "val", "test"):
        for level, column in (("manufacturer", 0), ("family", 1), ("variant", 2)):
            lines = [f"{image} {labels[column]}\n" for image, labels in images.items() if SPLIT_OF[image] == split]
            (root / f"images_{level}_{split}.txt").write_text("".join(lines))
    if lists:
        for name, column in (("manufacturers.txt", 0), ("families.txt", 1), ("variants.txt", 2)):
            names = sorted({labels[column] for labels in images.values()}, key=lambda n: (len(n), n))
            (root / name).write_text("".join(f"{n}\n" for n in names))
    return root


def test_fgvc_structure_and_distances(tmp_path):
    h = fgvc_aircraft_hierarchy(write_fgvc(tmp_path))
    # variants.txt order (here: by length, then name), not sorted order.
    assert h.classes == ("707-320", "737-200", "737-300", "Cessna 172", "Fokker 100")
    assert h.height == 3
    assert h.ancestors("Fokker 100") == ("family:Fokker 100", "manufacturer:Fokker", "root")
    assert h.children("manufacturer:Boeing") == ("family:Boeing 707", "family:Boeing 737")
    expected = np.array(
        [
            [0, 2, 2, 3, 3],
            [2, 0, 1, 3, 3],
            [2, 1, 0, 3, 3],
            [3, 3, 3, 0, 3],
            [3, 3, 3, 3, 0],
        ]
    )
    np.testing.assert_array_equal(h.distance_matrix("lca-height"), expected)
    np.testing.assert_array_equal(h.distance_matrix("fixed-depth"), expected)
    np.testing.assert_array_equal(h.level_labels(), [[0, 0, 0], [0, 1, 1], [0, 1, 2], [1, 2, 3], [2, 3, 4]])


def test_fgvc_without_name_lists_sorts_and_takes_given_order(tmp_path):
    h = fgvc_aircraft_hierarchy(write_fgvc(tmp_path, lists=False))
    assert h.classes == tuple(sorted({v for _, _, v in FGVC_IMAGES.values()}))
    given = ["Fokker 100", "707-320", "Cessna 172", "737-300", "737-200"]
    assert fgvc_aircraft_hierarchy(tmp_path, classes=given).classes == tuple(given)


def test_fgvc_variant_with_two_families_is_named(tmp_path):
    images = {**FGVC_IMAGES, "0037512": ("Boeing", "Boeing 707", "737-300")}
    write_fgvc(tmp_path, images, lists=False)
    with pytest.raises(ValueError, match=r"node '737-300' has two parents, 'family:Boeing 737' \(.*images_variant_val.txt:1\) and 'family:Boeing 707' \(.*images_variant_test.txt:1\)"):
        fgvc_aircraft_hierarchy(tmp_path)


def test_fgvc_family_with_two_manufacturers_is_named(tmp_path):
    images = {**FGVC_IMAGES, "0037512": ("Airbus", "Boeing 737", "737-300")}
    write_fgvc(tmp_path, images, lists=False)
    with pytest.raises(ValueError, match="node 'family:Boeing 737' has two parents"):
        fgvc_aircraft_hierarchy(tmp_path)


def test_fgvc_malformed_line_is_named(tmp_path):
    write_fgvc(tmp_path)
    (tmp_path / "images_family_val.txt").write_text("0037511\n")
    with pytest.raises(ValueError, match=r"images_family_val.txt:1: expected '<image_id> <label>'"):
        fgvc_aircraft_hierarchy(tmp_path)


def test_fgvc_unlisted_and_unused_labels_are_named(tmp_path):
    write_fgvc(tmp_path)
    (tmp_path / "variants.txt").write_text("707-320\n737-200\n737-300\nCessna 172\nFokker 100\nA380\n")
    with pytest.raises(ValueError, match="variants.txt: variant 'A380' is absent from the hierarchy"):
        fgvc_aircraft_hierarchy(tmp_path)
    (tmp_path / "variants.txt").write_text("707-320\n737-200\n737-300\nCessna 172\n")
    with pytest.raises(ValueError, match=r"images_variant_test.txt:2: variant 'Fokker 100' is not listed"):
        fgvc_aircraft_hierarchy(tmp_path)


def test_fgvc_image_missing_from_one_level_and_missing_files(tmp_path):
    write_fgvc(tmp_path)
    (tmp_path / "images_manufacturer_train.txt").write_text("0034309 Boeing\n0034958 Boeing\n")
    with pytest.raises(ValueError, match="image '0711322' has a variant or manufacturer label in only one"):
        fgvc_aircraft_hierarchy(tmp_path)
    (tmp_path / "images_manufacturer_train.txt").unlink()
    with pytest.raises(FileNotFoundError, match="images_manufacturer_train.txt is missing"):
        fgvc_aircraft_hierarchy(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="empty: no images_variant_"):
        fgvc_aircraft_hierarchy(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="data folder not found: .*absent"):
        fgvc_aircraft_hierarchy(tmp_path / "absent")


def test_fgvc_class_absent_is_named(tmp_path):
    write_fgvc(tmp_path, lists=False)
    with pytest.raises(ValueError, match="class 'A380' is absent from the hierarchy"):
        fgvc_aircraft_hierarchy(tmp_path, classes=["707-320", "A380"])
