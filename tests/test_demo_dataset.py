"""The embedded demo dataset: determinism, the tree, visual similarity following the tree, atomic caching."""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from haf.cli import main as haf_main
from haf.hierarchy import load_hierarchy
from haf.pipelines.readers.registry import load_dataset
from haf.pipelines.demo.dataset import (
    DEFAULT_ROOT,
    DemoSpec,
    demo_classes,
    ensure_demo_dataset,
    image_rng,
    is_complete,
    render_image,
)

# Tiny spec: K = 8 and 5 images per class keep every generation in the tens of milliseconds.
TINY = dict(colours=2, patterns=2, shapes=2, train_per_class=3, val_per_class=1, test_per_class=1)


def tree_hash(root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    a = ensure_demo_dataset(tmp_path / "a", seed=3, **TINY)
    b = ensure_demo_dataset(tmp_path / "b", seed=3, **TINY)
    c = ensure_demo_dataset(tmp_path / "c", seed=4, **TINY)
    assert tree_hash(a) == tree_hash(b)
    assert tree_hash(a) != tree_hash(c)
    # Same file names under either seed; only contents differ.
    names = lambda root: sorted(str(p.relative_to(root)) for p in root.rglob("*.jpg"))  # noqa: E731
    assert names(a) == names(c)
    assert len(names(a)) == 8 * 5


def test_default_spec_tree_and_distances():
    spec = DemoSpec()
    classes = demo_classes(spec)
    assert spec.num_classes == len(classes) == 36 >= 20  # HierDist@20 needs K ≥ 20
    names = [c.name for c in classes]
    assert names == sorted(names) and len(set(names)) == len(names)
    assert len({c.pattern_node for c in classes}) == 12 and len({c.colour for c in classes}) == 4


def test_reader_splits_labels_and_hierarchy(tmp_path):
    data = load_dataset("demo", ensure_demo_dataset(tmp_path / "demo", seed=0, **TINY), seed=0, **TINY)
    assert data.name == "demo" and len(data.classes) == 8
    assert {k: len(v) for k, v in data.splits.items()} == {"train": 24, "val": 8, "test": 8}
    train = data["train"]
    assert np.array_equal(np.bincount(train.labels), [3] * 8)
    for path, label in zip(train.files, train.labels):
        assert Path(path).is_absolute() and Path(path).parent.name == data.classes[label]
    h = data.hierarchy
    assert h.height == 3 and h.classes == data.classes
    m = data.distances.matrix
    for i, a in enumerate(classes := demo_classes(DemoSpec(**TINY))):
        for j, b in enumerate(classes):
            expected = 0 if i == j else 1 if a.pattern_node == b.pattern_node else 2 if a.colour == b.colour else 3
            assert m[i, j] == expected, (a.name, b.name)
    # The written hierarchy file is our JSON format, readable on its own.
    assert load_hierarchy(tmp_path / "demo" / "hierarchy.json") == h


def _features(pixels: np.ndarray) -> np.ndarray:
    """Plain pixel statistics: colour mean/std, gradient energy (pattern), a 4×4 layout (shape)."""
    x = pixels.astype(np.float64) / 255.0
    gray = x.mean(-1)
    size = x.shape[0]
    layout = x.reshape(4, size // 4, 4, size // 4, 3).mean(axis=(1, 3)).ravel()
    gradients = [np.abs(np.diff(gray, axis=0)).mean(), np.abs(np.diff(gray, axis=1)).mean()]
    return np.concatenate([x.mean((0, 1)), x.std((0, 1)), gradients, 0.25 * layout])


def test_visual_similarity_follows_the_tree():
    """Class means of pixel features: siblings closer than cousins, cousins closer than other families."""
    spec = DemoSpec()
    classes = demo_classes(spec)
    means = np.stack(
        [
            np.mean([_features(render_image(c, spec, image_rng(0, "train", k, i))) for i in range(12)], axis=0)
            for k, c in enumerate(classes)
        ]
    )
    dist = np.linalg.norm(means[:, None] - means[None], axis=-1)
    tree = np.array(
        [[0 if a is b else 1 if a.pattern_node == b.pattern_node else 2 if a.colour == b.colour else 3
          for b in classes] for a in classes]
    )
    per_level = [dist[tree == d].mean() for d in (1, 2, 3)]
    assert per_level[0] < per_level[1] < per_level[2], per_level


def test_render_is_a_function_of_the_seed_only():
    spec = DemoSpec(image_size=48)
    leaf = demo_classes(spec)[5]
    first = render_image(leaf, spec, image_rng(7, "val", 5, 2))
    again = render_image(leaf, spec, image_rng(7, "val", 5, 2))
    other = render_image(leaf, spec, image_rng(7, "val", 5, 3))
    assert first.shape == (48, 48, 3) and first.dtype == np.uint8
    assert np.array_equal(first, again) and not np.array_equal(first, other)


def test_ensure_reuses_repairs_and_refuses(tmp_path):
    root = ensure_demo_dataset(tmp_path / "d", seed=1, **TINY)
    stamp = (root / "demo_manifest.json").stat().st_mtime_ns
    assert ensure_demo_dataset(root, seed=1, **TINY) == root
    assert (root / "demo_manifest.json").stat().st_mtime_ns == stamp  # complete: not regenerated
    digest = tree_hash(root)

    victim = next((root / "train").rglob("*.jpg"))
    victim.unlink()
    assert not is_complete(root, DemoSpec(**TINY), 1)
    ensure_demo_dataset(root, seed=1, **TINY)  # incomplete: regenerated, identical bytes
    assert tree_hash(root) == digest

    with pytest.raises(ValueError, match="seed"):
        ensure_demo_dataset(root, seed=2, **TINY)
    user = tmp_path / "user"
    user.mkdir()
    (user / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not a demo dataset"):
        ensure_demo_dataset(user, seed=1, **TINY)
    assert (user / "notes.txt").read_text() == "mine"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folders left


def test_read_without_generate_names_the_folder(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="haf demo-data"):
        load_dataset("demo", tmp_path / "absent", generate=False, **TINY)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match="haf demo-data"):  # not even at the default location
        load_dataset("demo", DEFAULT_ROOT, generate=False, **TINY)
    assert not (tmp_path / DEFAULT_ROOT).exists()


def test_generated_by_the_reader_only_at_the_default_location(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert len(load_dataset("demo", DEFAULT_ROOT, seed=1, **TINY).classes) == 8  # the cache: made on first use
    assert is_complete(tmp_path / DEFAULT_ROOT, DemoSpec(**TINY), 1)
    assert len(load_dataset("demo", tmp_path / DEFAULT_ROOT, seed=1, **TINY).classes) == 8  # same place, absolute

    mistyped = tmp_path / ".cache" / "demo-dta"
    with pytest.raises(FileNotFoundError) as info:
        load_dataset("demo", mistyped, seed=1, **TINY)
    message = str(info.value)
    assert "\n" not in message and str(mistyped) in message and "does not exist" in message
    assert not mistyped.exists()
    # The message's command makes exactly the dataset the reader wanted.
    command = message[message.index("`") + 1:message.rindex("`")].split()
    assert command[:2] == ["haf", "demo-data"] and "--image-size" not in command
    assert haf_main(command[1:] + ["--quiet"]) == 0
    assert load_dataset("demo", mistyped, seed=1, **TINY).classes == load_dataset("demo", DEFAULT_ROOT, seed=1,
                                                                                  **TINY).classes

    (tmp_path / "other").mkdir()  # an existing folder that is not this dataset: refused, left alone
    with pytest.raises(FileNotFoundError, match="no complete demo dataset"):
        load_dataset("demo", tmp_path / "other", seed=1, **TINY)
    assert list((tmp_path / "other").iterdir()) == []


def test_bad_spec_and_option_are_named(tmp_path):
    with pytest.raises(ValueError, match="patterns"):
        DemoSpec(patterns=9)
    with pytest.raises(ValueError, match="unknown option 'colors'"):
        load_dataset("demo", tmp_path / "d", colors=3)


def test_command_writes_the_dataset(tmp_path, capsys):
    argv = ["demo-data", str(tmp_path / "cli"), "--seed", "3", "--colours", "2", "--patterns", "2", "--shapes", "2",
            "--train-per-class", "3", "--val-per-class", "1", "--test-per-class", "1", "--quiet"]
    assert haf_main(argv) == 0
    assert "K=8" in capsys.readouterr().out
    assert tree_hash(tmp_path / "cli") == tree_hash(ensure_demo_dataset(tmp_path / "api", seed=3, **TINY))
