"""The training run behind ``haf/train.py``: epochs of train → validate → checkpoint, then the test metrics.

One loop for every launcher (deepspeed, torchrun, plain python) and both engines (:mod:`haf.training.engine`).
Per epoch t (0-based) of T: re-seed every RNG from (seed, t, rank) and ``loader.set_epoch(t)`` (so a resumed run
replays the epoch exactly); set every group's lr to lr_t · lr_scale (:mod:`haf.training.optimization`); train one
pass; validate (metrics merged over ranks); write ``last.pt`` atomically and link it as ``best.pt`` when
validation top-1 improved. After the last epoch the chosen checkpoint (``train.test_checkpoint``) is tested and
``metrics.json`` written. The run folder's files are described in docs/ARCHITECTURE.md.

Output: rank 0 prints the run folder (at the start and the end) and the test table on stdout; everything else goes
to the ``haf`` logger (stderr).
"""
from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from haf.safe_files import atomic_write_text, json_text
from haf.training.assemble import (
    PreparedData,
    build_model,
    check_splits,
    make_split_loader,
    prepare_dataset,
    resolve_epochs,
)
from haf.training.checkpoints import (
    TrainingDiverged,
    check_resume_compatible,
    load_checkpoint,
    reconcile_best,
    remove_unreferenced_shards,
    restore_training_state,
    save_epoch_checkpoint,
)
from haf.training.devices import apply_tf32, use_channels_last
from haf.log_setup import progress_bar
from haf.training.engine import (
    DistributedContext,
    build_engine,
    launcher_world_size,
    setup_distributed,
    teardown_distributed,
    with_resolved_engine,
)
from haf.training.evaluation import (
    eval_steps,
    evaluate,
    evaluate_loaded_checkpoint,
    format_metric_table,
    method_supports_crm,
)
from haf.training.mixup import mix_batch, mixed_loss, mixup_generator
from haf.training.model_selection import (
    LOSS_FIT_DEGREE,
    keep_snapshot,
    loss_fit_epoch,
    prune_snapshots,
    snapshot_path,
    validation_losses,
)
from haf.training.optimization import learning_rate, set_learning_rate
from haf.training.run_folder import (
    BEST_NAME,
    CONFIG_NAME,
    LAST_NAME,
    METRICS_NAME,
    RunLogger,
    claim_run_folder,
    default_output_dir,
    new_folders,
    release_run_folders,
    remove_stale_files,
    remove_unused_folders,
    shot_keys,
    truncate_logs,
)
from haf.training.schema import RunConfig
from haf.training.seeding import epoch_seed, seed_everything

log = logging.getLogger(__name__)


def run_training(config: RunConfig, *, resume: bool = False, overwrite: bool = False,
                 data: PreparedData | None = None) -> dict | None:
    """Train, validate, checkpoint; return the test metrics dict (None if stopped early by stop_after_epoch).

    An output folder that holds a run is refused unless ``resume`` (continue it) or ``overwrite`` (replace it).
    """
    # deepspeed.enabled auto → the engine this launch gets; config.yaml and the checkpoints state the choice.
    asked = config.deepspeed.enabled
    config = with_resolved_engine(config)
    use_deepspeed = bool(config.deepspeed.enabled)
    log.debug(f"deepspeed.enabled {asked}: the {'DeepSpeed' if use_deepspeed else 'plain'} engine "
              f"({launcher_world_size()} rank(s) started by the launcher)")
    context = setup_distributed(config.train.device, use_deepspeed=use_deepspeed)
    try:
        result = _run(config, context, resume=resume, overwrite=overwrite, data=data)
    except BaseException:
        # No closing barrier: the other ranks may never reach it, and a hang would hide this rank's error.
        teardown_distributed(context, barrier=False)
        raise
    finally:
        release_run_folders()  # the output folder's lock (taken by claim_run_folder)
    teardown_distributed(context)
    return result


def _run(config: RunConfig, context: DistributedContext, *, resume: bool, overwrite: bool,
         data: PreparedData | None) -> dict | None:
    apply_tf32(config.deepspeed.tf32)
    output_dir = Path(config.output_dir) if config.output_dir else default_output_dir(config)
    main = context.is_main
    if config.train.nonfinite_loss == "skip" and config.deepspeed.gradient_accumulation_steps != 1:
        raise ValueError(f"{config.source or '<config>'}: key 'train.nonfinite_loss': 'skip' needs "
                         "deepspeed.gradient_accumulation_steps 1")
    refusal, made = None, []
    if main:
        try:
            made = new_folders(output_dir)  # before the claim: locking the folder creates it
            claim_run_folder(output_dir, resume=resume, overwrite=overwrite)
            output_dir.mkdir(parents=True, exist_ok=True)
            for name in remove_stale_files(output_dir):
                log.info(f"removed {output_dir / name} (left by an interrupted run)")
        except (ValueError, OSError) as error:
            refusal = error
            remove_unused_folders(made)
    if not _same_on_all_ranks(refusal is None, context) or refusal is not None:
        raise refusal or ValueError(f"{output_dir}: refused on rank 0 (see its error)")
    try:
        return _run_in_folder(config, context, output_dir, resume=resume, data=data, made=made)
    except BaseException:
        if main:
            remove_unused_folders(made)  # a start that failed before writing anything leaves no empty folder
        raise


def _say(line: str) -> None:
    """A line of the run's results on stdout (flushed: other ranks and the log interleave by line)."""
    print(line, flush=True)


def _run_in_folder(config: RunConfig, context: DistributedContext, output_dir: Path, *, resume: bool,
                   data: PreparedData | None, made: list[Path]) -> dict | None:
    main = context.is_main
    if data is None:
        # Rank 0 first: the demo dataset is generated on first use, and two ranks must not write it at once.
        if main:
            data = prepare_dataset(config)
        if dist.is_initialized():
            dist.barrier()
        if data is None:
            data = prepare_dataset(config)
    check_splits(config, data.dataset)
    config = resolve_epochs(config, len(data.dataset["train"]), context.world_size)
    model = build_model(config, data.dataset, data.distances)
    channels_last = use_channels_last(config.data.channels_last, context.device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    fixed = {name: buf.detach().clone() for name, buf in model.method.fixed_buffers().items()}
    engine = build_engine(model, config, context)
    _restore_fixed_buffers(engine.module.method, fixed, context.device)

    shard = dict(rank=context.rank, world_size=context.world_size, device=context.device, dtype=engine.input_dtype,
                 channels_last=channels_last)
    train_loader = make_split_loader(config, data, "train", train=True, **shard)
    val_loader = make_split_loader(config, data, config.dataset.val_split, train=False, validation=True, **shard)

    if main:
        log.info(f"engine: {'DeepSpeed' if config.deepspeed.enabled else 'plain PyTorch'} on {context.device}, "
                 f"{context.world_size} rank(s)")
    if main and config.data.backend == "auto":
        log.info(f"data.backend auto: {type(train_loader).__name__} on {context.device}")
    # Micro-batches per epoch: whole optimizer steps only (a partial accumulation window would leak into the next);
    # checked before config.yaml is written, so a refused start leaves no run behind.
    accumulation = config.deepspeed.gradient_accumulation_steps
    micro_steps = (len(train_loader) // accumulation) * accumulation
    if config.train.max_steps_per_epoch is not None:
        micro_steps = min(micro_steps, config.train.max_steps_per_epoch * accumulation)
    if micro_steps == 0:
        raise ValueError(f"{config.source or '<config>'}: key 'train.batch_size': the train split's "
                         f"{len(data.dataset['train'])} images make {len(train_loader)} full batch(es) per rank at batch size "
                         f"{config.train.batch_size}, fewer than one optimizer step; lower the batch size")
    epochs = config.train.epochs
    start_epoch, global_step, best_metric, best_epoch = 0, 0, -math.inf, -1
    last_path = output_dir / LAST_NAME
    if resume:
        if not _same_on_all_ranks(last_path.is_file(), context):
            raise ValueError(f"{last_path}: visible on some ranks only; --resume needs the output directory on a "
                             "file system every node shares")
        if last_path.is_file():
            state = load_checkpoint(last_path)
            check_resume_compatible(config, state, last_path)
            restore_training_state(engine, state, output_dir)
            start_epoch, global_step = int(state["epoch"]), int(state["global_step"])
            best_metric, best_epoch = float(state["best_metric"]), int(state["best_epoch"])
            if main:
                reconcile_best(output_dir, state)
                remove_unreferenced_shards(output_dir, state.get("deepspeed_tag"))
                log.info(f"resumed from {last_path} after epoch {start_epoch} (step {global_step})")
        elif main:
            log.info(f"--resume: no {last_path} yet, starting from scratch")

    if main:
        # After the resume checks: a refused resume leaves the run's config.yaml and logs as they were.
        atomic_write_text(output_dir / CONFIG_NAME, config.to_yaml())
        made.clear()  # the folder holds the run from here on: kept whatever happens
        _say(f"run folder: {output_dir}")
        truncate_logs(output_dir, start_epoch)  # the records of the epochs about to be (re)done go
        prune_snapshots(output_dir, start_epoch)
    # On resume, steps after the checkpoint's are redone: TensorBoard hides what an interrupted run logged there.
    logger = RunLogger(output_dir, config, enabled=main, purge_step=global_step + 1 if resume else None)
    show_progress = main and config.logging.progress
    class_groups = data.class_groups
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
                bar = progress_bar(eval_steps(val_loader, config.train.max_eval_steps), f"val {epoch + 1}/{epochs}",
                                show_progress)
                val_loader.set_epoch(epoch)
                result = evaluate(engine.module, val_loader, data.distances, autocast=engine.autocast,
                                  max_steps=config.train.max_eval_steps, progress=bar, collapse=True,
                                  class_groups=class_groups)
                if bar is not None:
                    bar.close()
                metrics = {**result["metrics"], "loss": result["loss"], **(result["collapse"] or {}),
                           **shot_keys(result["shots"])}
                logger.log({"split": "val", "epoch": epoch + 1, "step": global_step, **metrics}, global_step)
                if main:
                    log.info(f"epoch {epoch + 1}/{epochs}: val " + ", ".join(
                        f"{k} {v:.4f}" for k, v in metrics.items() if isinstance(v, float)))
            is_best = metrics is not None and metrics["top1"] > best_metric
            if is_best:
                best_metric, best_epoch = float(metrics["top1"]), epoch + 1
            save_epoch_checkpoint(engine, config, data, context, output_dir, epoch=epoch + 1, global_step=global_step,
                                  best_metric=best_metric, best_epoch=best_epoch, metrics=metrics, is_best=is_best)
            if main and metrics is not None and config.train.test_checkpoint == "val-loss-fit":
                keep_snapshot(output_dir, epoch + 1)
            stop = config.train.stop_after_epoch
            if stop is not None and epoch + 1 >= stop and not is_last:
                if main:
                    log.info(f"stopping after epoch {epoch + 1} (train.stop_after_epoch={stop}); continue with "
                             "--resume")
                    _say(f"run folder: {output_dir}")
                return None
        record = _final_test(engine, config, data, context, output_dir, best_epoch, channels_last, logger,
                             global_step)
        if main:
            _say(f"run folder: {output_dir}")
        return record
    finally:
        logger.close()


def _same_on_all_ranks(flag: bool, context: DistributedContext) -> bool:
    if not dist.is_initialized() or context.world_size == 1:
        return True
    votes = torch.tensor([float(flag), float(not flag)], device=context.device)
    dist.all_reduce(votes)
    return bool(votes.min().item() == 0)


def _all_finite(value: float, context: DistributedContext) -> bool:
    finite = math.isfinite(value)
    return _same_on_all_ranks(finite, context) and finite


def _restore_fixed_buffers(method: torch.nn.Module, fixed: dict[str, torch.Tensor], device: torch.device) -> None:
    """DeepSpeed's bf16/fp16 modes cast every buffer; the frame and S stay fp32 (the loss accumulates in fp32)."""
    for name, original in fixed.items():
        owner_name, _, leaf = name.rpartition(".")
        owner = method.get_submodule(owner_name) if owner_name else method
        if owner._buffers[leaf].dtype != original.dtype:
            owner._buffers[leaf] = original.to(device)


def _train_one_epoch(engine: Any, loader: Any, config: RunConfig, context: DistributedContext, logger: RunLogger, *,
                     epoch: int, lr: float, steps: int, global_step: int, progress: bool) -> int:
    """One pass over ``steps`` micro-batches; logs step records every ``log_every`` steps and one epoch record."""
    engine.train()
    model = engine.module
    bar = progress_bar(steps // max(1, config.deepspeed.gradient_accumulation_steps),
                    f"train {epoch + 1}/{config.train.epochs}", progress)
    log_every = config.logging.log_every
    accumulation = config.deepspeed.gradient_accumulation_steps
    # Detached running sums (fp64): a .item() per step would synchronise the GPU every step.
    window_loss = torch.zeros((), dtype=torch.float64)
    epoch_loss = torch.zeros((), dtype=torch.float64)
    window_micro, window_images, window_start = 0, 0, time.perf_counter()
    epoch_micro, epoch_images, epoch_start = 0, 0, time.perf_counter()
    alpha = config.train.mixup_alpha
    skip_nonfinite, skipped = config.train.nonfinite_loss == "skip", 0
    for micro_step, (images, targets) in enumerate(loader):
        if micro_step >= steps:
            break
        mixed = None
        if alpha > 0:
            mixed = mix_batch(images, targets, alpha, mixup_generator(config.seed, epoch, micro_step, context.rank))
            images = mixed.images
        try:
            with engine.autocast():
                outputs = engine.forward(images)
                loss = model.loss(outputs, targets) if mixed is None else mixed_loss(model.loss, outputs, mixed)
        except ValueError as error:  # the loss refuses non-finite features: the weights diverged
            if "non-finite" not in str(error):
                raise
            raise TrainingDiverged(f"epoch {epoch + 1}, step {global_step + 1}: {error}; stopped, the last "
                                   "checkpoint is kept") from None
        # Every rank skips the same batch (a backward on some ranks only would hang the gradient all-reduce).
        if skip_nonfinite and not _all_finite(value := float(loss.detach()), context):
            skipped += 1
            if context.is_main:
                log.warning(f"epoch {epoch + 1}, step {global_step + 1}: training loss is {value}; update skipped "
                            "(train.nonfinite_loss=skip)")
            continue
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
            if not _all_finite(mean_loss, context):
                raise TrainingDiverged(f"epoch {epoch + 1}, step {global_step}: training loss is {mean_loss}; "
                                       "stopped, the last checkpoint is kept (train.nonfinite_loss=skip skips "
                                       "such batches instead)")
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
    record = {"split": "train", "epoch": epoch + 1, "step": global_step, "loss": epoch_mean, "lr": lr,
              "images_per_s": epoch_throughput, **_group_rates(engine)}
    if skip_nonfinite:
        record["skipped_batches"] = skipped
    logger.log(record, global_step)
    return global_step


def _group_rates(engine: Any) -> dict[str, float]:
    """``lr/<group>``: the rates the optimizer really holds (read back through any DeepSpeed wrapper)."""
    return {f"lr/{group.get('name', index)}": float(group["lr"])
            for index, group in enumerate(engine.optimizer.param_groups)}


def _final_test(engine: Any, config: RunConfig, data: PreparedData, context: DistributedContext, output_dir: Path,
                best_epoch: int, channels_last: bool, logger: RunLogger, global_step: int) -> dict:
    """Evaluate the chosen checkpoint on the test split; write metrics.json (rank 0)."""
    which = config.train.test_checkpoint
    path = output_dir / (BEST_NAME if which == "best" and best_epoch > 0 else LAST_NAME)
    if dist.is_initialized():
        dist.barrier()
    if which == "val-loss-fit":  # every rank reads the same log (the output folder is shared, as for --resume)
        chosen = loss_fit_epoch(*validation_losses(output_dir), window=config.train.loss_fit_window)
        path = snapshot_path(output_dir, chosen)
        if context.is_main:
            log.info(f"val-loss-fit: testing epoch {chosen} (degree-{LOSS_FIT_DEGREE} fit of the validation loss)")
    state = load_checkpoint(path, map_location="cpu")
    result, record = evaluate_loaded_checkpoint(
        engine.module, state, path, config, data, config.dataset.test_split, device=context.device,
        rank=context.rank, world_size=context.world_size, dtype=engine.input_dtype, channels_last=channels_last,
        autocast=engine.autocast, crm=method_supports_crm(engine.module.method),
        show_progress=context.is_main and config.logging.progress, max_steps=config.train.max_eval_steps,
        checkpoint_name=path.name)
    if context.is_main:
        atomic_write_text(output_dir / METRICS_NAME, json_text(record, indent=2) + "\n")
        logger.log({"split": "test", "epoch": int(state["epoch"]), "step": global_step, **result["metrics"],
                    **shot_keys(result["shots"])}, global_step)
        _say(format_metric_table({"plain": result["metrics"], "crm": result["crm"]},
                                 title=f"test ({path.name}, epoch {state['epoch']}):"))
    return record
