"""What the tools write and read back: JSON is always valid (NaN/±inf spelled as strings our readers know), the
report tells a non-finite metric ("nan"/"inf") from a missing one ("n/a"), and hostile JSON (a list where a
record belongs, nesting 10⁵ deep) gets one line naming the file."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from haf.cli import main
from haf.reporting.report import make_report, summarize
from haf.safe_files import json_loads, json_text


def _strict_loads(text: str):
    def refuse(name):
        raise AssertionError(f"invalid JSON constant {name}")

    return json.loads(text, parse_constant=refuse)


def test_json_text_is_always_valid_json_and_reads_back():
    record = {"loss": math.nan, "top1": 12.5, "grads": [math.inf, -math.inf, 1.0], "nested": {"x": math.nan}}
    text = json_text(record, indent=2)
    back = _strict_loads(text)  # a strict parser: no bare NaN/Infinity
    assert back == {"loss": "NaN", "top1": 12.5, "grads": ["Infinity", "-Infinity", 1.0], "nested": {"x": "NaN"}}
    assert math.isnan(float(back["loss"])) and float(back["grads"][1]) == -math.inf


def _write_run(folder: Path, seed: int, **metrics) -> None:
    folder.mkdir(parents=True)
    record = {"top1": 50.0, "mistake_severity": 2.0, "hierdist@1": 1.0, **metrics,
              "run": {"dataset": "demo", "method": "haframe", "model": "m", "seed": seed}}
    (folder / "metrics.json").write_text(json_text(record, indent=2))


def test_report_shows_nan_and_inf_apart_from_a_missing_metric(tmp_path):
    _write_run(tmp_path / "a", 0, **{"hierdist@5": math.nan, "hierdist@20": math.inf})
    markdown, csv_text = make_report([tmp_path])
    row = next(line for line in markdown.splitlines() if line.startswith("| haframe"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert "nan" in cells and "inf" in cells and "n/a" not in cells
    _write_run(tmp_path / "b", 1, **{"hierdist@5": 3.0})  # hierdist@20 missing in b, inf in a
    markdown, _ = make_report([tmp_path])
    row = next(line for line in markdown.splitlines() if line.startswith("| haframe"))
    assert "3.00 (+1 nan)" in row and "inf" in row  # a diverged seed is shown, never averaged in
    _write_run(tmp_path / "c" / "only", 2)
    markdown, _ = make_report([tmp_path / "c"])
    assert markdown.count("n/a") == 2  # hierdist@5 and @20 absent: missing, not nan


def test_summary_keeps_missing_finite_and_nonfinite_apart():
    assert summarize([]).format() == "n/a"
    assert summarize([None]).format() == "n/a"
    assert summarize([math.nan]).format() == "nan"
    assert summarize([-math.inf]).format() == "-inf"
    assert summarize([1.0, math.nan, math.inf]).format() == "1.00 (+2 inf/nan)"


def test_plot_and_report_on_a_metrics_file_that_is_a_list(tmp_path, capsys):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.json").write_text("[1, 2, 3]\n")
    (tmp_path / "run" / "metrics.jsonl").write_text("")
    for argv in (["plot", "runs", str(tmp_path / "run"), "--out-dir", str(tmp_path / "plots")],
                 ["report", str(tmp_path / "run")]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "expected a JSON object" in err and str(tmp_path / "run") in err


def test_json_nested_deeply_is_one_line_not_a_recursion_error(tmp_path, capsys):
    deep = "[" * 100_000 + "]" * 100_000
    with pytest.raises(ValueError, match="nested too deeply"):
        json_loads(deep, "f.json")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.json").write_text(deep)
    (tmp_path / "h.json").write_text('{"format": ' + deep + "}")
    for argv in (["report", str(tmp_path / "run")], ["frame", str(tmp_path / "h.json"), "--gamma", "1"]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "nested too deeply" in err and "Traceback" not in err
