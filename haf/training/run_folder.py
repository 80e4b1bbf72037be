"""A run folder: its file names (one home for them), the run's JSONL/TensorBoard log, and the metrics.json record.

The files and the fields of their records are described in docs/ARCHITECTURE.md ("Training outputs"). A folder
that holds a run is never trained into again unless asked (:func:`claim_run_folder`: ``resume`` continues it,
``overwrite`` replaces it); a resumed run's logs are cut back to its checkpoint (:func:`truncate_logs`), so each
(epoch, split) record and each step record appears once. A run holds an exclusive lock on its folder
(:func:`lock_run_folder`, ``flock`` on the folder) from its claim to its exit, so two runs started into one
folder cannot both write it: the second is refused. The kernel drops the lock when its holder dies, so a
killed run never blocks the next.
"""
from __future__ import annotations

import errno
import fcntl
import glob
import json
import logging
import os
import re
import shutil
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from haf.safe_files import atomic_write_text, json_text, naming
from haf.training.crash_points import armed, crash_point

if TYPE_CHECKING:
    from haf.training.schema import RunConfig

CONFIG_NAME = "config.yaml"  # the resolved config
METRICS_NAME = "metrics.json"  # test metrics + the run record (what `haf report` reads)
LOG_NAME = "metrics.jsonl"  # per-epoch records of every split (what haf.reporting.plots reads)
STEP_LOG_NAME = "steps.jsonl"  # training records every logging.log_every optimizer steps
LAST_NAME = "last.pt"
BEST_NAME = "best.pt"
DEEPSPEED_DIR = "deepspeed"  # DeepSpeed's own shards (ZeRO ≥ 1, bf16/fp16 weights)
TENSORBOARD_DIR = "tensorboard"
SNAPSHOT_DIR = "snapshots"  # the model of every validated epoch (train.test_checkpoint: val-loss-fit)
SPLITS = ("train", "val", "test")  # the values of a metrics.jsonl record's "split"
# Files whose presence means the folder holds a run; with the folders below, what --overwrite removes.
RUN_FILES = (CONFIG_NAME, LAST_NAME, BEST_NAME, METRICS_NAME, LOG_NAME, STEP_LOG_NAME)
RUN_DIRS = (TENSORBOARD_DIR, DEEPSPEED_DIR, SNAPSHOT_DIR)
BEST_LINK_NAME = f".{BEST_NAME}.link"  # best.pt's hard link before it is renamed into place
REPLACED_PREFIX = ".replaced-"  # an overwritten run's files on their way out
# Temporary files of our atomic writes (".<name>.<random>.tmp"); only a kill leaves one behind.
_TEMP = re.compile(r"\.(" + "|".join(map(re.escape, RUN_FILES)) + r"|eval-[^/]*\.json)\..+\.tmp")


# Config keys a resumed run may change: they decide where and how a run is logged, evaluated or split into jobs,
# not what is trained. Every other key of the resolved config (the whole dataset, data, model, method, optim and
# deepspeed sections, the seed, the training keys) must equal the checkpoint's. train.epochs is compared: the
# learning-rate schedule depends on it, so a longer run is a new run.
RESUME_FREE_KEYS = frozenset({
    "output_dir", "source", "logging", "train.stop_after_epoch", "train.eval_batch_size", "train.max_eval_steps",
    "train.device", "train.test_checkpoint", "data.workers", "data.channels_last", "dataset.test_split",
})


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict) and (value or not prefix):
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(_flatten(item, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: value}


def resume_differences(stored: dict, current: dict) -> list[tuple[str, Any, Any]]:
    """(key, checkpoint's value, config's value) for every key of two resolved config dicts that differs and
    may not differ on resume (:data:`RESUME_FREE_KEYS`), in key order."""
    old, new = _flatten(stored), _flatten(current)
    free = lambda key: any(key == k or key.startswith(k + ".") for k in RESUME_FREE_KEYS)  # noqa: E731
    return [(key, old.get(key, "(absent)"), new.get(key, "(absent)")) for key in sorted(old.keys() | new.keys())
            if not free(key) and old.get(key, "(absent)") != new.get(key, "(absent)")]


def default_output_dir(config: RunConfig) -> Path:
    stem = Path(config.source).stem if config.source else config.method.name
    return Path("runs") / config.dataset.kind / f"{stem}-seed{config.seed}"


def is_temp_file(name: str) -> bool:
    """Is ``name`` one of our temporary files (an unfinished write) in a run folder?"""
    return bool(_TEMP.fullmatch(name)) or name == BEST_LINK_NAME


def _is_run_entry(name: str) -> bool:
    return (name in RUN_FILES or name in RUN_DIRS or is_temp_file(name)
            or name.startswith(REPLACED_PREFIX)
            or (name.startswith("eval-") and name.endswith(".json")))


# Locks this process holds, by the folder's (device, inode): a second claim of the same folder within one run
# (after --overwrite swapped it) reuses its lock instead of blocking on itself. Released when the run ends.
_HELD_LOCKS: dict[tuple[int, int], int] = {}


def lock_run_folder(output_dir: Path) -> None:
    """Take the exclusive lock of ``output_dir`` (created if missing) until :func:`release_run_folders`.

    The lock is ``flock`` on the folder itself (no lock file is left behind). Another live process holding it →
    ``ValueError`` naming the folder. ``flock`` locks belong to an open file: they vanish with their process, so
    a killed run blocks nothing. A file system without ``flock`` on folders gets a warning and no lock.
    """
    output_dir.mkdir(parents=True, exist_ok=True)
    info = output_dir.stat()
    key = (info.st_dev, info.st_ino)
    if key in _HELD_LOCKS:
        return
    fd = os.open(output_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as error:
        os.close(fd)
        if error.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise ValueError(f"{output_dir}: another run is training into this folder (it holds the folder's "
                             "lock); wait for it to end or choose another output_dir") from None
        logging.getLogger(__name__).warning(
            f"{output_dir}: cannot lock the folder ({error.strerror}); nothing stops a second run from training "
            "into it at the same time")
        return
    _HELD_LOCKS[key] = fd


def release_run_folders() -> None:
    """Drop every run-folder lock this process holds (the end of a run; an exiting process drops them anyway)."""
    while _HELD_LOCKS:
        os.close(_HELD_LOCKS.popitem()[1])


def claim_run_folder(output_dir: Path, *, resume: bool, overwrite: bool) -> None:
    """Lock ``output_dir`` (:func:`lock_run_folder`), then refuse it if it holds a run, unless ``resume``
    (continue it) or ``overwrite`` (replace it) is given."""
    if resume and overwrite:
        raise ValueError(f"{output_dir}: --resume and --overwrite exclude each other")
    if output_dir.exists() and not output_dir.is_dir():
        raise NotADirectoryError(20, "Not a directory", str(output_dir))
    lock_run_folder(output_dir)
    found = [name for name in RUN_FILES if (output_dir / name).exists()]
    if not found or resume:
        return
    if not overwrite:
        raise ValueError(f"{output_dir}: holds a training run ({', '.join(found)}); continue it with --resume or "
                         "replace it with --overwrite")
    clear_run(output_dir)
    lock_run_folder(output_dir)  # a folder holding only the run was swapped for a new one: lock that one too


def clear_run(output_dir: Path) -> None:
    """Remove a run's files (and nothing else) from ``output_dir``.

    A folder holding only the run's files is renamed away in one step and recreated empty, so a kill leaves the
    old run or an empty folder. Beside other files, the run's entries move one by one into a hidden
    ``.replaced-*`` folder; a kill in between leaves a partial run that is still refused, and the next
    ``--overwrite`` finishes the job.
    """
    entries = list(output_dir.iterdir())
    if all(_is_run_entry(entry.name) for entry in entries):
        trash = output_dir.with_name(f".{output_dir.name}{REPLACED_PREFIX}{uuid.uuid4().hex[:8]}")
        os.rename(output_dir, trash)
        output_dir.mkdir()
    else:
        trash = output_dir / f"{REPLACED_PREFIX}{uuid.uuid4().hex[:8]}"
        trash.mkdir()
        for entry in entries:
            if _is_run_entry(entry.name):
                os.rename(entry, trash / entry.name)
    shutil.rmtree(trash)


def remove_stale_files(output_dir: Path) -> list[str]:
    """Remove what only a kill leaves behind: our temporary files and the folders of an interrupted overwrite."""
    removed = []
    leftovers = [p for p in output_dir.iterdir() if is_temp_file(p.name) or p.name.startswith(REPLACED_PREFIX)]
    leftovers += output_dir.parent.glob(f".{glob.escape(output_dir.name)}{REPLACED_PREFIX}*")
    for path in leftovers:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
        removed.append(path.name)
    return removed


def truncate_logs(output_dir: Path, epoch: int) -> None:
    """Keep the log records of epochs ≤ ``epoch`` (those the checkpoint holds), each once; drop test records
    (the test is rerun at the end) and a line torn by a kill. Rewritten atomically."""
    for name, keep in ((LOG_NAME, lambda r: r.get("split") != "test"), (STEP_LOG_NAME, lambda r: True)):
        path = output_dir / name
        if not path.exists():
            continue
        kept: dict[tuple, str] = {}
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a torn line: the write was killed
            if isinstance(record, dict) and isinstance(record.get("epoch"), int) and record["epoch"] <= epoch \
                    and keep(record):
                kept[(record["epoch"], record.get("split"), record.get("step") if name == STEP_LOG_NAME else None)] \
                    = line
        atomic_write_text(path, "".join(line + "\n" for line in kept.values()))


def new_folders(output_dir: Path) -> list[Path]:
    """The folders that creating ``output_dir`` would make, deepest first (empty when it exists)."""
    missing = []
    for folder in (output_dir, *output_dir.parents):
        if folder.exists() or folder.is_symlink():
            break
        missing.append(folder)
    return missing


def remove_unused_folders(folders: list[Path]) -> None:
    """Remove the folders a failed start made (deepest first), each only while it is still empty."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            return


class RunLogger:
    """JSONL + TensorBoard records on rank 0 (other ranks log nothing).

    :meth:`log` writes a per-epoch record to ``metrics.jsonl``, :meth:`log_step` a step record to ``steps.jsonl``;
    TensorBoard gets both (``<split>/<key>`` and ``train_step/<key>``) against the optimizer step.
    """

    def __init__(self, output_dir: Path, config: RunConfig, enabled: bool, purge_step: int | None = None) -> None:
        """``purge_step``: a resumed run's first step to be redone; TensorBoard then hides the events an
        interrupted run logged from that step on (``SummaryWriter(purge_step=...)``), as truncate_logs cuts the
        JSONL logs, so every step is shown once."""
        self.enabled = enabled
        self.jsonl = None
        self.step_jsonl = None
        self.writer = None
        if not enabled:
            return
        if config.logging.jsonl:
            # Appended: a resumed run continues the log of the epochs it does not repeat (cut back to its
            # checkpoint first, truncate_logs).
            self.jsonl = open(output_dir / LOG_NAME, "a", buffering=1)
            self.step_jsonl = open(output_dir / STEP_LOG_NAME, "a", buffering=1)
        if config.logging.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                if purge_step is not None:
                    _after_existing_event_files(output_dir / TENSORBOARD_DIR)
                self.writer = SummaryWriter(log_dir=str(output_dir / TENSORBOARD_DIR), purge_step=purge_step)
            except ImportError:  # tensorboard is a requirement, but a missing one must not kill a training run
                logging.getLogger(__name__).warning("tensorboard is not installed; logging to JSONL only")

    def log(self, record: dict, step: int) -> None:
        """One epoch's record of one split: must carry ``epoch`` and ``split`` (train / val / test)."""
        if record.get("split") not in SPLITS or not isinstance(record.get("epoch"), int):
            raise ValueError(f"metrics.jsonl record needs an int 'epoch' and a 'split' in {SPLITS}, got {record}")
        self._write(self.jsonl, record, record["split"], step)

    def log_step(self, record: dict, step: int) -> None:
        self._write(self.step_jsonl, record, "train_step", step)

    def _write(self, stream: Any, record: dict, tag: str, step: int) -> None:
        if not self.enabled:
            return
        if stream is not None:
            line = json_text(record) + "\n"
            with naming(stream.name):
                if armed("log-append"):  # test-only: die with half a record written (see crash_points)
                    stream.write(line[: len(line) // 2])
                    stream.flush()
                    crash_point("log-append")
                    line = line[len(line) // 2:]
                stream.write(line)
        if self.writer is not None:
            for key, value in record.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool) and key not in ("step", "epoch"):
                    self.writer.add_scalar(f"{tag}/{key}", value, step)

    def close(self) -> None:
        for stream in (self.jsonl, self.step_jsonl):
            if stream is not None:
                stream.close()
        if self.writer is not None:
            self.writer.close()


def _after_existing_event_files(folder: Path) -> None:
    """Wait (under a second) until a new event file's name sorts after every existing one: TensorBoard reads the
    files in name order (``events.out.tfevents.<unix seconds>...``) and honours a purge only in later files."""
    stamps = [int(p.name.split(".")[3]) for p in folder.glob("events.out.tfevents.*")
              if len(p.name.split(".")) > 3 and p.name.split(".")[3].isdigit()]
    while stamps and int(time.time()) <= max(stamps) and max(stamps) - time.time() < 2:
        time.sleep(0.05)


def result_record(config: RunConfig, result: dict, *, epoch: int, checkpoint: str, split: str,
                  output_dir: Path, method: Any = None) -> dict:
    """The metrics.json layout `haf report` reads: metric keys, a "crm" section when decoded, and the run record
    (with the fixed frame's construction, ``frame``, for methods that build one)."""
    record = dict(result["metrics"])
    if result["crm"] is not None:
        record["crm"] = dict(result["crm"])
    if result.get("shots"):
        record["shots"] = {group: dict(values) for group, values in result["shots"].items()}
    record["run"] = {
        "dataset": config.dataset.kind,
        "method": config.method.name,
        "model": f"{config.model.backbone}/{config.model.head}",
        "seed": config.seed,
        "epochs": config.train.epochs,
        "best_epoch": epoch,
        "checkpoint": checkpoint,
        "split": split,
        "test_images": result["images"],
        "config": config.source,
        "output_dir": str(output_dir),
    }
    frame_info = getattr(method, "frame_info", None)
    if frame_info:
        record["run"]["frame"] = dict(frame_info)
    return record


def shot_keys(shots: dict | None) -> dict[str, float]:
    """``{group: metrics}`` flattened to ``"<group>/<metric>"`` keys for the metrics.jsonl records."""
    return {f"{group}/{key}": value for group, values in (shots or {}).items() for key, value in values.items()}
