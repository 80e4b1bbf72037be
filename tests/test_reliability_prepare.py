"""``haf prepare`` under hostile sources and destinations: a named pipe (a real FIFO) is skipped unopened, never
blocking; a folder that cannot be listed stops the run naming it; a destination that cannot be written (a real
read-only tmpfs when root) is a destination error with a non-zero exit, not an input failure; absurd sizes are
refused before any pixel is allocated."""
from __future__ import annotations

import errno
import os
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from haf.cli import main as haf_main
from haf.pipelines.prepare import ResizeSpec, prepare_images

REPO = Path(__file__).resolve().parents[1]
HAF = [sys.executable, "-m", "haf.cli"]  # this interpreter: a console script may name another environment's python


def make_source(root: Path) -> Path:
    rng = np.random.default_rng(0)
    for rel in ("a/x.jpg", "b/y.jpg"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (20, 30, 3), dtype=np.uint8)).save(root / rel)
    return root


@pytest.mark.parametrize("backend", ["pillow", "ffmpeg"])
def test_a_named_pipe_in_the_source_is_skipped_unopened(tmp_path, backend):
    if backend == "ffmpeg" and not any((Path(p) / "ffmpeg").exists() for p in os.environ["PATH"].split(":")):
        pytest.skip("no ffmpeg")
    src = make_source(tmp_path / "src")
    os.mkfifo(src / "a" / "pipe.jpg")  # an image name: a reader that opened it would block forever
    os.mkfifo(src / "labels.txt")  # an "other" file: copied if it were regular
    done = subprocess.run([*HAF, "prepare", str(src), str(tmp_path / "dst"), "--size", "8x8", "--backend", backend,
                           "--workers", "1", "--no-progress"], cwd=REPO, capture_output=True, text=True,
                          timeout=120)  # a hang fails here instead of blocking the suite
    assert done.returncode == 0, done.stderr
    assert "2 done" in done.stdout and "2 not regular files skipped" in done.stdout
    assert f"{src / 'a' / 'pipe.jpg'}: not a regular file" in done.stderr
    assert sorted(p.name for p in (tmp_path / "dst").rglob("*") if p.is_file() and not p.name.startswith(".")) \
        == ["x.jpg", "y.jpg"]


def test_a_folder_that_cannot_be_listed_stops_the_run_naming_it(tmp_path, monkeypatch, capsys):
    src = make_source(tmp_path / "src")
    locked = src / "b"
    if os.geteuid() != 0:
        locked.chmod(0)  # a real unreadable folder
    else:  # root reads every folder: make the listing fail as it would for anyone else
        scandir = os.scandir

        def refuse(path="."):
            if Path(path) == locked:
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
            return scandir(path)

        monkeypatch.setattr(os, "scandir", refuse)
    try:
        code = haf_main(["prepare", str(src), str(tmp_path / "dst"), "--size", "8x8", "--backend", "pillow",
                         "--workers", "1", "--no-progress"])
    finally:
        locked.chmod(0o755)
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and f"{locked}: Permission denied" in err


@contextmanager
def read_only_tmpfs(folder: Path):
    folder.mkdir(parents=True)
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(folder)],
                                           capture_output=True).returncode != 0:
        pytest.skip("needs root to mount a read-only tmpfs")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)


@pytest.mark.parametrize("backend", ["pillow", "ffmpeg"])
def test_an_unwritable_destination_is_a_destination_error(tmp_path, backend, capsys):
    src = make_source(tmp_path / "src")
    dst = tmp_path / "dst"
    with read_only_tmpfs(dst / "a"):  # the images of class a cannot be written
        code = haf_main(["prepare", str(src), str(dst), "--size", "8x8", "--backend", backend, "--workers", "1",
                         "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("haf prepare: error:") and err.count("\n") == 1 and "Read-only file system" in err
    assert str(dst / "a") in err


def test_absurd_sizes_are_refused_before_allocating(tmp_path, capsys):
    src = make_source(tmp_path / "src")
    for flag in (["--stretch", "1000000"], ["--size", "100000x8"], ["--shorter-side", "20000"]):
        assert haf_main(["prepare", str(src), str(tmp_path / "dst"), *flag, "--backend", "pillow"]) == 2
        err = capsys.readouterr().err
        assert "16384" in err and err.count("\n") == 1
    # an extreme aspect ratio at an accepted shorter side: that image fails alone, before it is decoded
    Image.new("RGB", (4000, 1)).save(src / "a" / "line.png")
    report = prepare_images(src, tmp_path / "dst", ResizeSpec(shorter_side=100), backend="pillow", workers=1,
                            progress=False)
    assert report.done == 2 and [Path(f[0]).name for f in report.failed] == ["line.png"]
    assert "beyond the 16384-px limit" in report.failed[0][1]
