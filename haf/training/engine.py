"""Process-group set-up and the training engine: one loop, two interchangeable engines.

Launchers: ``deepspeed haf/train.py`` and ``torchrun`` export RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR /
MASTER_PORT; a plain ``python haf/train.py`` exports nothing, and :func:`setup_distributed` fills them in for a
world of one (a free localhost port), so the same code path runs everywhere. Backend: NCCL on CUDA, gloo on CPU.

:class:`DeepSpeedTrainEngine` and :class:`PlainTrainEngine` share one interface, the one the loop uses (written
out on their base class). DeepSpeed averages gradients over ranks and accumulation steps, so a rank's loss is the
mean over its micro-batch and the update equals a one-process update on the global batch (up to per-rank
BatchNorm statistics).

Which engine (``deepspeed.enabled``, :func:`resolve_engine`): ``true`` / ``false``, or ``auto`` (the default):
DeepSpeed when a launcher started several ranks (WORLD_SIZE > 1), when the ``deepspeed`` launcher started the run,
or when the config needs a DeepSpeed feature (ZeRO ≥ 1, bf16/fp16 weights); otherwise the plain engine, so a
one-process run needs neither DeepSpeed nor a compiler. Nothing is compiled on the CPU either way: DeepSpeed's
shared-memory all-reduce (a C++ extension built on first use) is not loaded there, gloo reduces instead.
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime
import importlib
import importlib.util
import logging
import os
import socket
import sys
from dataclasses import dataclass
from typing import Any, Mapping

import torch
import torch.distributed as dist
from torch import nn

from haf.training.devices import autocast_factory, choose_device, input_dtype
from haf.training.optimization import build_optimizer, deepspeed_config
from haf.training.schema import DeepSpeedConfig, RunConfig

log = logging.getLogger(__name__)


@dataclass
class DistributedContext:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str
    env_set_here: tuple[str, ...] = ()  # variables we exported for a launcher-less run (removed at teardown)
    initialized_here: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def launcher_world_size(environ: Mapping[str, str] = os.environ) -> int:
    """The number of ranks a launcher (torchrun, deepspeed, mpirun) started; 1 without one."""
    for key in ("WORLD_SIZE", "OMPI_COMM_WORLD_SIZE"):
        value = environ.get(key, "")
        if value.strip().isdigit():
            return max(1, int(value))
    return 1


def resolve_engine(ds: DeepSpeedConfig, environ: Mapping[str, str] = os.environ) -> bool:
    """``deepspeed.enabled`` as a decision: True for the DeepSpeed engine, False for the plain one.

    ``auto`` picks DeepSpeed for several ranks, under the ``deepspeed`` launcher (it exports CROSS_SIZE), or for
    ZeRO ≥ 1 / bf16 / fp16 weights; otherwise (one process started by python, torchrun --nproc_per_node 1, ...)
    the plain engine. Several ranks without DeepSpeed installed fall back to the plain engine (DDP); a DeepSpeed
    feature asked for without it is a one-line error.
    """
    installed = importlib.util.find_spec("deepspeed") is not None
    needs = [what for what, wanted in (("deepspeed.zero_stage > 0", ds.zero_stage > 0),
                                       (f"deepspeed.precision {ds.precision}", ds.precision in ("bf16", "fp16")),
                                       ("deepspeed.enabled: true", ds.enabled is True)) if wanted]
    if needs and ds.enabled is not False and not installed:
        from haf.optional_deps import missing_extra

        raise missing_extra("deepspeed", purpose=f"{needs[0]} (the DeepSpeed engine)",
                            hint="; or set deepspeed.enabled: false")
    if ds.enabled != "auto":
        return bool(ds.enabled)
    if needs:
        return True
    return installed and ("CROSS_SIZE" in environ or launcher_world_size(environ) > 1)


def with_resolved_engine(config: RunConfig, environ: Mapping[str, str] = os.environ) -> RunConfig:
    """``config`` with ``deepspeed.enabled`` decided (:func:`resolve_engine`): what a run stores and compares."""
    enabled = resolve_engine(config.deepspeed, environ)
    return config.replace(deepspeed=dataclasses.replace(config.deepspeed, enabled=enabled))


def setup_distributed(device: str = "auto", use_deepspeed: bool = True) -> DistributedContext:
    """Join (or, without a launcher, create) the process group; pick this rank's device."""
    env_set: list[str] = []
    if "WORLD_SIZE" not in os.environ and "OMPI_COMM_WORLD_SIZE" not in os.environ:
        defaults = {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
                    "MASTER_PORT": str(_free_port())}
        for key, value in defaults.items():
            if key not in os.environ:
                os.environ[key] = value
                env_set.append(key)
    use_cuda = choose_device(device).type == "cuda"
    backend = "nccl" if use_cuda else "gloo"
    local_rank = int(os.environ.get("LOCAL_RANK", os.environ.get("OMPI_COMM_WORLD_LOCAL_RANK", "0")))
    if use_cuda:
        # Before the process group exists, so NCCL binds each rank to its own GPU, not all to GPU 0.
        torch.cuda.set_device(local_rank)
    initialized_here = False
    if not dist.is_initialized():
        # A hung peer should fail the job within minutes, not the default half hour.
        timeout = datetime.timedelta(minutes=int(os.environ.get("HAF_DIST_TIMEOUT_MIN", "10")))
        if use_deepspeed:
            deepspeed = import_deepspeed()
            if not use_cuda:
                _skip_cpu_op_builds()
            deepspeed.init_distributed(dist_backend=backend, timeout=timeout)
        else:
            dist.init_process_group(backend=backend, timeout=timeout)
        initialized_here = True
    rank, world_size = dist.get_rank(), dist.get_world_size()
    torch_device = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    return DistributedContext(rank, world_size, local_rank, torch_device, backend, tuple(env_set), initialized_here)


def import_deepspeed() -> Any:
    """``import deepspeed`` with its log on stderr: DeepSpeed's logger writes to the stdout of its import time
    (where results go), so the import runs with stdout pointed at stderr; its INFO lines show under --verbose."""
    from haf.optional_deps import require

    with contextlib.redirect_stdout(sys.stderr):
        deepspeed = require("deepspeed", purpose="the DeepSpeed engine (deepspeed.enabled)")

    ds_logger = logging.getLogger("DeepSpeed")
    for handler in ds_logger.handlers:
        if isinstance(handler, logging.StreamHandler) and handler.stream in (sys.stdout, sys.__stdout__):
            handler.setStream(sys.stderr)
    ds_logger.setLevel(logging.DEBUG if logging.getLogger("haf").isEnabledFor(logging.DEBUG) else logging.WARNING)
    return deepspeed


def _skip_cpu_op_builds() -> None:
    """DeepSpeed's CPU backend builds a shared-memory all-reduce extension with g++ the first time a process group
    starts (1–3 minutes, a compiler needed), and probing which ops compile runs the compiler too. gloo's all-reduce
    serves our gradient sizes; leave the extension unloaded."""
    try:
        # By module name: the attribute deepspeed.comm.torch is the torch package (star-imported there).
        ds_torch = importlib.import_module("deepspeed.comm.torch")
    except ImportError:  # pragma: no cover - another DeepSpeed layout: nothing of ours to skip
        return
    if hasattr(ds_torch, "build_shm_op"):
        ds_torch.build_shm_op = _no_shm_op


def _no_shm_op() -> None:
    return None


def teardown_distributed(context: DistributedContext, barrier: bool = True) -> None:
    """Barrier, then destroy the group we created (without it some gloo runs abort at interpreter exit)."""
    if dist.is_initialized():
        if barrier:
            dist.barrier()
        if context.initialized_here:
            dist.destroy_process_group()
            _forget_deepspeed_groups()
    for key in context.env_set_here:
        os.environ.pop(key, None)


def _forget_deepspeed_groups() -> None:
    """DeepSpeed caches its backend and process groups in module globals; after the group is destroyed they point
    at dead groups, and a second run in the same process (tests, notebooks) would fail. Reset them (only if
    DeepSpeed was imported at all: a run that never loaded it has nothing stale, and importing it costs seconds)."""
    ds_comm, ds_groups = sys.modules.get("deepspeed.comm.comm"), sys.modules.get("deepspeed.utils.groups")
    if ds_comm is None or ds_groups is None:
        return
    ds_comm.cdb = None
    for name in ("_WORLD_GROUP", "_ZERO_PARAM_INTRA_PARALLEL_GROUP", "_TENSOR_MODEL_PARALLEL_GROUP",
                 "_MODEL_PARALLEL_GROUP", "_DATA_PARALLEL_GROUP", "mpu", "mesh_device"):
        if hasattr(ds_groups, name):
            setattr(ds_groups, name, None)
    for name in ("_EXPERT_PARALLEL_GROUP", "_EXPERT_PARALLEL_GROUP_RANKS", "_EXPERT_DATA_PARALLEL_GROUP",
                 "_EXPERT_DATA_PARALLEL_GROUP_RANKS", "_ALL_TO_ALL_GROUP"):
        if isinstance(getattr(ds_groups, name, None), dict):
            getattr(ds_groups, name).clear()


# ------------------------------------------------------------------------------------------------- engines
class _EngineBase:
    """The interface both engines give the loop::

        engine.module                 the unwrapped model (backbone → head → method)
        engine.optimizer              has .param_groups (the lr schedule writes group["lr"])
        engine.autocast()             context for forward + loss (torch.autocast for "bf16-autocast", else no-op)
        engine.forward(images)        the model's outputs
        engine.backward(loss)         scales by 1/accumulation, all-reduces at the accumulation boundary
        engine.step()                 optimizer step at the accumulation boundary, otherwise nothing
        engine.input_dtype            dtype the loader should deliver (bf16 under DeepSpeed's bf16 weights)
        engine.owns_optimizer_state   True: the optimizer state is a plain torch state dict (ZeRO 0, fp32 / autocast)
        engine.optimizer_state_dict() / load_optimizer_state_dict(state)
        engine.save_sharded(dir, tag) / load_sharded(dir, tag)   DeepSpeed's own files when it owns the state
    """

    module: nn.Module
    optimizer: Any
    device: torch.device
    precision: str
    low_precision_weights: bool = False

    def autocast(self) -> contextlib.AbstractContextManager:
        return autocast_factory(self.precision, self.device, self.low_precision_weights)()

    @property
    def input_dtype(self) -> torch.dtype:
        return input_dtype(self.precision, self.low_precision_weights)

    freeze_batchnorm: bool = False

    def train(self, mode: bool = True) -> None:
        self.module.train(mode)
        if mode and self.freeze_batchnorm:
            for module in self.module.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()

    def eval(self) -> None:
        self.module.eval()


class DeepSpeedTrainEngine(_EngineBase):
    def __init__(self, model: nn.Module, config: RunConfig, context: DistributedContext) -> None:
        deepspeed = import_deepspeed()
        self.freeze_batchnorm = config.model.freeze_batchnorm
        self.device = context.device
        self.precision = config.deepspeed.precision
        self.low_precision_weights = self.precision in ("bf16", "fp16")
        optimizer = build_optimizer(model, config.optim)
        self.ds_config = deepspeed_config(config, context.world_size)
        self.engine, self.optimizer, _, _ = deepspeed.initialize(
            model=model, optimizer=optimizer, config=self.ds_config, dist_init_required=False)
        self.module = self.engine.module
        self._base_optimizer = optimizer
        # Our own plain state dict is exact only where the torch optimizer itself holds the state.
        self.owns_optimizer_state = config.deepspeed.zero_stage == 0 and self.precision in ("fp32", "bf16-autocast")

    def forward(self, images: torch.Tensor) -> Any:
        return self.engine(images)

    def backward(self, loss: torch.Tensor) -> None:
        self.engine.backward(loss)

    def step(self) -> None:
        self.engine.step()

    def optimizer_state_dict(self) -> dict:
        return self._base_optimizer.state_dict()

    def load_optimizer_state_dict(self, state: dict) -> None:
        self._base_optimizer.load_state_dict(state)

    def save_sharded(self, directory: str, tag: str) -> None:
        self.engine.save_checkpoint(directory, tag=tag, save_latest=False)

    def load_sharded(self, directory: str, tag: str) -> None:
        path, _ = self.engine.load_checkpoint(directory, tag=tag, load_optimizer_states=True,
                                              load_lr_scheduler_states=False)
        if path is None:
            raise FileNotFoundError(f"DeepSpeed checkpoint {tag!r} not found under {directory}")


class PlainTrainEngine(_EngineBase):
    """torch SGD (+ DistributedDataParallel across ranks, GradScaler for fp16) with DeepSpeed's step semantics."""

    def __init__(self, model: nn.Module, config: RunConfig, context: DistributedContext) -> None:
        self.freeze_batchnorm = config.model.freeze_batchnorm
        self.device = context.device
        precision = config.deepspeed.precision
        # Without DeepSpeed, low-precision *weights* are not offered: bf16/fp16 mean autocast (fp32 master weights).
        self.precision = precision
        self.accumulation = config.deepspeed.gradient_accumulation_steps
        self.grad_clip = config.train.grad_clip_norm
        self.module = model
        self.optimizer = build_optimizer(model, config.optim)
        self.wrapped: nn.Module = model
        if context.world_size > 1:
            device_ids = [context.device.index] if context.device.type == "cuda" else None
            self.wrapped = nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
        self.scaler = torch.amp.GradScaler(device=self.device.type) if precision == "fp16" else None
        self.micro_step = 0
        self.owns_optimizer_state = True

    def _at_boundary(self) -> bool:
        return (self.micro_step + 1) % self.accumulation == 0

    def forward(self, images: torch.Tensor) -> Any:
        if isinstance(self.wrapped, nn.parallel.DistributedDataParallel) and not self._at_boundary():
            # Skip the all-reduce on non-final micro-steps; gradients still accumulate locally.
            with self.wrapped.no_sync():
                return self.wrapped(images)
        return self.wrapped(images)

    def backward(self, loss: torch.Tensor) -> None:
        loss = loss / self.accumulation
        if self.scaler is not None:
            loss = self.scaler.scale(loss)
        loss.backward()

    def step(self) -> None:
        boundary = self._at_boundary()
        self.micro_step += 1
        if not boundary:
            return
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        if self.grad_clip:
            nn.utils.clip_grad_norm_(self.module.parameters(), self.grad_clip)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def optimizer_state_dict(self) -> dict:
        state = {"optimizer": self.optimizer.state_dict()}
        if self.scaler is not None:
            state["scaler"] = self.scaler.state_dict()
        return state

    def load_optimizer_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scaler is not None and "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])

    def save_sharded(self, directory: str, tag: str) -> None:  # pragma: no cover - never needed
        raise RuntimeError("the plain engine keeps its optimizer state in the checkpoint itself")

    def load_sharded(self, directory: str, tag: str) -> None:  # pragma: no cover - never needed
        raise RuntimeError("the plain engine keeps its optimizer state in the checkpoint itself")


def build_engine(model: nn.Module, config: RunConfig, context: DistributedContext) -> DeepSpeedTrainEngine | PlainTrainEngine:
    model.to(context.device)
    if resolve_engine(config.deepspeed):
        return DeepSpeedTrainEngine(model, config, context)
    return PlainTrainEngine(model, config, context)
