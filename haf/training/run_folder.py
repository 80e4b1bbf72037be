"""A run folder: its file names (one home for them), the run's JSONL/TensorBoard log, and the metrics.json record.

The files and the fields of their records are described in docs/ARCHITECTURE.md ("Training outputs").
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

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
SPLITS = ("train", "val", "test")  # the values of a metrics.jsonl record's "split"


def default_output_dir(config: RunConfig) -> Path:
    stem = Path(config.source).stem if config.source else config.method.name
    return Path("runs") / config.dataset.kind / f"{stem}-seed{config.seed}"


def progress_bar(total: int, description: str, enabled: bool) -> Any:
    """A tqdm bar on stderr, or None when disabled (callers check)."""
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=description, leave=False, dynamic_ncols=True, file=sys.stderr)


class RunLogger:
    """JSONL + TensorBoard records on rank 0 (other ranks log nothing).

    :meth:`log` writes a per-epoch record to ``metrics.jsonl``, :meth:`log_step` a step record to ``steps.jsonl``;
    TensorBoard gets both (``<split>/<key>`` and ``train_step/<key>``) against the optimizer step.
    """

    def __init__(self, output_dir: Path, config: RunConfig, enabled: bool) -> None:
        self.enabled = enabled
        self.jsonl = None
        self.step_jsonl = None
        self.writer = None
        if not enabled:
            return
        if config.logging.jsonl:
            # Appended: a resumed run continues the log of the epochs it does not repeat.
            self.jsonl = open(output_dir / LOG_NAME, "a", buffering=1)
            self.step_jsonl = open(output_dir / STEP_LOG_NAME, "a", buffering=1)
        if config.logging.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(log_dir=str(output_dir / TENSORBOARD_DIR))
            except ImportError:  # tensorboard is a requirement, but a missing one must not kill a training run
                print("warning: tensorboard is not installed; logging to JSONL only", file=sys.stderr)

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
            stream.write(json.dumps(record) + "\n")
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
