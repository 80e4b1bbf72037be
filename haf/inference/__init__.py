"""Using a trained model: :func:`load_classifier` (a checkpoint → an ``nn.Module`` with its classes, tree and
preprocessing), image finding and decoding for ``haf predict``, threshold calibration for hierarchical selective
prediction, and export to TorchScript / ONNX (docs/PREDICTION.md)."""
from haf.inference.classifier import DECODINGS, HafClassifier, load_classifier

__all__ = ["DECODINGS", "HafClassifier", "load_classifier"]
