"""`haf eval`: a training checkpoint evaluates to the run's own test metrics; bad input is a clear error."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from train_fixtures import TINY_DEMO_OPTIONS, tiny_run_dict


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> tuple[Path, Path]:
    """A 1-epoch cross-entropy run (so the CRM section is exercised too)."""
    from haf.run_config import load_config
    from haf.training_loop import run_training

    base = tmp_path_factory.mktemp("eval")
    demo_root, out = base / "data", base / "run"
    config = load_config(None, data=tiny_run_dict(
        demo_root, out, train={"epochs": 1}, model={"head": "type1", "head_options": {"hidden_dim": 16}},
        method={"name": "cross-entropy", "options": {}}))
    run_training(config)
    return demo_root, out


def test_eval_reproduces_the_runs_test_metrics(trained_run, tmp_path, capsys):
    from haf.cli import main

    _, out = trained_run
    target = tmp_path / "eval.json"
    assert main(["eval", str(out / "best.pt"), "--json", str(target), "--no-progress", "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert "top1" in printed and "crm" in printed and str(target) in printed
    evaluated = json.loads(target.read_text())
    trained = json.loads((out / "metrics.json").read_text())
    for key in ("top1", "mistake_severity", "hierdist@1", "hierdist@5"):
        assert evaluated[key] == pytest.approx(trained[key], rel=1e-6), key
        assert evaluated["crm"][key] == pytest.approx(trained["crm"][key], rel=1e-6), key
    assert evaluated["run"]["split"] == "test" and evaluated["run"]["method"] == "cross-entropy"
    assert evaluated["run"]["test_images"] == 24


def test_eval_other_split_and_default_json_path(trained_run):
    from haf.training_loop import evaluate_checkpoint

    _, out = trained_run
    result = evaluate_checkpoint(out / "last.pt", split="val", device="cpu", crm="off", progress=False)
    assert result["json_path"] == out / "eval-val.json" and result["json_path"].is_file()
    assert result["record"]["run"]["test_images"] == 16 and "crm" not in result["record"]
    with pytest.raises(KeyError, match="no split 'holdout'"):
        evaluate_checkpoint(out / "last.pt", split="holdout", device="cpu", progress=False)


def test_eval_refuses_a_dataset_with_other_classes(trained_run, tmp_path):
    from haf.training_loop import evaluate_checkpoint

    _, out = trained_run
    other = {**TINY_DEMO_OPTIONS, "colours": 3}
    overrides = [f"dataset.options.{k}={v}" for k, v in other.items()]
    with pytest.raises(ValueError, match="classes differ"):
        evaluate_checkpoint(out / "best.pt", data_root=str(tmp_path / "other"), overrides=overrides,
                            device="cpu", progress=False)


def test_eval_cli_reports_bad_input_without_traceback(tmp_path, capsys):
    from haf.cli import main

    assert main(["eval", str(tmp_path / "missing.pt")]) == 2
    assert "checkpoint not found" in capsys.readouterr().err
    (tmp_path / "not_ours.pt").write_bytes(b"junk")
    assert main(["eval", str(tmp_path / "not_ours.pt")]) == 2
    assert "not_ours.pt" in capsys.readouterr().err
