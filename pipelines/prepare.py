"""Dataset preparation: resize every image of a folder tree into a mirror tree, with ffmpeg (fast path) or Pillow
(reference path).

Why ffmpeg, and why batches: one ffmpeg process costs ~80 ms to start, more than resizing a photo takes, so each
process handles ``batch_size`` images — one ``-i`` input, one scale chain in a single ``-filter_complex`` and one
output per image — and ``workers`` processes run at once. Guarantees:

* mirror: ``SRC/a/b/x.jpg`` → ``DST/a/b/x.jpg`` (same relative path and format); other files (lists, hierarchy
  files) are copied unless ``copy_other=False``, so DST replaces SRC for the readers;
* nothing of the user's touched: DST may not resolve into SRC nor SRC into DST (symlinks, ``..``, bind mounts),
  and no output folder may resolve into SRC either;
* idempotent and resumable: every output (images, copied files, the records below) is written to a temporary name
  in its folder, verified, then renamed, so a kill leaves no half-written file under a final name. A rerun skips
  only what it verifies: an image whose entry in ``DST/.haf-prepare-done.jsonl`` (output size, source size and
  mtime; appended as outputs finish, rewritten atomically at the end) still matches, or without an entry one that
  decodes fully at the expected size and is newer than its source; a copied file whose size and mtime equal its
  source's. Stale temporary files of a killed run are removed;
* failure-tolerant: when a batch fails, its images are retried one per process; images that still fail (not an
  image, truncated beyond repair, ...) are reported in the summary, never stop the run;
* verified: each output's header must give the expected size (exact for ``size``; shorter side for
  ``shorter_side``).

Geometry (both backends): optional ``crop_bottom`` pixels removed first (FGVC-Aircraft's 20-px banner), then
bicubic resize to ``size = (W, H)`` or so that the shorter side is ``shorter_side`` (the longer side rounded,
aspect ratio kept, as torchvision's ``Resize(int)``).
"""
from __future__ import annotations

import errno
import json
import os
import re
import shutil
import subprocess
import time
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

from haf.safe_files import atomic_copy, atomic_write_text, lies_within, naming

from .reader_common import IMAGE_EXTENSIONS

BACKENDS = ("ffmpeg", "pillow")
PART_TAG = ".haf-part"  # temporary outputs are "<stem>.haf-part<suffix>"; never a final name
# Records the geometry a destination was prepared with: a later run with another geometry must not "skip" outputs
# that merely have the right size (e.g. same size, different bottom crop).
MANIFEST_NAME = ".haf-prepare.json"
# One JSON line per finished image: {"path": rel, "size": output bytes, "source": [bytes, mtime_ns]}.
DONE_NAME = ".haf-prepare-done.jsonl"
# Temporary files of haf.safe_files.atomic_write (".<name>.<random>.tmp"), left behind only by a kill.
_STALE_TMP = re.compile(r"^\..+\.[A-Za-z0-9_]{8}\.tmp$")
# Errors that writing any further output would hit again: the run stops instead of failing image after image.
FATAL_WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS})
# ffmpeg's MJPEG quantiser scale: 2 is the finest it allows for -q:v, 31 the coarsest.
QSCALE_RANGE = (2, 31)
# Seconds one ffmpeg process may take per image before it is considered hung (decode + scale + encode of a
# large photo takes tens of ms; a minute per image is far beyond any real input).
SECONDS_PER_IMAGE_LIMIT = 60.0


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
        if self.shorter_side is not None and self.shorter_side < 1:
            raise ValueError(f"shorter_side must be ≥ 1, got {self.shorter_side}")
        if self.size is not None:
            if len(self.size) != 2 or min(self.size) < 1:
                raise ValueError(f"size must be (W, H) with both ≥ 1, got {self.size}")
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
            return s, max(1, round(height * s / width))
        return max(1, round(width * s / height)), s

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


@dataclass
class PrepareReport:
    """Counts and failures of one run; ``summary()`` is the line ``haf prepare`` prints."""

    backend: str
    done: int = 0
    skipped: int = 0
    copied: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)  # (source path, reason)
    seconds: float = 0.0

    @property
    def images_per_second(self) -> float:
        return self.done / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> str:
        return (
            f"{self.backend}: {self.done} done, {self.skipped} skipped, {len(self.failed)} failed"
            f"{f', {self.copied} other files copied' if self.copied else ''} in {self.seconds:.1f} s "
            f"({self.images_per_second:.1f} images/s)"
        )


# ----------------------------------------------------------------------------------------------------------------
# Planning: which images to (re)do
# ----------------------------------------------------------------------------------------------------------------


def is_image(name: str) -> bool:
    return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS) and PART_TAG not in name


def walk_tree(src: Path) -> tuple[list[str], list[str]]:
    """Relative paths of the images and of the other (non-hidden) files under ``src``, sorted."""
    images, others = [], []
    for folder, dirs, files in os.walk(src):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        rel_folder = os.path.relpath(folder, src)
        for name in sorted(files):
            if name.startswith("."):
                continue
            if PART_TAG in name:
                continue  # a temporary output of an interrupted run inside the source: neither image nor data
            rel = name if rel_folder == "." else os.path.join(rel_folder, name)
            (images if is_image(name) else others).append(rel)
    return images, others


def output_is_done(job: Job, spec: ResizeSpec) -> bool:
    """Without a record: an output newer than its input that decodes fully at the expected size."""
    try:
        if os.path.getmtime(job.target) < os.path.getmtime(job.source) or os.path.getsize(job.target) == 0:
            return False
    except OSError:
        return False
    size = image_size(job.target, decode=True)
    return size is not None and spec.accepts(*size)


def source_signature(path: str) -> list[int]:
    stat = os.stat(path)
    return [stat.st_size, stat.st_mtime_ns]


def done_record(job: Job, rel: str) -> dict:
    return {"path": rel, "size": os.path.getsize(job.target), "source": source_signature(job.source)}


def record_matches(record: dict | None, job: Job) -> bool:
    """The output is the one recorded (same size) for an unchanged source (same size and mtime)."""
    if record is None:
        return False
    try:
        return os.path.getsize(job.target) == record["size"] and source_signature(job.source) == record["source"]
    except OSError:
        return False


def read_done(dst: Path) -> dict[str, dict]:
    """Records of finished images; a torn last line (a kill while appending) or a foreign line is ignored."""
    records: dict[str, dict] = {}
    try:
        text = (dst / DONE_NAME).read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return records
    for line in text.splitlines(keepends=True):
        if not line.endswith("\n"):
            break
        try:
            record = json.loads(line)
            fields = (record.get("path"), record.get("size"), record.get("source")) if isinstance(record, dict) else ()
            if [type(value) for value in fields] == [str, int, list]:
                records[record["path"]] = record
        except json.JSONDecodeError:
            continue
    return records


def other_is_done(source: Path, target: Path) -> bool:
    """A copied file is finished when its size and mtime equal the source's (copies carry the source's times)."""
    try:
        s, t = source.stat(), target.lstat()
    except OSError:
        return False
    return t.st_size == s.st_size and t.st_mtime_ns == s.st_mtime_ns and not target.is_symlink()


def remove_stale_temporaries(dst: Path) -> int:
    """Delete the temporary files a killed run left in ``dst``; returns how many."""
    removed = 0
    for folder, dirs, files in os.walk(dst):
        for name in files:
            if PART_TAG in name or _STALE_TMP.match(name):
                with naming(os.path.join(folder, name)):
                    _remove(os.path.join(folder, name))
                removed += 1
    return removed


def check_apart(src: Path, dst: Path, folders: Iterable[str] = ()) -> None:
    """Refuse when an output could overwrite an input: DST in SRC, SRC in DST, or an output folder in SRC."""
    if lies_within(dst, src):
        raise ValueError(f"destination {dst} (resolves to {os.path.realpath(dst)}) lies inside the source folder "
                         f"{src}: its outputs would overwrite the source images; choose a folder outside it")
    if lies_within(src, dst):
        raise ValueError(f"source {src} lies inside the destination folder {dst} (resolves to "
                         f"{os.path.realpath(dst)}): outputs could overwrite it; choose a folder outside it")
    for rel in folders:
        if rel != "." and lies_within(dst / rel, src):
            raise ValueError(f"output folder {dst / rel} resolves to {os.path.realpath(dst / rel)}, inside the "
                             f"source folder {src}: remove that link from the destination")


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


# ----------------------------------------------------------------------------------------------------------------
# Backends: each takes a batch of jobs and returns [(job, error or None)]
# ----------------------------------------------------------------------------------------------------------------


def _finish(job: Job, spec: ResizeSpec) -> str | None:
    """Verify a temporary output and move it into place; the error text when it is not acceptable."""
    size = image_size(job.part)
    if size is None:
        _remove(job.part)
        return "no readable output was written"
    if not spec.accepts(*size):
        _remove(job.part)
        return f"output has size {size[0]}x{size[1]}, expected {spec.describe()}"
    os.replace(job.part, job.target)
    return None


def _remove(path: str) -> None:
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
        return [(job, _finish(job, spec)) for job in jobs]
    for job in jobs:
        _remove(job.part)
    if len(jobs) == 1:
        if "No space left on device" in errors:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), jobs[0].part)
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
                image.load()
                if spec.crop_bottom:
                    image = image.crop((0, 0, image.width, image.height - spec.crop_bottom))
                is_jpeg = job.target.lower().endswith((".jpg", ".jpeg"))
                if is_jpeg and image.mode not in ("RGB", "L"):
                    image = image.convert("RGB")
                resized = image.resize(spec.target_size(image.width, image.height + spec.crop_bottom),
                                       Image.Resampling.BICUBIC)
                if is_jpeg:
                    resized.save(job.part, format="JPEG", quality=spec.quality, subsampling=2)
                else:
                    resized.save(job.part)  # format from the suffix
        except Exception as error:  # noqa: BLE001 - an unreadable input is reported, not fatal
            _remove(job.part)
            if isinstance(error, OSError) and (error.errno in FATAL_WRITE_ERRNOS or (
                    error.errno == errno.EACCES and error.filename == job.part)):
                with naming(job.part):
                    raise
            results.append((job, f"Pillow failed: {type(error).__name__}: {error}"))
            continue
        results.append((job, _finish(job, spec)))
    return results


# ----------------------------------------------------------------------------------------------------------------
# Driver
# ----------------------------------------------------------------------------------------------------------------


def check_manifest(dst: Path, spec: ResizeSpec) -> None:
    """Record ``spec``'s geometry in ``dst``, or refuse when ``dst`` was prepared with another geometry."""
    path = dst / MANIFEST_NAME
    wanted = spec.geometry()
    if path.is_file():
        try:
            stored = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            stored = None
        if stored != wanted:
            raise ValueError(
                f"{dst} was prepared with {stored} ({path}); this run asks for {wanted}: use another destination "
                "or delete that one"
            )
        return
    atomic_write_text(path, json.dumps(wanted, sort_keys=True) + "\n")


def find_ffmpeg(ffmpeg: str = "ffmpeg") -> str:
    path = shutil.which(ffmpeg)
    if path is None:
        raise FileNotFoundError(
            f"the ffmpeg program {ffmpeg!r} was not found on PATH (install it, e.g. `apt-get install ffmpeg`, or "
            "use backend='pillow')"
        )
    return path


def default_workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def batches(items: Sequence[Job], size: int) -> Iterable[list[Job]]:
    for start in range(0, len(items), size):
        yield list(items[start : start + size])


def prepare_images(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    spec: ResizeSpec,
    *,
    workers: int | None = None,
    batch_size: int = 32,
    backend: str = "ffmpeg",
    ffmpeg: str = "ffmpeg",
    copy_other: bool = True,
    pillow_fallback: bool = False,
    progress: bool = True,
) -> PrepareReport:
    """Resize every image under ``src`` into the mirror tree ``dst``; see the module docstring."""
    src_path = Path(src).expanduser().absolute()
    dst_path = Path(dst).expanduser().absolute()
    if not src_path.is_dir():
        if src_path.exists():
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(src_path))
        raise FileNotFoundError(f"source folder not found: {src_path}")
    check_apart(src_path, dst_path)
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be ≥ 1, got {batch_size}")
    workers = default_workers() if workers is None else workers
    if workers < 1:
        raise ValueError(f"workers must be ≥ 1, got {workers}")
    ffmpeg_path = find_ffmpeg(ffmpeg) if backend == "ffmpeg" else ffmpeg

    start = time.perf_counter()
    images, others = walk_tree(src_path)
    check_apart(src_path, dst_path, sorted({os.path.dirname(rel) or "." for rel in (*images, *others)}))
    check_manifest(dst_path, spec)
    remove_stale_temporaries(dst_path)
    report = PrepareReport(backend=backend)
    jobs = [Job(str(src_path / rel), str(dst_path / rel)) for rel in images]
    rel_of = dict(zip(jobs, images))
    records = read_done(dst_path)
    done: dict[str, dict] = {}
    todo = []
    for job, rel in rel_of.items():
        if record_matches(records.get(rel), job):
            done[rel] = records[rel]
        elif rel not in records and output_is_done(job, spec):
            done[rel] = done_record(job, rel)
        else:
            todo.append(job)
    report.skipped = len(jobs) - len(todo)

    journal_path = dst_path / DONE_NAME
    with naming(journal_path):
        journal = open(journal_path, "a", encoding="utf-8")  # noqa: SIM115 - closed in the finally below
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(jobs), initial=report.skipped, unit="img", desc=f"prepare ({backend})")

    if backend == "ffmpeg":
        # Threads suffice: each one waits on its own ffmpeg process.
        work: Callable[[list[Job]], list] = lambda batch: resize_batch_ffmpeg(  # noqa: E731
            batch, spec, ffmpeg_path, pillow_fallback
        )
        pool: Executor = ThreadPoolExecutor(max_workers=workers)
    else:
        # Pillow decodes and encodes under the GIL for long stretches: processes, one batch per task.
        work = _PillowTask(spec)
        pool = ProcessPoolExecutor(max_workers=workers) if workers > 1 else ThreadPoolExecutor(max_workers=1)
    try:
        futures = [pool.submit(work, batch) for batch in batches(todo, batch_size)]
        for future in as_completed(futures):
            for job, error in future.result():
                if error is None:
                    report.done += 1
                    record = done[rel_of[job]] = done_record(job, rel_of[job])
                    with naming(journal_path):
                        journal.write(json.dumps(record) + "\n")
                else:
                    report.failed.append((job.source, error))
                if bar is not None:
                    bar.update(1)
            with naming(journal_path):
                journal.flush()
    except BaseException:
        # Ctrl-C or an unexpected error (disk full): drop the queued batches instead of finishing them first.
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    finally:
        pool.shutdown(wait=True)
        journal.close()
        if bar is not None:
            bar.close()
    # Compact the journal: one line per finished image, written whole.
    atomic_write_text(journal_path, "".join(json.dumps(done[rel]) + "\n" for rel in images if rel in done))

    if copy_other:
        for rel in others:
            source, target = src_path / rel, dst_path / rel
            if other_is_done(source, target):
                continue
            atomic_copy(source, target)
            report.copied += 1
    report.failed.sort()
    report.seconds = time.perf_counter() - start
    return report


@dataclass(frozen=True)
class _PillowTask:
    """Picklable callable for the process pool (a lambda would not pickle)."""

    spec: ResizeSpec

    def __call__(self, batch: list[Job]) -> list[tuple[Job, str | None]]:
        return resize_batch_pillow(batch, self.spec)
