"""Plots are written, are real PNGs, and hold the data they claim to show."""
import json

import numpy as np
import pytest

from haf.reporting import plots
from haf.cli import main

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def assert_png(path, min_bytes=5_000):
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    assert len(data) > min_bytes  # an empty axes alone is ~3 kB at our DPI


def balanced_distances():
    # 4 leaves, two sibling pairs: d = 1 within a pair, 2 across.
    return np.array([[0, 1, 2, 2], [1, 0, 2, 2], [2, 2, 0, 1], [2, 2, 1, 0]])


def test_distance_vs_gram_draws_the_frames_gram_matrix(tmp_path):
    rng = np.random.default_rng(0)
    frame = rng.normal(size=(4, 4))
    frame /= np.linalg.norm(frame, axis=1, keepdims=True)
    drawn = plots.plot_distance_vs_gram(balanced_distances(), frame, tmp_path / "g.png", classes=list("abcd"))
    np.testing.assert_allclose(drawn["gram"], frame @ frame.T)
    np.testing.assert_allclose(np.diag(drawn["gram"]), 1.0)
    assert_png(tmp_path / "g.png")


def test_distance_vs_gram_shape_mismatch():
    with pytest.raises(ValueError, match="3 classes"):
        plots.plot_distance_vs_gram(balanced_distances(), np.eye(3), "unused.png")


def test_hierdist_curves(tmp_path):
    drawn = plots.plot_hierdist_curves({"ce": {1: 0.5, 5: 2.0, 20: 3.0}, "haframe": {1: (0.4, 0.05), 5: (1.1, 0.1)}},
                                       tmp_path / "h.png")
    np.testing.assert_allclose(drawn["haframe"], [[1, 5], [0.4, 1.1]])
    assert_png(tmp_path / "h.png")
    with pytest.raises(ValueError):
        plots.plot_hierdist_curves({}, tmp_path / "none.png")


def logs(epochs=4, nc=True):
    records = []
    for epoch in range(epochs):
        records.append({"epoch": epoch, "split": "train", "loss": 2.0 / (epoch + 1), "lr": 0.1})
        val = {"epoch": epoch, "split": "val", "top1": 10.0 * epoch, "mistake_severity": 2.0, "hierdist@5": 1.5}
        if nc:
            val.update(nc_mean=0.5 / (epoch + 1), nc_std=0.1, self_duality=1.0 / (epoch + 1))
        records.append(val)
    return records


def test_training_and_collapse_curves(tmp_path):
    drawn = plots.plot_training_curves({"run": logs()}, tmp_path / "t.png")
    np.testing.assert_allclose(drawn["train/loss"]["run"][:, 1], [2.0, 1.0, 2 / 3, 0.5])
    assert_png(tmp_path / "t.png")
    drawn = plots.plot_neural_collapse({"run": logs()}, tmp_path / "nc.png")
    np.testing.assert_allclose(drawn["self_duality"]["run"][:, 1], [1.0, 0.5, 1 / 3, 0.25])
    assert_png(tmp_path / "nc.png")
    with pytest.raises(ValueError, match="nc_mean"):
        plots.plot_neural_collapse({"run": logs(nc=False)}, tmp_path / "none.png")


def test_read_jsonl_names_bad_line(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text('{"epoch": 0}\n{oops\n')
    with pytest.raises(ValueError, match=r"m.jsonl:2"):
        plots.read_jsonl(path)


def test_plot_runs_command(tmp_path):
    for seed in range(2):
        run = tmp_path / f"run{seed}"
        run.mkdir()
        (run / "metrics.json").write_text(json.dumps({
            "top1": 50.0, "mistake_severity": 2.0, "hierdist@1": 1.0, "hierdist@5": 1.5, "hierdist@20": 2.0,
            "run": {"dataset": "demo", "method": "haframe", "seed": seed}}))
        (run / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in logs()))
    assert main(["plot", "runs", str(tmp_path), "--out-dir", str(tmp_path / "fig")]) == 0
    for name in ("hierdist_at_k.png", "training_curves.png", "neural_collapse.png"):
        assert_png(tmp_path / "fig" / name)
