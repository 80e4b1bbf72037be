"""Every global RNG a training step touches (python, numpy, torch CPU and CUDA): seeding, capture and restore.

Each epoch re-seeds from (run seed, epoch, rank), so a resumed run draws exactly what the uninterrupted run drew;
checkpoints store the states as weights_only-safe tensors and numbers.
"""
from __future__ import annotations

import random
from typing import Any, Mapping

import numpy as np
import torch

def capture_rng_state() -> dict:
    """Every global RNG a training step may touch, as weights_only-safe values."""
    np_kind, np_keys, np_pos, np_has_gauss, np_cached = np.random.get_state()
    py_version, py_internal, py_gauss = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": str(np_kind), "keys": torch.from_numpy(np.asarray(np_keys, dtype=np.int64)),
                  "pos": int(np_pos), "has_gauss": int(np_has_gauss), "cached_gaussian": float(np_cached)},
        # Mersenne-Twister words are < 2**32: exact in int64.
        "python": {"version": int(py_version), "internal": torch.tensor(py_internal, dtype=torch.int64),
                   "gauss_next": py_gauss},
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    return state


def restore_rng_state(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np_state = state["numpy"]
    np.random.set_state((np_state["kind"], np_state["keys"].numpy().astype(np.uint32), np_state["pos"],
                         np_state["has_gauss"], np_state["cached_gaussian"]))
    py_state = state["python"]
    random.setstate((py_state["version"], tuple(int(v) for v in py_state["internal"].tolist()),
                     py_state["gauss_next"]))
    cuda_states = state.get("cuda") or []
    if cuda_states and torch.cuda.is_available():
        # A resume on a different GPU count restores the devices both runs have.
        count = min(len(cuda_states), torch.cuda.device_count())
        for device in range(count):
            torch.cuda.set_rng_state(cuda_states[device], device)


def seed_everything(seed: int) -> None:
    """Seed python, numpy, torch (CPU and every CUDA device) from one integer."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device


def epoch_seed(seed: int, epoch: int, rank: int) -> int:
    """A well-mixed 63-bit seed for (run seed, epoch, rank): numpy's SeedSequence, so nearby triples do not
    give correlated streams. Re-seeding at each epoch start makes a resumed run draw exactly what the
    uninterrupted run drew, whatever happened before the kill."""
    words = np.random.SeedSequence([seed, epoch, rank, 0x4A4652]).generate_state(2, dtype=np.uint32)
    return int(words[0]) << 31 ^ int(words[1])
