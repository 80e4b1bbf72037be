"""Run folders under concurrency and resume: a second run into a folder another live process trains into is
refused (a real second process holds the lock), a killed holder blocks nothing, and a resume whose config differs
in anything that changes what is trained (the data section included) is refused naming the key."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from train_fixtures import TINY_DEMO_OPTIONS, tiny_run_dict

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("single_torch_thread")

HOLDER = """
import sys
from pathlib import Path
from haf.training.run_folder import claim_run_folder
claim_run_folder(Path(sys.argv[1]), resume=True, overwrite=False)
print("locked", flush=True)
sys.stdin.read()
"""


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory) -> Path:
    from haf.pipelines import ensure_demo_dataset

    return ensure_demo_dataset(tmp_path_factory.mktemp("demo") / "data", **TINY_DEMO_OPTIONS)


def _train(demo_root: Path, out: Path, *, resume: bool = False, **sections):
    from haf.training.loop import run_training
    from haf.training.run_config import load_config

    sections = {"deepspeed": {"enabled": False}, **sections}
    config = load_config(None, data=tiny_run_dict(demo_root, out, **sections))
    return run_training(config, resume=resume)


def _finished(record, out: Path, epochs: int) -> bool:
    """The run tested its chosen checkpoint (a record, not None) after training all ``epochs``."""
    import torch

    return (record is not None and (out / "metrics.json").is_file()
            and torch.load(out / "last.pt", weights_only=True)["epoch"] == epochs)


def _holder(out: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(out)], cwd=REPO, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_a_second_run_into_a_folder_another_process_holds_is_refused(demo_root, tmp_path):
    out = tmp_path / "new-run"  # a new folder: both runs would find it empty
    holder = _holder(out)
    try:
        with pytest.raises(ValueError, match=r"another run is training into this folder") as caught:
            _train(demo_root, out, train={"epochs": 1, "max_steps_per_epoch": 1})
        assert str(out) in str(caught.value) and "\n" not in str(caught.value)
        assert list(out.iterdir()) == []  # the refused run wrote nothing
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)


def test_a_killed_holder_leaves_no_stale_lock(demo_root, tmp_path):
    out = tmp_path / "run"
    holder = _holder(out)
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait(timeout=60)
    assert _finished(_train(demo_root, out, train={"epochs": 1, "max_steps_per_epoch": 1}), out, 1)
    # and the lock ends with the run: another process may now resume the folder
    holder = _holder(out)
    holder.stdin.close()
    assert holder.wait(timeout=60) == 0


@pytest.mark.parametrize("key,change", [
    ("data.image_size", {"data": {"image_size": 12}}),
    ("data.normalize.mean", {"data": {"normalize": {"mean": [0.4, 0.4, 0.4], "std": [0.2, 0.2, 0.2]}}}),
    ("data.augment", {"data": {"augment": False}}),
    ("train.max_steps_per_epoch", {"train": {"max_steps_per_epoch": 1}}),
])
def test_resume_refuses_any_change_to_what_is_trained(demo_root, tmp_path, key, change):
    out = tmp_path / "run"
    base = {"train": {"epochs": 2, "max_steps_per_epoch": 2, "stop_after_epoch": 1}}
    _train(demo_root, out, **base)
    from haf.training.run_config import merge_layer

    with pytest.raises(ValueError, match=rf"cannot resume: key '{key}"):
        _train(demo_root, out, resume=True, **merge_layer(base, change))
    # keys that only change logging or where the run stops may differ
    assert _finished(_train(demo_root, out, resume=True, train={"epochs": 2, "max_steps_per_epoch": 2},
                            logging={"log_every": 5}), out, 2)


def test_resume_differences_ignores_only_the_free_keys():
    from haf.training.run_folder import resume_differences

    stored = {"seed": 1, "output_dir": "a", "logging": {"jsonl": True}, "data": {"image_size": 32, "workers": 4,
              "normalize": {"mean": [0.5], "std": None}}, "train": {"epochs": 3, "stop_after_epoch": 1}}
    current = {"seed": 1, "output_dir": "b", "logging": {"jsonl": False}, "data": {"image_size": 32, "workers": 0,
               "normalize": {"mean": [0.4], "std": None}}, "train": {"epochs": 3, "stop_after_epoch": None}}
    assert resume_differences(stored, current) == [("data.normalize.mean", [0.5], [0.4])]


def test_disk_full_inside_torch_save_is_one_line_on_a_real_full_tmpfs(demo_root, tmp_path, capsys):
    import yaml

    from haf.cli import main as haf_main

    out = tmp_path / "full"
    out.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24k", "tmpfs", str(out)],
                                           capture_output=True).returncode != 0:
        pytest.skip("needs root to mount a small tmpfs")
    try:
        config = tmp_path / "run.yaml"
        config.write_text(yaml.safe_dump(tiny_run_dict(demo_root, out, deepspeed={"enabled": False},
                                                       train={"epochs": 1, "max_steps_per_epoch": 1})))
        code = haf_main(["train", "--config", str(config)])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2
        assert err[-1] == f"haf train: error: {out / 'last.pt'}: No space left on device (the disk is full)"
        assert not any("Traceback" in line for line in err)
        assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]  # no temporary file left
    finally:
        subprocess.run(["umount", str(out)], check=True)


def test_non_finite_features_stop_the_run_naming_epoch_and_step(demo_root, tmp_path, monkeypatch, capsys):
    import yaml

    from haf.cli import main as haf_main
    from haf.training import loop

    real_build = loop.build_model

    def build(*args, **kwargs):  # the features turn to inf from the 3rd training forward (epoch 2, step 3)
        model = real_build(*args, **kwargs)
        calls, forward = [0], model.forward

        def poisoned(images):
            calls[0] += model.training
            outputs = forward(images)
            return outputs * float("inf") if calls[0] >= 3 and model.training else outputs

        model.forward = poisoned
        return model

    monkeypatch.setattr(loop, "build_model", build)
    out = tmp_path / "run"
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(tiny_run_dict(demo_root, out, deepspeed={"enabled": False},
                                                   train={"epochs": 3, "max_steps_per_epoch": 2})))
    assert haf_main(["train", "--config", str(config)]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("haf train: error: epoch 2, step 3: features has non-finite values"), err
    assert "stopped, the last checkpoint is kept" in err


def test_a_stale_hidden_link_left_by_a_crash_is_gone_after_resume(demo_root, tmp_path, capsys):
    out = tmp_path / "run"
    sections = {"train": {"epochs": 2, "max_steps_per_epoch": 1}}
    _train(demo_root, out, **{"train": {**sections["train"], "stop_after_epoch": 1}})
    os.link(out / "last.pt", out / ".best.pt.link")  # what a kill between linking and renaming leaves
    (out / ".last.pt.x1y2.tmp").write_bytes(b"torn")
    assert _finished(_train(demo_root, out, resume=True, **sections), out, 2)
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == []
    err = capsys.readouterr().err
    assert f"removed {out / '.best.pt.link'}" in err
    # best.pt shares its inode with last.pt (the last epoch was the best) or with nothing: no hidden link is left
    assert os.stat(out / "best.pt").st_nlink == (2 if os.path.samefile(out / "best.pt", out / "last.pt") else 1)
