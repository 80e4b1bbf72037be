"""``haf prepare SRC DST``: resize a dataset's images into a mirror tree with ffmpeg (or Pillow), in parallel.

Idempotent and resumable (finished outputs are skipped); unreadable inputs are listed in the summary instead of
stopping the run; the exit status is non-zero for failures only with ``--strict``.
"""
from __future__ import annotations

import argparse
import sys

HELP = "resize a dataset's images (shorter side or fixed size) into a mirror folder tree with ffmpeg"


def _size(text: str) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WxH such as 224x224, got {text!r}") from None
    return width, height


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("src", help="source folder (its tree is mirrored)")
    parser.add_argument("dst", help="destination folder (created; outside SRC)")
    geometry = parser.add_mutually_exclusive_group(required=True)
    geometry.add_argument("--shorter-side", type=int, metavar="N", help="resize so the shorter side is N px")
    geometry.add_argument("--size", type=_size, metavar="WxH", help="resize to exactly W×H px (aspect not kept)")
    geometry.add_argument("--stretch", type=int, metavar="N",
                          help="stretch every image to N×N px (= --size NxN): the field's iNat2019 / "
                          "tieredImageNet-H copies are stretched to 224×224")
    parser.add_argument("--crop-bottom", type=int, default=0, metavar="PX",
                        help="crop PX rows at the bottom before resizing (FGVC-Aircraft's banner: 20)")
    parser.add_argument("--workers", type=int, default=None, help="parallel processes (default: usable CPUs)")
    parser.add_argument("--batch-size", type=int, default=32,
                        help="images per ffmpeg process, amortising its ~80 ms start-up (default 32)")
    parser.add_argument("--backend", choices=("ffmpeg", "pillow"), default="ffmpeg",
                        help="ffmpeg (default) or the Pillow reference path")
    parser.add_argument("--qscale", type=int, default=2, help="ffmpeg JPEG quality -q:v, 2 (best) .. 31 (default 2)")
    parser.add_argument("--quality", type=int, default=95, help="Pillow JPEG quality 1..100 (default 95)")
    parser.add_argument("--ffmpeg", default="ffmpeg", help="ffmpeg program (default: ffmpeg on PATH)")
    parser.add_argument("--pillow-fallback", action="store_true",
                        help="retry images ffmpeg cannot read (e.g. a PNG named .JPEG) with Pillow before "
                        "reporting them")
    parser.add_argument("--no-copy-other", action="store_true", help="do not copy non-image files into DST")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--strict", action="store_true", help="exit with status 1 when any image failed")


def run(args: argparse.Namespace) -> int:
    from haf.pipelines.prepare import ResizeSpec, prepare_images

    size = (args.stretch, args.stretch) if args.stretch is not None else args.size
    spec = ResizeSpec(
        shorter_side=args.shorter_side, size=size, crop_bottom=args.crop_bottom,
        qscale=args.qscale, quality=args.quality,
    )
    report = prepare_images(
        args.src, args.dst, spec, workers=args.workers, batch_size=args.batch_size, backend=args.backend,
        ffmpeg=args.ffmpeg, copy_other=not args.no_copy_other, pillow_fallback=args.pillow_fallback,
        progress=not args.no_progress,
    )
    for path in report.not_regular:
        print(f"  warning: {path}: not a regular file (a pipe, socket, device or broken link); skipped unopened",
              file=sys.stderr)
    print(f"haf prepare: {report.summary()}; {spec.describe()}")
    for source, reason in report.failed:
        print(f"  failed: {source}: {reason}", file=sys.stderr)
    return 1 if (args.strict and report.failed) else 0
