"""README "Train on your own data": its YAML, as printed there, validates with `haf config` and trains an epoch.

The project is a tiny generated image folder (4 classes, 32-px PNGs) with an `_isa.txt` tree, in a temporary
folder; relative paths in the YAML resolve against the YAML's folder, so the commands run from another folder.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import yaml

from haf.cli import main as haf_main
from haf.training.run_config import load_config

REPO = Path(__file__).resolve().parents[1]
ISA = "root animal\nroot vehicle\nanimal cat\nanimal dog\nvehicle car\nvehicle truck\n"
CLASSES = ("car", "cat", "dog", "truck")
PER_SPLIT = {"train": 16, "val": 2, "test": 2}
# Fast on a CPU: one epoch, the plain engine, no TensorBoard, no progress bars.
QUICK = ["train.epochs=1", "train.device=cpu", "data.backend=torch", "deepspeed.enabled=false",
         "logging.tensorboard=false", "logging.progress=false"]


def readme_section_block(language: str, index: int = 0) -> str:
    """The ``index``-th fenced ``language`` block of the README's "Train on your own data" section."""
    text = (REPO / "README.md").read_text()
    section = text.split("## Train on your own data", 1)[1].split("\n## ", 1)[0]
    return re.findall(rf"```{language}\n(.*?)```", section, flags=re.S)[index]


def make_project(folder: Path) -> Path:
    """``folder``/my_run.yaml (the README's), my_isa.txt and data/{train,val,test}/<class>/<i>.png."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for label, name in enumerate(CLASSES):
        colour = np.array([60 * label, 255 - 60 * label, 128])
        for split, count in PER_SPLIT.items():
            target = folder / "data" / split / name
            target.mkdir(parents=True)
            for i in range(count):
                pixels = np.clip(colour + rng.normal(0, 20, (32, 32, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(target / f"{i:04d}.png")
    (folder / "my_isa.txt").write_text(ISA)
    (folder / "my_run.yaml").write_text(readme_section_block("yaml"))
    return folder / "my_run.yaml"


def test_readme_yaml_is_the_documented_shape():
    raw = yaml.safe_load(readme_section_block("yaml"))
    assert raw["base"] == "demo"
    assert raw["dataset"] == {"kind": "image-folder", "root": "data", "options": {"hierarchy": "my_isa.txt"}}


def test_readme_yaml_validates_and_trains_one_epoch_from_another_folder(tmp_path, monkeypatch, capsys):
    config_file = make_project(tmp_path / "my_project")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)

    assert haf_main(["config", str(config_file), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["dataset"]["root"] == str((tmp_path / "my_project" / "data").resolve())
    assert shown["dataset"]["options"]["hierarchy"] == str((tmp_path / "my_project" / "my_isa.txt").resolve())
    assert shown["model"]["backbone"] == "tiny_cnn"

    output = tmp_path / "run"
    assert haf_main(["train", "--config", str(config_file), "--output-dir", str(output),
                     *[arg for key in QUICK for arg in ("--set", key)]]) == 0
    metrics = json.loads((output / "metrics.json").read_text())
    assert metrics["num_samples"] == len(CLASSES) * PER_SPLIT["test"] and 0 <= metrics["top1"] <= 100
    assert metrics["run"]["epochs"] == 1 and metrics["run"]["frame"]["d_max"] == 2.0  # the isa tree's height
    assert (output / "last.pt").is_file()
    saved = yaml.safe_load((output / "config.yaml").read_text())
    assert saved["dataset"]["options"]["hierarchy"] == str((tmp_path / "my_project" / "my_isa.txt").resolve())


def test_relative_paths_fall_back_to_the_working_directory(tmp_path, monkeypatch):
    """A path absent beside the YAML is read as written: relative to the working directory."""
    project = tmp_path / "project"
    make_project(project)
    (tmp_path / "configs_here").mkdir()
    config_file = tmp_path / "configs_here" / "run.yaml"
    config_file.write_text(readme_section_block("yaml"))
    monkeypatch.chdir(project)
    config = load_config(config_file)
    assert config.dataset.root == "data" and config.dataset.options["hierarchy"] == "my_isa.txt"
    # ... and the same file beside the YAML wins over the working directory's.
    (tmp_path / "configs_here" / "my_isa.txt").write_text(ISA)
    assert load_config(config_file).dataset.options["hierarchy"] == str(tmp_path / "configs_here" / "my_isa.txt")


def test_relative_paths_in_shipped_configs_stay_relative_to_the_working_directory():
    assert load_config("demo").dataset.root == ".cache/demo-data"
    assert not Path(load_config("cifar100/haframe").dataset.options["hierarchy"]).is_absolute()


@pytest.mark.parametrize("options, message", [
    ({"hierarchi": "my_isa.txt"}, r"unknown key 'dataset.options.hierarchi'.*did you mean hierarchy\?"),
    ({"hierarchy": ["a.txt", "b.txt"]}, r"key 'dataset.options.hierarchy': expected a string or a path or null"),
    ({"crop_bottom": "ten"}, r"key 'dataset.options.crop_bottom': expected an integer, got 'ten'"),
])
def test_bad_dataset_options_are_one_line_naming_the_key(tmp_path, capsys, options, message):
    config_file = tmp_path / "run.yaml"
    config_file.write_text(yaml.safe_dump({"base": "demo", "dataset": {"kind": "image-folder", "root": "data",
                                                                        "options": options}}))
    assert haf_main(["config", str(config_file)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("haf config: error: ")
    assert re.search(message, err), err


@pytest.mark.slow
def test_own_data_end_to_end_in_fresh_processes(tmp_path):
    """The user's journey, each step a fresh `haf` process: train the README's YAML from another folder (the plain
    engine: no C++ extension is built), the run folder printed on stdout; then delete the hierarchy file and
    evaluate the checkpoint from a third folder with only --data-root."""
    import os
    import subprocess
    import sys

    project = tmp_path / "my_project"
    config_file = make_project(project)
    run_dir, elsewhere, extensions = tmp_path / "run", tmp_path / "elsewhere", tmp_path / "torch_extensions"
    elsewhere.mkdir()
    env = {**os.environ, "TORCH_EXTENSIONS_DIR": str(extensions), "OMP_NUM_THREADS": "1"}
    quick = [arg for key in ("train.epochs=1", "logging.tensorboard=false") for arg in ("--set", key)]
    train = subprocess.run([sys.executable, "-m", "haf.cli", "train", "--config", str(config_file), "--output-dir",
                            str(run_dir), *quick], cwd=elsewhere, env=env, capture_output=True, text=True, timeout=600)
    assert train.returncode == 0, train.stderr[-2000:]
    assert f"run folder: {run_dir}" in train.stdout
    assert not extensions.exists() or not any(extensions.iterdir())  # nothing compiled
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["deepspeed"]["enabled"] is False  # plain engine

    (project / "my_isa.txt").unlink()
    third = tmp_path / "third"
    third.mkdir()
    out = third / "eval.json"
    evaluation = subprocess.run([sys.executable, "-m", "haf.cli", "eval", str(run_dir / "last.pt"), "--data-root",
                                 str(project / "data"), "--json", str(out)], cwd=third, env=env, capture_output=True,
                                text=True, timeout=600)
    assert evaluation.returncode == 0, evaluation.stderr[-2000:]
    trained = json.loads((run_dir / "metrics.json").read_text())
    evaluated = json.loads(out.read_text())
    assert evaluated["num_samples"] == trained["num_samples"] == len(CLASSES) * PER_SPLIT["test"]
    assert evaluated["top1"] == pytest.approx(trained["top1"])  # one epoch: the tested checkpoint is last.pt's
