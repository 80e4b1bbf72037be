"""Checkpoints that are safe to load and safe to be killed while writing.

Safe to load: every file holds only tensors, dicts, lists, numbers, strings, booleans and None, so it loads with
``torch.load(path, weights_only=True)`` (no pickled classes, nothing executed). The config travels as a plain dict,
RNG states as tensors.

Safe to kill: a checkpoint is written to a temporary file in the same directory, fsync'ed, then ``os.replace``d
over the old one (atomic on POSIX within one file system), and the directory is fsync'ed so the rename itself
survives a crash. A kill at any moment leaves either the old or the new checkpoint, never a torn one. ``best.pt``
is then a hard link of ``last.pt`` renamed into place; a kill between the two leaves a ``last.pt`` whose
``best_epoch`` is its own epoch, which the resume links (:func:`reconcile_best`).

Layout of a training checkpoint (``CHECKPOINT_FORMAT`` = 1): docs/ARCHITECTURE.md, "Training outputs".
"""
from __future__ import annotations

import math
import os
import shutil
import sys
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
import torch.distributed as dist

from haf.safe_files import atomic_write, naming
from haf.training.crash_points import crash_point
from haf.training.portable import portable_fields
from haf.training.run_config import config_from_dict
from haf.training.run_folder import BEST_LINK_NAME, BEST_NAME, DEEPSPEED_DIR, LAST_NAME, resume_differences
from haf.training.schema import RunConfig
from haf.training.seeding import capture_rng_state, restore_rng_state

CHECKPOINT_FORMAT = 1
CHECKPOINT_KIND = "haf-train"


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` that a kill at any moment cannot tear (see the module docstring); an OS error (a full disk,
    no permission) names ``path`` and leaves the old file and no temporary one."""
    def write(handle: IO) -> None:
        recording = _RecordingWriter(handle)
        try:
            torch.save(obj, recording)
        except RuntimeError:
            # torch's writer turns a failed write (a full disk) into "unexpected pos …": raise the OS error
            if recording.error is not None:
                raise recording.error from None
            raise
        crash_point("checkpoint-temp-written")

    atomic_write(path, write)


class _RecordingWriter:
    """The file handle torch.save writes through, keeping the ``OSError`` of a failed write (torch hides it)."""

    def __init__(self, handle: IO) -> None:
        self.handle, self.error = handle, None

    def write(self, data: Any) -> int:
        try:
            return self.handle.write(data)
        except OSError as error:
            self.error = error
            raise

    def flush(self) -> None:
        self.handle.flush()


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Load a training checkpoint with ``weights_only=True`` and check that it is one of ours."""
    path = Path(path)
    if path.is_dir():  # a run folder given for its checkpoint
        found = sorted(str(p) for p in path.glob("*.pt"))
        raise ValueError(f"{path}: is a folder, not a checkpoint file: name one in it ({', '.join(found)})" if found
                         else f"{path}: is a folder, not a checkpoint file (it holds no *.pt)")
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


# ------------------------------------------------------------------------------------- training state
def _checkpoint_payload(engine: Any, config: RunConfig, data: Any, *, epoch: int, global_step: int,
                        best_metric: float, best_epoch: int, metrics: dict | None, deepspeed_tag: str | None) -> dict:
    model_state = {k: v.detach().cpu() for k, v in engine.module.state_dict().items()}
    return {
        "format": CHECKPOINT_FORMAT,
        "kind": CHECKPOINT_KIND,
        "epoch": epoch,  # epochs completed
        "global_step": global_step,
        "best_metric": best_metric,
        "best_epoch": best_epoch,
        "model": model_state,
        "optimizer": _to_cpu(engine.optimizer_state_dict()) if engine.owns_optimizer_state else None,
        "deepspeed_tag": deepspeed_tag,
        "rng": capture_rng_state(),
        "config": config.to_dict(),
        "config_source": config.source,
        "classes": list(data.dataset.classes),
        "distances": _distances_state(data.distances),
        **portable_fields(config, data),  # the class tree and the preprocessing: usable without the dataset
        "metrics": metrics or {},
        "torch_version": str(torch.__version__),
    }


def _distances_state(distances: Any) -> Any:
    """The K × K matrix as a tensor; tree distances (very large K) as their compact tree arrays."""
    from haf.hierarchy.tree_distances import TreeDistances

    if isinstance(distances, TreeDistances):
        return distances.state()
    return torch.from_numpy(np.ascontiguousarray(distances))


def _to_cpu(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {k: _to_cpu(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_to_cpu(v) for v in value)
    return value


def parameter_fingerprint(model: torch.nn.Module) -> torch.Tensor:
    """Three float64 numbers that differ when any parameter differs: Σp, Σp², Σ(i mod 97 + 1)·p_i.

    Data-parallel ranks must hold bit-identical weights after every step; comparing fingerprints at each checkpoint
    catches a rank that silently diverged (a missed all-reduce, a non-deterministic kernel on one device).
    """
    parts = []
    for param in model.parameters():
        flat = param.detach().reshape(-1).double()  # on the parameter's device: no copy of the model to the host
        weights = torch.arange(flat.numel(), dtype=torch.float64, device=flat.device).remainder_(97).add_(1)
        parts.append(torch.stack([flat.sum(), flat.square().sum(), (flat * weights).sum()]).cpu())
    return torch.stack(parts).sum(0) if parts else torch.zeros(3, dtype=torch.float64)


def gather_fingerprints(model: torch.nn.Module, device: torch.device) -> list[list[float]]:
    local = parameter_fingerprint(model)
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return [local.tolist()]
    local = local.to(device)
    gathered = [torch.zeros_like(local) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, local)
    return [g.cpu().tolist() for g in gathered]


def save_epoch_checkpoint(engine: Any, config: RunConfig, data: Any, context: Any,
                          output_dir: Path, *, epoch: int, global_step: int, best_metric: float, best_epoch: int,
                          metrics: dict | None, is_best: bool) -> None:
    """Write last.pt atomically (and best.pt as a hard link of it); DeepSpeed shards first, on every rank."""
    fingerprints = gather_fingerprints(engine.module, context.device)  # collective: every rank
    if not all(math.isfinite(value) for f in fingerprints for value in f):
        # Weights went non-finite in the epoch's last steps: keep the last good checkpoint, on every rank.
        raise TrainingDiverged(f"epoch {epoch}, step {global_step}: the model's weights are not finite; stopped "
                               f"without saving, {output_dir / LAST_NAME} is the last good checkpoint")
    if context.is_main and any(f != fingerprints[0] for f in fingerprints[1:]):
        print(f"warning: epoch {epoch}: the ranks' parameters differ (fingerprints {fingerprints})", file=sys.stderr)
    tag = None
    if not engine.owns_optimizer_state:
        tag = f"epoch{epoch:04d}"
        with naming(output_dir / DEEPSPEED_DIR / tag):
            engine.save_sharded(str(output_dir / DEEPSPEED_DIR), tag)  # collective: every rank writes its shard
    if context.is_main:
        payload = _checkpoint_payload(engine, config, data, epoch=epoch, global_step=global_step,
                                      best_metric=best_metric, best_epoch=best_epoch, metrics=metrics,
                                      deepspeed_tag=tag)
        payload["rank_fingerprints"] = torch.tensor(fingerprints, dtype=torch.float64)
        last = output_dir / LAST_NAME
        atomic_torch_save(payload, last)
        crash_point("last-replaced")
        if is_best:
            link_best(output_dir)
        if tag is not None:
            remove_unreferenced_shards(output_dir, tag)
    if dist.is_initialized():
        dist.barrier()


class TrainingDiverged(ValueError):
    """A non-finite loss or non-finite weights: the run stops, its last checkpoint is the last good one."""


def link_best(output_dir: Path) -> None:
    """best.pt := last.pt, as a hard link (no second copy of the weights) renamed into place (atomic)."""
    last, tmp = output_dir / LAST_NAME, output_dir / BEST_LINK_NAME
    with naming(output_dir / BEST_NAME):
        tmp.unlink(missing_ok=True)
        try:
            os.link(last, tmp)
        except OSError:  # file systems without hard links
            shutil.copyfile(last, tmp)
        crash_point("best-link-made")
        os.replace(tmp, output_dir / BEST_NAME)
        # rename() of two links to one file does nothing (best.pt already linked to last.pt): drop the link.
        tmp.unlink(missing_ok=True)
    crash_point("best-replaced")


def reconcile_best(output_dir: Path, state: dict) -> None:
    """On resume: a kill between replacing last.pt and linking best.pt leaves a last.pt that says it is the best
    (best_epoch = epoch) beside an older best.pt; link it now, as the save would have."""
    if int(state.get("best_epoch", -1)) == int(state["epoch"]) > 0:
        link_best(output_dir)


def remove_unreferenced_shards(output_dir: Path, tag: str | None) -> None:
    """DeepSpeed shards of other epochs than last.pt's (older ones, or a newer one a kill left) are unused."""
    shards = output_dir / DEEPSPEED_DIR
    if tag is None or not shards.is_dir():
        return
    for old in shards.glob("epoch*"):
        if old.name != tag:
            shutil.rmtree(old, ignore_errors=True)


def restore_training_state(engine: Any, state: dict, output_dir: Path) -> None:
    engine.module.load_state_dict(state["model"])
    if engine.owns_optimizer_state:
        if state.get("optimizer") is None:
            raise ValueError(f"{output_dir / LAST_NAME}: no optimizer state in the checkpoint (written by a ZeRO/"
                             "low-precision run?); resume with the same deepspeed settings")
        engine.load_optimizer_state_dict(state["optimizer"])
    else:
        tag = state.get("deepspeed_tag")
        if not tag:
            raise ValueError(f"{output_dir / LAST_NAME}: no DeepSpeed shard tag; resume with the same deepspeed "
                             "settings the run was started with")
        engine.load_sharded(str(output_dir / DEEPSPEED_DIR), tag)
    restore_rng_state(state["rng"])


def check_resume_compatible(config: RunConfig, state: dict, path: Path) -> None:
    """Refuse a resume whose resolved config differs from the checkpoint's in anything that changes what is
    trained (every key but :data:`haf.training.run_folder.RESUME_FREE_KEYS`)."""
    stored = config_from_dict(state["config"], source=str(path))
    differences = resume_differences(stored.to_dict(), config.to_dict())
    if differences:
        key, old, new = differences[0]
        more = f" (and {len(differences) - 1} more: {', '.join(d[0] for d in differences[1:4])})" \
            if len(differences) > 1 else ""
        raise ValueError(f"{path}: cannot resume: key '{key}' is {new!r}, the checkpoint's is {old!r}{more}; "
                         "resume with the run's config, or start a new run")
