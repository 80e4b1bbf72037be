"""haf.hierarchy: tree structure, both distance conventions (hand-worked), per-level labels, every reader's round
trip with fixture files made here, the restricted unpickler, and every bad-input error path."""

from __future__ import annotations

import io
import lzma
import os
import pickle
import random

import numpy as np
import pytest

from haf.hierarchy import (
    ClassDistances,
    Hierarchy,
    distances_from_pairs,
    load_class_distances,
    load_hierarchy,
    write_distances_pickle,
    write_isa,
    write_tree_pickle,
)

# Balanced, height 2:  root ─ X ─ {a, b};  root ─ Y ─ {c, d}
BALANCED = [("root", "X"), ("root", "Y"), ("X", "a"), ("X", "b"), ("Y", "c"), ("Y", "d")]

# Unbalanced, height 3 (leaves at depths 1, 2, 2, 2, 3, 3):
#   r ─ A ─ {a1, a2}
#   r ─ B ─ {b1, C ─ {c1, c2}}
#   r ─ s
UNBALANCED = [
    ("r", "A"), ("A", "a1"), ("A", "a2"),
    ("r", "B"), ("B", "C"), ("C", "c1"), ("C", "c2"), ("B", "b1"),
    ("r", "s"),
]  # fmt: skip
UNBALANCED_CLASSES = ("a1", "a2", "b1", "c1", "c2", "s")  # sorted leaf names
# Subtree heights: A = 1, C = 1, B = 2, r = 3.  Depths: A = B = 1, C = 2.
# lca-height: d = height(LCA).  a1–a2: A → 1; b1–c*: B → 2; c1–c2: C → 1; anything across the root → 3.
UNBALANCED_LCA_HEIGHT = np.array(
    [
        [0, 1, 3, 3, 3, 3],
        [1, 0, 3, 3, 3, 3],
        [3, 3, 0, 2, 2, 3],
        [3, 3, 2, 0, 1, 3],
        [3, 3, 2, 1, 0, 3],
        [3, 3, 3, 3, 3, 0],
    ]
)
# fixed-depth: d = H − depth(LCA) = 3 − depth.  a1–a2: 3 − 1 = 2 (differs!); b1–c*: 3 − 1 = 2; c1–c2: 3 − 2 = 1.
UNBALANCED_FIXED_DEPTH = np.array(
    [
        [0, 2, 3, 3, 3, 3],
        [2, 0, 3, 3, 3, 3],
        [3, 3, 0, 2, 2, 3],
        [3, 3, 2, 0, 1, 3],
        [3, 3, 2, 1, 0, 3],
        [3, 3, 3, 3, 3, 0],
    ]
)


def brute_force_distances(hierarchy: Hierarchy, convention: str) -> np.ndarray:
    """Reference: one LCA per pair, straight from the definitions."""
    k = hierarchy.num_classes
    out = np.zeros((k, k), dtype=np.int64)
    for i, a in enumerate(hierarchy.classes):
        for j, b in enumerate(hierarchy.classes):
            if i != j:
                lca = hierarchy.lca(a, b)
                if convention == "lca-height":
                    out[i, j] = hierarchy.subtree_height(lca)
                else:
                    out[i, j] = hierarchy.height - hierarchy.depth(lca)
    return out


def random_tree_edges(seed: int, inner: int, leaves: int) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    parents = ["root"]
    edges = []
    for i in range(inner):
        child = f"n{i}"
        edges.append((rng.choice(parents), child))
        parents.append(child)
    for i in range(leaves):
        edges.append((rng.choice(parents), f"leaf{i}"))
    return edges


# --------------------------------------------------------------------------- structure


def test_structure_of_unbalanced_tree():
    h = Hierarchy.from_edges(UNBALANCED)
    assert h.classes == UNBALANCED_CLASSES
    assert h.num_classes == 6
    assert h.root == "r"
    assert h.height == 3
    assert h.parent("c1") == "C" and h.parent("r") is None
    assert h.children("B") == ("C", "b1")  # edge order
    assert h.children("a1") == ()
    assert h.ancestors("c2") == ("C", "B", "r")
    assert h.ancestors("r") == ()
    assert [h.depth(n) for n in ("r", "A", "C", "c1", "s")] == [0, 1, 2, 3, 1]
    assert h.lca("c1", "b1") == "B"
    assert h.lca("a2", "c2") == "r"
    assert h.lca("c1", "c1") == "c1"
    assert h.lca("C", "c2") == "C"
    assert h.subtree_height("B") == 2
    assert h.class_index("c1") == 3
    assert "C" in h and "zz" not in h


def test_immutable_and_picklable():
    import copy

    h = Hierarchy.from_edges(UNBALANCED, classes=["s", "a1", "c1"])
    with pytest.raises(AttributeError, match="immutable"):
        h.height = 5  # type: ignore[misc]
    for clone in (pickle.loads(pickle.dumps(h)), copy.deepcopy(h)):
        assert clone == h and clone.classes == h.classes and clone.height == h.height
        np.testing.assert_array_equal(clone.distance_matrix("lca-height"), h.distance_matrix("lca-height"))


def test_unknown_node_is_an_error_naming_it():
    h = Hierarchy.from_edges(BALANCED)
    with pytest.raises(ValueError, match="'nope'"):
        h.depth("nope")
    with pytest.raises(ValueError, match="'X'"):
        h.class_index("X")


def test_balanced_distances_both_conventions_agree():
    h = Hierarchy.from_edges(BALANCED)
    expected = np.array([[0, 1, 2, 2], [1, 0, 2, 2], [2, 2, 0, 1], [2, 2, 1, 0]])
    for convention in ("lca-height", "fixed-depth"):
        d = h.distance_matrix(convention)
        assert d.dtype == np.int64
        np.testing.assert_array_equal(d, expected)


def test_unbalanced_distances_hand_worked():
    h = Hierarchy.from_edges(UNBALANCED)
    np.testing.assert_array_equal(h.distance_matrix("lca-height"), UNBALANCED_LCA_HEIGHT)
    np.testing.assert_array_equal(h.distance_matrix("fixed-depth"), UNBALANCED_FIXED_DEPTH)


def test_distances_follow_the_given_class_order():
    order = ["s", "c2", "a1", "b1", "a2", "c1"]
    h = Hierarchy.from_edges(UNBALANCED, classes=order)
    assert h.classes == tuple(order)
    rows = [UNBALANCED_CLASSES.index(c) for c in order]
    np.testing.assert_array_equal(h.distance_matrix("lca-height"), UNBALANCED_LCA_HEIGHT[np.ix_(rows, rows)])
    np.testing.assert_array_equal(h.distance_matrix("fixed-depth"), UNBALANCED_FIXED_DEPTH[np.ix_(rows, rows)])


def test_convention_must_be_explicit_and_known():
    h = Hierarchy.from_edges(BALANCED)
    with pytest.raises(TypeError):
        h.distance_matrix()  # type: ignore[call-arg]
    with pytest.raises(ValueError, match="'lca'.*'lca-height'.*'fixed-depth'"):
        h.distance_matrix("lca")


@pytest.mark.parametrize("seed", range(12))
def test_vectorised_distances_match_brute_force_on_random_trees(seed):
    h = Hierarchy.from_edges(random_tree_edges(seed, inner=5 + 3 * seed, leaves=7 + 5 * seed))
    shuffled = list(h.classes)
    random.Random(seed).shuffle(shuffled)
    for tree in (h, Hierarchy.from_edges(random_tree_edges(seed, 5 + 3 * seed, 7 + 5 * seed), shuffled)):
        for convention in ("lca-height", "fixed-depth"):
            np.testing.assert_array_equal(tree.distance_matrix(convention), brute_force_distances(tree, convention))


def test_single_class_tree():
    h = Hierarchy.from_edges([("root", "only")])
    assert h.height == 1
    np.testing.assert_array_equal(h.distance_matrix("lca-height"), [[0]])
    np.testing.assert_array_equal(h.level_labels(), [[0]])


def test_level_labels_unbalanced_repeats_shallow_leaves():
    h = Hierarchy.from_edges(UNBALANCED)
    labels = h.level_labels()
    assert labels.dtype == np.int64 and labels.shape == (6, 3)
    # Depth 1: A, A, B, B, B, s.  Depth 2: a1, a2, b1, C, C, s (a*, b1, s repeat).  Depth 3: every class itself.
    np.testing.assert_array_equal(labels[:, 0], [0, 0, 1, 1, 1, 2])
    np.testing.assert_array_equal(labels[:, 1], [0, 1, 2, 3, 3, 4])
    np.testing.assert_array_equal(labels[:, 2], np.arange(6))
    names = h.level_names()
    assert names == [("A", "B", "s"), ("a1", "a2", "b1", "C", "s"), UNBALANCED_CLASSES]
    for level, level_names in enumerate(names):
        for k, cls in enumerate(h.classes):
            node = level_names[labels[k, level]]
            assert node == cls or node in h.ancestors(cls)


def test_level_labels_balanced():
    h = Hierarchy.from_edges(BALANCED, classes=["d", "a", "c", "b"])
    np.testing.assert_array_equal(h.level_labels(), [[0, 0], [1, 1], [0, 2], [1, 3]])
    assert h.level_names() == [("Y", "X"), ("d", "a", "c", "b")]


# --------------------------------------------------------------------------- classes and pruning


def test_pruning_to_a_class_subset_changes_heights():
    # Keeping a1, a2, b1 drops C's subtree: B's height falls to 1 and the tree height H to 2.
    h = Hierarchy.from_edges(UNBALANCED, classes=["b1", "a1", "a2"])
    assert h.classes == ("b1", "a1", "a2")
    assert h.height == 2
    assert "C" not in h and "s" not in h
    np.testing.assert_array_equal(h.distance_matrix("lca-height"), [[0, 2, 2], [2, 0, 1], [2, 1, 0]])
    np.testing.assert_array_equal(h.distance_matrix("fixed-depth"), [[0, 2, 2], [2, 0, 1], [2, 1, 0]])


def test_pruning_keeps_single_child_chains():
    h = Hierarchy.from_edges(UNBALANCED, classes=["c1", "a1"])
    assert h.depth("c1") == 3 and h.children("B") == ("C",)
    np.testing.assert_array_equal(h.distance_matrix("lca-height"), [[0, 3], [3, 0]])


def test_class_absent_from_hierarchy_is_named():
    with pytest.raises(ValueError, match="'zebra' is absent"):
        Hierarchy.from_edges(BALANCED, classes=["a", "zebra"])


def test_inner_node_as_class_is_an_error():
    with pytest.raises(ValueError, match="'X' is an inner node"):
        Hierarchy.from_edges(BALANCED, classes=["a", "X"])


def test_empty_class_list_is_an_error():
    with pytest.raises(ValueError, match="class list is empty"):
        Hierarchy.from_edges(BALANCED, classes=[])


def test_duplicate_class_in_class_list_is_named():
    with pytest.raises(ValueError, match="'a' is listed twice"):
        Hierarchy.from_edges(BALANCED, classes=["a", "b", "a"])


# --------------------------------------------------------------------------- structural errors


def test_node_with_two_parents_is_named():
    with pytest.raises(ValueError, match=r"node 'a' has two parents, 'X' .* and 'Y'"):
        Hierarchy.from_edges(BALANCED + [("Y", "a")])


def test_cycle_attached_below_root_is_a_two_parent_error():
    with pytest.raises(ValueError, match="'X' has two parents"):
        Hierarchy.from_edges(BALANCED + [("a", "X")])


def test_detached_cycle_is_named():
    with pytest.raises(ValueError, match=r"cycle through node 'p'"):
        Hierarchy.from_edges(BALANCED + [("p", "q"), ("q", "p")])


def test_cycle_without_root_is_named():
    with pytest.raises(ValueError, match="no root; cycle through node"):
        Hierarchy.from_edges([("p", "q"), ("q", "w"), ("w", "p")])


def test_self_loop_is_named():
    with pytest.raises(ValueError, match="'a' is its own parent"):
        Hierarchy.from_edges([("root", "a"), ("a", "a")])


def test_two_roots_are_named():
    with pytest.raises(ValueError, match=r"2 roots \['root', 'other'\]|2 roots \['other', 'root'\]"):
        Hierarchy.from_edges(BALANCED + [("other", "z")])


def test_empty_and_malformed_edges():
    with pytest.raises(ValueError, match="no edges"):
        Hierarchy.from_edges([])
    with pytest.raises(ValueError, match="edge 1: an edge must be a"):
        Hierarchy.from_edges([("r", "a"), ("r", "b", "c")])
    with pytest.raises(ValueError, match="non-empty strings"):
        Hierarchy.from_edges([("r", "")])


def test_repeated_identical_edge_is_harmless():
    assert Hierarchy.from_edges(BALANCED + [("X", "a")]) == Hierarchy.from_edges(BALANCED)


# --------------------------------------------------------------------------- ClassDistances


def test_class_distances_from_hierarchy_and_checks():
    h = Hierarchy.from_edges(UNBALANCED)
    cd = ClassDistances.from_hierarchy(h, "fixed-depth")
    assert cd.classes == UNBALANCED_CLASSES and cd.height == 3 and cd.convention == "fixed-depth"
    assert cd.d_max == 3 and cd.num_classes == 6
    np.testing.assert_array_equal(cd.matrix, UNBALANCED_FIXED_DEPTH)
    sub = cd.reorder(["c2", "a1"])
    np.testing.assert_array_equal(sub.matrix, [[0, 3], [3, 0]])
    with pytest.raises(ValueError, match="'nope' is absent"):
        cd.reorder(["a1", "nope"])
    with pytest.raises(ValueError, match="not symmetric.*'x'.*'y'"):
        ClassDistances(("x", "y"), np.array([[0, 1], [2, 0]]), None, "file", "m")
    with pytest.raises(ValueError, match=r"d\('x', 'x'\) must be 0"):
        ClassDistances(("x", "y"), np.array([[1, 1], [1, 0]]), None, "file", "m")
    with pytest.raises(ValueError, match="positive distance"):
        ClassDistances(("x", "y"), np.array([[0, 0], [0, 0]]), None, "file", "m")
    with pytest.raises(ValueError, match="appears twice"):
        ClassDistances(("x", "x"), np.array([[0, 1], [1, 0]]), None, "file", "m")
    with pytest.raises(ValueError, match="integers"):
        ClassDistances(("x", "y"), np.array([[0, 1.5], [1.5, 0]]), None, "file", "m")
    with pytest.raises(ValueError, match="convention"):
        ClassDistances(("x", "y"), np.array([[0, 1], [1, 0]]), None, "lca", "m")


# --------------------------------------------------------------------------- our JSON format


def test_json_round_trip(tmp_path):
    h = Hierarchy.from_edges(UNBALANCED, classes=["s", "c1", "a1", "b1", "a2", "c2"])
    text = h.to_json(tmp_path / "tree.json")
    assert '"format": "haf-hierarchy"' in text
    back = load_hierarchy(tmp_path / "tree.json")
    assert back == h and back.classes == h.classes  # the stored class order survives
    assert Hierarchy.from_json(text) == h
    reordered = load_hierarchy(tmp_path / "tree.json", classes=sorted(h.classes))
    assert reordered.classes == UNBALANCED_CLASSES


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ("{not json", "not valid JSON"),
        ("[]", "must be a JSON object"),
        ('{"format": "other", "version": 1, "edges": []}', "key 'format'"),
        ('{"images": [], "categories": []}', "key 'format'.*inat2019_hierarchy"),
        ('{"format": "haf-hierarchy", "version": 2, "edges": []}', "key 'version'"),
        ('{"format": "haf-hierarchy", "version": 1, "edges": [], "extra": 1}', r"unknown key\(s\) \['extra'\]"),
        ('{"format": "haf-hierarchy", "version": 1}', "key 'edges'"),
        ('{"format": "haf-hierarchy", "version": 1, "edges": [["r"]]}', r"edges\[0\]"),
        ('{"format": "haf-hierarchy", "version": 1, "edges": [["r", "a"]], "classes": "a"}', "key 'classes'"),
        ('{"format": "haf-hierarchy", "version": 1, "edges": [["r", "a"]], "root": "q"}', "key 'root' says 'q'"),
        ('{"format": "haf-hierarchy", "version": 1, "edges": [["r", "a"], ["q", "a"]]}', r"'a' has two parents.*edges\[1\]"),
    ],
)  # fmt: skip
def test_json_errors_name_the_key(tmp_path, document, message):
    path = tmp_path / "bad.json"
    path.write_text(document)
    with pytest.raises(ValueError, match=message) as info:
        load_hierarchy(path)
    assert str(path) in str(info.value)


# --------------------------------------------------------------------------- *_isa.txt


def test_isa_round_trip_and_comments(tmp_path):
    h = Hierarchy.from_edges(UNBALANCED)
    write_isa(h, tmp_path / "x_isa.txt")
    assert load_hierarchy(tmp_path / "x_isa.txt") == h
    (tmp_path / "y_isa.txt").write_text(
        "# WordNet-style ids\n\nn00001740 n00021939\n  n00021939\tn01440764  # tench\nn00021939 n01443537\n"
    )
    wn = load_hierarchy(tmp_path / "y_isa.txt")
    assert wn.classes == ("n01440764", "n01443537") and wn.height == 2


def test_isa_malformed_line_names_file_and_line(tmp_path):
    path = tmp_path / "bad_isa.txt"
    path.write_text("r a\n# fine\nr b c\n")
    with pytest.raises(ValueError, match=r"bad_isa.txt:3: expected '<parent> <child>'.*'r b c'"):
        load_hierarchy(path)


def test_isa_two_parents_names_both_lines(tmp_path):
    path = tmp_path / "two_isa.txt"
    path.write_text("r A\nr B\nA x\n\nB x\n")
    with pytest.raises(ValueError, match=r"'x' has two parents, 'A' \(.*two_isa.txt:3\) and 'B' \(.*two_isa.txt:5\)"):
        load_hierarchy(path)


def test_isa_writer_refuses_names_with_spaces(tmp_path):
    h = Hierarchy.from_edges([("root", "Boeing 707")])
    with pytest.raises(ValueError, match="'Boeing 707'"):
        write_isa(h, tmp_path / "x_isa.txt")


def test_missing_file_and_unknown_format(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope_isa.txt"):
        load_hierarchy(tmp_path / "nope_isa.txt")
    with pytest.raises(FileNotFoundError, match="nope_distances.pkl.xz"):
        load_class_distances(tmp_path / "nope_distances.pkl.xz")
    (tmp_path / "tree.yaml").write_text("x")
    with pytest.raises(ValueError, match="unknown hierarchy format"):
        load_hierarchy(tmp_path / "tree.yaml")


# --------------------------------------------------------------------------- *_tree.pkl (nltk)

try:  # nltk is an optional extra: it only writes the genuine pickles these tests read back
    import nltk
except ImportError:  # pragma: no cover
    nltk = None
needs_nltk = pytest.mark.skipif(nltk is None, reason="nltk not installed")


@needs_nltk
@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_tree_pickle_round_trip_genuine_nltk(tmp_path, protocol):
    h = Hierarchy.from_edges(UNBALANCED)
    path = tmp_path / "x_tree.pkl"
    write_tree_pickle(h, path, protocol=protocol)
    assert isinstance(pickle.loads(path.read_bytes()), nltk.Tree)  # a real nltk pickle
    back = load_hierarchy(path)
    assert back == h
    np.testing.assert_array_equal(
        load_class_distances(path, convention="fixed-depth").matrix, UNBALANCED_FIXED_DEPTH
    )


@needs_nltk
@pytest.mark.parametrize("protocol", [0, 2, 5])
def test_tree_pickle_handwritten_nltk_tree_with_label_only_leaves(tmp_path, protocol):
    tree = nltk.Tree("root", [nltk.Tree("X", ["a", nltk.Tree("b", [])]), nltk.Tree("Y", ["c", "d"])])
    path = tmp_path / "h_tree.pkl"
    path.write_bytes(pickle.dumps(tree, protocol=protocol))
    assert load_hierarchy(path) == Hierarchy.from_edges(BALANCED)


@needs_nltk
def test_tree_pickle_reads_without_nltk_and_nltk2_labels(tmp_path, monkeypatch):
    tree = nltk.Tree("root", [nltk.Tree("X", ["a", "b"]), nltk.Tree("Y", ["c", "d"])])
    del tree[1].__dict__["_label"]
    tree[1].__dict__["node"] = "Y"  # nltk 2 kept the label here
    path = tmp_path / "old_tree.pkl"
    path.write_bytes(pickle.dumps(tree, protocol=2))
    monkeypatch.setitem(__import__("sys").modules, "nltk", None)  # any import of nltk now fails
    assert load_hierarchy(path) == Hierarchy.from_edges(BALANCED)


@needs_nltk
def test_tree_pickle_duplicate_leaf_is_named(tmp_path):
    path = tmp_path / "dup_tree.pkl"
    path.write_bytes(pickle.dumps(nltk.Tree("root", [nltk.Tree("X", ["a", "b"]), nltk.Tree("Y", ["a"])])))
    with pytest.raises(ValueError, match=r"duplicate leaf name 'a' appears at root\[0\]\[0\] and at root\[1\]\[0\]"):
        load_hierarchy(path)


@needs_nltk
def test_tree_pickle_repeated_inner_label_is_named(tmp_path):
    path = tmp_path / "dup_tree.pkl"
    path.write_bytes(pickle.dumps(nltk.Tree("root", [nltk.Tree("X", ["a"]), nltk.Tree("X", ["b"])])))
    with pytest.raises(ValueError, match="two parents: 'X'"):
        load_hierarchy(path)


@needs_nltk
def test_tree_pickle_non_string_label_is_named(tmp_path):
    path = tmp_path / "bad_tree.pkl"
    path.write_bytes(pickle.dumps(nltk.Tree("root", [nltk.Tree(("t",), ["a"])])))
    with pytest.raises(ValueError, match=r"label at root\[0\] must be a string"):
        load_hierarchy(path)


def test_tree_pickle_of_something_else_is_an_error(tmp_path):
    path = tmp_path / "list_tree.pkl"
    path.write_bytes(pickle.dumps(["a", "b"]))
    with pytest.raises(ValueError, match="expected a pickled nltk.Tree"):
        load_hierarchy(path)
    path.write_bytes(b"not a pickle at all")
    with pytest.raises(ValueError, match="list_tree.pkl"):
        load_hierarchy(path)


class _Exploit:
    """Unpickling this calls os.system: the classic malicious pickle."""

    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


@needs_nltk
@pytest.mark.parametrize("protocol", [0, 2, 5])
def test_malicious_tree_pickle_is_refused_naming_the_global(tmp_path, protocol, monkeypatch):
    calls = []
    monkeypatch.setattr(os, "system", lambda command: calls.append(command))
    path = tmp_path / "evil_tree.pkl"
    payload = nltk.Tree("root", ["a", _Exploit()])
    monkeypatch.undo()  # pickle the genuine os.system reference
    path.write_bytes(pickle.dumps(payload, protocol=protocol))
    monkeypatch.setattr(os, "system", lambda command: calls.append(command))
    with pytest.raises(ValueError, match=r"evil_tree.pkl: refusing to unpickle global (posix|os|nt)\.system"):
        load_hierarchy(path)
    assert calls == []


def test_reconstructor_cannot_build_other_types(tmp_path):
    # Protocol 0 names copy_reg._reconstructor; a forged call with a non-tree class is refused at find_class.
    import collections

    path = tmp_path / "forged_tree.pkl"
    path.write_bytes(pickle.dumps(collections.OrderedDict(a=1), protocol=0))
    with pytest.raises(ValueError, match="refusing to unpickle global collections.OrderedDict"):
        load_hierarchy(path)


# --------------------------------------------------------------------------- *_distances.pkl.xz


def _write_pairs(path, table, protocol=4):
    path.write_bytes(lzma.compress(pickle.dumps(table, protocol=protocol)))


@pytest.mark.parametrize("both_orders", [False, True])
def test_distances_pickle_round_trip(tmp_path, both_orders):
    h = Hierarchy.from_edges(UNBALANCED)
    cd = ClassDistances.from_hierarchy(h, "fixed-depth")
    path = tmp_path / "x_distances.pkl.xz"
    write_distances_pickle(cd, path, both_orders=both_orders)
    back = load_class_distances(path)
    assert back.classes == UNBALANCED_CLASSES
    assert back.height is None and back.convention == "file" and back.source == str(path)
    np.testing.assert_array_equal(back.matrix, UNBALANCED_FIXED_DEPTH)


def test_distances_pickle_with_inner_nodes_and_class_file(tmp_path):
    # Pairs in mixed orders, an inner node 'X' that is not a class, a self pair.
    table = {("a", "b"): 1, ("c", "a"): 2, ("b", "c"): 2, ("a", "X"): 1, ("X", "b"): 1, ("a", "a"): 0}
    path = tmp_path / "t_distances.pkl.xz"
    _write_pairs(path, table, protocol=0)
    (tmp_path / "classes.txt").write_text("c\n# comment\na\n\nb\n")
    cd = load_class_distances(path, classes=tmp_path / "classes.txt")
    assert cd.classes == ("c", "a", "b")
    np.testing.assert_array_equal(cd.matrix, [[0, 2, 2], [2, 0, 1], [2, 1, 0]])
    # Without a class list the inner node cannot be taken as a class: its pairs are incomplete, so reading is
    # refused and the message asks for the class list.
    with pytest.raises(ValueError, match=r"5 of the 6 pairs of its 4 names.*inner nodes.*--classes"):
        load_class_distances(path)


def test_distances_pickle_errors_name_the_class(tmp_path):
    path = tmp_path / "e_distances.pkl.xz"
    _write_pairs(path, {("a", "b"): 1, ("a", "c"): 2})
    with pytest.raises(ValueError, match=r"no distance for the pair \('b', 'c'\)"):
        load_class_distances(path, classes=["a", "b", "c"])
    with pytest.raises(ValueError, match="class 'zz' is absent from the distance file"):
        load_class_distances(path, classes=["a", "zz"])
    _write_pairs(path, {("a", "b"): 1, ("b", "a"): 3})
    with pytest.raises(ValueError, match=r"contradictory distances d\('a', 'b'\) = 1 and d\('b', 'a'\) = 3"):
        load_class_distances(path)
    _write_pairs(path, {("a", "b", "c"): 1})
    with pytest.raises(ValueError, match=r"key \('a', 'b', 'c'\) is not a pair"):
        load_class_distances(path)
    _write_pairs(path, {("a", "b"): -1})
    with pytest.raises(ValueError, match=r"pair \('a', 'b'\) must be a non-negative int"):
        load_class_distances(path)
    _write_pairs(path, {("a", "b"): 1, ("a", "a"): 2})
    with pytest.raises(ValueError, match=r"d\('a', 'a'\) = 2"):
        load_class_distances(path)
    _write_pairs(path, [("a", "b", 1)])
    with pytest.raises(ValueError, match="expected a dict"):
        load_class_distances(path)
    path.write_bytes(b"plain bytes")
    with pytest.raises(ValueError, match="not an lzma/xz file"):
        load_class_distances(path)


def test_malicious_distances_pickle_is_refused(tmp_path, monkeypatch):
    path = tmp_path / "evil_distances.pkl.xz"
    _write_pairs(path, {("a", "b"): _Exploit()})
    calls = []
    monkeypatch.setattr(os, "system", lambda command: calls.append(command))
    with pytest.raises(ValueError, match=r"refusing to unpickle global (posix|os|nt)\.system.*no globals at all"):
        load_class_distances(path)
    assert calls == []


def test_distance_file_is_not_a_tree(tmp_path):
    path = tmp_path / "x_distances.pkl.xz"
    _write_pairs(path, {("a", "b"): 1})
    with pytest.raises(ValueError, match="holds no tree"):
        load_hierarchy(path)


def test_distances_from_pairs_in_memory():
    cd = distances_from_pairs({("b", "a"): 4}, source="mem")
    assert cd.classes == ("a", "b") and cd.d_max == 4


# --------------------------------------------------------------------------- load_class_distances on trees


def test_load_class_distances_from_tree_files(tmp_path):
    h = Hierarchy.from_edges(UNBALANCED)
    h.to_json(tmp_path / "u.json")
    cd = load_class_distances(tmp_path / "u.json", convention="lca-height")
    assert cd.convention == "lca-height" and cd.height == 3 and cd.source == str(tmp_path / "u.json")
    np.testing.assert_array_equal(cd.matrix, UNBALANCED_LCA_HEIGHT)
    pruned = load_class_distances(tmp_path / "u.json", classes=["a1", "a2", "b1"], convention="fixed-depth")
    assert pruned.height == 2
    with pytest.raises(ValueError, match="'file' applies only to distance files"):
        load_class_distances(tmp_path / "u.json", convention="file")
    with pytest.raises(ValueError, match="unknown distance convention 'height'"):
        load_class_distances(tmp_path / "u.json", convention="height")


def test_class_list_file_errors(tmp_path):
    h = Hierarchy.from_edges(BALANCED)
    h.to_json(tmp_path / "b.json")
    (tmp_path / "dup.txt").write_text("a\nb\na\n")
    with pytest.raises(ValueError, match=r"dup.txt:3: class 'a' is listed twice \(first on line 1\)"):
        load_hierarchy(tmp_path / "b.json", classes=tmp_path / "dup.txt")
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        load_hierarchy(tmp_path / "b.json", classes=str(tmp_path / "missing.txt"))


def test_unpickler_rejects_persistent_ids(tmp_path):
    class WithPid(pickle.Pickler):
        def persistent_id(self, obj):
            return "ext" if obj == "b" else None

    buffer = io.BytesIO()
    WithPid(buffer, protocol=2).dump({("a", "b"): 1})
    path = tmp_path / "pid_distances.pkl.xz"
    path.write_bytes(lzma.compress(buffer.getvalue()))
    with pytest.raises(ValueError, match="refusing persistent id 'ext'"):
        load_class_distances(path)
