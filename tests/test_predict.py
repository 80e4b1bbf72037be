"""`haf predict`: one record per image of an own folder, JSON and CSV, selective prediction with a calibrated
threshold, atomic output that is never overwritten unasked, and two ranks under torchrun giving one merged output."""
from __future__ import annotations

import csv
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from inference_fixtures import train_image_folder_run


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> dict[str, Path]:
    paths = train_image_folder_run(tmp_path_factory.mktemp("predict"))
    # an own folder: nested folders, a non-image file that is skipped, and the truth kept aside
    own = paths["run"].parent / "own"
    truth = {}
    for i, image in enumerate(sorted((paths["data"] / "test").rglob("*.jpg"))):
        target = own / ("a" if i % 2 else "b/c") / f"img{i:02d}.jpg"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(image, target)
        truth[str(target)] = image.parent.name
    (own / "notes.txt").write_text("not an image")
    paths["own"], paths["truth"] = own, truth
    return paths


def test_predict_json_one_record_per_image(run, tmp_path, capsys):
    from haf.cli import main

    out = tmp_path / "pred.json"
    assert main(["predict", str(run["run"] / "best.pt"), str(run["own"]), "--output", str(out), "--top-k", "3",
                 "--device", "cpu", "--batch-size", "5"]) == 0
    records = json.loads(out.read_text())
    assert sorted(r["image"] for r in records) == sorted(run["truth"]) and len(records) == 24
    for r in records:
        assert r["path"][0] == r["class"] and r["path"][-1] == "demo" and len(r["top_k"]) == 3
        assert 0.0 < r["score"] <= 1.0 and "node" not in r
    assert "wrote 24 predictions" in capsys.readouterr().err
    # never overwritten unless asked
    assert main(["predict", str(run["run"] / "best.pt"), str(run["own"]), "--output", str(out)]) == 2
    assert "exists" in capsys.readouterr().err


def test_predict_csv_and_stdout(run, capsys):
    from haf.cli import main

    one = sorted(run["truth"])[0]
    assert main(["predict", str(run["run"] / "best.pt"), one, str(run["own"] / "a"), "--format", "csv",
                 "--device", "cpu", "--decode", "crm"]) == 0
    rows = list(csv.DictReader(capsys.readouterr().out.splitlines()))
    assert len(rows) == 1 + 12 and rows[0]["image"] == one
    assert all(r["path"].endswith(" > demo") and r["path"].startswith(r["class"]) for r in rows)


def test_selective_prediction_is_right_at_least_as_often_as_flat(run, tmp_path, capsys):
    """Calibrated on the training images (64, so the 0.95 quantile is a real threshold), applied to the own folder:
    every record gets the node a climb computed here from the class probabilities gives (the first on its class's
    path whose probability reaches the threshold), nodes are right at least as often as the flat classes (implied by
    the path), and the calibration images themselves reach the target accuracy."""
    from haf.cli import main
    from haf.hierarchy import Hierarchy

    tree = Hierarchy.from_json(run["tree"].read_text())
    out = tmp_path / "selective.json"
    assert main(["predict", str(run["run"] / "best.pt"), str(run["own"]), "--output", str(out), "--device", "cpu",
                 "--target-accuracy", "0.95", "--calibration", str(run["data"] / "train")]) == 0
    assert "calibrated on 64 images" in capsys.readouterr().err
    records = json.loads(out.read_text())
    flat = nodes = 0
    for r in records:
        true = run["truth"][r["image"]]
        assert r["node"] in r["path"] and r["node_path"] == r["path"][r["path"].index(r["node"]):]
        assert r["node_score"] >= r["threshold"] or r["node"] == "demo"
        flat += r["class"] == true
        nodes += r["node"] == true or r["node"] in tree.ancestors(true)
    assert nodes >= flat and len({r["threshold"] for r in records}) == 1
    # Independently of haf's climb: node probabilities summed over the classes under each node, in float64, and the
    # first node from the leaf up whose probability reaches the threshold (the root otherwise).
    theta = records[0]["threshold"]
    assert 0.0 < theta <= 1.0
    under = {c: {c, *tree.ancestors(c)} for c in tree.classes}  # class -> its ancestors-or-self
    own = _climbed(run, sorted(run["truth"]), under, theta)
    for r in records:
        node, score = own[r["image"]]
        assert r["node"] == node and r["node_score"] == pytest.approx(score, abs=1e-6), r
    # The calibrated threshold reaches the target accuracy on the calibration images themselves (the conformal rank
    # ⌈(n + 1)·0.95⌉ = 62 of the 64 tight thresholds lie below it).
    train = sorted(str(f) for f in (run["data"] / "train").rglob("*.jpg"))
    on_train = _climbed(run, train, under, theta)
    right = [node in under[Path(f).parent.name] for f, (node, _) in on_train.items()]
    assert len(right) == 64 and sum(right) >= 62
    # the validation split of the checkpoint's dataset, with a confidence level
    assert main(["predict", str(run["run"] / "best.pt"), str(run["own"]), "--device", "cpu", "--target-accuracy",
                 "0.8", "--confidence", "0.9"]) == 0
    captured = capsys.readouterr()
    assert "calibrated on 16 images" in captured.err and len(json.loads(captured.out)) == 24


def _climbed(run, files, under, theta) -> dict[str, tuple[str, float]]:
    """Each image's climbed node and its probability, computed here from the classifier's class probabilities."""
    import torch

    from haf.inference import load_classifier

    classifier = load_classifier(run["run"] / "best.pt")
    with torch.no_grad():
        probs = classifier.probabilities(classifier.prepare(list(files))).double()
    out = {}
    for f, p in zip(files, probs):
        leaf = classifier.classes[int(p.argmax())]
        for node in [leaf, *sorted(under[leaf] - {leaf}, key=lambda v: -len(classifier.hierarchy.ancestors(v)))]:
            score = float(sum(p[k] for k, c in enumerate(classifier.classes) if node in under[c]))
            if score >= theta or node == classifier.hierarchy.root:
                out[f] = (node, score)
                break
    return out


def test_bad_input_is_one_line(run, tmp_path, capsys):
    from haf.cli import main

    assert main(["predict", str(run["run"] / "best.pt"), str(tmp_path / "missing")]) == 2
    assert "not found" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["predict", str(run["run"] / "best.pt"), str(tmp_path / "empty")]) == 2
    assert "no image files" in capsys.readouterr().err
    assert main(["predict", str(run["run"] / "best.pt"), str(run["own"]), "--confidence", "0.9"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--target-accuracy" in err
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    assert main(["predict", str(run["run"] / "best.pt"), str(broken), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(broken) in err


@pytest.mark.slow
def test_two_ranks_under_torchrun_merge_one_output(run, tmp_path):
    single, merged = tmp_path / "single.json", tmp_path / "merged.json"
    base = [str(run["run"] / "best.pt"), str(run["own"]), "--device", "cpu", "--batch-size", "4",
            "--target-accuracy", "0.9", "--calibration", str(run["data"] / "train")]
    from haf.cli import main

    assert main(["predict", *base, "--output", str(single)]) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with socket.socket() as probe:  # a free port for the rendezvous
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # torchrun through this interpreter (its console script may name another environment's python)
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
               "-m", "haf.cli", "predict", *base, "--output", str(merged)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    a, b = json.loads(single.read_text()), json.loads(merged.read_text())
    assert [r["image"] for r in a] == [r["image"] for r in b]
    for x, y in zip(a, b):
        assert x["class"] == y["class"] and x["score"] == pytest.approx(y["score"], abs=1e-5)
        assert x["node"] == y["node"] and x["threshold"] == y["threshold"]


def test_calibration_without_the_stored_dataset_says_what_to_pass(run, tmp_path, capsys):
    """A checkpoint used away from its dataset (another machine, or a working-directory-relative root such as the
    demo's): the calibration error points at --data-root and --calibration, in one line."""
    from haf.cli import main

    assert main(["predict", str(run["run"] / "best.pt"), str(run["own"]), "--device", "cpu", "--target-accuracy",
                 "0.9", "--data-root", str(tmp_path / "moved")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "moved" in err and "--data-root" in err and "--calibration" in err
