"""`haf frame`: every hierarchy format, --json/--out/--s-min/--seed/--distance/--classes, every error path."""
from __future__ import annotations

import json
import lzma
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from haf.cli import main
from haf.frame import build_frame, find_s_min_full_scan
from haf.hierarchy import (
    ClassDistances,
    Hierarchy,
    write_distances_pickle,
    write_isa,
    write_tree_pickle,
)

# Unbalanced: leaves at depths 1 (c9), 2 (b1, b2, c1, c2) and 3 (the rest); height 3. C's subtree is shallow, so
# d(c1, c2) is 1 under lca-height but 3 − depth(C) = 2 under fixed-depth.
EDGES = [
    ("root", "A"), ("root", "B"), ("root", "C"), ("root", "c9"), ("C", "c1"), ("C", "c2"),
    ("A", "A1"), ("A", "A2"), ("A1", "a1"), ("A1", "a2"), ("A1", "a3"), ("A2", "a4"), ("A2", "a5"),
    ("B", "b1"), ("B", "b2"), ("B", "B1"), ("B1", "b3"), ("B1", "b4"),
]
REQUIRED_KEYS = {"K", "height", "d_max", "gamma", "s_min", "min_eigenvalue", "max_gram_error", "seconds"}


@pytest.fixture(scope="module")
def hierarchy() -> Hierarchy:
    return Hierarchy.from_edges(EDGES)


@pytest.fixture(scope="module")
def files(hierarchy, tmp_path_factory) -> dict[str, str]:
    """The same tree in the four formats, written with haf.hierarchy's own writers."""
    folder = tmp_path_factory.mktemp("hierarchies")
    paths = {
        "json": folder / "tree.json",
        "isa": folder / "tree_isa.txt",
        "tree-pickle": folder / "tree_tree.pkl",
        "distances": folder / "tree_distances.pkl.xz",
    }
    hierarchy.to_json(paths["json"])
    write_isa(hierarchy, paths["isa"])
    write_tree_pickle(hierarchy, paths["tree-pickle"])
    write_distances_pickle(ClassDistances.from_hierarchy(hierarchy, "lca-height"), paths["distances"])
    return {name: str(path) for name, path in paths.items()}


def run_json(capsys, *argv) -> dict:
    assert main(["frame", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("kind", ["json", "isa", "tree-pickle", "distances"])
def test_json_report_on_every_format(capsys, hierarchy, files, kind):
    report = run_json(capsys, files[kind], "--gamma", "2")
    assert REQUIRED_KEYS <= set(report)
    d = hierarchy.distance_matrix("lca-height")
    assert report["K"] == 12 and report["d_max"] == 3 and report["gamma"] == 2.0
    assert report["height"] == (None if kind == "distances" else 3)
    assert report["s_min"] == find_s_min_full_scan(d, 2.0)  # the literal 100-point scan
    assert report["min_eigenvalue"] > -1e-6 and report["max_gram_error"] < 1e-5
    assert report["seconds"] >= 0 and report["s_min_searched"] is True


def test_fixed_depth_convention(capsys, hierarchy, files):
    report = run_json(capsys, files["isa"], "--gamma", "3", "--distance", "fixed-depth")
    d = hierarchy.distance_matrix("fixed-depth")
    assert not np.array_equal(d, hierarchy.distance_matrix("lca-height"))  # the tree is unbalanced
    assert report["convention"] == "fixed-depth" and report["d_max"] == int(d.max())
    assert report["s_min"] == find_s_min_full_scan(d, 3.0)


def test_out_pt_and_npz_load_without_pickle(capsys, hierarchy, files, tmp_path):
    pt, npz = tmp_path / "frame.pt", tmp_path / "sub" / "frame.npz"
    for out in (pt, npz):
        assert main(["frame", files["json"], "--gamma", "1.5", "--seed", "7", "--out", str(out), "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["out"] == str(out)
    expected = build_frame(hierarchy.distance_matrix("lca-height"), 1.5, seed=7)

    saved = torch.load(pt, weights_only=True)
    assert saved["classes"] == list(hierarchy.classes) and saved["height"] == 3
    np.testing.assert_array_equal(saved["frame"].numpy(), expected.W)
    np.testing.assert_array_equal(saved["similarity"].numpy(), expected.S)
    np.testing.assert_array_equal(saved["distances"].numpy(), hierarchy.distance_matrix("lca-height"))
    assert saved["gamma"] == 1.5 and saved["seed"] == 7 and saved["s_min"] == expected.s_min

    with np.load(npz, allow_pickle=False) as arrays:
        assert arrays["classes"].tolist() == list(hierarchy.classes)
        np.testing.assert_array_equal(arrays["frame"], expected.W)
        np.testing.assert_array_equal(arrays["similarity"], expected.S)
        assert float(arrays["s_min"]) == expected.s_min and int(arrays["seed"]) == 7 and int(arrays["height"]) == 3
        assert str(arrays["convention"]) == "lca-height"


def test_s_min_and_seed_options(capsys, hierarchy, files, tmp_path):
    outs = []
    for seed in ("1", "2"):
        out = tmp_path / f"seed{seed}.pt"
        report = run_json(capsys, files["json"], "--gamma", "2", "--s-min", "-0.05", "--seed", seed, "--out", str(out))
        assert report["s_min"] == -0.05 and report["s_min_searched"] is False and report["seed"] == int(seed)
        outs.append(torch.load(out, weights_only=True)["frame"])
    assert not torch.allclose(outs[0], outs[1])
    torch.testing.assert_close(outs[0] @ outs[0].T, outs[1] @ outs[1].T, rtol=0, atol=1e-12)
    expected = build_frame(hierarchy.distance_matrix("lca-height"), 2.0, s_min=-0.05, seed=1).W
    np.testing.assert_array_equal(outs[0].numpy(), expected)


def test_classes_file_selects_leaves_from_a_distance_file_with_inner_nodes(capsys, hierarchy, tmp_path):
    """The field's distance files hold inner-node pairs too; --classes names the leaves."""
    d = hierarchy.distance_matrix("lca-height")
    table = {(a, b): int(d[i, j]) for i, a in enumerate(hierarchy.classes) for j, b in enumerate(hierarchy.classes)
             if i < j}
    table.update({("A", "B"): 3, ("A", "a1"): 2, ("B", "b1"): 2, ("A1", "a1"): 1})  # inner nodes
    path = tmp_path / "with_inner_distances.pkl.xz"
    path.write_bytes(lzma.compress(pickle.dumps(table)))
    classes = tmp_path / "classes.txt"
    order = list(reversed(hierarchy.classes))
    classes.write_text("\n".join(order) + "\n")

    report = run_json(capsys, str(path), "--gamma", "2", "--classes", str(classes), "--distance", "fixed-depth")
    assert report["K"] == 12 and report["convention"] == "file" and report["height"] is None
    assert report["s_min"] == find_s_min_full_scan(d, 2.0)  # a reordering does not change the spectrum

    # Without --classes the inner nodes are never taken as classes: a clear refusal asking for the class list.
    assert main(["frame", str(path), "--gamma", "2"]) == 2
    err = capsys.readouterr().err
    assert "inner nodes" in err and "--classes" in err and str(path) in err and err.count("\n") == 1


def test_distance_note_on_stderr(capsys, files):
    assert main(["frame", files["distances"], "--gamma", "2", "--distance", "fixed-depth"]) == 0
    captured = capsys.readouterr()
    assert "does not apply" in captured.err and "s_min" in captured.out


def test_text_report(capsys, files):
    assert main(["frame", files["tree-pickle"], "--gamma", "1"]) == 0
    text = capsys.readouterr().out
    for label in ("K ", "height", "d_max", "s_min", "(reference grid)", "min eigenvalue of S", "max |W Wᵀ − S|",
                  "seconds"):
        assert label in text
    assert "12" in text.splitlines()[1]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["{missing}", "--gamma", "1"], "not found"),
        (["{json}", "--gamma", "0"], "gamma must be a positive finite number"),
        (["{json}", "--gamma", "2", "--s-min", "-0.99"], "not positive semi-definite"),
        (["{json}", "--gamma", "2", "--s-min", "1.5"], "s_min must be a finite number"),
        (["{json}", "--gamma", "2", "--out", "{tmp}/frame.pickle"], "unknown format"),
        (["{json}", "--gamma", "2", "--classes", "{tmp}/absent.txt"], "absent.txt"),
        (["{tmp}/tree.yaml", "--gamma", "2"], "unknown hierarchy format"),
    ],
)
def test_errors_exit_2_with_a_clear_message(capsys, files, tmp_path, argv, message):
    argv = [a.format(missing=tmp_path / "missing_isa.txt", json=files["json"], tmp=tmp_path) for a in argv]
    assert main(["frame", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("haf frame: error:") and message in err


def test_runs_as_a_console_command(files):
    completed = subprocess.run(
        [sys.executable, "-m", "haf.cli", "frame", files["isa"], "--gamma", "2", "--json"],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert completed.returncode == 0, completed.stderr
    assert REQUIRED_KEYS <= set(json.loads(completed.stdout))


def test_command_conventions_are_the_library_s_and_the_parser_stays_light(capsys):
    """`haf frame --distance` is checked against the library's conventions (one line listing them), and building
    the whole `haf` parser (what `haf --help` and every command do first) imports neither numpy nor torch."""
    from haf.cli import main
    from haf.hierarchy.distance_conventions import CONVENTIONS

    hierarchy = Path(__file__).resolve().parents[1] / "hierarchies" / "fgvc_aircraft.json"
    assert main(["frame", str(hierarchy), "--gamma", "1",
                 "--distance", "lca-heigth"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "unknown distance convention 'lca-heigth'" in err
    assert all(name in err for name in CONVENTIONS)
    probe = ("import sys; from haf.cli import build_parser; build_parser(); "
             "print(sorted({'numpy', 'torch'} & set(sys.modules)))")
    run = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "[]"
