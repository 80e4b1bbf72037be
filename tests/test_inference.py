"""Portable checkpoints and the Python API: a checkpoint alone rebuilds the model (classes, tree, preprocessing),
`haf eval` works from another directory with the hierarchy file deleted, refuses a changed hierarchy, and reads
checkpoints written before they carried the tree."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from inference_fixtures import train_image_folder_run


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> dict[str, Path]:
    return train_image_folder_run(tmp_path_factory.mktemp("inference"))


@pytest.fixture
def tree_gone(run):
    """The hierarchy file moved away for the test's duration."""
    aside = run["tree"].with_suffix(".aside")
    shutil.move(run["tree"], aside)
    yield
    shutil.move(aside, run["tree"])


def test_checkpoint_carries_tree_and_preprocessing(run):
    from haf.hierarchy import Hierarchy

    state = torch.load(run["run"] / "best.pt", weights_only=True)
    tree = Hierarchy.from_json(state["hierarchy"])
    assert tree == Hierarchy.from_json(run["tree"].read_text())
    assert state["preprocessing"] == {"image_size": 16, "transform": "squash", "eval_crop_fraction": 0.875,
                                      "mean": pytest.approx([0.5071, 0.4865, 0.4409]),
                                      "std": pytest.approx([0.2673, 0.2564, 0.2762]), "crop_bottom": 0}


def test_eval_from_elsewhere_without_the_hierarchy_file(run, tree_gone, tmp_path, monkeypatch, capsys):
    from haf.cli import main

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    target = elsewhere / "eval.json"
    assert main(["eval", str(run["run"] / "best.pt"), "--data-root", str(run["data"]), "--json", str(target),
                 "--no-progress", "--device", "cpu"]) == 0
    captured = capsys.readouterr()
    assert "class tree stored in the checkpoint" in captured.err and "haurc" in captured.out
    evaluated, trained = json.loads(target.read_text()), json.loads((run["run"] / "metrics.json").read_text())
    for key in ("top1", "mistake_severity", "hierdist@1"):
        assert evaluated[key] == pytest.approx(trained[key], rel=1e-6), key
    selective = evaluated["selective"]["plain"]
    assert selective == trained["selective"]["plain"]
    assert 0.0 <= selective["haurc"] <= 1.0 - evaluated["top1"] / 100 + 1e-9
    assert {"coverage@0.9", "coverage@0.95", "coverage@0.99"} <= set(selective)
    assert sorted(p.name for p in elsewhere.iterdir()) == ["eval.json"]


def _changed_tree(original: str) -> str:
    """The same classes under the same inner nodes, but two leaves of different colours swapped."""
    doc = json.loads(original)
    edges = doc["edges"]
    leaves = [i for i, (_, child) in enumerate(edges) if child in doc["classes"]]
    a = leaves[0]
    b = next(i for i in leaves if edges[i][0].split("/")[0] != edges[a][0].split("/")[0] and edges[i][0] != edges[a][0])
    edges[a][1], edges[b][1] = edges[b][1], edges[a][1]
    return json.dumps(doc)


def test_eval_refuses_a_changed_hierarchy_unless_allowed(run, tmp_path, capsys):
    from haf.cli import main

    original = run["tree"].read_text()
    run["tree"].write_text(_changed_tree(original))
    try:
        args = ["eval", str(run["run"] / "best.pt"), "--json", str(tmp_path / "e.json"), "--no-progress",
                "--device", "cpu"]
        assert main(args) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "changed since training" in err and "d('" in err
        assert "--allow-hierarchy-change" in err and not (tmp_path / "e.json").exists()
        assert main(args + ["--allow-hierarchy-change"]) == 0
        err = capsys.readouterr().err
        assert "warning:" in err and "changed since training" in err
    finally:
        run["tree"].write_text(original)


def test_old_checkpoint_without_the_new_fields_still_loads(run, tmp_path):
    from haf.inference import load_classifier
    from haf.training.evaluation import evaluate_checkpoint

    state = torch.load(run["run"] / "best.pt", weights_only=True)
    for key in ("hierarchy", "preprocessing"):
        state.pop(key)
    old = tmp_path / "old.pt"
    torch.save(state, old)
    result = evaluate_checkpoint(old, device="cpu", progress=False, json_out=tmp_path / "old.json")
    trained = json.loads((run["run"] / "metrics.json").read_text())
    assert result["record"]["top1"] == pytest.approx(trained["top1"])
    classifier, new = load_classifier(old), load_classifier(run["run"] / "best.pt")
    assert classifier.classes == new.classes and classifier.hierarchy == new.hierarchy
    assert classifier.preprocessing == new.preprocessing
    x = torch.randn(3, 3, 16, 16)
    torch.testing.assert_close(classifier(x), new(x))


def test_load_classifier_predicts_like_eval_from_anywhere(run, tree_gone, tmp_path, monkeypatch):
    """Without the hierarchy file and from another directory: the predictions over the test split's files give the
    run's own test top-1 (same pixels, same model), and every record names classes and a path to the root."""
    import haf.inference
    from haf.hierarchy import Hierarchy

    monkeypatch.chdir(tmp_path)
    classifier = haf.inference.load_classifier(run["run"] / "best.pt")
    assert isinstance(classifier, torch.nn.Module) and not classifier.training
    assert classifier.hierarchy == Hierarchy.from_json((run["demo"] / "hierarchy.json").read_text())
    files = sorted((run["data"] / "test").rglob("*.jpg"))
    truth = [f.parent.name for f in files]
    records = classifier.predict([str(f) for f in files], top_k=3)
    assert len(records) == len(files)
    top1 = 100 * sum(r["class"] == t for r, t in zip(records, truth)) / len(files)
    assert top1 == pytest.approx(json.loads((run["run"] / "metrics.json").read_text())["top1"])
    for record in records:
        assert record["path"][0] == record["class"] and record["path"][-1] == "demo" and len(record["path"]) == 4
        assert record["top_k"][0]["class"] == record["class"] and len(record["top_k"]) == 3
        assert record["score"] == pytest.approx(record["top_k"][0]["score"])
    # threshold 0: the leaf itself; above 1: the root
    leaf = classifier.predict(str(files[0]), threshold=0.0)[0]
    assert leaf["node"] == leaf["class"] and leaf["node_path"] == leaf["path"]
    root = classifier.predict(str(files[0]), threshold=1.5)[0]
    assert root["node"] == "demo" and root["node_score"] == 1.0
    crm = classifier.predict([str(f) for f in files[:4]], decode="crm")
    assert all(r["class"] in classifier.classes for r in crm)
    with pytest.raises(ValueError, match="decode"):
        classifier.predict(str(files[0]), decode="best")


def test_tree_frame_checkpoint_predicts_nodes(tmp_path):
    """A tree-factorised HAFrame run (tree distances, no K × K matrix in the checkpoint): the classifier rebuilds
    from the file, climbs on the tree, and eval's selective metrics come from the same tree."""
    import numpy as np

    from haf.hierarchy.tree_distances import TreeDistances
    from haf.inference import load_classifier
    from haf.pipelines import load_dataset
    from haf.training.loop import run_training
    from haf.training.run_config import load_config

    options = {"num_classes": 300, "depth": 3, "image_size": 8, "train_per_class": 1, "val_per_class": 1,
               "test_per_class": 1}
    config = load_config("configs/synthetic/haframe-tree-10k.yaml", overrides=[
        f"output_dir={tmp_path / 'run'}", *(f"dataset.options.{k}={v}" for k, v in options.items()),
        "train.epochs=1", "train.device=cpu", "data.backend=torch", "deepspeed.enabled=false"])
    run_training(config)
    state = torch.load(tmp_path / "run" / "best.pt", weights_only=True)
    assert isinstance(state["distances"], dict) and state["hierarchy"]
    classifier = load_classifier(tmp_path / "run" / "best.pt")
    assert isinstance(classifier.distances, TreeDistances) and classifier.tree.num_classes == 300
    data = load_dataset("synthetic-tree", "unused", **options)
    arrays = list(data.splits["test"].arrays[:6])
    # The climb, computed here: path probabilities summed over the classes below each node (float64), and a
    # threshold just under the smallest grandparent probability, so that the climb stops below the root (after one
    # epoch every node at 0.5 is the root, which any climb returns).
    hierarchy = classifier.hierarchy
    under = {c: {c, *hierarchy.ancestors(c)} for c in classifier.classes}
    with torch.no_grad():
        probs = classifier.probabilities(classifier.prepare(arrays)).double()
    paths, path_probs = [], []
    for p in probs:
        leaf = classifier.classes[int(p.argmax())]
        paths.append([leaf, *hierarchy.ancestors(leaf)])
        path_probs.append([float(sum(p[k] for k, c in enumerate(classifier.classes) if v in under[c]))
                           for v in paths[-1]])
    theta = min(q[2] for q in path_probs) * (1 - 1e-6)
    records = classifier.predict(arrays, threshold=theta)
    assert len(records) == 6
    for record, path, q in zip(records, paths, path_probs):
        assert record["path"] == path and record["path"][-1] == hierarchy.root
        node = next((v for v, pv in zip(path, q) if pv >= theta), hierarchy.root)
        assert record["node"] == node and record["node_score"] == pytest.approx(q[path.index(node)], abs=1e-6)
    assert any(r["node"] != hierarchy.root for r in records)
    crm = classifier.predict(arrays, decode="crm", threshold=theta)
    assert all(r["class"] in classifier.classes for r in crm)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert np.isfinite(metrics["selective"]["plain"]["haurc"])
