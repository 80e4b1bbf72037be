"""Training faults: a run folder is never overwritten unless asked; kill -9 anywhere in a save resumes exactly,
with each log record once; a diverging run and a full disk end in one line with the last checkpoint intact.

Tiny CPU runs (K = 8 demo data, 2-layer CNN, plain engine, 2 steps per epoch). The kill test runs the script in a
subprocess that kills itself (SIGKILL) at a named point of the save sequence (haf.training.crash_points).
"""
from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from train_fixtures import TINY_DEMO_OPTIONS, step_records, tiny_run_dict, train_records

REPO = Path(__file__).resolve().parents[1]
SECTIONS = {"train": {"epochs": 3, "max_steps_per_epoch": 2}, "deepspeed": {"enabled": False}}
TIMING = ("images_per_s",)  # wall-clock fields: the only ones two identical runs may differ in


# In-process runs use one thread like the killed subprocesses (OMP_NUM_THREADS=1): fp32 sums taken in another
# order differ in the last bits, and resumed logs must equal the uninterrupted run's exactly.
pytestmark = pytest.mark.usefixtures("single_torch_thread")


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory) -> Path:
    from haf.pipelines import ensure_demo_dataset

    return ensure_demo_dataset(tmp_path_factory.mktemp("demo") / "data", **TINY_DEMO_OPTIONS)


def _config(demo_root: Path, out: Path, **sections):
    from haf.training.run_config import load_config
    from haf.training.run_config import merge_layer

    return load_config(None, data=tiny_run_dict(demo_root, out, **merge_layer(SECTIONS, sections)))


def _train(demo_root: Path, out: Path, *, resume=False, overwrite=False, **sections):
    from haf.training.loop import run_training

    return run_training(_config(demo_root, out, **sections), resume=resume, overwrite=overwrite)


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _logs(out: Path) -> tuple[list, list]:
    strip = lambda records: [{k: v for k, v in r.items() if k not in TIMING} for r in records]  # noqa: E731
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return strip(map(json.loads, lines)), strip(step_records(out))


@pytest.fixture(scope="module")
def full_run(single_torch_thread, demo_root, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("full") / "run"
    _train(demo_root, out)
    return out


# ------------------------------------------------------------------------------------------- run folder
def test_a_folder_holding_a_run_is_refused_unless_resume_or_overwrite(demo_root, full_run, tmp_path, capsys):
    from haf.cli import main

    out = tmp_path / "run"
    _train(demo_root, out, train={"epochs": 1})
    (out / "eval-test.json").write_text("{}")  # an output of `haf eval` beside the checkpoints: part of the run
    (out / "notes.txt").write_text("mine")  # the user's own file
    before = _snapshot(out)
    capsys.readouterr()
    with pytest.raises(ValueError, match=r"holds a training run \(config.yaml, last.pt, best.pt"):
        _train(demo_root, out, train={"epochs": 1})
    config_path = tmp_path / "tiny.yaml"
    config_path.write_text(yaml.safe_dump(tiny_run_dict(demo_root, out, **SECTIONS)))
    capsys.readouterr()
    assert main(["train", "--config", str(config_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(out) in err and "--resume" in err and "--overwrite" in err
    assert _snapshot(out) == before  # nothing replaced, nothing appended
    with pytest.raises(SystemExit):
        main(["train", "--config", str(config_path), "--resume", "--overwrite"])

    _train(demo_root, out, overwrite=True)  # the 3-epoch run replaces the 1-epoch one
    assert (out / "notes.txt").read_text() == "mine" and not (out / "eval-test.json").exists()
    assert _logs(out) == _logs(full_run)  # one run's records, as in a fresh folder
    assert [p.name for p in out.parent.iterdir() if p.name.startswith(".")] == []  # the old run's files are gone


def test_overwrite_of_a_folder_holding_only_the_run_swaps_it_in_one_rename(demo_root, tmp_path, monkeypatch):
    from haf.training import run_folder

    out = tmp_path / "run"
    _train(demo_root, out, train={"epochs": 1})
    renames = []
    real_rename = os.rename
    monkeypatch.setattr(run_folder.os, "rename", lambda a, b: (renames.append((a, b)), real_rename(a, b))[1])
    run_folder.clear_run(out)
    assert len(renames) == 1 and renames[0][0] == out and list(out.iterdir()) == []


def test_stale_files_removed_are_only_ours(tmp_path):
    from haf.training.run_folder import remove_stale_files

    out = tmp_path / "run"
    out.mkdir()
    ours = [".last.pt.x1y2.tmp", ".metrics.jsonl.abc.tmp", ".best.pt.link", ".eval-test.json.q.tmp"]
    theirs = [".notes.tmp", "last.pt.tmp", ".last.pt.tmp.bak", "data.tmp"]
    for name in ours + theirs:
        (out / name).write_bytes(b"x")
    (out / ".replaced-1234").mkdir()
    (tmp_path / ".run.replaced-5678").mkdir()
    (tmp_path / ".other.replaced-5678").mkdir()
    assert sorted(remove_stale_files(out)) == sorted(ours + [".replaced-1234", ".run.replaced-5678"])
    assert sorted(p.name for p in out.iterdir()) == sorted(theirs)
    assert (tmp_path / ".other.replaced-5678").is_dir()


# ------------------------------------------------------------------------------------------- kill -9
# (point, occurrence): 4 log records per epoch (2 steps.jsonl, then metrics.jsonl's train and val), then the save.
KILL_POINTS = [
    ("checkpoint-temp-written", 2),  # epoch 2's last.pt half done: a stale .last.pt.*.tmp, resume from epoch 1
    ("last-replaced", 1),  # epoch 1 saved, best.pt not yet linked (there is none)
    ("last-replaced", "best"),  # the run's best epoch saved, the older best.pt still in place
    ("best-link-made", "best"),  # .best.pt.link made, not renamed
    ("best-replaced", 1),  # the whole save done, the process dies before returning
    ("log-append", 4),  # half of epoch 1's val record written, no checkpoint yet: resume from scratch
    ("log-append", 5),  # half of epoch 2's first step record: resume from epoch 1 over a torn log
]


@pytest.mark.parametrize("point,occurrence", KILL_POINTS, ids=[f"{p}@{n}" for p, n in KILL_POINTS])
def test_kill_anywhere_in_a_save_then_resume_equals_the_uninterrupted_run(demo_root, full_run, tmp_path, point,
                                                                         occurrence):
    if occurrence == "best":  # the save of the reference run's best epoch (the last best.pt it links)
        occurrence = torch.load(full_run / "last.pt", weights_only=True)["best_epoch"]
        assert occurrence > 1, "the reference run's best epoch is its first: no older best.pt to leave behind"
    out = tmp_path / "run"
    config_path = tmp_path / "tiny.yaml"
    config_path.write_text(yaml.safe_dump(tiny_run_dict(demo_root, out, **SECTIONS)))
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                            "MASTER_PORT")}
    env.update(CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1", HAF_CRASH_AT=f"{point}@{occurrence}")
    killed = subprocess.run([sys.executable, "haf/train.py", "--config", str(config_path)], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    if point == "checkpoint-temp-written":
        assert list(out.glob(".last.pt.*.tmp"))  # what a kill leaves, removed by the resume below
    if point in ("last-replaced", "best-link-made") and occurrence > 1:
        stale = torch.load(out / "best.pt", weights_only=True)
        assert stale["epoch"] < torch.load(out / "last.pt", weights_only=True)["best_epoch"]

    resumed = _train(demo_root, out, resume=True)
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == []
    assert _logs(out) == _logs(full_run)  # every record once, equal to the uninterrupted run's
    for name in ("last.pt", "best.pt"):
        want, got = (torch.load(d / name, weights_only=True) for d in (full_run, out))
        assert (got["epoch"], got["best_epoch"]) == (want["epoch"], want["best_epoch"]), name
        for key, value in want["model"].items():
            assert torch.equal(got["model"][key], value), (name, key)
    expected = json.loads((full_run / "metrics.json").read_text())
    assert resumed == {**expected, "run": {**expected["run"], "output_dir": str(out)}}


def test_resume_over_duplicated_logs_keeps_each_record_once(demo_root, full_run, tmp_path):
    """A log that already repeats records (an older version appended on resume) is cut back and deduplicated."""
    out = tmp_path / "run"
    _train(demo_root, out, train={"stop_after_epoch": 2})
    for name in ("metrics.jsonl", "steps.jsonl"):
        text = (out / name).read_text()
        (out / name).write_text(text + text)
    _train(demo_root, out, resume=True)
    assert _logs(out) == _logs(full_run)


def test_plots_read_each_epoch_and_split_once(tmp_path):
    from haf.reporting import plots

    path = tmp_path / "metrics.jsonl"
    records = [{"epoch": 1, "split": "train", "loss": 2.0}, {"epoch": 1, "split": "val", "top1": 10.0},
               {"epoch": 2, "split": "train", "loss": 1.5}, {"epoch": 2, "split": "train", "loss": 1.4},
               {"epoch": 2, "split": "val", "top1": 20.0}]
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + '{"epoch": 3, "spl')  # torn by a kill
    read = plots.read_jsonl(path)
    assert [(r["epoch"], r["split"]) for r in read] == [(1, "train"), (1, "val"), (2, "train"), (2, "val")]
    assert read[2]["loss"] == 1.4  # the later record of a repeated epoch
    drawn = plots.plot_training_curves({"run": read}, tmp_path / "curves.png")
    assert drawn["train/loss"]["run"].tolist() == [[1, 2.0], [2, 1.4]]


# ------------------------------------------------------------------------------------------- divergence
def _nan_loss_at(monkeypatch, bad) -> None:
    """Make the model's loss NaN at the calls (1-based) for which ``bad(call)`` holds."""
    from haf.training import loop

    real_build = loop.build_model

    def build(*args, **kwargs):
        model = real_build(*args, **kwargs)
        calls, real_loss = [0], model.loss

        def loss(outputs, targets):
            calls[0] += 1
            value = real_loss(outputs, targets)
            return value * float("nan") if bad(calls[0]) else value

        model.loss = loss
        return model

    monkeypatch.setattr(loop, "build_model", build)


def test_diverging_run_stops_with_one_line_and_keeps_the_last_checkpoint(demo_root, tmp_path, monkeypatch,
                                                                          capsys):
    from haf.cli import main

    out = tmp_path / "run"
    config_path = tmp_path / "tiny.yaml"
    config_path.write_text(yaml.safe_dump(tiny_run_dict(demo_root, out, **SECTIONS)))
    # Calls 1-2: epoch 1's steps, 3: its validation, 4: epoch 2's first step (step 3).
    _nan_loss_at(monkeypatch, lambda call: call >= 4)
    capsys.readouterr()
    assert main(["train", "--config", str(config_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("haf train: error: epoch 2, step 3: training loss is nan"), err
    state = torch.load(out / "last.pt", weights_only=True)
    assert state["epoch"] == 1 and all(torch.isfinite(v).all() for v in state["model"].values())
    assert torch.load(out / "best.pt", weights_only=True)["epoch"] == 1
    assert not (out / "metrics.json").exists() and [p for p in out.iterdir() if p.name.startswith(".")] == []


def test_nonfinite_loss_skip_skips_the_update(demo_root, tmp_path, monkeypatch):
    _nan_loss_at(monkeypatch, lambda call: call == 4)
    out = tmp_path / "run"
    assert _train(demo_root, out, train={"nonfinite_loss": "skip"}) is not None
    assert [r["skipped_batches"] for r in train_records(out)] == [0, 1, 0]
    assert torch.load(out / "last.pt", weights_only=True)["global_step"] == 5
    with pytest.raises(ValueError, match="train.nonfinite_loss"):
        _train(demo_root, tmp_path / "acc", train={"nonfinite_loss": "skip"},
               deepspeed={"gradient_accumulation_steps": 2})


# ------------------------------------------------------------------------------------------- disk full
@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EACCES], ids=["disk-full", "permission"])
def test_os_error_while_saving_a_checkpoint_names_it_and_keeps_the_previous(demo_root, tmp_path, monkeypatch,
                                                                            capsys, code):
    from haf.cli import main

    out = tmp_path / "run"
    config_path = tmp_path / "tiny.yaml"
    config_path.write_text(yaml.safe_dump(tiny_run_dict(demo_root, out, **SECTIONS)))
    real_save, saves = torch.save, [0]

    def save(obj, handle, *args, **kwargs):
        saves[0] += 1
        if saves[0] == 2:  # epoch 2's last.pt
            handle.write(b"partial")
            raise OSError(code, os.strerror(code))
        return real_save(obj, handle, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    capsys.readouterr()
    assert main(["train", "--config", str(config_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == f"haf train: error: {out / 'last.pt'}: {os.strerror(code)}" + (
        " (the disk is full)" if code == errno.ENOSPC else ""), err
    assert torch.load(out / "last.pt", weights_only=True)["epoch"] == 1
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []


def test_disk_full_while_appending_a_log_names_it(demo_root, tmp_path, monkeypatch, capsys):
    from haf.training import run_folder

    class FullDisk:
        def __init__(self, path, *args, **kwargs):
            self.name, self.handle = str(path), open(path, *args, **kwargs)

        def write(self, text):
            if self.name.endswith("steps.jsonl") and os.path.getsize(self.name) > 0:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return self.handle.write(text)

        def flush(self):
            self.handle.flush()

        def close(self):
            self.handle.close()

    monkeypatch.setattr(run_folder, "open", FullDisk, raising=False)
    out = tmp_path / "run"
    with pytest.raises(OSError) as caught:
        _train(demo_root, out)
    assert caught.value.errno == errno.ENOSPC and caught.value.filename == str(out / "steps.jsonl")
    assert not (out / "last.pt").exists() and len(step_records(out)) == 1


def _scalars(out: Path) -> dict[str, list[tuple[int, float]]]:
    """Every TensorBoard scalar series of a run as TensorBoard shows it (purged events hidden)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out / "tensorboard"), size_guidance={"scalars": 0}).Reload()
    return {tag: sorted((e.step, round(e.value, 6)) for e in events.Scalars(tag)) for tag in events.Tags()["scalars"]
            if not tag.endswith("images_per_s")}


def test_tensorboard_after_a_kill_and_resume_shows_each_step_once(demo_root, tmp_path):
    """Killed in epoch 2's logging (its steps already in TensorBoard, no epoch-2 checkpoint): the resumed run redoes
    them, and TensorBoard shows each step once, with the values of an uninterrupted run."""
    logging = {"logging": {"tensorboard": True}}
    full = tmp_path / "full"
    _train(demo_root, full, **logging)
    out = tmp_path / "run"
    config_path = tmp_path / "tiny.yaml"
    config_path.write_text(yaml.safe_dump(tiny_run_dict(demo_root, out, **{**SECTIONS, **logging})))
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                            "MASTER_PORT")}
    env.update(CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1", HAF_CRASH_AT="log-append@6")
    killed = subprocess.run([sys.executable, "haf/train.py", "--config", str(config_path)], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    interrupted = _scalars(out)
    assert max(step for step, _ in interrupted["train_step/loss"]) > 2  # epoch 2's steps were logged before the kill
    _train(demo_root, out, resume=True, **logging)
    resumed, reference = _scalars(out), _scalars(full)
    assert resumed == reference
    steps = [step for step, _ in resumed["train_step/loss"]]
    assert len(steps) == len(set(steps)) == len(reference["train_step/loss"])
