"""User-caused OS errors at every writing command: a missing input, an output below a regular file, a full disk,
a refused permission. Each ends in one line ``haf <cmd>: error: ...`` naming the path, exit status 2, no
traceback, and nothing half-written under a final name."""
from __future__ import annotations

import errno
import json
import os

import pytest

from haf.cli import main
from haf.hierarchy import Hierarchy

EDGES = [("r", "A"), ("r", "B"), ("A", "a1"), ("A", "a2"), ("B", "b1"), ("B", "b2")]


@pytest.fixture
def inputs(tmp_path):
    """A hierarchy file, a run folder with metrics.json, and a regular file to put outputs below."""
    hierarchy = tmp_path / "h.json"
    Hierarchy.from_edges(EDGES).to_json(hierarchy)
    run = tmp_path / "runs" / "r0"
    run.mkdir(parents=True)
    (run / "metrics.json").write_text(json.dumps({
        "top1": 70.0, "mistake_severity": 2.0, "hierdist@1": 0.5, "hierdist@5": 1.5, "hierdist@20": 2.5,
        "run": {"dataset": "demo", "method": "haframe", "model": "tiny", "seed": 0}}))
    (tmp_path / "file").write_text("a regular file")
    return {"hierarchy": str(hierarchy), "runs": str(tmp_path / "runs"), "file": tmp_path / "file",
            "tmp": tmp_path}


# Commands writing to OUT: argv with {out} (a file path) and the path that must appear in the message.
WRITERS = {
    "frame": lambda i, out: ["frame", i["hierarchy"], "--gamma", "1", "--out", f"{out}.pt"],
    "frame-npz": lambda i, out: ["frame", i["hierarchy"], "--gamma", "1", "--out", f"{out}.npz"],
    "report": lambda i, out: ["report", i["runs"], "--out", str(out)],
    "plot-frame": lambda i, out: ["plot", "frame", i["hierarchy"], "--gamma", "1", "--out", f"{out}.png"],
    "plot-runs": lambda i, out: ["plot", "runs", i["runs"], "--out-dir", str(out)],
    "demo-data": lambda i, out: ["demo-data", str(out), "--colours", "2", "--patterns", "2", "--shapes", "2",
                                 "--train-per-class", "1", "--val-per-class", "1", "--test-per-class", "1",
                                 "--quiet"],
}


def one_line_error(capsys, command: str, *needles) -> str:
    captured = capsys.readouterr()
    err = captured.err
    assert err.startswith(f"haf {command}: error: "), err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    for needle in needles:
        assert str(needle) in err, (needle, err)
    return err


def final_outputs(folder) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


@pytest.mark.parametrize("writer", WRITERS)
def test_output_below_a_regular_file(inputs, capsys, writer):
    out = inputs["file"] / "sub" / "out"
    assert main(WRITERS[writer](inputs, out)) == 2
    one_line_error(capsys, writer.split("-")[0] if writer != "demo-data" else "demo-data", inputs["file"])
    assert inputs["file"].read_text() == "a regular file"


@pytest.mark.parametrize("writer", WRITERS)
def test_disk_full_names_the_path_and_leaves_nothing_half_written(inputs, capsys, monkeypatch, writer):
    """ENOSPC as a write() on a full disk raises it: without a file name (atomic writes fsync every file)."""
    from PIL import Image

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    monkeypatch.setattr(Image.Image, "save", full)  # the demo images
    out_dir = inputs["tmp"] / "outs"
    out_dir.mkdir()
    out = out_dir / "result"
    assert main(WRITERS[writer](inputs, out)) == 2
    command = "demo-data" if writer == "demo-data" else writer.split("-")[0]
    one_line_error(capsys, command, "No space left on device", out_dir)
    assert final_outputs(out_dir) == []  # no temporary file left, nothing under a final name


def test_permission_denied_names_the_path(inputs, capsys, monkeypatch):
    import tempfile

    def refused(*args, dir=None, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", dir)

    monkeypatch.setattr(tempfile, "mkstemp", refused)
    assert main(WRITERS["frame"](inputs, inputs["tmp"] / "locked" / "w")) == 2
    one_line_error(capsys, "frame", "Permission denied", inputs["tmp"] / "locked")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through any permission bits")
def test_permission_denied_for_real(inputs, capsys):
    locked = inputs["tmp"] / "locked"
    locked.mkdir(mode=0o500)
    try:
        assert main(WRITERS["report"](inputs, locked / "table")) == 2
        one_line_error(capsys, "report", "Permission denied", locked)
    finally:
        locked.chmod(0o700)


@pytest.mark.parametrize("argv, command", [
    (["frame", "{tmp}/absent.json", "--gamma", "1"], "frame"),
    (["frame", "{tmp}/file/h.json", "--gamma", "1"], "frame"),
    (["report", "{tmp}/absent"], "report"),
    (["plot", "runs", "{tmp}/absent", "--out-dir", "{tmp}/plots"], "plot"),
    (["plot", "frame", "{tmp}/absent.json", "--gamma", "1", "--out", "{tmp}/x.png"], "plot"),
    (["frame", "{tmp}/h.json", "--gamma", "1", "--classes", "{tmp}/runs"], "frame"),  # a folder, not a file
])
def test_missing_or_wrong_kind_of_input(inputs, capsys, argv, command):
    argv = [a.format(tmp=inputs["tmp"]) for a in argv]
    assert main(argv) == 2
    one_line_error(capsys, command, argv[2] if command == "plot" else argv[1] if "--classes" not in argv
                   else argv[-1])
