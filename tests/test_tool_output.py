"""The tools' output: results and the run folder on stdout, diagnostics on stderr (``-q``/``-v``), progress as
plain lines off a terminal, a closed stdout ends quietly, bad input is one line and a bug keeps its traceback, and a
failed start leaves no folder behind."""
from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from train_fixtures import TINY_DEMO_OPTIONS, tiny_run_dict

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory) -> Path:
    from haf.pipelines import ensure_demo_dataset

    return ensure_demo_dataset(tmp_path_factory.mktemp("demo") / "data", **TINY_DEMO_OPTIONS)


def _clean_env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "CROSS_SIZE")}
    return {**env, "CUDA_VISIBLE_DEVICES": "", **extra}


def _tiny_config(demo_root: Path, tmp_path: Path, **sections) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny_run_dict(demo_root, tmp_path / "unused", **sections)))
    return path


@pytest.mark.slow
def test_train_script_separates_results_from_diagnostics(demo_root, tmp_path):
    """``python haf/train.py`` with stderr a pipe: stdout holds the run folder (first and last line) and the test
    table, nothing else — DeepSpeed's own log lines included; stderr holds the per-epoch lines and plain progress
    lines, no carriage return."""
    config = _tiny_config(demo_root, tmp_path, train={"epochs": 1}, deepspeed={"enabled": True},
                          logging={"progress": True})
    out = tmp_path / "run"
    done = subprocess.run([sys.executable, "haf/train.py", "--config", str(config), "--output-dir", str(out)],
                          cwd=REPO, env=_clean_env(HAF_PROGRESS_SECONDS="0"), capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert lines[0] == lines[-1] == f"run folder: {out}"
    assert lines[1] == "test (best.pt, epoch 1):" and any(line.startswith("plain    |") for line in lines)
    assert len(lines) == 6, done.stdout  # folder, title, header, rule, one row, folder
    assert "epoch 1/1: val top1" in done.stderr and "engine: DeepSpeed" in done.stderr
    assert "train 1/1: 100% (4/4)" in done.stderr  # a plain progress line (HAF_PROGRESS_SECONDS=0: every tenth)
    assert "\r" not in done.stderr and "\r" not in done.stdout
    assert (out / "metrics.json").is_file()


def _train_in_process(demo_root, tmp_path, capsys, *flags: str) -> tuple[str, str]:
    from haf import train

    config = _tiny_config(demo_root, tmp_path, train={"epochs": 1}, deepspeed={"enabled": False})
    try:
        assert train.main(["--config", str(config), "--output-dir", str(tmp_path / "run"), *flags]) == 0
    finally:
        from haf.log_setup import configure_logging

        configure_logging()  # back to the default level for the tests that follow
    captured = capsys.readouterr()
    return captured.out, captured.err


def test_quiet_keeps_results_and_drops_progress(demo_root, tmp_path, capsys):
    out, err = _train_in_process(demo_root, tmp_path, capsys, "--quiet")
    assert out.count(f"run folder: {tmp_path / 'run'}") == 2 and "test (best.pt, epoch 1):" in out
    assert "epoch 1/1" not in err and "engine:" not in err


def test_verbose_adds_debug_lines(demo_root, tmp_path, capsys):
    out, err = _train_in_process(demo_root, tmp_path, capsys, "-v")
    assert "epoch 1/1: val top1" in err
    assert "debug: deepspeed.enabled auto" in err or "debug: deepspeed.enabled False" in err
    assert "test (best.pt, epoch 1):" in out and "debug:" not in out


def test_quiet_and_verbose_exclude_each_other(demo_root, tmp_path):
    from haf import train

    with pytest.raises(SystemExit) as exit_info:
        train.main(["--config", "demo", "-q", "-v"])
    assert exit_info.value.code == 2


def test_line_progress_writes_whole_lines_at_tenths_and_intervals(caplog):
    from haf.log_setup import LineProgress

    now = [0.0]
    logger = logging.getLogger("haf.test-progress")
    logger.propagate = True
    progress = LineProgress(100, "train 1/3", interval=5.0, clock=lambda: now[0], logger=logger)
    with caplog.at_level(logging.INFO, logger="haf.test-progress"):
        for _ in range(100):
            now[0] += 1.0  # a step a second: a tenth (10 steps) takes 10 s > the 5 s interval
            progress.update(1)
            progress.set_postfix(loss="0.5")
        progress.close()
    messages = [record.getMessage() for record in caplog.records]
    assert len(messages) == 10, messages
    assert messages[0] == "train 1/3:  10% (10/100), loss 0.5, 10 s"
    assert messages[-1].startswith("train 1/3: 100% (100/100)")
    assert not any("\r" in m or "\n" in m for m in messages)


def test_line_progress_is_silent_for_a_short_pass(caplog):
    from haf.log_setup import LineProgress

    logger = logging.getLogger("haf.test-progress")
    with caplog.at_level(logging.INFO, logger="haf.test-progress"):
        progress = LineProgress(4, "val 1/3", interval=60.0, clock=lambda: 0.0, logger=logger)
        for _ in range(4):
            progress.update(1)
        progress.close()
    assert caplog.records == []


def test_progress_bar_is_plain_lines_off_a_terminal(monkeypatch):
    import io

    from haf.log_setup import LineProgress, progress_bar

    monkeypatch.setattr(sys, "stderr", io.StringIO())
    assert isinstance(progress_bar(10, "x", True), LineProgress)
    assert progress_bar(10, "x", False) is None


def test_closed_stdout_ends_quietly():
    """The reader of stdout is gone before the command writes: no "Broken pipe", no traceback, exit 141 (a
    SIGPIPE's status); through a shell pipe into ``head -1`` the pipeline succeeds and stderr stays empty."""
    command = [sys.executable, "-m", "haf.cli", "config", "--list"]
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_clean_env())
    process.stdout.close()  # nobody reads: the first write fails with EPIPE
    stderr = process.stderr.read()
    assert process.wait(timeout=120) == 141 and stderr == b""
    quoted = " ".join(f"'{part}'" for part in command)
    piped = subprocess.run(["bash", "-c", f"set -o pipefail; {quoted} | head -1; echo status ${{PIPESTATUS[0]}}"],
                           cwd=REPO, capture_output=True, text=True, timeout=120, env=_clean_env())
    from haf.training.run_config import list_configs

    first, status = piped.stdout.splitlines()
    assert first == list_configs()[0], piped.stdout
    assert status in ("status 0", "status 141") and piped.stderr == ""


def test_unexpected_key_error_keeps_its_traceback(monkeypatch, capsys):
    """A bare KeyError is a bug, not bad input: its traceback is shown, with a line asking for a report."""
    import haf.commands.config as config_command
    from haf import cli

    def broken(args):
        return {}["no such key"]

    monkeypatch.setattr(config_command, "run", broken)
    assert cli.main(["config", "--list"]) == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "KeyError: 'no such key'" in err
    assert "haf config: internal error" in err and "please report" in err


@pytest.mark.parametrize("error", ["user", "missing-split", "value", "not-found"])
def test_expected_errors_stay_one_line(monkeypatch, capsys, error):
    import haf.commands.config as config_command
    from haf import cli
    from haf.errors import ConfigError, MissingSplitError

    raised = {"user": ConfigError("demo.yaml: key 'train.epochs': must be >= 1, got 0"),
              "missing-split": MissingSplitError("dataset 'demo' has no split 'holdout'; it has ['test']"),
              "value": ValueError("hier.txt line 3: malformed"),
              "not-found": FileNotFoundError(2, "No such file or directory", "data/x")}[error]

    def failing(args):
        raise raised

    monkeypatch.setattr(config_command, "run", failing)
    assert cli.main(["config", "--list"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("haf config: error: ") and "Traceback" not in err
    assert "'dataset" not in err  # a KeyError-based project error reads as a sentence, not a quoted repr


def test_failed_start_leaves_no_folder(demo_root, tmp_path):
    """A start that fails before anything is written (here: the dataset folder is missing) removes the run folder
    and the parents it made; a folder that existed before is kept."""
    from haf.training.loop import run_training
    from haf.training.run_config import load_config

    def start(output_dir: Path) -> None:
        data = tiny_run_dict(tmp_path / "no-such-data", output_dir, deepspeed={"enabled": False})
        with pytest.raises(FileNotFoundError, match="no-such-data"):
            run_training(load_config(None, data=data))

    start(tmp_path / "runs" / "a" / "b")
    assert not (tmp_path / "runs").exists()
    existing = tmp_path / "mine"
    existing.mkdir()
    start(existing)
    assert existing.is_dir() and list(existing.iterdir()) == []


def test_a_batch_larger_than_the_train_split_leaves_no_run_behind(demo_root, tmp_path):
    """The one-optimizer-step check fails before config.yaml and the logs are written: the corrected rerun into the
    same folder is not refused as 'holds a training run'."""
    from haf.training.loop import run_training
    from haf.training.run_config import load_config

    out = tmp_path / "runs" / "run"
    too_big = tiny_run_dict(demo_root, out, train={"batch_size": 4096, "epochs": 1}, deepspeed={"enabled": False})
    with pytest.raises(ValueError, match=r"train.batch_size.*64 images make 0 full batch"):
        run_training(load_config(None, data=too_big))
    assert not (tmp_path / "runs").exists()
    run_training(load_config(None, data=tiny_run_dict(demo_root, out, train={"epochs": 1},
                                                      deepspeed={"enabled": False})))
    assert (out / "metrics.json").is_file()


def test_a_failed_start_prints_no_run_folder(demo_root, tmp_path, capsys):
    """stdout names the run folder only once the folder holds the run: a start refused for a missing dataset names
    no folder that is then removed."""
    from haf.training.loop import run_training
    from haf.training.run_config import load_config

    data = tiny_run_dict(tmp_path / "no-such-data", tmp_path / "run", deepspeed={"enabled": False})
    with pytest.raises(FileNotFoundError):
        run_training(load_config(None, data=data))
    assert "run folder" not in capsys.readouterr().out and not (tmp_path / "run").exists()
