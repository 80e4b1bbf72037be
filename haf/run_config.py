"""The one validated run configuration: YAML files (with ``base:`` composition) + ``--set dotted.key=value``.

A config composes seven sections and two scalars::

    seed: 0                       # every random choice: init, frame rotation, data order, augmentation
    output_dir: null              # where checkpoints, logs and metrics.json go (``--output-dir`` overrides)
    dataset:   {kind, root, options, distance_convention, val_split, test_split}
    model:     {backbone, head, pretrained, backbone_options, head_options}
    method:    {name, options}    # options validated against the method's ``Options`` dataclass
    optim:     {lr, momentum, weight_decay, nesterov, schedule, backbone_lr_scale, transformation_lr_scale, ...}
    train:     {epochs, batch_size, eval_batch_size, stop_after_epoch, max_steps_per_epoch, device, ...}
    data:      {backend, image_size, workers, augment, channels_last}
    deepspeed: {enabled, zero_stage, precision, gradient_accumulation_steps, extra}
    logging:   {tensorboard, jsonl, progress, log_every}

Loading is strict, as a typo in a 100-epoch run should cost a second, not a day: an unknown key, a value of the
wrong type or a value outside its choices raises ``ValueError`` naming the file, the dotted key and the valid
keys/choices. Composition: ``base: other.yaml`` (or a list; paths relative to the including file) is loaded
first and the including file is deep-merged on top; mappings merge key by key, everything else is replaced.

One exception: ``method.options`` belong to one method. A layer (an including file, ``data=``, or
``--set method.name=...``) that changes ``method.name`` starts from that method's defaults instead of inheriting
the previous method's options (HAFrame's gamma would be an unknown key to cross-entropy); a layer that keeps the
name (or does not set one) merges its options key by key as usual. With ``--set``, name the method before its
options: ``--set method.name=haframe --set method.options.gamma=2``.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence, Union

import yaml

BASE_KEY = "base"  # composition key; removed after merging, never part of the validated object


# --------------------------------------------------------------------------------------------------- sections
@dataclass(frozen=True)
class DatasetConfig:
    """Which dataset reader to use and where its files are (``haf.pipelines.load_dataset(kind, root, **options)``)."""

    kind: Literal["image-folder", "fgvc-aircraft", "inat2019", "tiered-imagenet", "cifar100", "demo",
                  "synthetic-tree"] = "demo"
    root: str = ".cache/demo-data"
    # Reader-specific keyword arguments, passed through verbatim (the reader validates them).
    options: dict = field(default_factory=dict)
    # How the reader's hierarchy becomes a distance matrix (DESIGN.md §2): "lca-height" (siblings at 1) or
    # "fixed-depth" (tieredImageNet-H's H − depth(LCA)); null keeps the reader's/file's own convention.
    distance_convention: Union[Literal["lca-height", "fixed-depth"], None] = None
    val_split: str = "val"
    test_split: str = "test"


@dataclass(frozen=True)
class ModelConfig:
    """Backbone + head; the method on top is the ``method`` section."""

    backbone: str = "resnet50"  # checked against the backbone registry when the model is built
    head: Literal["type1", "type2", "mlp"] = "type2"  # DESIGN.md §2 "Heads": type-I baseline, type-II HAFrame head
    # Backbone initialisation: null (from scratch), a torchvision weights name ("IMAGENET1K_V1", "DEFAULT"), or a
    # path to a (self-supervised) checkpoint file. Passed as the backbone's ``weights`` option.
    pretrained: Union[str, None] = None
    backbone_options: dict = field(default_factory=dict)  # keyword options of the backbone factory
    head_options: dict = field(default_factory=dict)  # keyword options of the head factory
    # Keep every BatchNorm in eval mode while training (running statistics, affine weights still trained), as
    # detection/fine-tuning recipes do for small per-GPU batches. It also makes a sample's gradient independent of
    # the rest of its batch, so N ranks reproduce one process exactly. false: the reference (batch statistics).
    freeze_batchnorm: bool = False


@dataclass(frozen=True)
class OptimConfig:
    """SGD with a per-epoch schedule: lr_t = lr · ½(1 + cos(π t / T)) for epoch t of T (t = 0 … T−1).

    The reference recipe is lr = 0.1 (so lr_t = 0.05·(cos(πt/T) + 1)), momentum 0.9, weight decay 5e-4 on every
    trained parameter (the frame is a buffer, so it is never decayed), backbone at lr/10.
    """

    name: Literal["sgd"] = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = False
    schedule: Literal["cosine", "constant"] = "cosine"
    warmup_epochs: int = 0  # linear warm-up to the schedule's value over the first epochs (0: the paper's recipe)
    backbone_lr_scale: float = 0.1  # backbone incl. the type-II head's 1×1 conv
    transformation_lr_scale: float = 1.0  # type-II transformation layers; 0.1 for iNat2019 / tieredImageNet-H
    # No weight decay on BatchNorm/PReLU parameters and biases? The reference decays everything trained: False.
    no_decay_norm_and_bias: bool = False


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 100
    batch_size: int = 64  # global: split evenly over ranks (and gradient-accumulation steps)
    eval_batch_size: int = 256  # global
    # Stop (as if killed) after this many epochs; the run resumes with --resume. A test hook and a way to split
    # a long run into jobs. null: run all epochs.
    stop_after_epoch: Union[int, None] = None
    # Cap on steps per epoch (smoke tests, benchmarks); null: the whole split.
    max_steps_per_epoch: Union[int, None] = None
    max_eval_steps: Union[int, None] = None
    grad_clip_norm: Union[float, None] = None  # DeepSpeed's gradient_clipping; null: off (the reference)
    validate_every: int = 1  # epochs between validations (the last epoch is always validated)
    test_checkpoint: Literal["best", "last"] = "best"  # the paper tests the best-validation-top-1 checkpoint
    device: Literal["auto", "cuda", "cpu"] = "auto"  # auto: this rank's GPU when there is one


@dataclass(frozen=True)
class DataConfig:
    # "auto": DALI when the run's device is a CUDA GPU and nvidia.dali imports, else the PyTorch DataLoader
    # (resolved by resolve_data_backend, the one place that decides).
    backend: Literal["auto", "torch", "dali"] = "torch"
    image_size: int = 224
    workers: int = 4  # per rank
    # Random training augmentation (crop/flip). false: the training split gets the deterministic evaluation
    # transform (still shuffled) — for debugging, and for comparing runs sample for sample across world sizes.
    augment: bool = True
    # Channels-last activations ("auto": on GPU only, where cuDNN's NHWC convolutions are faster).
    channels_last: Literal["auto", "on", "off"] = "auto"


@dataclass(frozen=True)
class DeepSpeedConfig:
    enabled: bool = True  # false: the plain-PyTorch engine (DistributedDataParallel across ranks)
    zero_stage: Literal[0, 1, 2] = 0
    # "bf16-autocast": fp32 weights, torch.autocast(bfloat16) around forward + loss (timm's "amp");
    # "bf16" / "fp16": DeepSpeed's low-precision weights with fp32 master copies (fp16 with dynamic loss scaling).
    precision: Literal["fp32", "bf16-autocast", "bf16", "fp16"] = "fp32"
    gradient_accumulation_steps: int = 1
    # Raw DeepSpeed config keys merged last (e.g. {"communication_data_type": "bf16"}); the keys we set from the
    # other fields may not be overridden here, so the config file has one place for each setting.
    extra: dict = field(default_factory=dict)


@dataclass(frozen=True)
class LoggingConfig:
    tensorboard: bool = True
    jsonl: bool = True
    progress: bool = True  # tqdm bars with images/s on rank 0
    log_every: int = 20  # steps between JSONL/TensorBoard training records


@dataclass(frozen=True)
class MethodConfig:
    name: str = "haframe"  # checked against the method registry
    options: dict = field(default_factory=dict)  # checked against the method's Options dataclass


@dataclass(frozen=True)
class RunConfig:
    seed: int = 0
    output_dir: Union[str, None] = None
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)
    deepspeed: DeepSpeedConfig = field(default_factory=DeepSpeedConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    # The file it came from (informational: recorded in metrics.json); not a YAML key.
    source: Union[str, None] = field(default=None, metadata={"internal": True})

    def to_dict(self) -> dict:
        """Plain dict of YAML-able values (no ``source``): what checkpoints and config.yaml store."""
        data = dataclasses.asdict(self)
        data.pop("source", None)
        return data

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def method_options(self) -> Any:
        """The method's ``Options`` instance (validated again, so a hand-built RunConfig is checked too)."""
        return validate_method_options(self)

    def replace(self, **changes: Any) -> "RunConfig":
        return dataclasses.replace(self, **changes)


# ------------------------------------------------------------------------------------------- public loaders
def load_config(
    path: str | Path | None = None,
    overrides: Sequence[str] = (),
    *,
    data: Mapping[str, Any] | None = None,
    output_dir: str | None = None,
    validate_method: bool = True,
) -> RunConfig:
    """Load ``path`` (or use ``data``), apply ``--set`` overrides, validate, return the frozen config.

    ``overrides``: strings ``dotted.key=value``; the value is parsed as YAML (``2`` → int, ``true`` → bool,
    ``null`` → None, ``[1, 2]`` → list), so ``--set train.epochs=2`` and ``--set dataset.options.size=16`` work.
    """
    source = str(path) if path is not None else "<dict>"
    raw: dict = load_yaml_tree(Path(path)) if path is not None else {}
    if data is not None:
        raw = merge_layer(raw, _plain(data))
    for override in overrides:
        raw = apply_override(raw, override)
    if output_dir is not None:
        raw["output_dir"] = output_dir
    raw.pop(BASE_KEY, None)
    config = _build(RunConfig, raw, "", source)
    config = dataclasses.replace(config, source=source if path is not None else None)
    check_semantics(config)
    if validate_method:
        # Store the method's options as validated and defaulted (gamma 2 → 2.0, omitted keys filled in), so the
        # saved config says exactly what ran.
        options = dataclasses.asdict(validate_method_options(config))
        config = dataclasses.replace(config, method=dataclasses.replace(config.method, options=options))
    return config


def config_from_dict(data: Mapping[str, Any], source: str = "<checkpoint>") -> RunConfig:
    """Rebuild a config stored as a plain dict (checkpoints), with the same validation."""
    config = dataclasses.replace(_build(RunConfig, _plain(data), "", source), source=source)
    check_semantics(config)
    return config


def load_yaml_tree(path: Path, _seen: tuple[Path, ...] = ()) -> dict:
    """Read ``path`` and its ``base:`` chain (deep-merged, the including file winning)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    resolved = path.resolve()
    if resolved in _seen:
        chain = " -> ".join(str(p) for p in (*_seen, resolved))
        raise ValueError(f"{path}: circular '{BASE_KEY}:' chain: {chain}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise ValueError(f"{path}{where}: not valid YAML ({getattr(error, 'problem', error)})") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: the top level must be a mapping of sections, got {type(data).__name__}")
    bases = data.pop(BASE_KEY, None)
    if bases is None:
        return data
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
        raise ValueError(f"{path}: key '{BASE_KEY}' must be a path or a list of paths, got {bases!r}")
    merged: dict = {}
    for base in bases:
        merged = merge_layer(merged, load_yaml_tree(path.parent / base, (*_seen, resolved)))
    return merge_layer(merged, data)


def deep_merge(base: Mapping[str, Any], top: Mapping[str, Any]) -> dict:
    """Mappings merge key by key (recursively); any other value in ``top`` replaces the one in ``base``."""
    merged = dict(base)
    for key, value in top.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def merge_layer(base: Mapping[str, Any], top: Mapping[str, Any]) -> dict:
    """:func:`deep_merge` of one config layer over another, except that ``method.options`` do not outlive a change
    of ``method.name`` (they are validated against one method's ``Options``)."""
    return deep_merge(_without_other_methods_options(base, top), top)


def _without_other_methods_options(base: Mapping[str, Any], top: Mapping[str, Any]) -> Mapping[str, Any]:
    """``base`` minus its ``method.options`` when ``top`` names another method than ``base`` does."""
    base_method, top_method = base.get("method"), top.get("method")
    if not (isinstance(base_method, Mapping) and isinstance(top_method, Mapping)):
        return base
    if "name" not in top_method or top_method["name"] == base_method.get("name"):
        return base
    return {**base, "method": {k: v for k, v in base_method.items() if k != "options"}}


def apply_override(raw: dict, override: str) -> dict:
    """``a.b.c=value`` → raw with raw[a][b][c] = yaml(value); missing intermediate mappings are created, and
    unknown keys are left for validation to reject (with the valid choices)."""
    key, sep, text = override.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ValueError(f"--set {override!r}: expected dotted.key=value, e.g. --set train.epochs=2")
    try:
        value = yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError:
        value = text  # not YAML: keep the literal string (e.g. a path with ':' in it)
    parts = key.split(".")
    if parts == ["method", "name"]:
        # Another method does not inherit this one's options (see the module docstring).
        raw = dict(_without_other_methods_options(raw, {"method": {"name": value}}))
    out = deep_merge({}, raw)
    node = out
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = {}
        elif not isinstance(child, dict):
            raise ValueError(f"--set {override!r}: '{'.'.join(parts[: i + 1])}' is not a section")
        else:
            child = dict(child)
        node[part] = child
        node = child
    node[parts[-1]] = value
    return out


def check_semantics(config: RunConfig) -> None:
    """Value checks that a type cannot express (ranges, cross-field rules); each names its key."""
    where = config.source or "<config>"

    def fail(key: str, message: str) -> None:
        raise ValueError(f"{where}: key '{key}': {message}")

    if config.seed < 0:
        fail("seed", f"must be >= 0, got {config.seed}")
    o, t, d, ds, lg = config.optim, config.train, config.data, config.deepspeed, config.logging
    for key, value in (("optim.lr", o.lr), ("optim.weight_decay", o.weight_decay),
                       ("optim.backbone_lr_scale", o.backbone_lr_scale),
                       ("optim.transformation_lr_scale", o.transformation_lr_scale)):
        if not math.isfinite(value) or value < 0:
            fail(key, f"must be a finite number >= 0, got {value}")
    if not 0.0 <= o.momentum < 1.0:
        fail("optim.momentum", f"must be in [0, 1), got {o.momentum}")
    if o.nesterov and o.momentum == 0:
        fail("optim.nesterov", "Nesterov momentum needs optim.momentum > 0")
    if o.warmup_epochs < 0 or o.warmup_epochs >= max(t.epochs, 1):
        fail("optim.warmup_epochs", f"must be in [0, train.epochs={t.epochs}), got {o.warmup_epochs}")
    for key, value in (("train.epochs", t.epochs), ("train.batch_size", t.batch_size),
                       ("train.eval_batch_size", t.eval_batch_size), ("train.validate_every", t.validate_every),
                       ("data.image_size", d.image_size), ("logging.log_every", lg.log_every),
                       ("deepspeed.gradient_accumulation_steps", ds.gradient_accumulation_steps)):
        if value < 1:
            fail(key, f"must be >= 1, got {value}")
    for key, value in (("train.stop_after_epoch", t.stop_after_epoch),
                       ("train.max_steps_per_epoch", t.max_steps_per_epoch),
                       ("train.max_eval_steps", t.max_eval_steps)):
        if value is not None and value < 1:
            fail(key, f"must be >= 1 or null, got {value}")
    if t.grad_clip_norm is not None and not (math.isfinite(t.grad_clip_norm) and t.grad_clip_norm > 0):
        fail("train.grad_clip_norm", f"must be > 0 or null, got {t.grad_clip_norm}")
    if d.workers < 0:
        fail("data.workers", f"must be >= 0, got {d.workers}")
    if t.batch_size % ds.gradient_accumulation_steps:
        fail("train.batch_size", f"{t.batch_size} is not divisible by deepspeed.gradient_accumulation_steps="
                                 f"{ds.gradient_accumulation_steps}")
    if ds.zero_stage > 0 and not ds.enabled:
        fail("deepspeed.zero_stage", "ZeRO needs deepspeed.enabled: true")
    reserved = {"train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps",
                "zero_optimization", "bf16", "fp16", "gradient_clipping", "optimizer", "scheduler", "torch_autocast",
                "data_types"}
    clash = sorted(reserved & set(ds.extra))
    if clash:
        fail("deepspeed.extra", f"{', '.join(clash)} come from other config keys (train.batch_size, "
                                "deepspeed.zero_stage/precision/gradient_accumulation_steps, train.grad_clip_norm, "
                                "optim.*); set them there")
    if not config.method.name:
        fail("method.name", "must name a method")


def world_batch_split(global_batch: int, world_size: int, accumulation: int = 1, key: str = "train.batch_size") -> int:
    """Per-rank micro-batch of a global batch; the global batch must split evenly (the same update as 1 process)."""
    if global_batch % (world_size * accumulation):
        raise ValueError(f"key '{key}': global batch {global_batch} does not split evenly over {world_size} "
                         f"rank(s) × {accumulation} accumulation step(s)")
    return global_batch // (world_size * accumulation)


def resolve_data_backend(backend: str, device: Any = None) -> str:
    """The input pipeline a run uses: ``data.backend`` with ``"auto"`` resolved to "dali" or "torch".

    ``auto`` → "dali" when the run's ``device`` is a CUDA device (``None``: whether CUDA is available at all) and
    ``nvidia.dali`` imports; otherwise "torch". DALI's GPU decoding and augmentation is what makes it worth having;
    on a CPU run the PyTorch DataLoader is the simpler equal, and a CPU-only run never imports DALI.
    """
    if backend != "auto":
        return backend
    import torch

    on_cuda = torch.cuda.is_available() if device is None else torch.device(device).type == "cuda"
    if not on_cuda:
        return "torch"
    try:
        import nvidia.dali  # noqa: F401
    except ImportError:
        return "torch"
    return "dali"


def add_train_arguments(parser: "argparse.ArgumentParser") -> None:
    """The training command line shared by ``haf/train.py`` and ``haf train`` (argparse only: cheap)."""
    parser.add_argument("--config", required=True, help="YAML config (configs/<dataset>/<method>.yaml)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set train.epochs=2 (repeatable; VALUE is YAML)")
    parser.add_argument("--output-dir", default=None, help="checkpoints, logs and metrics.json (default: "
                        "the config's output_dir, else runs/<dataset>/<config name>-seed<seed>)")
    parser.add_argument("--resume", action="store_true", help="continue from OUTPUT_DIR/last.pt if it exists")
    # The deepspeed launcher passes --local_rank (torch.distributed.launch --local-rank); the LOCAL_RANK
    # environment variable is what is used.
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)


# ------------------------------------------------------------------------------------------ the validator
def _plain(data: Any) -> Any:
    if isinstance(data, Mapping):
        return {str(k): _plain(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [_plain(v) for v in data]
    return data


def _fields(cls: type) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}


def _build(cls: type, raw: Any, prefix: str, source: str) -> Any:
    """Instantiate dataclass ``cls`` from mapping ``raw``, checking every key and value."""
    where = source or "<config>"
    section = prefix or "top level"
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise ValueError(f"{where}: key '{prefix}' must be a mapping (with keys {', '.join(_fields(cls))}), "
                         f"got {type(raw).__name__} {raw!r}")
    fields = _fields(cls)
    unknown = [k for k in raw if k not in fields]
    if unknown:
        key = f"{prefix}.{unknown[0]}" if prefix else unknown[0]
        raise ValueError(f"{where}: unknown key '{key}' in {section}; valid keys: {', '.join(fields)}")
    hints = typing.get_type_hints(cls)
    values = {}
    for name, value in raw.items():
        key = f"{prefix}.{name}" if prefix else name
        values[name] = _check_value(hints[name], value, key, where, source)
    try:
        return cls(**values)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{where}: {section}: {error}") from None


def _check_value(hint: Any, value: Any, key: str, where: str, source: str) -> Any:
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, key, source)
    if origin in (Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _check_value(option, value, key, where, source)
            except ValueError as error:
                errors.append(str(error))
        allowed = " or ".join(_describe(o) for o in options)
        raise ValueError(f"{where}: key '{key}': expected {allowed}, got {value!r}")
    if origin is Literal:
        choices = typing.get_args(hint)
        for choice in choices:
            # bool is an int in Python: True must not match the choice 1.
            if value == choice and type(value) is type(choice):
                return value
        raise ValueError(f"{where}: key '{key}': invalid value {value!r}; valid choices: "
                         f"{', '.join(repr(c) if not isinstance(c, str) else c for c in choices)}")
    if hint is Any:
        return value
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ValueError(f"{where}: key '{key}': expected true or false, got {value!r}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ValueError(f"{where}: key '{key}': expected an integer, got {value!r}")
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            # PyYAML (YAML 1.1) reads 5e-4 as a string: accept any numeric string for a float key.
            try:
                return float(value)
            except ValueError:
                pass
        raise ValueError(f"{where}: key '{key}': expected a number, got {value!r}")
    if hint is str:
        if isinstance(value, str):
            return value
        raise ValueError(f"{where}: key '{key}': expected a string, got {value!r}")
    if hint is dict or origin in (dict, Mapping):
        if isinstance(value, Mapping):
            return _plain(value)
        raise ValueError(f"{where}: key '{key}': expected a mapping, got {value!r}")
    if origin in (tuple, list, Sequence) or hint in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{where}: key '{key}': expected a list, got {value!r}")
        args = typing.get_args(hint)
        item = args[0] if args else Any
        checked = [_check_value(item, v, f"{key}[{i}]", where, source) for i, v in enumerate(value)]
        return tuple(checked) if origin is tuple or hint is tuple else checked
    if isinstance(hint, type):
        if isinstance(value, hint):
            return value
        raise ValueError(f"{where}: key '{key}': expected {hint.__name__}, got {value!r}")
    return value


def _describe(hint: Any) -> str:
    if typing.get_origin(hint) is Literal:
        return "one of " + ", ".join(str(c) for c in typing.get_args(hint))
    return {int: "an integer", float: "a number", str: "a string", bool: "true/false", dict: "a mapping"}.get(
        hint, getattr(hint, "__name__", str(hint)))


def validate_method_options(config: RunConfig) -> Any:
    """Check ``method.name`` against the registry and ``method.options`` against its Options dataclass."""
    from haf.methods import available_methods, get_method

    where = config.source or "<config>"
    if config.method.name not in available_methods():
        raise ValueError(f"{where}: key 'method.name': unknown method {config.method.name!r}; valid choices: "
                         f"{', '.join(available_methods())}")
    method_cls = get_method(config.method.name)
    return _build(method_cls.Options, config.method.options, "method.options", where)
