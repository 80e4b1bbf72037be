"""Checkpoints that are safe to load and safe to be killed while writing.

Safe to load: every file holds only tensors, dicts, lists, numbers, strings, booleans and None, so it loads with
``torch.load(path, weights_only=True)`` (no pickled classes, nothing executed). The config travels as a plain dict,
RNG states as tensors.

Safe to kill: a checkpoint is written to a temporary file in the same directory, fsync'ed, then ``os.replace``d
over the old one (atomic on POSIX within one file system), and the directory is fsync'ed so the rename itself
survives a crash. A kill at any moment leaves either the old or the new checkpoint, never a torn one.

Layout of a training checkpoint (``CHECKPOINT_FORMAT`` = 1)::

    format, kind ("haf-train"), epoch (epochs completed), global_step, best_metric, best_epoch,
    model (state dict incl. the frame buffer), optimizer (torch state dict: momentum buffers, param groups)
    or None when DeepSpeed ZeRO keeps it in its own files, rng ({torch, numpy, python, cuda}),
    config (plain dict), classes (list of class names), metrics (validation metrics of that epoch)
"""
from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path
from typing import IO, Any, Callable, Mapping

import numpy as np
import torch

CHECKPOINT_FORMAT = 1
CHECKPOINT_KIND = "haf-train"
LAST_NAME = "last.pt"
BEST_NAME = "best.pt"


def _atomic_write(path: str | Path, mode: str, write: Callable[[IO], None]) -> None:
    """Write through ``write(handle)`` to a temp file beside ``path``, fsync, ``os.replace``, fsync the directory."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, _umask_mode())
        with os.fdopen(fd, mode) as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        # Leave no half-written temp file behind (the old file, if any, is untouched).
        try:
            os.unlink(tmp_name)
        except FileNotFoundError:
            pass
        raise
    _fsync_directory(path.parent)


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` that a kill at any moment cannot tear (see the module docstring)."""
    _atomic_write(path, "wb", lambda handle: torch.save(obj, handle))


def atomic_write_text(text: str, path: str | Path) -> None:
    """The same guarantee for small text files (metrics.json, config.yaml)."""
    _atomic_write(path, "w", lambda handle: handle.write(text))


def _umask_mode() -> int:
    """The mode a plain ``open()`` would give a new file (mkstemp's 0600 would hide checkpoints from a team)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _fsync_directory(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # e.g. platforms without directory file descriptors
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Load a training checkpoint with ``weights_only=True`` and check that it is one of ours."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # noqa: BLE001 - any unpickling failure means "not a safe checkpoint"
        raise ValueError(f"{path}: not a loadable checkpoint (weights_only=True): {error}") from None
    if not isinstance(state, dict) or state.get("kind") != CHECKPOINT_KIND:
        raise ValueError(f"{path}: not a haf training checkpoint (no kind={CHECKPOINT_KIND!r})")
    if state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: checkpoint format {state.get('format')!r}, this version reads {CHECKPOINT_FORMAT}")
    for key in ("model", "config", "epoch"):
        if key not in state:
            raise ValueError(f"{path}: checkpoint has no {key!r} entry")
    return state


# ------------------------------------------------------------------------------------------------ RNG states
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
