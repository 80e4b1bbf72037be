"""``haf prepare``: resize every image of a folder tree into a mirror tree, ``workers`` processes at once.

``SRC/a/b/x.jpg`` → ``DST/a/b/x.jpg`` (same relative path and format); other files (lists, hierarchy files) are
copied unless ``copy_other=False``, so DST replaces SRC for the readers. This module runs the command: it checks the
paths, plans what is left to do (``prepare_state``), hands batches to a backend (``prepare_resize``: ffmpeg, the fast
path, or Pillow, the reference) and records what finished. Images that fail (not an image, truncated beyond repair,
...) are reported in the summary and never stop the run. What it guarantees under faults and kills (nothing of the
user's touched, idempotent, resumable, verified): docs/RELIABILITY.md.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import time
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

from haf.log_setup import progress_bar
from haf.safe_files import atomic_copy, atomic_write_text, naming

from haf.pipelines.prepare.resize import (  # noqa: F401 - re-exported: the public names of haf.pipelines.prepare
    FATAL_WRITE_ERRNOS,
    PART_TAG,
    QSCALE_RANGE,
    SECONDS_PER_IMAGE_LIMIT,
    Job,
    ResizeSpec,
    ffmpeg_command,
    ffmpeg_error_text,
    image_size,
    resize_batch_ffmpeg,
    resize_batch_pillow,
)
from haf.pipelines.prepare.state import (  # noqa: F401 - re-exported
    DONE_NAME,
    MANIFEST_NAME,
    check_apart,
    check_manifest,
    done_record,
    is_image,
    other_is_done,
    output_is_done,
    read_done,
    record_matches,
    remove_stale_temporaries,
    source_signature,
    walk_tree,
)

BACKENDS = ("ffmpeg", "pillow")


@dataclass
class PrepareReport:
    """Counts and failures of one run; ``summary()`` is the line ``haf prepare`` prints."""

    backend: str
    done: int = 0
    skipped: int = 0
    copied: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)  # (source path, reason)
    not_regular: list[str] = field(default_factory=list)  # source entries skipped unopened: pipes, devices, ...
    seconds: float = 0.0

    @property
    def images_per_second(self) -> float:
        return self.done / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> str:
        return (
            f"{self.backend}: {self.done} done, {self.skipped} skipped, {len(self.failed)} failed"
            f"{f', {self.copied} other files copied' if self.copied else ''}"
            f"{f', {len(self.not_regular)} not regular files skipped' if self.not_regular else ''}"
            f" in {self.seconds:.1f} s "
            f"({self.images_per_second:.1f} images/s)"
        )


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
    """Resize every image under ``src`` into the mirror tree ``dst``; see the module docstring.

    Every output (images, copied files, the done journal) is written to a temporary name in its folder, verified,
    then renamed, so a kill leaves no half-written file under a final name; stale temporaries of a killed run are
    removed first. The journal is appended as outputs finish and rewritten atomically at the end.
    """
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
    not_regular: list[str] = []
    images, others = walk_tree(src_path, not_regular)
    check_apart(src_path, dst_path, sorted({os.path.dirname(rel) or "." for rel in (*images, *others)}))
    check_manifest(dst_path, spec)
    remove_stale_temporaries(dst_path)
    report = PrepareReport(backend=backend, not_regular=[str(src_path / rel) for rel in not_regular])
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
    bar = progress_bar(len(jobs), f"prepare ({backend})", progress, initial=report.skipped, leave=True, unit="img")

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
