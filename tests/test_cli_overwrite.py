"""Commands that write a named output keep an existing file unless --overwrite is given: a one-line refusal that
names the file and the flag, raised before any work, with the file untouched (eval, predict and export: their own
test files)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from haf.cli import main

ISA = "root a\nroot b\na a1\na a2\nb b1\nb b2\n"


def _metrics(root: Path) -> Path:
    folder = root / "runs" / "haframe-seed0"
    folder.mkdir(parents=True)
    metrics = {"top1": 70.0, "mistake_severity": 2.0, "hierdist@1": 1.0, "num_samples": 10,
               "run": {"dataset": "demo", "method": "haframe", "seed": 0, "model": "tiny_cnn/type2"}}
    (folder / "metrics.json").write_text(json.dumps(metrics))
    return root / "runs"


def _commands(tmp_path: Path) -> dict[str, tuple[list[str], list[Path]]]:
    """name -> (argv without --overwrite, the outputs it writes)."""
    hierarchy = tmp_path / "tiny_isa.txt"
    hierarchy.write_text(ISA)
    runs = _metrics(tmp_path)
    return {
        "frame": (["frame", str(hierarchy), "--gamma", "2", "--out", str(tmp_path / "f.npz")], [tmp_path / "f.npz"]),
        "plot frame": (["plot", "frame", str(hierarchy), "--gamma", "2", "--out", str(tmp_path / "f.png")],
                       [tmp_path / "f.png"]),
        "plot runs": (["plot", "runs", str(runs), "--out-dir", str(tmp_path / "plots")],
                      [tmp_path / "plots" / "hierdist_at_k.png"]),
        "report": (["report", str(runs), "--out", str(tmp_path / "table")],
                   [tmp_path / "table.md", tmp_path / "table.csv"]),
    }


@pytest.mark.parametrize("name", ["frame", "plot frame", "plot runs", "report"])
def test_existing_output_is_kept_unless_overwrite(name, tmp_path, capsys):
    argv, outputs = _commands(tmp_path)[name]
    assert main(argv) == 0  # first time: written
    assert all(path.is_file() for path in outputs)
    for path in outputs:
        path.write_bytes(b"the user's own file")
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--overwrite" in err and str(outputs[0]) in err, err
    assert all(path.read_bytes() == b"the user's own file" for path in outputs)
    assert main([*argv, "--overwrite"]) == 0
    assert all(path.read_bytes() != b"the user's own file" for path in outputs)
