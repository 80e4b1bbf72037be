"""`haf sweep`: the config × seed grid, its listing and commands, per-GPU children, and a demo sweep killed and
rerun on the CPU (finished runs untouched, the killed one resumed)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from haf.cli import main
from haf.training import sweep as sweep_module
from haf.training.sweep import parse_seeds, plan_sweep, run_sweep
from train_fixtures import TINY_DEMO_OPTIONS

ROOT = Path(__file__).resolve().parents[1]


def test_parse_seeds():
    assert parse_seeds("0-4") == [0, 1, 2, 3, 4]
    assert parse_seeds("3") == [3]
    assert parse_seeds("0-2, 5,1") == [0, 1, 2, 5]
    for bad in ("4-2", "a", "-1", "1-", ""):
        with pytest.raises(ValueError, match="--seeds"):
            parse_seeds(bad)


def test_dry_run_lists_ten_runs(capsys, tmp_path):
    code = main(["sweep", "cifar100/haframe", "cifar100/cross-entropy-type2", "--seeds", "0-4", "--dry-run",
                 "--output-root", str(tmp_path)])
    lines = capsys.readouterr().out.splitlines()
    assert code == 0 and len(lines) == 10
    assert [line.split("\t")[1:3] for line in lines[:2]] == [["cifar100/haframe", "seed 0"],
                                                           ["cifar100/haframe", "seed 1"]]
    assert lines[9].endswith(str(tmp_path / "cifar100" / "cross-entropy-type2-seed4"))
    assert all(line.startswith("new\t") for line in lines)


def test_print_commands_leave_out_finished_runs(capsys, tmp_path):
    finished = tmp_path / "cifar100" / "haframe-seed1"
    finished.mkdir(parents=True)
    (finished / "metrics.json").write_text("{}")
    assert main(["sweep", "cifar100/haframe", "--seeds", "0-2", "--print-commands", "--output-root", str(tmp_path),
                 "--set", "train.epochs=3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines == [f"haf train --config cifar100/haframe --set seed={s} --set train.epochs=3 --output-dir "
                     f"{tmp_path / 'cifar100' / f'haframe-seed{s}'} --resume" for s in (0, 2)]


def test_seed_overrides_are_refused_and_bad_configs_named(tmp_path):
    with pytest.raises(ValueError, match="seed"):
        plan_sweep(["cifar100/haframe"], [0], tmp_path, ["seed=3"])
    assert main(["sweep", "no/such-config", "--dry-run"]) == 2


def test_one_child_per_gpu_with_its_own_device(tmp_path, monkeypatch):
    """Several visible GPUs: runs go in parallel, each child sees one device (CUDA_VISIBLE_DEVICES). Each fake run
    marks its start and waits (up to 60 s) until two runs have started: the first two only see each other if they
    run at the same time."""
    markers = tmp_path / "started"
    markers.mkdir()
    script = ("import json, os, sys, time; out = sys.argv[1]; marks = sys.argv[2]; "
              "open(os.path.join(marks, os.path.basename(out)), 'w').close(); deadline = time.monotonic() + 60\n"
              "while len(os.listdir(marks)) < 2 and time.monotonic() < deadline: time.sleep(0.05)\n"
              "open(os.path.join(out, 'metrics.json'), 'w').write(json.dumps("
              "{'device': os.environ.get('CUDA_VISIBLE_DEVICES'), 'together': len(os.listdir(marks)) >= 2}))")
    monkeypatch.setattr(sweep_module, "_child_command",
                        lambda run: [sys.executable, "-c", script, str(run.output_dir), str(markers)])
    runs = plan_sweep(["demo"], [0, 1, 2, 3], tmp_path / "runs")
    assert run_sweep(runs, devices=["3", "5"], report=lambda line: None) == []
    records = [json.loads((run.output_dir / "metrics.json").read_text()) for run in runs]
    assert [r["device"] for r in records[:2]] == ["3", "5"] and {r["device"] for r in records} == {"3", "5"}
    assert records[0]["together"] and records[1]["together"]  # the first two ran at the same time
    failing = plan_sweep(["demo"], [7], tmp_path / "failing")
    monkeypatch.setattr(sweep_module, "_child_command", lambda run: [sys.executable, "-c", "raise SystemExit(3)"])
    assert run_sweep(failing, devices=[], report=lambda line: None) == failing


# ------------------------------------------------------------------------------- the demo, killed and rerun
def _tiny_demo_sets(root: Path) -> list[str]:
    options = "{" + ", ".join(f"{k}: {v}" for k, v in TINY_DEMO_OPTIONS.items()) + "}"
    sets = [f"dataset.root={root}", f"dataset.options={options}", "model.backbone_options={width: 4, depth: 2}",
            "train.epochs=2", "train.batch_size=16", "train.eval_batch_size=32", "train.device=cpu",
            "data.image_size=16", "data.workers=0", "deepspeed.enabled=false", "logging.tensorboard=false",
            "logging.progress=false"]
    return [arg for s in sets for arg in ("--set", s)]


def _sweep_command(output_root: Path, sets: list[str], report: bool = False) -> list[str]:
    return [sys.executable, "-m", "haf.cli", "sweep", "demo", "--seeds", "0-2", "--output-root", str(output_root),
            *([] if report else ["--no-report"]), *sets]


def _wait_for(path: Path, process: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, f"the sweep ended (exit {process.returncode}) before {path} appeared"
        assert time.monotonic() < deadline, f"{path} did not appear within {timeout} s"
        time.sleep(0.1)


@pytest.mark.slow
def test_demo_sweep_killed_and_rerun_skips_finished_runs(tmp_path):
    from haf.pipelines import ensure_demo_dataset

    root = ensure_demo_dataset(tmp_path / "demo", seed=0, **TINY_DEMO_OPTIONS)
    output_root, sets = tmp_path / "sweep", _tiny_demo_sets(root)
    folders = [output_root / "demo" / f"demo-seed{seed}" for seed in range(3)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    sweep = subprocess.Popen(_sweep_command(output_root, sets), cwd=ROOT, env=env, start_new_session=True,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _wait_for(folders[0] / "metrics.json", sweep)
        _wait_for(folders[1] / "config.yaml", sweep)  # the second run has started
    finally:
        os.killpg(sweep.pid, signal.SIGKILL)  # the sweep and its training child, mid-run
        sweep.wait()
    assert not (folders[1] / "metrics.json").exists() and not (folders[2] / "metrics.json").exists()
    finished = {path: path.stat().st_mtime_ns for path in folders[0].rglob("*") if path.is_file()}

    rerun = subprocess.run(_sweep_command(output_root, sets, report=True), cwd=ROOT, env=env, capture_output=True,
                           text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert "seed 0: finished, skipped" in rerun.stderr and "seed 1: resuming" in rerun.stderr
    assert {path: path.stat().st_mtime_ns for path in finished} == finished  # seed 0 untouched
    assert "haframe" in rerun.stdout and "top-1" in rerun.stdout  # the report over the sweep's three runs
    for seed, folder in enumerate(folders):
        record = json.loads((folder / "metrics.json").read_text())
        assert record["run"]["seed"] == seed and record["run"]["epochs"] == 2
        assert record["run"]["split"] == "test"
