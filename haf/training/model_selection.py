"""Which epoch is tested under ``train.test_checkpoint: val-loss-fit`` (Making Better Mistakes' selection).

MBM tests the epoch where a degree-4 polynomial fitted to the validation loss (over the validated epochs inside a
window, ``train.loss_fit_window``) is lowest, not the epoch of the best measured value: the fit smooths the noisy
per-epoch losses of its long Adam runs. :func:`loss_fit_epoch` evaluates the fitted polynomial at the validated
epochs of the window (all of them when none lies inside) and returns the one where it is lowest (the
argmin); with fewer validated epochs than
coefficients (degree + 1) there is nothing to fit and the lowest measured loss is taken. The model of every
validated epoch is kept as ``snapshots/epoch-NNNN.pt`` (a hard link of that epoch's ``last.pt``) so the chosen one
can be tested after training.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Sequence

import numpy as np

from haf.safe_files import naming
from haf.training.run_folder import LAST_NAME, LOG_NAME, SNAPSHOT_DIR

log = logging.getLogger(__name__)

#: The degree of MBM's fit (``np.polyfit(fit_epochs, fit_losses, 4)`` in its ``scripts/plot_tradeoffs.py``).
LOSS_FIT_DEGREE = 4


def loss_fit_epoch(epochs: Sequence[int], losses: Sequence[float], window: Sequence[int] | None = None,
                   degree: int = LOSS_FIT_DEGREE) -> int:
    """The validated epoch (inside ``window`` = [first, last] when given) where the polynomial fit is lowest."""
    if len(epochs) != len(losses) or not epochs:
        raise ValueError(f"loss fit: need one validation loss per epoch, got {len(epochs)} epochs and "
                         f"{len(losses)} losses")
    finite = [(int(e), float(v)) for e, v in zip(epochs, losses) if np.isfinite(v)]
    pairs = [(e, v) for e, v in finite if window is None or window[0] <= e <= window[1]]
    if not pairs:  # a shorter run than the window was made for (a smoke test, another batch size): fit them all
        log.warning(f"loss fit: no validated epoch in the window {list(window or [])}; fitting all of them "
                    f"({[e for e, _ in finite]})")
        pairs = finite
    if not pairs:
        raise ValueError(f"loss fit: no finite validation loss (validated epochs {list(epochs)})")
    x = np.array([e for e, _ in pairs], dtype=np.float64)
    y = np.array([v for _, v in pairs], dtype=np.float64)
    if len(pairs) <= degree:
        return int(x[np.argmin(y)])
    # Centred and scaled epochs: the same polynomial, better conditioned than raw epochs to the 4th power.
    centre, scale = x.mean(), max(float(np.ptp(x)), 1.0)
    fitted = np.polyval(np.polyfit((x - centre) / scale, y, degree), (x - centre) / scale)
    return int(x[np.argmin(fitted)])


def validation_losses(output_dir: Path) -> tuple[list[int], list[float]]:
    """(epochs, losses) of the run's validation records (metrics.jsonl), in epoch order."""
    path = output_dir / LOG_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path}: train.test_checkpoint val-loss-fit reads the validation losses from it "
                                "(logging.jsonl must be true)")
    records = {}
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and record.get("split") == "val" and "loss" in record:
            records[int(record["epoch"])] = float(record["loss"])
    epochs = sorted(records)
    return epochs, [records[e] for e in epochs]


def snapshot_path(output_dir: Path, epoch: int) -> Path:
    return output_dir / SNAPSHOT_DIR / f"epoch-{epoch:04d}.pt"


def keep_snapshot(output_dir: Path, epoch: int) -> None:
    """snapshots/epoch-NNNN.pt := this epoch's last.pt (a hard link; a copy where links are not supported)."""
    target = snapshot_path(output_dir, epoch)
    target.parent.mkdir(exist_ok=True)
    tmp = target.with_name(f".{target.name}.link")
    with naming(target):
        tmp.unlink(missing_ok=True)
        try:
            os.link(output_dir / LAST_NAME, tmp)
        except OSError:
            shutil.copyfile(output_dir / LAST_NAME, tmp)
        os.replace(tmp, target)


def prune_snapshots(output_dir: Path, after_epoch: int) -> None:
    """A resumed run redoes the epochs after its checkpoint: their snapshots (of the killed attempt) go."""
    folder = output_dir / SNAPSHOT_DIR
    for path in folder.glob("*.pt*") if folder.is_dir() else ():
        digits = "".join(c for c in path.name if c.isdigit())
        if path.name.startswith(".") or (digits and int(digits) > after_epoch):
            path.unlink(missing_ok=True)
