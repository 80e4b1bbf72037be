"""`make demo` end to end in miniature, and the pieces of haf/reporting/demo.py that the miniature cannot judge.

The end-to-end test runs ``python -m haf.reporting.demo --quick`` (36 classes × 8 images generated into tmp_path, one epoch of
three steps per method, both methods through the real ``haf/train.py`` subprocess), then runs it again to check that
finished runs are reused. About 40-50 s on 2 shared cores, most of it the two training processes' start-up
(importing torch and DeepSpeed); marked ``slow``.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from haf.reporting import demo, demo_doc

REQUIRED_KEYS = ("top1", "mistake_severity", "hierdist@1", "hierdist@5", "hierdist@20")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_quick_demo_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "demo"
    assert demo.main(["--quick", "--cpu", "--quiet", "--output-dir", str(out)]) == 0
    printed = capsys.readouterr().out

    # The comparison table names both methods and the CRM decoding of the baseline.
    table = printed[printed.index("### demo"):]
    for label in ("cross-entropy (tiny_cnn/type1)", "cross-entropy+crm (tiny_cnn/type1)", "haframe (tiny_cnn/type2)"):
        assert f"| {label} | 1 |" in table, label
    assert "haframe − cross-entropy, paired by seed" in printed
    results = (out / "results.md").read_text()
    main_table, _, selective_table = results.partition("### demo hierarchical selective")
    assert main_table.count("| haframe (tiny_cnn/type2) |") == 1 and selective_table.count("| haframe (") == 1
    assert "Hierarchical selective prediction" in results and (out / "plots" / "risk_coverage.png").is_file()
    csv_lines = (out / "results.csv").read_text().splitlines()
    assert csv_lines[0].startswith("dataset,method,runs,top1_mean")
    assert len(csv_lines) == 4  # header + CE + CE+CRM + HAFrame

    for method, head in (("cross-entropy", "type1"), ("haframe", "type2")):
        record = json.loads((out / method / "seed0" / "metrics.json").read_text())
        for key in REQUIRED_KEYS:
            assert isinstance(record[key], float), (method, key)
        assert record["run"]["method"] == method
        assert record["run"]["model"] == f"tiny_cnn/{head}"
        assert record["run"]["seed"] == 0 and record["run"]["epochs"] == 1
        assert record["run"]["test_images"] == 36 * demo.QUICK_DATASET["test_per_class"]
        assert ("crm" in record) == (method == "cross-entropy")
        # The HierDist@k curve covers k = 1 … K and agrees with the training loop's own test metrics.
        curve = json.loads((out / method / "seed0" / demo.CURVE_NAME).read_text())
        assert sorted(int(k) for k in curve["plain"]) == list(range(1, 37))
        for k in (1, 5, 20):
            assert curve["plain"][str(k)] == pytest.approx(record[f"hierdist@{k}"], abs=1e-4)
        if method == "cross-entropy":
            assert curve["crm"]["5"] == pytest.approx(record["crm"]["hierdist@5"], abs=1e-4)

    for name in ("frame_vs_hierarchy.png", "hierdist_at_k.png", "training_curves.png", "neural_collapse.png"):
        path = out / "plots" / name
        assert path.stat().st_size > 1000, name
        assert path.read_bytes()[:8] == PNG_MAGIC, name
        assert str(path) in printed

    # Re-running reuses every finished run (same resolved config), and reprints the same table; --update-docs
    # writes that table, the machine and the wall time into the docs of a repository (here a stand-in).
    docs_root = tmp_path / "repo"
    docs_root.mkdir()
    (docs_root / "README.md").write_text(f"# r\n\n{demo_doc.START}\n{demo_doc.END}\n", encoding="utf-8")
    assert demo.main(["--quick", "--cpu", "--quiet", "--output-dir", str(out), "--update-docs", "--docs-root",
                      str(docs_root)]) == 0
    again = capsys.readouterr().out
    results_doc = (docs_root / demo_doc.RESULTS_DOC).read_text(encoding="utf-8")
    block = demo_doc.extract_block(results_doc, "results.md")
    assert demo_doc.extract_block((docs_root / "README.md").read_text(encoding="utf-8"), "README.md") == block
    assert "| haframe (tiny_cnn/type2) | 1 |" in block and "Produced by `make demo` on " in block
    assert "(0 of 2 runs trained; 2 finished run(s) reused)" in block and "torch " in block
    for name in demo_doc.PLOT_NAMES:
        assert (docs_root / "docs" / "demo" / name).read_bytes() == (out / "plots" / name).read_bytes(), name
    assert again.count(": up to date in ") == 2 and "] training " not in again and "0 run(s) trained" in again
    assert again[again.index("### demo"):again.index("Mean ±")] == table[:table.index("Mean ±")]


def test_run_state_follows_the_resolved_config(tmp_path: Path) -> None:
    [run] = [r for r in demo.plan_runs(tmp_path, [3], ["train.epochs=2"]) if r.method == "haframe"]
    assert run.output_dir == tmp_path / "haframe" / "seed3"
    assert demo.run_state(run) == "new"
    run.output_dir.mkdir(parents=True)
    (run.output_dir / "config.yaml").write_text(demo.resolved_config(run).to_yaml().replace(str(tmp_path), "/moved"))
    assert demo.run_state(run) == "new"  # neither a checkpoint nor metrics yet
    (run.output_dir / "last.pt").write_bytes(b"")
    assert demo.run_state(run) == "resume"
    (run.output_dir / "metrics.json").write_text("{}")
    assert demo.run_state(run) == "done"
    [longer] = [r for r in demo.plan_runs(tmp_path, [3], ["train.epochs=4"]) if r.method == "haframe"]
    assert demo.run_state(longer) == "new"  # another budget: trained again, not reported as done


def test_the_two_demo_configs_differ_only_in_method_and_head() -> None:
    """demo-cross-entropy.yaml is demo.yaml with another method and head; HAFrame's options stay behind."""
    import dataclasses

    from haf.methods import get_method
    from haf.training.run_config import load_config

    baseline = load_config(demo.DEMO_CONFIGS["cross-entropy"]).to_dict()
    haframe = load_config(demo.DEMO_CONFIGS["haframe"]).to_dict()
    assert baseline["method"] == {"name": "cross-entropy",
                                  "options": dataclasses.asdict(get_method("cross-entropy").Options())}
    assert haframe["method"]["name"] == "haframe"
    assert baseline["model"].pop("head") == "type1" and haframe["model"].pop("head") == "type2"
    for section in (set(baseline) | set(haframe)) - {"method"}:
        assert baseline[section] == haframe[section], section
    # The demo's budget is the config's own (python haf/train.py --config configs/demo.yaml trains what make demo
    # trains), not an override of the demo's.
    assert haframe["train"]["epochs"] == 30
    assert not any(o.startswith("train.epochs=") for o in demo.COMMON_OVERRIDES)


def test_bad_seeds_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert demo.main(["--seeds", "1", "1", "--output-dir", "unused"]) == 2
    assert "--seeds must be distinct" in capsys.readouterr().err


def test_gpu_machine_gets_dali_and_valid_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without a GPU here, pretend one: the configs' data.backend auto resolves to DALI (when it imports) and the
    overrides the demo adds pass config validation."""
    import importlib.util

    import torch

    from haf.pipelines.loaders.backends import resolve_data_backend
    from haf.training.run_config import load_config

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=0: "Fake GPU")
    extra, line = demo.accelerator_overrides()
    assert "Fake GPU" in line and "Triton" in line
    has_dali = importlib.util.find_spec("nvidia.dali") is not None
    if has_dali:
        assert extra == [f"data.workers={max(1, min(4, demo.usable_cpus()))}"] and "DALI input" in line
    else:
        assert extra == [] and "DALI not installed" in line
    for config in demo.DEMO_CONFIGS.values():
        loaded = load_config(config, [*demo.COMMON_OVERRIDES, *extra])
        assert loaded.train.device == "auto" and loaded.data.backend == "auto"
        assert resolve_data_backend(loaded.data.backend) == ("dali" if has_dali else "torch")
