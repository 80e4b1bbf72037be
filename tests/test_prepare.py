"""``haf prepare``: ffmpeg batches against the Pillow reference, idempotency, resumability, failure reports."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from haf.cli import main as haf_main
from haf.pipelines.prepare import PART_TAG, ResizeSpec, ffmpeg_command, Job, prepare_images

pytestmark = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs the ffmpeg program")

# (relative path, (W, H)): landscape, portrait, odd sizes, a PNG, a '%' in a name (image2 pattern syntax).
IMAGES = [
    ("train/cat/a.jpg", (90, 60)),
    ("train/cat/b.jpg", (45, 77)),
    ("train/dog/c.JPEG", (64, 64)),
    ("val/dog/d%03d.png", (71, 50)),
]


def smooth_image(width: int, height: int, seed: int) -> np.ndarray:
    """A smooth colour field (resampling differences stay small on it, unlike on noise)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width] / max(width, height)
    channels = [127 + 100 * np.sin(2 * np.pi * (rng.uniform(0.3, 1.2) * x + rng.uniform(0.3, 1.2) * y + rng.uniform()))
                for _ in range(3)]
    return np.clip(np.stack(channels, -1), 0, 255).astype(np.uint8)


def make_tree(root: Path, corrupt: bool = True) -> Path:
    for seed, (rel, (w, h)) in enumerate(IMAGES):
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(smooth_image(w, h, seed)).save(path, quality=95) if path.suffix != ".png" else \
            Image.fromarray(smooth_image(w, h, seed)).save(path)
    if corrupt:
        (root / "train" / "cat" / "broken.jpg").write_bytes(b"\xff\xd8 definitely not a jpeg")
    (root / "hierarchy.json").write_text("{}")
    return root


def sizes(root: Path) -> dict[str, tuple[int, int]]:
    out = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and path.suffix.lower() in (".jpg", ".jpeg", ".png"):
            with Image.open(path) as image:
                out[str(path.relative_to(root))] = image.size
    return out


@pytest.mark.parametrize("backend", ["ffmpeg", "pillow"])
def test_shorter_side_mirror_and_report(tmp_path, backend):
    src = make_tree(tmp_path / "src")
    dst = tmp_path / "dst"
    report = prepare_images(src, dst, ResizeSpec(shorter_side=32), workers=2, batch_size=3, backend=backend,
                            progress=False)
    assert (report.done, report.skipped, report.copied) == (4, 0, 1)
    assert [Path(p).name for p, _ in report.failed] == ["broken.jpg"]
    assert "broken.jpg" not in str(sorted(dst.rglob("*")))  # no output, no leftover temporary file
    assert not list(dst.rglob(f"*{PART_TAG}*"))
    got = sizes(dst)
    assert set(got) == {rel for rel, _ in IMAGES}
    for rel, (w, h) in IMAGES:
        s = min(w, h)
        expected_long = max(w, h) * 32 / s
        assert min(got[rel]) == 32 and abs(max(got[rel]) - expected_long) <= 1, (rel, got[rel])
        assert (got[rel][0] >= got[rel][1]) == (w >= h)  # orientation kept
    assert (dst / "hierarchy.json").read_text() == "{}"
    assert "4 done, 0 skipped, 1 failed" in report.summary()


def test_ffmpeg_matches_the_pillow_reference(tmp_path):
    """Same geometry, and pixels within JPEG/resampler tolerance, for fixed size with the bottom banner cropped."""
    src = tmp_path / "src"
    (src / "x").mkdir(parents=True)
    rng = np.random.default_rng(1)
    for i in range(3):
        pixels = smooth_image(int(rng.integers(60, 120)), int(rng.integers(60, 120)), 10 + i)
        pixels[-20:] = 255  # a white banner that must disappear
        Image.fromarray(pixels).save(src / "x" / f"{i}.jpg", quality=98)
    spec = ResizeSpec(size=(40, 30), crop_bottom=20)
    for backend in ("ffmpeg", "pillow"):
        report = prepare_images(src, tmp_path / backend, spec, workers=1, batch_size=8, backend=backend,
                                progress=False)
        assert report.done == 3 and not report.failed
    for i in range(3):
        fast = np.asarray(Image.open(tmp_path / "ffmpeg" / "x" / f"{i}.jpg").convert("RGB"), dtype=np.float64)
        ref = np.asarray(Image.open(tmp_path / "pillow" / "x" / f"{i}.jpg").convert("RGB"), dtype=np.float64)
        assert fast.shape == ref.shape == (30, 40, 3)
        assert np.abs(fast - ref).mean() < 6.0, np.abs(fast - ref).mean()
        assert fast[-3:].mean() < 240  # the banner is gone in both
        assert ref[-3:].mean() < 240


def test_second_run_skips_everything_and_resumes_after_interruption(tmp_path):
    src = make_tree(tmp_path / "src")
    dst = tmp_path / "dst"
    spec = ResizeSpec(shorter_side=24)
    first = prepare_images(src, dst, spec, workers=2, batch_size=8, progress=False)
    assert first.done == 4 and len(first.failed) == 1
    stamps = {p: p.stat().st_mtime_ns for p in dst.rglob("*.jpg")}

    again = prepare_images(src, dst, spec, workers=2, batch_size=8, progress=False)
    assert (again.done, again.skipped, len(again.failed)) == (0, 4, 1)  # the corrupt input is retried and reported
    assert {p: p.stat().st_mtime_ns for p in dst.rglob("*.jpg")} == stamps  # nothing rewritten

    # Simulate an interrupted run: one output missing, one half-written under its temporary name, one truncated
    # under its final name, one source updated after its output.
    (dst / "train" / "cat" / "a.jpg").unlink()
    (dst / "train" / "cat" / f"b{PART_TAG}.jpg").write_bytes(b"partial")
    (dst / "train" / "cat" / "b.jpg").unlink()
    (dst / "train" / "dog" / "c.JPEG").write_bytes(b"")
    os.utime(src / "val" / "dog" / "d%03d.png", ns=(2**62, 2**62))
    resumed = prepare_images(src, dst, spec, workers=2, batch_size=8, progress=False)
    assert (resumed.done, resumed.skipped, len(resumed.failed)) == (4, 0, 1)
    assert not list(dst.rglob(f"*{PART_TAG}*"))
    assert all(min(size) == 24 for size in sizes(dst).values())


def test_a_corrupt_input_does_not_sink_its_batch(tmp_path):
    src = tmp_path / "src"
    (src / "c").mkdir(parents=True)
    for i in range(5):
        Image.fromarray(smooth_image(30, 20, i)).save(src / "c" / f"{i}.jpg")
    (src / "c" / "2.jpg").write_bytes(b"garbage")  # in the middle of the one batch
    report = prepare_images(src, tmp_path / "dst", ResizeSpec(size=(16, 16)), workers=1, batch_size=16,
                            progress=False)
    assert report.done == 4 and [Path(p).name for p, _ in report.failed] == ["2.jpg"]
    assert "ffmpeg failed" in report.failed[0][1] and "exit status" not in report.failed[0][1]


def test_one_ffmpeg_process_per_batch(tmp_path):
    jobs = [Job(f"/in/{i}.jpg", f"/out/{i}.jpg") for i in range(3)]
    command = ffmpeg_command(jobs, ResizeSpec(shorter_side=256))
    assert command.count("-i") == 3 and command.count("-filter_complex") == 1
    assert command.count("-map") == 3 and all(job.part in command for job in jobs)
    assert command[command.index("-pattern_type") + 1] == "none"


def test_errors_are_named(tmp_path):
    src = make_tree(tmp_path / "src", corrupt=False)
    with pytest.raises(FileNotFoundError, match="source folder not found"):
        prepare_images(tmp_path / "nope", tmp_path / "d", ResizeSpec(shorter_side=8), progress=False)
    with pytest.raises(ValueError, match="lies inside the source folder"):
        prepare_images(src, src / "resized", ResizeSpec(shorter_side=8), progress=False)
    with pytest.raises(ValueError, match="exactly one of shorter_side"):
        ResizeSpec(shorter_side=8, size=(8, 8))
    with pytest.raises(ValueError, match="qscale"):
        ResizeSpec(size=(8, 8), qscale=1)
    with pytest.raises(FileNotFoundError, match="no-such-ffmpeg"):
        prepare_images(src, tmp_path / "d", ResizeSpec(shorter_side=8), ffmpeg="no-such-ffmpeg", progress=False)
    prepare_images(src, tmp_path / "d2", ResizeSpec(size=(8, 8)), workers=1, progress=False)
    with pytest.raises(ValueError, match="crop_bottom"):  # same size, other geometry: never "skipped"
        prepare_images(src, tmp_path / "d2", ResizeSpec(size=(8, 8), crop_bottom=2), workers=1, progress=False)


def test_command_summary_and_strict_exit(tmp_path, capsys):
    src = make_tree(tmp_path / "src")
    argv = ["prepare", str(src), str(tmp_path / "dst"), "--size", "20x10", "--workers", "2", "--batch-size", "8",
            "--no-progress"]
    assert haf_main(argv) == 0
    captured = capsys.readouterr()
    assert "4 done, 0 skipped, 1 failed" in captured.out and "broken.jpg" in captured.err
    assert haf_main(argv + ["--strict"]) == 1
    assert "0 done, 4 skipped, 1 failed" in capsys.readouterr().out
    assert set(sizes(tmp_path / "dst").values()) == {(20, 10)}


def test_pillow_fallback_rescues_a_disguised_file(tmp_path):
    """ImageNet holds a PNG named .JPEG (n02105855_2933.JPEG); ffmpeg's demuxer goes by the name and fails."""
    src = tmp_path / "src"
    (src / "n02105855").mkdir(parents=True)
    Image.fromarray(smooth_image(40, 30, 0)).save(src / "n02105855" / "n02105855_2933.JPEG", format="PNG")
    Image.fromarray(smooth_image(40, 30, 1)).save(src / "n02105855" / "fine.JPEG")
    plain = prepare_images(src, tmp_path / "plain", ResizeSpec(shorter_side=16), workers=1, progress=False)
    assert plain.done == 1 and [Path(p).name for p, _ in plain.failed] == ["n02105855_2933.JPEG"]
    rescued = prepare_images(src, tmp_path / "rescued", ResizeSpec(shorter_side=16), workers=1,
                             pillow_fallback=True, progress=False)
    assert rescued.done == 2 and not rescued.failed
    with Image.open(tmp_path / "rescued" / "n02105855" / "n02105855_2933.JPEG") as image:
        assert image.format == "JPEG" and image.size == (21, 16)


def test_stretch_makes_square_copies_of_every_image(tmp_path, capsys):
    """--stretch N: the field's stretched N×N copies (aspect not kept), the same tree, via the Pillow path too."""
    src = make_tree(tmp_path / "src")
    for backend in ("ffmpeg", "pillow"):
        argv = ["prepare", str(src), str(tmp_path / backend), "--stretch", "12", "--workers", "1", "--backend",
                backend, "--no-progress"]
        assert haf_main(argv) == 0
        assert "12x12" in capsys.readouterr().out
        assert set(sizes(tmp_path / backend).values()) == {(12, 12)}
