"""`haf frame --factorization {dense,tree,auto}`: the report, --out round trip, distance-only files."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from haf.cli import main
from haf.frame import load_tree_frame
from haf.hierarchy import ClassDistances, Hierarchy, write_distances_pickle

HIERARCHIES = Path(__file__).resolve().parents[1] / "hierarchies"
EDGES = [("root", "A"), ("root", "B"), ("root", "c9"), ("A", "A1"), ("A", "a4"), ("A1", "a1"), ("A1", "a2"),
         ("B", "b1"), ("B", "b2"), ("B", "b3")]


def run_json(capsys, *argv) -> dict:
    assert main(["frame", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("distance", ["lca-height", "fixed-depth"])
def test_tree_matches_dense_report(capsys, tmp_path, distance):
    path = tmp_path / "tree.json"
    Hierarchy.from_edges(EDGES).to_json(path)
    dense = run_json(capsys, str(path), "--gamma", "2", "--distance", distance)
    tree = run_json(capsys, str(path), "--gamma", "2", "--distance", distance, "--factorization", "tree")
    assert tree["factorization"] == "tree" and dense["factorization"] == "dense"
    assert tree["s_min"] == dense["s_min"] and tree["K"] == dense["K"] == 7
    assert tree["width"] == 10 and dense["width"] == 7  # N − 1 tree nodes below the root
    assert tree["max_gram_error"] < 1e-12 and tree["gram_pairs"] == 49
    assert {"seconds", "d_max", "height"} <= set(tree)


def test_out_round_trip_and_text(capsys, tmp_path):
    out = tmp_path / "frames" / "inat.npz"
    file = str(HIERARCHIES / "inaturalist19_isa.txt")
    report = run_json(capsys, file, "--gamma", "5", "--factorization", "tree", "--out", str(out))
    frame = load_tree_frame(out)
    assert frame.s_min == report["s_min"] and frame.num_classes == 1010 and frame.width == report["width"]
    assert frame.tree.classes[0] and len(frame.tree.classes) == 1010
    assert frame.gram_error()[0] < 1e-12
    assert not [p for p in out.parent.iterdir() if p.name != "inat.npz"]  # no temporary left behind
    with np.load(out, allow_pickle=False) as data:
        assert "parent" in data.files
    assert main(["frame", file, "--gamma", "5", "--factorization", "tree"]) == 0
    text = capsys.readouterr().out
    assert "tree (width 1189)" in text and "not computed" in text
    assert main(["frame", file, "--gamma", "5", "--factorization", "tree", "--out", str(tmp_path / "x.pt")]) != 0
    assert "saved as .npz" in capsys.readouterr().err


def test_auto_and_distance_files(capsys, tmp_path):
    hierarchy = Hierarchy.from_edges(EDGES)
    distances = tmp_path / "tree_distances.pkl.xz"
    write_distances_pickle(ClassDistances.from_hierarchy(hierarchy, "lca-height"), distances)
    assert main(["frame", str(distances), "--gamma", "1", "--factorization", "tree"]) != 0
    assert "holds no tree" in capsys.readouterr().err
    assert run_json(capsys, str(distances), "--gamma", "1", "--factorization", "auto")["factorization"] == "dense"
    path = tmp_path / "tree.json"
    hierarchy.to_json(path)
    assert run_json(capsys, str(path), "--gamma", "1", "--factorization", "auto")["factorization"] == "dense"


def test_load_rejects_other_files(tmp_path):
    path = tmp_path / "other.npz"
    np.savez(path, frame=np.eye(2))
    with pytest.raises(ValueError, match="not a tree frame file"):
        load_tree_frame(path)


def test_a_tree_frame_to_a_pt_file_is_refused_before_it_is_built(monkeypatch, capsys):
    """`--factorization tree --out x.pt` is known to fail before the frame is built (minutes at 10⁶ classes)."""
    from haf.cli import main
    from haf.commands import frame as frame_command

    monkeypatch.setattr(frame_command, "_tree", lambda args: pytest.fail("built the frame before refusing --out"))
    assert main(["frame", "inaturalist19", "--gamma", "5", "--factorization", "tree", "--out", "x.pt"]) == 2
    assert "saved as .npz" in capsys.readouterr().err
