"""The training run behind ``haf/train.py``: epochs of train → validate → checkpoint, then the test metrics.

One loop for every launcher (deepspeed, torchrun, plain python) and both engines (DeepSpeed, plain PyTorch);
see :mod:`haf.train_engine`. Per epoch t (0-based) of T:

1. re-seed python/numpy/torch from (seed, t, rank) and ``loader.set_epoch(t)``: everything random in the epoch
   (data order, augmentation, dropout) is a function of (seed, t, rank), so a resumed run replays it exactly;
2. set every group's lr to lr_t · lr_scale (:mod:`haf.optimization`), train one pass;
3. validate (streaming hierarchical metrics, merged over ranks);
4. write ``last.pt`` atomically (model incl. the frame, optimizer momentum, epoch, best metric, RNG states,
   config) and hard-link it as ``best.pt`` when validation top-1 improved.

After the last epoch the chosen checkpoint (``train.test_checkpoint``, best by default) is evaluated on the test
split and ``metrics.json`` is written: the keys of :func:`haf.metrics.hierarchical_metrics`, a ``crm`` section for
probabilistic methods, and a ``run`` record (the format ``haf report`` reads).

Output directory::

    config.yaml        the resolved config          metrics.jsonl   per-epoch train/val/test records
    last.pt, best.pt   checkpoints (weights_only)   steps.jsonl     training records every logging.log_every steps
    metrics.json       test metrics                 tensorboard/    both, for TensorBoard
                                                    deepspeed/      ZeRO ≥ 1 / bf16 / fp16 optimizer shards

``metrics.jsonl`` (what :mod:`haf.plots` and ``make demo`` read) holds one JSON object per epoch and split:
``{"epoch": int (1-based, epochs completed), "split": "train" | "val" | "test", "step": optimizer steps so far,
...metrics}``. Train records carry ``loss`` (mean over the epoch's micro-batches on rank 0), ``lr`` (the
schedule's peak-relative rate lr_t), ``lr/<group>`` (the rates the optimizer holds) and ``images_per_s`` (all
ranks); val records the keys of :func:`haf.metrics.hierarchical_metrics`, ``loss``, and the neural-collapse
diagnostics ``nc_mean``, ``nc_std``, ``self_duality`` where the method has a single K-row classifier
(:func:`haf.eval_loop.collapse_target`); the test record the test metrics of the tested checkpoint.
``steps.jsonl`` holds the finer training curve: ``{"epoch", "split": "train", "step", "loss" (last micro-batch),
"loss_mean" (mean since the previous record), "lr", "lr/<group>", "images_per_s"}``.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.distributed as dist

from haf.checkpoints import (
    BEST_NAME,
    CHECKPOINT_FORMAT,
    CHECKPOINT_KIND,
    LAST_NAME,
    atomic_torch_save,
    atomic_write_text,
    capture_rng_state,
    epoch_seed,
    load_checkpoint,
    restore_rng_state,
    seed_everything,
)
from haf.eval_loop import evaluate, format_metric_table, method_supports_crm
from haf.optimization import learning_rate, set_learning_rate
from haf.run_config import (
    RunConfig,
    add_train_arguments,
    config_from_dict,
    load_config,
    resolve_data_backend,
    world_batch_split,
)
from haf.train_engine import DistributedContext, build_engine, setup_distributed, teardown_distributed

METRICS_NAME = "metrics.json"
LOG_NAME = "metrics.jsonl"  # per-epoch records (the haf.plots contract)
STEP_LOG_NAME = "steps.jsonl"  # every logging.log_every optimizer steps
CONFIG_NAME = "config.yaml"
DEEPSPEED_DIR = "deepspeed"
SPLITS = ("train", "val", "test")  # the values of a metrics.jsonl record's "split"


# ------------------------------------------------------------------------------------------- building blocks
@dataclass
class PreparedData:
    dataset: Any  # haf.pipelines.DatasetSplits
    distances: np.ndarray  # K × K int64 in the dataset's class order


def prepare_dataset(config: RunConfig) -> PreparedData:
    """Read (for ``demo``: generate on first use) the dataset and pick its distance convention."""
    from haf.pipelines import load_dataset

    ds = config.dataset
    dataset = load_dataset(ds.kind, ds.root, **ds.options)
    return PreparedData(dataset, distances_for(dataset, ds.distance_convention, config.source))


def distances_for(dataset: Any, convention: str | None, source: str | None = None) -> np.ndarray:
    if convention is None:
        return np.asarray(dataset.distances.matrix, dtype=np.int64)
    if dataset.hierarchy is None:
        if dataset.distances.convention == convention:
            return np.asarray(dataset.distances.matrix, dtype=np.int64)
        raise ValueError(f"{source or '<config>'}: key 'dataset.distance_convention': {convention!r} needs a class "
                         f"tree, but dataset {dataset.name!r} only has a distance matrix "
                         f"(convention {dataset.distances.convention!r}); use null")
    return np.asarray(dataset.hierarchy.distance_matrix(convention), dtype=np.int64)


def build_model(config: RunConfig, dataset: Any, distances: np.ndarray) -> torch.nn.Module:
    """backbone → head → method from the registries; the frame rotation is seeded by ``config.seed``."""
    from haf.classifier import build_classifier
    from haf.methods import MethodContext

    hierarchy = dataset.hierarchy
    context = MethodContext(
        classes=tuple(dataset.classes),
        distances=distances,
        level_labels=hierarchy.level_labels() if hierarchy is not None else None,
        seed=config.seed,
        hierarchy=hierarchy,
    )
    backbone_options = dict(config.model.backbone_options)
    if config.model.pretrained is not None:
        backbone_options["weights"] = config.model.pretrained
    # Model initialisation draws from the global RNG: seed it so every rank (and every resume) builds the same model.
    seed_everything(config.seed)
    return build_classifier(
        backbone=config.model.backbone,
        head=config.model.head,
        method=config.method.name,
        context=context,
        backbone_options=backbone_options,
        head_options=dict(config.model.head_options),
        method_options=config.method.options,
    )


def make_split_loader(config: RunConfig, data: PreparedData, split: str, *, train: bool, context: DistributedContext,
                      dtype: torch.dtype, channels_last: bool) -> Any:
    from haf.pipelines import make_loader

    global_batch = config.train.batch_size if train else config.train.eval_batch_size
    if train:
        micro = world_batch_split(global_batch, context.world_size, config.deepspeed.gradient_accumulation_steps)
    else:
        # Evaluation shards need not split evenly (no padding, partial last batch): round the per-rank batch up.
        micro = max(1, math.ceil(global_batch / context.world_size))
    # Without augmentation the training split takes the evaluation transform, still shuffled, full batches only.
    augmented = train and config.data.augment
    return make_loader(
        data.dataset, split, backend=resolve_data_backend(config.data.backend, context.device), train=augmented,
        batch_size=micro,
        image_size=config.data.image_size, workers=config.data.workers, rank=context.rank,
        world_size=context.world_size, seed=config.seed, device=context.device, dtype=dtype,
        channels_last=channels_last, shuffle=train, drop_last=train,
    )


def use_channels_last(config: RunConfig, device: torch.device) -> bool:
    mode = config.data.channels_last
    return mode == "on" or (mode == "auto" and device.type == "cuda")


def default_output_dir(config: RunConfig) -> Path:
    stem = Path(config.source).stem if config.source else config.method.name
    return Path("runs") / config.dataset.kind / f"{stem}-seed{config.seed}"


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

                self.writer = SummaryWriter(log_dir=str(output_dir / "tensorboard"))
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


def _progress(total: int, description: str, enabled: bool) -> Any:
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=description, leave=False, dynamic_ncols=True, file=sys.stderr)


# ---------------------------------------------------------------------------------------------- checkpoints
def _checkpoint_payload(engine: Any, config: RunConfig, data: PreparedData, *, epoch: int, global_step: int,
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
        "distances": torch.from_numpy(np.ascontiguousarray(data.distances)),
        "metrics": metrics or {},
        "torch_version": str(torch.__version__),
    }


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


def save_epoch_checkpoint(engine: Any, config: RunConfig, data: PreparedData, context: DistributedContext,
                          output_dir: Path, *, epoch: int, global_step: int, best_metric: float, best_epoch: int,
                          metrics: dict | None, is_best: bool) -> None:
    """Write last.pt atomically (and best.pt as a hard link of it); DeepSpeed shards first, on every rank."""
    fingerprints = gather_fingerprints(engine.module, context.device)  # collective: every rank
    if context.is_main and any(f != fingerprints[0] for f in fingerprints[1:]):
        print(f"warning: epoch {epoch}: the ranks' parameters differ (fingerprints {fingerprints})", file=sys.stderr)
    tag = None
    if not engine.owns_optimizer_state:
        tag = f"epoch{epoch:04d}"
        engine.save_sharded(str(output_dir / DEEPSPEED_DIR), tag)  # collective: every rank writes its shard
    if context.is_main:
        payload = _checkpoint_payload(engine, config, data, epoch=epoch, global_step=global_step,
                                      best_metric=best_metric, best_epoch=best_epoch, metrics=metrics,
                                      deepspeed_tag=tag)
        payload["rank_fingerprints"] = torch.tensor(fingerprints, dtype=torch.float64)
        last = output_dir / LAST_NAME
        atomic_torch_save(payload, last)
        if is_best:
            # A hard link of the file just written: no second copy of the weights, and still an atomic rename.
            tmp = output_dir / f".{BEST_NAME}.link"
            tmp.unlink(missing_ok=True)
            try:
                os.link(last, tmp)
            except OSError:  # file systems without hard links
                shutil.copyfile(last, tmp)
            os.replace(tmp, output_dir / BEST_NAME)
        if tag is not None:
            # Shards of older epochs are no longer referenced by last.pt: remove them.
            for old in (output_dir / DEEPSPEED_DIR).glob("epoch*"):
                if old.name != tag:
                    shutil.rmtree(old, ignore_errors=True)
    if dist.is_initialized():
        dist.barrier()


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


# ------------------------------------------------------------------------------------------------ the run
def run_training(config: RunConfig, *, resume: bool = False, data: PreparedData | None = None) -> dict | None:
    """Train, validate, checkpoint; return the test metrics dict (None if stopped early by stop_after_epoch)."""
    use_deepspeed = config.deepspeed.enabled
    context = setup_distributed(config.train.device, use_deepspeed=use_deepspeed)
    try:
        result = _run(config, context, resume=resume, data=data)
    except BaseException:
        # No closing barrier: the other ranks may never reach it, and a hang would hide this rank's error.
        teardown_distributed(context, barrier=False)
        raise
    teardown_distributed(context)
    return result


def _run(config: RunConfig, context: DistributedContext, *, resume: bool, data: PreparedData | None) -> dict | None:
    output_dir = Path(config.output_dir) if config.output_dir else default_output_dir(config)
    main = context.is_main
    if main:
        output_dir.mkdir(parents=True, exist_ok=True)
    if data is None:
        # Rank 0 first: the demo dataset is generated on first use, and two ranks must not write it at once.
        if main:
            data = prepare_dataset(config)
        if dist.is_initialized():
            dist.barrier()
        if data is None:
            data = prepare_dataset(config)
    if main:
        atomic_write_text(config.to_yaml(), output_dir / CONFIG_NAME)

    model = build_model(config, data.dataset, data.distances)
    channels_last = use_channels_last(config, context.device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    fixed = {name: buf.detach().clone() for name, buf in model.method.fixed_buffers().items()}
    engine = build_engine(model, config, context)
    _restore_fixed_buffers(engine.module.method, fixed, context.device)

    train_loader = make_split_loader(config, data, "train", train=True, context=context, dtype=engine.input_dtype,
                                     channels_last=channels_last)
    val_loader = make_split_loader(config, data, config.dataset.val_split, train=False, context=context,
                                   dtype=engine.input_dtype, channels_last=channels_last)

    if main and config.data.backend == "auto":
        print(f"data.backend auto: {resolve_data_backend('auto', context.device)} input pipeline on "
              f"{context.device}", file=sys.stderr)
    epochs = config.train.epochs
    start_epoch, global_step, best_metric, best_epoch = 0, 0, -math.inf, -1
    last_path = output_dir / LAST_NAME
    if resume:
        if not _same_on_all_ranks(last_path.is_file(), context):
            raise ValueError(f"{last_path}: visible on some ranks only; --resume needs the output directory on a "
                             "file system every node shares")
        if last_path.is_file():
            state = load_checkpoint(last_path)
            _check_resume_compatible(config, state, last_path)
            restore_training_state(engine, state, output_dir)
            start_epoch, global_step = int(state["epoch"]), int(state["global_step"])
            best_metric, best_epoch = float(state["best_metric"]), int(state["best_epoch"])
            if main:
                print(f"resumed from {last_path} after epoch {start_epoch} (step {global_step})", file=sys.stderr)
        elif main:
            print(f"--resume: no {last_path} yet, starting from scratch", file=sys.stderr)

    logger = RunLogger(output_dir, config, enabled=main)
    show_progress = main and config.logging.progress
    # Micro-batches per epoch: whole optimizer steps only (a partial accumulation window would leak into the next).
    accumulation = config.deepspeed.gradient_accumulation_steps
    micro_steps = (len(train_loader) // accumulation) * accumulation
    if config.train.max_steps_per_epoch is not None:
        micro_steps = min(micro_steps, config.train.max_steps_per_epoch * accumulation)
    if micro_steps == 0:
        raise ValueError(f"{config.source or '<config>'}: key 'train.batch_size': the train split has "
                         f"{len(train_loader)} batch(es) per rank, fewer than one optimizer step")
    try:
        for epoch in range(start_epoch, epochs):
            # Everything random in this epoch is a function of (seed, epoch, rank): exact resume.
            seed_everything(epoch_seed(config.seed, epoch, context.rank))
            lr = learning_rate(config.optim, epoch, epochs)
            set_learning_rate(engine.optimizer, lr)
            train_loader.set_epoch(epoch)
            global_step = _train_one_epoch(engine, train_loader, config, context, logger, epoch=epoch, lr=lr,
                                           steps=micro_steps, global_step=global_step, progress=show_progress)
            metrics = None
            is_last = epoch + 1 == epochs
            if (epoch + 1) % config.train.validate_every == 0 or is_last:
                bar = _progress(_steps(val_loader, config.train.max_eval_steps), f"val {epoch + 1}/{epochs}",
                                show_progress)
                val_loader.set_epoch(epoch)
                result = evaluate(engine.module, val_loader, data.distances, autocast=engine.autocast,
                                  max_steps=config.train.max_eval_steps, progress=bar, collapse=True)
                if bar is not None:
                    bar.close()
                metrics = {**result["metrics"], "loss": result["loss"], **(result["collapse"] or {})}
                logger.log({"split": "val", "epoch": epoch + 1, "step": global_step, **metrics}, global_step)
                if main:
                    print(f"epoch {epoch + 1}/{epochs}: val " + ", ".join(
                        f"{k} {v:.4f}" for k, v in metrics.items() if isinstance(v, float)), file=sys.stderr)
            is_best = metrics is not None and metrics["top1"] > best_metric
            if is_best:
                best_metric, best_epoch = float(metrics["top1"]), epoch + 1
            save_epoch_checkpoint(engine, config, data, context, output_dir, epoch=epoch + 1, global_step=global_step,
                                  best_metric=best_metric, best_epoch=best_epoch, metrics=metrics, is_best=is_best)
            stop = config.train.stop_after_epoch
            if stop is not None and epoch + 1 >= stop and not is_last:
                if main:
                    print(f"stopping after epoch {epoch + 1} (train.stop_after_epoch={stop}); continue with --resume",
                          file=sys.stderr)
                return None
        return _final_test(engine, config, data, context, output_dir, best_epoch, channels_last, logger, global_step)
    finally:
        logger.close()


def _same_on_all_ranks(flag: bool, context: DistributedContext) -> bool:
    if not dist.is_initialized() or context.world_size == 1:
        return True
    votes = torch.tensor([float(flag), float(not flag)], device=context.device)
    dist.all_reduce(votes)
    return bool(votes.min().item() == 0)


def _steps(loader: Any, limit: int | None) -> int:
    return len(loader) if limit is None else min(len(loader), limit)


def _restore_fixed_buffers(method: torch.nn.Module, fixed: dict[str, torch.Tensor], device: torch.device) -> None:
    """DeepSpeed's bf16/fp16 modes cast every buffer; the frame and S stay fp32 (the loss accumulates in fp32)."""
    for name, original in fixed.items():
        owner_name, _, leaf = name.rpartition(".")
        owner = method.get_submodule(owner_name) if owner_name else method
        if owner._buffers[leaf].dtype != original.dtype:
            owner._buffers[leaf] = original.to(device)


def _check_resume_compatible(config: RunConfig, state: dict, path: Path) -> None:
    stored = config_from_dict(state["config"], source=str(path))
    for section in ("dataset", "model", "method", "optim", "deepspeed"):
        if getattr(stored, section) != getattr(config, section):
            raise ValueError(f"{path}: cannot resume: the config's '{section}' section differs from the "
                             f"checkpoint's ({getattr(stored, section)} vs {getattr(config, section)})")
    for key in ("seed",):
        if getattr(stored, key) != getattr(config, key):
            raise ValueError(f"{path}: cannot resume: key '{key}' is {getattr(config, key)}, the checkpoint's is "
                             f"{getattr(stored, key)}")
    for key in ("batch_size", "epochs"):
        if getattr(stored.train, key) != getattr(config.train, key):
            raise ValueError(f"{path}: cannot resume: key 'train.{key}' is {getattr(config.train, key)}, the "
                             f"checkpoint's is {getattr(stored.train, key)}")


def _train_one_epoch(engine: Any, loader: Any, config: RunConfig, context: DistributedContext, logger: RunLogger, *,
                     epoch: int, lr: float, steps: int, global_step: int, progress: bool) -> int:
    """One pass over ``steps`` micro-batches; logs step records every ``log_every`` steps and one epoch record."""
    engine.train()
    model = engine.module
    bar = _progress(steps // max(1, config.deepspeed.gradient_accumulation_steps),
                    f"train {epoch + 1}/{config.train.epochs}", progress)
    log_every = config.logging.log_every
    accumulation = config.deepspeed.gradient_accumulation_steps
    # Detached running sums (fp64): a .item() per step would synchronise the GPU every step.
    window_loss = torch.zeros((), dtype=torch.float64)
    epoch_loss = torch.zeros((), dtype=torch.float64)
    window_micro, window_images, window_start = 0, 0, time.perf_counter()
    epoch_micro, epoch_images, epoch_start = 0, 0, time.perf_counter()
    for micro_step, (images, targets) in enumerate(loader):
        if micro_step >= steps:
            break
        with engine.autocast():
            outputs = engine.forward(images)
            loss = model.loss(outputs, targets)
        engine.backward(loss)
        engine.step()
        detached = loss.detach().double()
        window_loss = window_loss.to(detached.device) + detached
        epoch_loss = epoch_loss.to(detached.device) + detached
        window_micro += 1
        epoch_micro += 1
        images_now = int(targets.shape[0]) * context.world_size
        window_images += images_now
        epoch_images += images_now
        if (micro_step + 1) % accumulation:
            continue
        global_step += 1
        if bar is not None:
            bar.update(1)
        if global_step % log_every == 0 or micro_step + 1 == steps:
            mean_loss = float(window_loss) / window_micro
            elapsed = time.perf_counter() - window_start
            throughput = window_images / max(elapsed, 1e-9)
            if not math.isfinite(mean_loss):
                raise FloatingPointError(f"epoch {epoch + 1}, step {global_step}: training loss is {mean_loss}")
            # "loss": this rank's last micro-batch (rank 0); "loss_mean": the mean since the previous record.
            record = {"split": "train", "epoch": epoch + 1, "step": global_step, "loss": float(loss.detach()),
                      "loss_mean": mean_loss, "lr": lr, "images_per_s": throughput, **_group_rates(engine)}
            logger.log_step(record, global_step)
            if bar is not None:
                bar.set_postfix(loss=f"{mean_loss:.4f}", lr=f"{lr:.4g}", img_s=f"{throughput:.0f}")
            window_loss = torch.zeros((), dtype=torch.float64)
            window_micro, window_images, window_start = 0, 0, time.perf_counter()
    if bar is not None:
        bar.close()
    # The epoch's record: mean loss over its micro-batches (rank 0's shard), throughput over the whole pass.
    epoch_mean = float(epoch_loss) / max(epoch_micro, 1)
    epoch_throughput = epoch_images / max(time.perf_counter() - epoch_start, 1e-9)
    logger.log({"split": "train", "epoch": epoch + 1, "step": global_step, "loss": epoch_mean, "lr": lr,
                "images_per_s": epoch_throughput, **_group_rates(engine)}, global_step)
    return global_step


def _group_rates(engine: Any) -> dict[str, float]:
    """``lr/<group>``: the rates the optimizer really holds (read back through any DeepSpeed wrapper)."""
    return {f"lr/{group.get('name', index)}": float(group["lr"])
            for index, group in enumerate(engine.optimizer.param_groups)}


def result_record(config: RunConfig, result: dict, *, epoch: int, checkpoint: str, split: str,
                  output_dir: Path) -> dict:
    """The metrics.json layout `haf report` reads: metric keys, a "crm" section when decoded, and the run record."""
    record = dict(result["metrics"])
    if result["crm"] is not None:
        record["crm"] = dict(result["crm"])
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
    return record


def _final_test(engine: Any, config: RunConfig, data: PreparedData, context: DistributedContext, output_dir: Path,
                best_epoch: int, channels_last: bool, logger: RunLogger, global_step: int) -> dict:
    """Evaluate the chosen checkpoint on the test split; write metrics.json (rank 0)."""
    which = config.train.test_checkpoint
    path = output_dir / (BEST_NAME if which == "best" and best_epoch > 0 else LAST_NAME)
    if dist.is_initialized():
        dist.barrier()
    state = load_checkpoint(path, map_location="cpu")
    engine.module.load_state_dict(state["model"])
    test_loader = make_split_loader(config, data, config.dataset.test_split, train=False, context=context,
                                    dtype=engine.input_dtype, channels_last=channels_last)
    test_loader.set_epoch(0)
    show = context.is_main and config.logging.progress
    bar = _progress(_steps(test_loader, config.train.max_eval_steps), "test", show)
    crm = method_supports_crm(engine.module.method)
    result = evaluate(engine.module, test_loader, data.distances, crm=crm, autocast=engine.autocast,
                      max_steps=config.train.max_eval_steps, progress=bar)
    if bar is not None:
        bar.close()
    record = result_record(config, result, epoch=int(state["epoch"]), checkpoint=path.name,
                           split=config.dataset.test_split, output_dir=output_dir)
    if context.is_main:
        atomic_write_text(json.dumps(record, indent=2) + "\n", output_dir / METRICS_NAME)
        logger.log({"split": "test", "epoch": int(state["epoch"]), "step": global_step, **result["metrics"]},
                   global_step)
        print(format_metric_table({"plain": result["metrics"], "crm": result["crm"]},
                                  title=f"test ({path.name}, epoch {state['epoch']}):"), file=sys.stderr)
    return record


# ----------------------------------------------------------------------------------------------------- CLI
def build_arg_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="haf/train.py",
        description="Train a hierarchy-aware classifier: deepspeed|torchrun|python haf/train.py --config FILE")
    add_train_arguments(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_arg_parser().parse_args(argv)
    try:
        config = load_config(args.config, args.overrides, output_dir=args.output_dir)
        run_training(config, resume=args.resume)
    except (ValueError, FileNotFoundError) as error:
        print(f"haf/train.py: error: {error}", file=sys.stderr)
        return 2
    return 0


# ---------------------------------------------------------------------------------------------- haf eval
def evaluate_checkpoint(
    checkpoint: str | Path,
    *,
    split: str | None = None,
    data_root: str | None = None,
    overrides: Sequence[str] = (),
    batch_size: int | None = None,
    device: str = "auto",
    crm: str = "auto",
    json_out: str | Path | None = None,
    progress: bool = True,
    data: PreparedData | None = None,
) -> dict:
    """Evaluate a training checkpoint on one split in this process; write and return the metrics.

    Returns ``{"record": metrics.json-style dict, "table": printable text, "json_path": Path}``.
    """
    path = Path(checkpoint)
    state = load_checkpoint(path)
    extra = list(overrides)
    if data_root is not None:
        extra.append(f"dataset.root={data_root}")
    if batch_size is not None:
        extra.append(f"train.eval_batch_size={batch_size}")
    config = load_config(None, extra, data=state["config"], validate_method=True)
    config = config.replace(source=state.get("config_source") or str(path))
    split = split or config.dataset.test_split
    if device == "auto":
        torch_device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    else:
        if device == "cuda" and not torch.cuda.is_available():
            raise ValueError("--device cuda: no CUDA device is available")
        torch_device = torch.device(device)

    if data is None:
        data = prepare_dataset(config)
    stored_classes = list(state.get("classes") or [])
    if stored_classes and stored_classes != list(data.dataset.classes):
        first = next((i for i, (a, b) in enumerate(zip(stored_classes, data.dataset.classes)) if a != b),
                     min(len(stored_classes), len(data.dataset.classes)))
        raise ValueError(f"{path}: the checkpoint's classes differ from dataset {config.dataset.root!r} "
                         f"({len(stored_classes)} vs {len(data.dataset.classes)} classes; first difference at "
                         f"index {first}): evaluate on the dataset it was trained on")
    model = build_model(config, data.dataset, data.distances)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as error:
        raise ValueError(f"{path}: weights do not fit the model its config describes: {error}") from None
    channels_last = use_channels_last(config, torch_device)
    model = model.to(torch_device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)

    from haf.pipelines import make_loader

    backend = resolve_data_backend(config.data.backend, torch_device)
    loader = make_loader(data.dataset, split, backend=backend, train=False,
                         batch_size=config.train.eval_batch_size, image_size=config.data.image_size,
                         workers=config.data.workers, rank=0, world_size=1, seed=config.seed, device=torch_device,
                         channels_last=channels_last)
    loader.set_epoch(0)
    use_crm = method_supports_crm(model.method) if crm == "auto" else crm == "on"
    autocast = None
    if config.deepspeed.precision in ("bf16-autocast", "bf16"):
        def autocast() -> Any:
            return torch.autocast(device_type=torch_device.type, dtype=torch.bfloat16)
    bar = _progress(len(loader), f"eval {split}", progress)
    result = evaluate(model, loader, data.distances, crm=use_crm, autocast=autocast, progress=bar)
    if bar is not None:
        bar.close()
    record = result_record(config, result, epoch=int(state["epoch"]), checkpoint=str(path), split=split,
                           output_dir=path.parent)
    record["loss"] = result["loss"]
    json_path = Path(json_out) if json_out is not None else path.parent / f"eval-{split}.json"
    atomic_write_text(json.dumps(record, indent=2) + "\n", json_path)
    table = format_metric_table({"plain": result["metrics"], "crm": result["crm"]},
                                title=f"{path} (epoch {state['epoch']}) on {config.dataset.kind}/{split}, "
                                      f"{result['images']} images:")
    return {"record": record, "table": table, "json_path": json_path}
