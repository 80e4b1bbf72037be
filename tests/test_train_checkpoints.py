"""Checkpoint files: atomic writes, weights_only loading, RNG state round trips, per-epoch seeds."""
from __future__ import annotations

import pickle
import random

import numpy as np
import pytest
import torch

from haf.training.checkpoints import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_KIND,
    atomic_torch_save,
    load_checkpoint,
)
from haf.safe_files import atomic_write_text
from haf.training.seeding import capture_rng_state, epoch_seed, restore_rng_state


def _minimal(**extra):
    return {"format": CHECKPOINT_FORMAT, "kind": CHECKPOINT_KIND, "epoch": 1, "model": {"w": torch.ones(2)},
            "config": {"seed": 0}, **extra}


def test_atomic_save_replaces_whole_file_and_survives_a_failed_write(tmp_path):
    path = tmp_path / "last.pt"
    atomic_torch_save(_minimal(), path)
    assert load_checkpoint(path)["epoch"] == 1

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError, match="killed mid-write"):
        atomic_torch_save({"model": Unpicklable()}, path)
    # The old checkpoint is intact and no temporary file is left behind.
    assert load_checkpoint(path)["epoch"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]
    atomic_torch_save(_minimal(epoch=2), path)
    assert load_checkpoint(path)["epoch"] == 2
    atomic_write_text(tmp_path / "m.json", '{"a": 1}\n')
    assert (tmp_path / "m.json").read_text() == '{"a": 1}\n'


class _Evil:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_load_rejects_unsafe_foreign_and_incomplete_files(tmp_path, capsys):
    evil = tmp_path / "evil.pt"
    torch.save(_minimal(payload=_Evil()), evil)
    with pytest.raises(ValueError, match="evil.pt: not a loadable checkpoint"):
        load_checkpoint(evil)
    assert "must never run" not in capsys.readouterr().out
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {"w": torch.ones(1)}}, foreign)
    with pytest.raises(ValueError, match="not a haf training checkpoint"):
        load_checkpoint(foreign)
    newer = tmp_path / "newer.pt"
    torch.save(_minimal(format=CHECKPOINT_FORMAT + 1), newer)
    with pytest.raises(ValueError, match="format"):
        load_checkpoint(newer)
    partial = tmp_path / "partial.pt"
    torch.save({k: v for k, v in _minimal().items() if k != "model"}, partial)
    with pytest.raises(ValueError, match="no 'model' entry"):
        load_checkpoint(partial)
    with pytest.raises(FileNotFoundError, match="absent.pt"):
        load_checkpoint(tmp_path / "absent.pt")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x00not a zip")
    with pytest.raises(ValueError, match="garbage.pt"):
        load_checkpoint(garbage)


def test_rng_state_round_trips_through_a_weights_only_file(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    random.random(), np.random.normal(), torch.rand(1)  # leave a cached Gaussian in numpy's state
    state = capture_rng_state()
    path = tmp_path / "rng.pt"
    torch.save(state, path)
    expected = (random.random(), random.gauss(0, 1), np.random.normal(size=3), torch.rand(4))
    random.seed(99), np.random.seed(99), torch.manual_seed(99)
    restore_rng_state(torch.load(path, weights_only=True))
    again = (random.random(), random.gauss(0, 1), np.random.normal(size=3), torch.rand(4))
    assert expected[0] == again[0] and expected[1] == again[1]
    assert np.array_equal(expected[2], again[2]) and torch.equal(expected[3], again[3])
    pickle.dumps(state)  # plain values only


def test_epoch_seeds_are_distinct_and_reproducible():
    seeds = {epoch_seed(s, e, r) for s in range(3) for e in range(50) for r in range(8)}
    assert len(seeds) == 3 * 50 * 8
    assert epoch_seed(0, 5, 1) == epoch_seed(0, 5, 1)
    assert all(0 <= s < 2**63 for s in seeds)


def test_a_run_folder_given_as_checkpoint_names_the_checkpoints_in_it(tmp_path):
    """`haf eval runs/x` (the folder, not runs/x/best.pt): not 'checkpoint not found' for a path that is there."""
    from haf.training.checkpoints import load_checkpoint

    (tmp_path / "best.pt").write_bytes(b"")
    (tmp_path / "last.pt").write_bytes(b"")
    with pytest.raises(ValueError, match=r"is a folder, not a checkpoint file: name one in it \(.*best.pt, .*last.pt\)"):
        load_checkpoint(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"is a folder, not a checkpoint file \(it holds no \*.pt\)"):
        load_checkpoint(tmp_path / "empty")
