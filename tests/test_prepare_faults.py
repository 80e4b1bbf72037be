"""``haf prepare`` under faults: outputs that would resolve into the inputs, kills mid-write, torn files from
older runs, a full disk. Pillow backend (no ffmpeg needed), a handful of tiny images: each test takes ~1 s."""
from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from haf.cli import main as haf_main
from haf.pipelines.prepare import DONE_NAME, PART_TAG, ResizeSpec, prepare_images

SPEC = ResizeSpec(shorter_side=8)
ANNOTATIONS = b"".join(b"image_%04d.jpg label_%d\n" % (i, i % 7) for i in range(3000))  # 70 kB: copied in parts


def make_source(root: Path) -> Path:
    rng = np.random.default_rng(0)
    for rel in ("train/a/x.jpg", "train/b/y.jpg", "val/a/z.png"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (20, 30, 3), dtype=np.uint8)).save(root / rel)
    (root / "lists").mkdir()
    (root / "lists" / "train.txt").write_bytes(ANNOTATIONS)
    (root / "hierarchy.json").write_text('{"root": "r"}\n')
    return root


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def prepare(src, dst, **options):
    return prepare_images(src, dst, SPEC, backend="pillow", workers=1, progress=False, **options)


# ------------------------------------------------------------------------------------------ outputs into inputs


@pytest.mark.parametrize("how", ["symlink", "dotdot", "symlink-parent", "link-inside-dst", "src-inside-dst"])
def test_outputs_never_resolve_into_the_source(tmp_path, how):
    src = make_source(tmp_path / "src")
    before = tree_bytes(src)
    if how == "symlink":  # DST is a link to SRC: the unresolved paths differ
        dst = tmp_path / "dst"
        dst.symlink_to(src)
    elif how == "dotdot":
        (tmp_path / "other").mkdir()
        dst = tmp_path / "other" / ".." / "src" / "train"
    elif how == "symlink-parent":  # a link to SRC's parent, then down into SRC
        (tmp_path / "up").symlink_to(tmp_path)
        dst = tmp_path / "up" / "src" / "resized"
    elif how == "link-inside-dst":  # DST itself is elsewhere, but one of its folders links into SRC
        dst = tmp_path / "dst"
        dst.mkdir()
        (dst / "train").symlink_to(src / "train")
    else:
        dst = tmp_path
    with pytest.raises(ValueError, match="inside the (source|destination) folder"):
        prepare(src, dst)
    assert tree_bytes(src) == before


def test_a_bind_like_alias_is_caught_by_identity(tmp_path, monkeypatch):
    """A bind mount shows SRC under another path that realpath cannot see through; (st_dev, st_ino) can."""
    import haf.safe_files as safe_files

    src = make_source(tmp_path / "src")
    alias = tmp_path / "mnt"
    alias.mkdir()
    real_stat = os.stat

    def stat(path, *args, **kwargs):  # the alias folder has SRC's identity, as under `mount --bind`
        return real_stat(src if Path(path) == alias else path, *args, **kwargs)

    monkeypatch.setattr(safe_files.os, "stat", stat)
    with pytest.raises(ValueError, match="inside the source folder"):
        prepare(src, alias / "resized")


def test_a_symlink_at_an_output_name_is_replaced_not_written_through(tmp_path):
    src = make_source(tmp_path / "src")
    outside = tmp_path / "precious.txt"
    outside.write_text("keep me")
    dst = tmp_path / "dst"
    (dst / "lists").mkdir(parents=True)
    (dst / "lists" / "train.txt").symlink_to(outside)
    prepare(src, dst)
    assert outside.read_text() == "keep me"
    assert not (dst / "lists" / "train.txt").is_symlink()
    assert (dst / "lists" / "train.txt").read_bytes() == ANNOTATIONS


# ------------------------------------------------------------------------------------------ kills and torn files

KILL_SCRIPT = """
import os, shutil, signal, sys
from PIL import Image
from haf.pipelines.prepare import ResizeSpec, prepare_images
what = sys.argv[3]
if what == "copy":
    def copyfileobj(reader, writer, length=0):
        writer.write(reader.read(1000)); writer.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    shutil.copyfileobj = copyfileobj
else:
    save = Image.Image.save
    def partial_save(self, fp, *args, **kwargs):
        save(self, fp, *args, **kwargs)
        with open(fp, "r+b") as handle:
            handle.truncate(50)
        os.kill(os.getpid(), signal.SIGKILL)
    Image.Image.save = partial_save
prepare_images(sys.argv[1], sys.argv[2], ResizeSpec(shorter_side=8), backend="pillow", workers=1, progress=False)
"""


@pytest.mark.parametrize("what", ["copy", "image"])
def test_kill_9_mid_write_then_rerun_redoes_the_torn_file(tmp_path, what):
    src = make_source(tmp_path / "src")
    dst = tmp_path / "dst"
    killed = subprocess.run([sys.executable, "-c", KILL_SCRIPT, str(src), str(dst), what], capture_output=True,
                            timeout=120, check=False)
    assert killed.returncode == -signal.SIGKILL, killed.stderr.decode()
    if what == "copy":  # the first copied file was being written: nothing under its final name
        assert not (dst / "hierarchy.json").exists() and not (dst / "lists" / "train.txt").exists()
    else:
        assert not [p for p in dst.rglob("*") if p.suffix in (".jpg", ".png") and PART_TAG not in p.name]
    leftovers = [p for p in dst.rglob("*") if p.is_file() and (PART_TAG in p.name or p.name.endswith(".tmp"))]
    assert leftovers  # the kill left a temporary file ...

    report = prepare(src, dst)
    assert report.done == (3 if what == "image" else 0) and report.copied == 2 and not report.failed
    assert not [p for p in dst.rglob("*") if PART_TAG in p.name or p.name.endswith(".tmp")]  # ... now removed
    assert (dst / "lists" / "train.txt").read_bytes() == ANNOTATIONS
    for image in ("train/a/x.jpg", "train/b/y.jpg", "val/a/z.png"):
        with Image.open(dst / image) as opened:
            opened.load()
            assert min(opened.size) == 8


def test_torn_file_from_an_older_run_is_redone_not_skipped(tmp_path):
    """A truncated copy under its final name, newer than its source: the old rule ("newer: skip") dropped data."""
    src = make_source(tmp_path / "src")
    dst = tmp_path / "dst"
    prepare(src, dst)
    torn = dst / "lists" / "train.txt"
    torn.write_bytes(ANNOTATIONS[:1000])
    os.utime(torn, ns=(2**62, 2**62))
    image = dst / "train" / "a" / "x.jpg"
    image.write_bytes(image.read_bytes()[:120])  # header intact, pixels gone
    report = prepare(src, dst)
    assert report.copied == 1 and report.done == 1 and report.skipped == 2
    assert torn.read_bytes() == ANNOTATIONS
    with Image.open(image) as opened:
        opened.load()


def test_images_without_a_record_are_decoded_before_being_skipped(tmp_path):
    src = make_source(tmp_path / "src")
    dst = tmp_path / "dst"
    prepare(src, dst)
    records = [json.loads(line) for line in (dst / DONE_NAME).read_text().splitlines()]
    assert sorted(r["path"] for r in records) == ["train/a/x.jpg", "train/b/y.jpg", "val/a/z.png"]
    (dst / DONE_NAME).unlink()  # e.g. a destination prepared by an older version
    image = dst / "train" / "b" / "y.jpg"
    image.write_bytes(image.read_bytes()[:150])
    os.utime(image, ns=(2**62, 2**62))
    report = prepare(src, dst)
    assert (report.done, report.skipped) == (1, 2)
    with (dst / DONE_NAME).open("a") as journal:
        journal.write('{"path": "train/a/x.jpg", "si')  # a torn last line (kill while appending) is ignored
    assert prepare(src, dst).skipped == 3


# ------------------------------------------------------------------------------------------ OS errors at the CLI


def test_disk_full_stops_the_run_with_one_line(tmp_path, monkeypatch, capsys):
    src = make_source(tmp_path / "src")
    save = Image.Image.save

    def full_disk(self, fp, *args, **kwargs):
        save(self, fp, *args, **kwargs)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", full_disk)
    argv = ["prepare", str(src), str(tmp_path / "dst"), "--shorter-side", "8", "--backend", "pillow",
            "--workers", "1", "--no-progress"]
    assert haf_main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("haf prepare: error:") and "No space left" in err
    assert str(tmp_path / "dst") in err and "Traceback" not in err
    assert not [p for p in (tmp_path / "dst").rglob("*") if PART_TAG in p.name]


def test_source_errors_name_the_path(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    for src, message in ((tmp_path / "absent", "source folder not found"), (tmp_path / "file", "Not a directory")):
        assert haf_main(["prepare", str(src), str(tmp_path / "d"), "--size", "8x8", "--backend", "pillow"]) == 2
        err = capsys.readouterr().err
        assert message in err and str(src) in err and err.count("\n") == 1
    make_source(tmp_path / "src")
    below_file = tmp_path / "file" / "dst"
    assert haf_main(["prepare", str(tmp_path / "src"), str(below_file), "--size", "8x8", "--backend", "pillow",
                     "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "file") in err and err.count("\n") == 1 and "Traceback" not in err
