"""Config YAML under hostile input: duplicate keys, nested aliases, recursive anchors and deep nesting are each
refused with one line naming the file and line, through the real config loader and the CLI."""
from __future__ import annotations

import subprocess
import sys
import tracemalloc
from pathlib import Path

import pytest

from haf.training.run_config import apply_override, load_config
from haf.training.yaml_load import load_yaml

REPO = Path(__file__).resolve().parents[1]
LAUGHS = "a: &a [1, 1, 1, 1, 1, 1, 1, 1, 1]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [" + ", ".join([f"*{chr(97 + i)}"] * 9) + "]\n" for i in range(8))


@pytest.mark.parametrize("text,message", [
    ("seed: 1\ntrain:\n  epochs: 2\n  batch_size: 8\n  epochs: 3\n",
     r"line 5: duplicate key 'epochs' \(first at line 3\)"),
    ("seed: 1\nseed: 2\n", r"line 2: duplicate key 'seed' \(first at line 1\)"),
    (LAUGHS, r"expands \(through aliases\) to more than 100000 nodes"),
    ("train: &t {epochs: 2, again: *t}\n", r"line 1: a recursive anchor"),
    ("train:\n  x: " + "[" * 50_000 + "]" * 50_000 + "\n", r"line 2: collections nested more than 100 deep"),
    ("".join(" " * i + f"k{i}:\n" for i in range(600)) + " " * 600 + "x: 1\n",
     r"line 100: blocks nested more than 100 deep"),
    ("k:\n  " + "- " * 3000 + "x\n", r"nested too deeply"),
])
def test_hostile_config_files_are_refused_in_one_line(tmp_path, text, message):
    path = tmp_path / "run.yaml"
    path.write_text(text)
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match=message) as caught:
            load_config(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert str(caught.value).startswith(str(path)) and "\n" not in str(caught.value)
    assert peak < 256 * 2**20  # the 10⁹-node alias bomb is refused from its ~90 nodes


def test_merge_keys_may_be_overridden_and_a_shared_anchor_is_fine():
    text = "base: &b {x: 1, y: 2}\nrun:\n  <<: *b\n  x: 5\nagain: *b\n"
    assert load_yaml(text, "f") == {"base": {"x": 1, "y": 2}, "run": {"x": 5, "y": 2}, "again": {"x": 1, "y": 2}}


def test_a_set_value_with_a_duplicate_key_is_refused_not_taken_literally():
    with pytest.raises(ValueError, match=r"--set dataset.options line 1: duplicate key 'a'"):
        apply_override({}, "dataset.options={a: 1, a: 2}")
    assert apply_override({}, "dataset.root=/x:y")["dataset"]["root"] == "/x:y"  # not YAML: still literal


def test_cli_prints_one_line_and_exits_2(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("seed: 1\nseed: 2\n")
    done = subprocess.run([sys.executable, "-m", "haf.cli", "config", str(path)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().count("\n") == 0 and "duplicate key 'seed'" in done.stderr
