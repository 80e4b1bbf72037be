"""``haf demo-data ROOT``: generate the embedded demo dataset (JPEG folders + hierarchy.json) into ROOT.

Idempotent: a complete dataset of the same seed and spec is left as is; generation is atomic (temporary folder,
then rename). Options mirror ``haf.pipelines.demo.dataset.DemoSpec``.
"""
from __future__ import annotations

import argparse

HELP = "generate the seeded hierarchical demo image dataset (colour → pattern → shape)"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("root", help="output folder (created; reused when it already holds this dataset)")
    parser.add_argument("--seed", type=int, default=0, help="generator seed (default 0)")
    parser.add_argument("--colours", type=int, default=4, help="level-1 colour families (default 4)")
    parser.add_argument("--patterns", type=int, default=3, help="level-2 patterns per colour (default 3, max 4)")
    parser.add_argument("--shapes", type=int, default=3, help="leaf shapes per pattern (default 3, max 6)")
    parser.add_argument("--image-size", type=int, default=32, help="square image side in px (default 32)")
    parser.add_argument("--train-per-class", type=int, default=60, help="training images per class (default 60)")
    parser.add_argument("--val-per-class", type=int, default=10, help="validation images per class (default 10)")
    parser.add_argument("--test-per-class", type=int, default=20, help="test images per class (default 20)")
    parser.add_argument("--jpeg-quality", type=int, default=90, help="JPEG quality 1..100 (default 90)")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar; warnings and errors only")


def run(args: argparse.Namespace) -> int:
    from haf.pipelines.demo.dataset import DemoSpec, ensure_demo_dataset

    spec = DemoSpec(
        colours=args.colours,
        patterns=args.patterns,
        shapes=args.shapes,
        image_size=args.image_size,
        train_per_class=args.train_per_class,
        val_per_class=args.val_per_class,
        test_per_class=args.test_per_class,
        jpeg_quality=args.jpeg_quality,
    )
    root = ensure_demo_dataset(args.root, seed=args.seed, spec=spec, progress=not args.quiet)
    counts = {s: spec.per_class(s) * spec.num_classes for s in ("train", "val", "test")}
    print(
        f"demo dataset at {root}: K={spec.num_classes} classes, height 3, "
        f"{counts['train']}/{counts['val']}/{counts['test']} train/val/test images of "
        f"{spec.image_size}x{spec.image_size} px, seed {args.seed}"
    )
    return 0
