"""`haf export`: TorchScript (always) and ONNX (when onnx + onnxruntime are installed) give load_classifier's scores
within 1e-4, with the frame baked in and the classes / preprocessing / tree as metadata."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from inference_fixtures import train_image_folder_run


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> dict[str, Path]:
    return train_image_folder_run(tmp_path_factory.mktemp("export"), epochs=1)


def _inputs(classifier) -> torch.Tensor:
    files = sorted((Path(classifier.config.dataset.root) / "test").rglob("*.jpg"))[:5]
    return torch.cat([classifier.prepare([str(f) for f in files]), torch.randn(2, 3, 16, 16) * 2])  # odd batch: 7


def test_torchscript_export_matches_load_classifier(run, tmp_path, capsys):
    from haf.cli import main
    from haf.inference import load_classifier

    out = tmp_path / "model.pt"
    assert main(["export", str(run["run"] / "best.pt"), "--format", "torchscript", "--output", str(out)]) == 0
    assert str(out) in capsys.readouterr().out
    classifier = load_classifier(run["run"] / "best.pt")
    extra = {"haf.json": ""}
    scripted = torch.jit.load(str(out), _extra_files=extra)
    x = _inputs(classifier)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), classifier(x), atol=1e-4, rtol=0)
    meta = json.loads(extra["haf.json"])
    assert meta["classes"] == list(classifier.classes) and meta["preprocessing"] == classifier.preprocessing
    assert meta["hierarchy"]["root"] == "demo"
    # the frame is in the graph: the state of the scripted module holds the same buffer
    frame = classifier.model.state_dict()["method.frame"]
    torch.testing.assert_close(scripted.state_dict()["model.method.frame"], frame, atol=0, rtol=0)
    # refused without --overwrite, replaced with it
    assert main(["export", str(run["run"] / "best.pt"), "--format", "torchscript", "--output", str(out)]) == 2
    assert "exists" in capsys.readouterr().err
    assert main(["export", str(run["run"] / "best.pt"), "--format", "torchscript", "--output", str(out),
                 "--overwrite"]) == 0


def test_onnx_export_matches_load_classifier(run, tmp_path):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from haf.cli import main
    from haf.inference import load_classifier

    out = tmp_path / "model.onnx"
    assert main(["export", str(run["run"] / "best.pt"), "--format", "onnx", "--output", str(out)]) == 0
    classifier = load_classifier(run["run"] / "best.pt")
    x = _inputs(classifier)
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    (scores,) = session.run(None, {"images": x.numpy()})
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(scores), classifier(x), atol=1e-4, rtol=0)
    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert json.loads(meta["haf"])["classes"] == list(classifier.classes)


def test_onnx_missing_names_the_extra(run, tmp_path, monkeypatch, capsys):
    import builtins

    from haf.cli import main

    real_import = builtins.__import__

    def no_onnx(name, *args, **kwargs):
        if name == "onnx" or name.startswith("onnx."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_onnx)
    assert main(["export", str(run["run"] / "best.pt"), "--format", "onnx", "--output", str(tmp_path / "m.onnx")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install 'haf[onnx]'" in err and not (tmp_path / "m.onnx").exists()


def test_export_keeps_the_tracer_quiet(run, tmp_path):
    """Tracing turns the heads' input-shape checks into constants, which is right (they check the channels, not
    the dynamic batch axis): `haf export` does not print torch's TracerWarning about them."""
    import warnings

    from haf.inference import load_classifier
    from haf.inference.export import export_classifier

    classifier = load_classifier(run["run"] / "best.pt")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        export_classifier(classifier, "torchscript", tmp_path / "model.pt")
    assert [str(w.message) for w in caught if issubclass(w.category, torch.jit.TracerWarning)] == []
