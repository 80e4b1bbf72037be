"""Image resizing for ``haf prepare``: what an output must be (:class:`ResizeSpec`) and the two backends that make it.

Geometry (both backends): optional ``crop_bottom`` pixels removed first (FGVC-Aircraft's 20-px banner), then
bicubic resize to ``size = (W, H)`` or so that the shorter side is ``shorter_side`` (the longer side rounded,
aspect ratio kept, as torchvision's ``Resize(int)``). Each output is written to a temporary name (:attr:`Job.part`),
its header checked for the expected size, then renamed into place.

Why ffmpeg, and why batches: one ffmpeg process costs ~80 ms to start, more than resizing a photo takes, so each
process handles a batch of images — one ``-i`` input, one scale chain in a single ``-filter_complex`` and one output
per image. When a batch fails its images are retried one per process. Pillow is the reference path.
"""
from __future__ import annotations

import errno
import os
import re
import subprocess
from dataclasses import dataclass
from typing import Sequence

from haf.safe_files import naming

PART_TAG = ".haf-part"  # temporary outputs are "<stem>.haf-part<suffix>"; never a final name
# Errors that writing any further output would hit again: the run stops instead of failing image after image.
FATAL_WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS})
# ffmpeg's MJPEG quantiser scale: 2 is the finest it allows for -q:v, 31 the coarsest.
QSCALE_RANGE = (2, 31)
# Seconds one ffmpeg process may take per image before it is considered hung (decode + scale + encode of a
# large photo takes tens of ms; a minute per image is far beyond any real input).
SECONDS_PER_IMAGE_LIMIT = 60.0
# The largest output side: JPEG stops at 65,535 px, and a 16,384² RGB output already takes 768 MiB to encode.
MAX_OUTPUT_SIDE = 16_384
# What ffmpeg prints after an output path it cannot write: a destination fault, not a bad input.
_DESTINATION_ERRORS = {"Permission denied": errno.EACCES, "Read-only file system": errno.EROFS,
                       "Is a directory": errno.EISDIR, "No space left on device": errno.ENOSPC}


@dataclass(frozen=True)
class ResizeSpec:
    """What every output must be. Exactly one of ``shorter_side`` and ``size`` (W, H) is set."""

    shorter_side: int | None = None
    size: tuple[int, int] | None = None
    crop_bottom: int = 0
    qscale: int = 2  # ffmpeg JPEG quality (-q:v), 2 = best
    quality: int = 95  # Pillow JPEG quality (1..100); the reference path's counterpart of qscale

    def __post_init__(self) -> None:
        if (self.shorter_side is None) == (self.size is None):
            raise ValueError("give exactly one of shorter_side (e.g. 256) and size (W, H)")
        if self.shorter_side is not None and not 1 <= self.shorter_side <= MAX_OUTPUT_SIDE:
            raise ValueError(f"shorter_side must be in 1..{MAX_OUTPUT_SIDE}, got {self.shorter_side}")
        if self.size is not None:
            if len(self.size) != 2 or min(self.size) < 1 or max(self.size) > MAX_OUTPUT_SIDE:
                raise ValueError(f"size must be (W, H) with both in 1..{MAX_OUTPUT_SIDE}, got {self.size}")
            object.__setattr__(self, "size", (int(self.size[0]), int(self.size[1])))
        if self.crop_bottom < 0:
            raise ValueError(f"crop_bottom must be ≥ 0, got {self.crop_bottom}")
        if not QSCALE_RANGE[0] <= self.qscale <= QSCALE_RANGE[1]:
            raise ValueError(f"qscale must be in {QSCALE_RANGE[0]}..{QSCALE_RANGE[1]} (ffmpeg -q:v), got {self.qscale}")
        if not 1 <= self.quality <= 100:
            raise ValueError(f"quality must be in 1..100, got {self.quality}")

    def target_size(self, width: int, height: int) -> tuple[int, int]:
        """Output (W, H) for an input of ``width × height`` (before the bottom crop)."""
        height -= self.crop_bottom
        if self.size is not None:
            return self.size
        s = self.shorter_side
        if width <= height:
            out = s, max(1, round(height * s / width))
        else:
            out = max(1, round(width * s / height)), s
        if max(out) > MAX_OUTPUT_SIDE:
            raise ValueError(f"a {width}×{height} image at shorter side {s} would be {out[0]}×{out[1]} px, beyond "
                             f"the {MAX_OUTPUT_SIDE}-px limit")
        return out

    def accepts(self, width: int, height: int) -> bool:
        """Does an output of this size satisfy the spec? (Shorter side exact; ffmpeg may round the longer ±1.)"""
        if self.size is not None:
            return (width, height) == self.size
        return min(width, height) == self.shorter_side

    def geometry(self) -> dict:
        """The fields that decide output pixels' geometry (quality settings may change between runs)."""
        return {
            "shorter_side": self.shorter_side,
            "size": list(self.size) if self.size else None,
            "crop_bottom": self.crop_bottom,
        }

    def describe(self) -> str:
        geometry = f"shorter side {self.shorter_side}" if self.shorter_side else f"{self.size[0]}x{self.size[1]}"
        return geometry + (f", bottom {self.crop_bottom} px cropped first" if self.crop_bottom else "")


@dataclass(frozen=True)
class Job:
    source: str
    target: str

    @property
    def part(self) -> str:
        """Temporary output path: same folder and suffix (so encoders are chosen by suffix), tagged name."""
        root, suffix = os.path.splitext(self.target)
        return f"{root}{PART_TAG}{suffix}"



def image_size(path: str, decode: bool = False) -> tuple[int, int] | None:
    """(W, H) from the file header (``decode``: after decoding every pixel), or None when unreadable."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            if decode:
                image.load()
            return image.size
    except Exception:  # noqa: BLE001 - any decoder error means "not a readable image"
        return None



def finish_output(job: Job, spec: ResizeSpec) -> str | None:
    """Verify a temporary output and move it into place; the error text when it is not acceptable."""
    size = image_size(job.part)
    if size is None:
        remove_if_present(job.part)
        return "no readable output was written"
    if not spec.accepts(*size):
        remove_if_present(job.part)
        return f"output has size {size[0]}x{size[1]}, expected {spec.describe()}"
    os.replace(job.part, job.target)
    return None


def remove_if_present(path: str) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


def ffmpeg_command(jobs: Sequence[Job], spec: ResizeSpec, ffmpeg: str = "ffmpeg") -> list[str]:
    """One ffmpeg invocation for many images: an input, a filter chain and an output per image.

    Inputs are opened with the image2 demuxer and ``pattern_type none`` so file names containing ``%`` are not
    read as sequence patterns; outputs use the image2 muxer with ``-update 1`` (one image, no pattern).
    """
    import ffmpeg as ffmpeg_python

    outputs = []
    for job in jobs:
        stream = ffmpeg_python.input(job.source, f="image2", pattern_type="none").video
        if spec.crop_bottom:
            stream = stream.crop(0, 0, "iw", f"ih-{spec.crop_bottom}")
        if spec.size is not None:
            stream = stream.filter("scale", w=spec.size[0], h=spec.size[1], flags="bicubic")
        else:
            s = spec.shorter_side
            # Shorter side → s, the other side from the aspect ratio (-1: rounded, no divisibility constraint).
            stream = stream.filter("scale", w=f"if(lte(iw,ih),{s},-1)", h=f"if(lte(iw,ih),-1,{s})", flags="bicubic")
        options = {"f": "image2", "update": 1, "frames:v": 1}
        if job.target.lower().endswith((".jpg", ".jpeg")):
            # 4:2:0 full-range JPEG like every camera and Pillow's default.
            options.update({"c:v": "mjpeg", "q:v": spec.qscale, "pix_fmt": "yuvj420p"})
        outputs.append(stream.output(job.part, **options))
    command = ffmpeg_python.merge_outputs(*outputs).global_args("-hide_banner", "-nostdin", "-loglevel", "error")
    return command.overwrite_output().compile(cmd=ffmpeg)


def _run_ffmpeg(jobs: Sequence[Job], spec: ResizeSpec, ffmpeg: str) -> tuple[int, str]:
    command = ffmpeg_command(jobs, spec, ffmpeg)
    try:
        result = subprocess.run(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            timeout=SECONDS_PER_IMAGE_LIMIT * len(jobs), check=False,
        )
    except subprocess.TimeoutExpired:
        return -1, f"ffmpeg timed out after {SECONDS_PER_IMAGE_LIMIT * len(jobs):.0f} s"
    return result.returncode, result.stderr.decode("utf-8", "replace").strip()


def ffmpeg_error_text(stderr: str, code: int, limit: int = 3) -> str:
    """The first few distinct error lines, without ffmpeg's "[mjpeg @ 0x55...]" context prefixes."""
    lines: list[str] = []
    for raw in stderr.splitlines():
        line = re.sub(r"^\[[^\]]* @ 0x[0-9a-f]+\]\s*", "", raw.strip())
        if line and line not in lines:
            lines.append(line)
    return "; ".join(lines[:limit]) if lines else f"exit status {code}"


def resize_batch_ffmpeg(
    jobs: Sequence[Job], spec: ResizeSpec, ffmpeg: str = "ffmpeg", pillow_fallback: bool = False
) -> list[tuple[Job, str | None]]:
    """Resize ``jobs`` in one ffmpeg process; on failure, retry each alone to find the culprits.

    With ``pillow_fallback`` an image ffmpeg cannot handle alone (e.g. a PNG named .JPEG) goes through the Pillow
    reference path before it is reported.
    """
    for job in jobs:
        os.makedirs(os.path.dirname(job.target), exist_ok=True)
    code, errors = _run_ffmpeg(jobs, spec, ffmpeg)
    if code == 0:
        return [(job, finish_output(job, spec)) for job in jobs]
    for job in jobs:
        remove_if_present(job.part)
    if len(jobs) == 1:
        for text, number in _DESTINATION_ERRORS.items():
            if (number == errno.ENOSPC and text in errors) or f"{jobs[0].part}: {text}" in errors:
                raise OSError(number, os.strerror(number), jobs[0].part)
        reason = f"ffmpeg failed: {ffmpeg_error_text(errors, code)}"
        if pillow_fallback:
            [(job, pillow_error)] = resize_batch_pillow(jobs, spec)
            return [(job, None if pillow_error is None else f"{reason}; {pillow_error}")]
        return [(jobs[0], reason)]
    results = []
    for job in jobs:
        results.extend(resize_batch_ffmpeg([job], spec, ffmpeg, pillow_fallback))
    return results


def resize_batch_pillow(jobs: Sequence[Job], spec: ResizeSpec) -> list[tuple[Job, str | None]]:
    """Reference path: Pillow decode, bottom crop, bicubic resize, encode (4:2:0, ``spec.quality``)."""
    from PIL import Image

    results = []
    for job in jobs:
        os.makedirs(os.path.dirname(job.target), exist_ok=True)
        try:
            with Image.open(job.source) as image:
                target = spec.target_size(image.width, image.height)  # refuses an absurd size before decoding
                image.load()
                if spec.crop_bottom:
                    image = image.crop((0, 0, image.width, image.height - spec.crop_bottom))
                is_jpeg = job.target.lower().endswith((".jpg", ".jpeg"))
                if is_jpeg and image.mode not in ("RGB", "L"):
                    image = image.convert("RGB")
                resized = image.resize(target, Image.Resampling.BICUBIC)
                if is_jpeg:
                    resized.save(job.part, format="JPEG", quality=spec.quality, subsampling=2)
                else:
                    resized.save(job.part)  # format from the suffix
        except Exception as error:  # noqa: BLE001 - an unreadable input is reported, not fatal
            remove_if_present(job.part)
            if isinstance(error, OSError) and (error.errno in FATAL_WRITE_ERRNOS or (
                    error.errno == errno.EACCES and error.filename == job.part)):
                with naming(job.part):
                    raise
            results.append((job, f"Pillow failed: {type(error).__name__}: {error}"))
            continue
        results.append((job, finish_output(job, spec)))
    return results
