"""Export a trained model to TorchScript or ONNX: preprocessed images (B × 3 × S × S) → class scores (B × K).

The fixed frame is a buffer of the model, so it is baked into the exported graph as a constant; the batch axis is
dynamic. The file also carries what a user needs beside the graph, as JSON under the key ``haf``: the class names,
the preprocessing (image size, eval transform, mean/std) and the class tree (``Hierarchy.to_json``) — TorchScript
as an extra file ``haf.json`` (``torch.jit.load(path, _extra_files={"haf.json": ""})``), ONNX as metadata
property ``haf``. Outputs match :func:`haf.inference.load_classifier`'s to 1e-4 (tested). ONNX needs the optional
extra: ``pip install 'haf[onnx]'`` (onnx, onnxruntime).
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import warnings
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from haf.inference.classifier import HafClassifier
from haf.optional_deps import require

__all__ = ["EXPORT_FORMATS", "export_classifier", "export_metadata"]


class _Scores(nn.Module):
    """The plain graph: images → class scores (no Python-side state)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.scores(self.model(images)).float()


def export_metadata(classifier: HafClassifier) -> str:
    """The JSON stored beside the graph: classes, preprocessing, class tree (or null)."""
    hierarchy = classifier.hierarchy.to_dict() if classifier.hierarchy is not None else None
    return json.dumps({"classes": list(classifier.classes), "preprocessing": classifier.preprocessing,
                       "hierarchy": hierarchy, "outputs": "class scores, B x K, in the order of 'classes'"},
                      ensure_ascii=False)


def _example(classifier: HafClassifier, batch: int = 2) -> torch.Tensor:
    size = int(classifier.preprocessing["image_size"])
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0))


@contextlib.contextmanager
def _quiet_tracer():
    """Tracing bakes the heads' input-shape checks (channels, never the batch axis) into the graph as constants,
    as intended: torch's TracerWarning about each is noise for the user."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        yield


def _torchscript(classifier: HafClassifier) -> bytes:
    module = _Scores(classifier.model.cpu()).eval()
    with torch.no_grad(), _quiet_tracer():
        traced = torch.jit.trace(module, _example(classifier), check_trace=False)
    buffer = io.BytesIO()
    torch.jit.save(traced, buffer, _extra_files={"haf.json": export_metadata(classifier)})
    return buffer.getvalue()


def _onnx(classifier: HafClassifier) -> bytes:
    onnx = require("onnx", purpose="haf export --format onnx")
    module = _Scores(classifier.model.cpu()).eval()
    buffer = io.BytesIO()
    with torch.no_grad(), _quiet_tracer():
        torch.onnx.export(module, (_example(classifier),), buffer, input_names=["images"], output_names=["scores"],
                          dynamic_axes={"images": {0: "batch"}, "scores": {0: "batch"}}, opset_version=17,
                          dynamo=False)
    model = onnx.load_from_string(buffer.getvalue())
    entry = model.metadata_props.add()
    entry.key, entry.value = "haf", export_metadata(classifier)
    return model.SerializeToString()


EXPORTERS: dict[str, Callable[[HafClassifier], bytes]] = {"torchscript": _torchscript, "onnx": _onnx}
EXPORT_FORMATS = tuple(EXPORTERS)


def export_classifier(classifier: HafClassifier, fmt: str, output: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write ``classifier`` as ``fmt`` to ``output`` (atomically; an existing file only with ``overwrite``)."""
    from haf.safe_files import atomic_write_bytes

    if fmt not in EXPORTERS:
        raise ValueError(f"export format {fmt!r}; expected one of {', '.join(EXPORT_FORMATS)}")
    target = Path(output)
    if target.exists() and not overwrite:
        raise FileExistsError(f"output file exists: {target} (pass --overwrite to replace it)")
    device = classifier.device
    try:
        data = EXPORTERS[fmt](classifier)
    finally:
        classifier.to(device)
    return atomic_write_bytes(target, data)
