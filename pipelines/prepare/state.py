"""The destination tree of ``haf prepare``: what to (re)do, and that no output ever lands on an input.

The source tree is walked (:func:`walk_tree`) into images and other files; an image is skipped on a rerun only when
its record in the done journal (``DONE_NAME``) still matches or, without one, when its output decodes fully at the
expected size and is newer than its source; a copied file only when its size and mtime equal the source's. The
manifest (``MANIFEST_NAME``) pins the geometry a destination was prepared with. Contract: docs/RELIABILITY.md.
"""
from __future__ import annotations

import json
import os
import re
import stat
import sys
from pathlib import Path
from typing import Iterable

from haf.safe_files import atomic_write_text, lies_within, naming

from haf.pipelines.prepare.resize import PART_TAG, Job, ResizeSpec, image_size, remove_if_present
from haf.pipelines.readers.common import IMAGE_EXTENSIONS

# Records the geometry a destination was prepared with: a later run with another geometry must not "skip" outputs
# that merely have the right size (e.g. same size, different bottom crop).
MANIFEST_NAME = ".haf-prepare.json"
# One JSON line per finished image: {"path": rel, "size": output bytes, "source": [bytes, mtime_ns]}.
DONE_NAME = ".haf-prepare-done.jsonl"
# Temporary files of haf.safe_files.atomic_write (".<name>.<random>.tmp"), left behind only by a kill.
_STALE_TMP = re.compile(r"^\..+\.[A-Za-z0-9_]{8}\.tmp$")


def is_image(name: str) -> bool:
    return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS) and PART_TAG not in name


def _unreadable_folder(error: OSError) -> None:
    """os.walk's onerror: a folder that cannot be listed is an error naming it, never skipped in silence."""
    raise error


def walk_tree(src: Path, skipped: list[str] | None = None) -> tuple[list[str], list[str]]:
    """Relative paths of the images and of the other (non-hidden) regular files under ``src``, sorted.

    A folder that cannot be listed raises its ``OSError`` (naming it). Entries that are not regular files (named
    pipes, sockets, devices, broken links) are never opened — a pipe would block forever — and their relative
    paths go to ``skipped`` (with a warning line on stderr when ``skipped`` is None).
    """
    images, others = [], []
    for folder, dirs, files in os.walk(src, onerror=_unreadable_folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        rel_folder = os.path.relpath(folder, src)
        for name in sorted(files):
            if name.startswith("."):
                continue
            if PART_TAG in name:
                continue  # a temporary output of an interrupted run inside the source: neither image nor data
            rel = name if rel_folder == "." else os.path.join(rel_folder, name)
            try:
                regular = stat.S_ISREG(os.stat(os.path.join(folder, name)).st_mode)  # stat never blocks
            except FileNotFoundError:
                regular = False  # a broken link
            if not regular:
                if skipped is None:
                    print(f"warning: {os.path.join(folder, name)}: not a regular file (a pipe, socket, device or "
                          "broken link); skipped", file=sys.stderr)
                else:
                    skipped.append(rel)
                continue
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
                    remove_if_present(os.path.join(folder, name))
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

