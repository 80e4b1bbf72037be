"""`haf report` / `haf plot` show the hierarchical selective metrics of metrics.json's "selective" section."""
from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest

from haf.cli import main
from haf.reporting.report import make_report

GRID = [round(x, 6) for x in np.linspace(0, 1, 101)]


def selective(haurc: float, slope: float) -> dict:
    return {"haurc": haurc, "coverage@0.9": 0.5, "coverage@0.95": 0.4, "coverage@0.99": 0.1,
            "curve": {"coverage": GRID, "risk": [slope * c for c in GRID]}}


def write_run(root, name, method, seed, haurc, crm=False):
    folder = root / name
    folder.mkdir(parents=True)
    metrics = {"top1": 60.0, "mistake_severity": 2.0, "hierdist@1": 1.0, "hierdist@5": 1.5, "hierdist@20": 2.0,
               "run": {"dataset": "demo", "method": method, "seed": seed},
               "selective": {"plain": selective(haurc, 0.2 + seed / 10)}}
    if crm:
        metrics["crm"] = {"top1": 61.0, "mistake_severity": 1.0, "hierdist@1": 0.4, "hierdist@5": 1.0,
                          "hierdist@20": 2.0}
        metrics["selective"]["crm"] = selective(haurc / 2, 0.1)
    (folder / "metrics.json").write_text(json.dumps(metrics))


def test_report_has_a_selective_table(tmp_path):
    for seed, value in enumerate([0.10, 0.12]):
        write_run(tmp_path, f"h{seed}", "haframe", seed, value)
        write_run(tmp_path, f"c{seed}", "cross-entropy", seed, value + 0.1, crm=True)
    markdown, csv_text = make_report([tmp_path])
    assert "### demo hierarchical selective" in markdown and "selective: hAURC" in markdown
    rows = {r["method"]: r for r in csv.DictReader(io.StringIO(csv_text))}
    assert float(rows["haframe"]["selective/haurc_mean"]) == pytest.approx(0.11)
    assert float(rows["cross-entropy"]["selective/haurc_mean"]) == pytest.approx(0.21)
    assert float(rows["cross-entropy+crm"]["selective/haurc_mean"]) == pytest.approx(0.105)
    assert float(rows["haframe"]["selective/coverage@0.95_mean"]) == pytest.approx(0.4)
    assert "| haframe | 2 | 0.1100 ± " in markdown


def test_report_names_a_bad_selective_value(tmp_path):
    write_run(tmp_path, "h", "haframe", 0, 0.1)
    path = tmp_path / "h" / "metrics.json"
    data = json.loads(path.read_text())
    data["selective"]["plain"]["haurc"] = "low"
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="selective.plain.'haurc'"):
        make_report([tmp_path])


def test_plot_runs_draws_the_risk_coverage_curves(tmp_path):
    from haf.commands.plot import _collect_selective, mean_curves

    for seed in range(2):
        write_run(tmp_path, f"h{seed}", "haframe", seed, 0.1, crm=True)
    assert main(["plot", "runs", str(tmp_path), "--out-dir", str(tmp_path / "fig")]) == 0
    assert (tmp_path / "fig" / "risk_coverage.png").stat().st_size > 1000
    curves: dict = {}
    for seed in range(2):
        _collect_selective(tmp_path / f"h{seed}" / "metrics.json", curves)
    means = mean_curves(curves)
    assert set(means) == {"haframe", "haframe+crm"}
    np.testing.assert_allclose(means["haframe"][1], [0.25 * c for c in GRID], atol=1e-9)


@pytest.mark.parametrize("haframe_values, verdict", [
    ([0.10, 0.11, 0.12], "haframe hedges more cheaply"),
    ([0.20, 0.10, 0.30], "no clear difference"),
    ([0.30, 0.31, 0.32], "hedges more expensively"),
])
def test_demo_selective_section_states_what_it_measured(tmp_path, haframe_values, verdict):
    from types import SimpleNamespace

    from haf.reporting.demo_results import selective_section

    runs = []
    for seed, (ours, theirs) in enumerate(zip(haframe_values, [0.20, 0.21, 0.22])):
        for method, value in (("haframe", ours), ("cross-entropy", theirs)):
            write_run(tmp_path, f"{method}{seed}", method, seed, value, crm=method == "cross-entropy")
            runs.append(SimpleNamespace(method=method, seed=seed, output_dir=tmp_path / f"{method}{seed}"))
    text, written = selective_section(runs, tmp_path / "plots")
    assert verdict in text and "cross-entropy+crm" in text
    assert f"hAURC {np.mean(haframe_values):.4f}" in text
    assert written["risk-coverage"].stat().st_size > 1000
    assert selective_section([], tmp_path / "none") == ("", {})
