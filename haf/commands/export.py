"""``haf export CHECKPOINT --format onnx|torchscript --output FILE``: the model as a standalone graph.

Preprocessed images (B × 3 × S × S) in, class scores (B × K) out, the fixed frame baked in; the class names, the
preprocessing and the class tree travel in the file (docs/PREDICTION.md). ONNX needs ``pip install 'haf[onnx]'``.
"""
from __future__ import annotations

import argparse

HELP = "export a trained model to TorchScript or ONNX (frame baked in; classes and preprocessing as metadata)"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="a last.pt / best.pt written by training")
    parser.add_argument("--format", choices=("onnx", "torchscript"), required=True,
                        help="torchscript (torch.jit.load) or onnx (needs pip install 'haf[onnx]')")
    parser.add_argument("--output", required=True, metavar="FILE", help="the exported model file (written atomically)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output file")


def run(args: argparse.Namespace) -> int:
    from haf.inference import load_classifier
    from haf.inference.export import export_classifier
    from haf.safe_files import refuse_existing

    refuse_existing([args.output], args.overwrite)

    path = export_classifier(load_classifier(args.checkpoint), args.format, args.output, overwrite=args.overwrite)
    print(f"wrote {path}")
    return 0
