"""Shared fixtures for the training tests: a tiny demo dataset and tiny run configs (not a test module)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

# K = 8 classes (2 colours × 2 patterns × 2 shapes), 16-px images, 64/16/24 train/val/test images: a training
# step takes milliseconds, so a 3-epoch run is a few seconds including DeepSpeed's start-up.
TINY_DEMO_OPTIONS = {"colours": 2, "patterns": 2, "shapes": 2, "image_size": 16, "train_per_class": 8,
                     "val_per_class": 2, "test_per_class": 3}


def tiny_run_dict(demo_root: Path, output_dir: Path, **sections: Any) -> dict:
    """A complete config dict for a tiny CPU run; ``sections`` are merged on top as a config layer (another
    ``method.name`` does not inherit the default method's options)."""
    from haf.training.run_config import merge_layer

    base = {
        "seed": 3,
        "output_dir": str(output_dir),
        "dataset": {"kind": "demo", "root": str(demo_root), "options": dict(TINY_DEMO_OPTIONS)},
        "model": {"backbone": "tiny_cnn", "backbone_options": {"width": 4, "depth": 2}, "head": "type2"},
        "method": {"name": "haframe", "options": {"gamma": 1.0, "alpha": 0.5}},
        "optim": {"lr": 0.1, "backbone_lr_scale": 0.1},
        "train": {"epochs": 3, "batch_size": 16, "eval_batch_size": 32, "device": "cpu"},
        "data": {"backend": "torch", "image_size": 16, "workers": 0},
        "deepspeed": {"enabled": True, "zero_stage": 0, "precision": "fp32"},
        "logging": {"tensorboard": False, "jsonl": True, "progress": False, "log_every": 1},
    }
    return merge_layer(base, sections)


def train_records(output_dir: Path, split: str = "train") -> list[dict]:
    """The run's per-epoch records (metrics.jsonl) of one split."""
    lines = (Path(output_dir) / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["split"] == split]


def step_records(output_dir: Path) -> list[dict]:
    """The run's training records every logging.log_every steps (steps.jsonl)."""
    return [json.loads(line) for line in (Path(output_dir) / "steps.jsonl").read_text().splitlines()]


def checkpoint_params(path: Path) -> dict[str, torch.Tensor]:
    state = torch.load(path, map_location="cpu", weights_only=True)
    return state["model"]
