"""Backbones: images (B × 3 × H × W) → feature map (B × C × h × w), found through a registry.

Every backbone is an ``nn.Module`` that returns the last *spatial* feature map (no global pooling, no classifier):
pooling belongs to the head (type-I max-pools, type-II convolves to K channels and then average-pools), see
:mod:`haf.models.heads`. Each exposes ``out_channels`` (C) so heads can be built without a dry run.

Registered backbones (``available_backbones()``):

* ``resnet18`` / ``resnet34`` / ``resnet50`` / ``resnet101`` / ``resnet152`` — torchvision ResNets with ``avgpool`` and
  ``fc`` removed; the parameter names are torchvision's, so torchvision and self-supervised checkpoints load
  directly. ``weights`` is ``None`` (random init), a torchvision weights name (``"IMAGENET1K_V2"``, ``"DEFAULT"``,
  ``"ResNet50_Weights.IMAGENET1K_V1"``), or a local checkpoint file (see :func:`load_backbone_checkpoint`).
* ``wrn28_8`` (the CIFAR-100 reference model, 512-channel map at 32 px), ``wrn28_10``, ``wrn28_2``, ``wrn16_4`` and the
  generic ``wide_resnet`` — pre-activation Wide-ResNets (Zagoruyko & Komodakis, BMVC 2016), trained from scratch.
* ``resnet32`` (the CIFAR-LT recipe: option-A shortcuts, widths 32/64/128, 128-channel map) and the generic
  ``cifar_resnet`` (depth 6n + 2, base width w).
* ``tiny_cnn`` — three conv layers of configurable width, for tests and the CPU demo.

Every backbone takes ``weights=None``; the non-torchvision ones accept a local checkpoint path there as well.
Backbones may set ``head_defaults`` ({head name: options}): Wide-ResNets and ``tiny_cnn`` make the type-I head
the plain average-pooled map, the reference's type-I feature for WRN-28-8.

Adding a backbone is one decorated function::

    @register_backbone("my_net")
    def my_net(*, width: int = 64) -> nn.Module:  # must set .out_channels
        ...
"""
from __future__ import annotations

import inspect
import os
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from torch import nn

__all__ = [
    "CHECKPOINT_PREFIXES",
    "ResNetFeatures",
    "TinyCNN",
    "WideResNet",
    "available_backbones",
    "build_backbone",
    "load_backbone_checkpoint",
    "register_backbone",
    "resolve_torchvision_weights",
]

BackboneFactory = Callable[..., nn.Module]
_BACKBONES: dict[str, BackboneFactory] = {}


def register_backbone(name: str) -> Callable[[BackboneFactory], BackboneFactory]:
    """Register ``factory(**options) -> nn.Module`` (with ``out_channels``) under ``name``."""

    def decorate(factory: BackboneFactory) -> BackboneFactory:
        if name in _BACKBONES and _BACKBONES[name] is not factory:
            raise ValueError(f"backbone {name!r} is registered twice")
        _BACKBONES[name] = factory
        return factory

    return decorate


def available_backbones() -> list[str]:
    return sorted(_BACKBONES)


def check_factory_options(kind: str, name: str, factory: Callable[..., Any], options: Mapping[str, Any]) -> None:
    """Unknown option keys are errors that name the key and the valid choices (not a bare TypeError)."""
    params = inspect.signature(factory).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    valid = [p for p in params if params[p].kind is not inspect.Parameter.VAR_POSITIONAL]
    for key in options:
        if key not in valid:
            raise ValueError(f"{kind} {name!r} has no option {key!r}; valid options: {', '.join(valid) or '(none)'}")


def build_backbone(name: str, **options: Any) -> nn.Module:
    """Build the backbone registered as ``name`` with its keyword ``options``."""
    try:
        factory = _BACKBONES[name]
    except KeyError:
        raise ValueError(f"unknown backbone {name!r}; valid choices: {', '.join(available_backbones())}") from None
    check_factory_options("backbone", name, factory, options)
    model = factory(**options)
    if not isinstance(getattr(model, "out_channels", None), int):
        raise TypeError(f"backbone {name!r} must set an integer attribute out_channels")
    return model


# ---------------------------------------------------------------------------------------------------------------
# Checkpoint loading
# ---------------------------------------------------------------------------------------------------------------

#: Key prefixes that training frameworks put in front of a backbone's parameter names: DataParallel/DDP
#: (``module.``), MoCo v1/v2 (``module.encoder_q.``), SimCLR/BYOL/DINO-style wrappers (``encoder.``, ``backbone.``),
#: Lightning (``model.``), our own ``HierarchyClassifier`` (``backbone.``), and their DDP-wrapped forms. The prefix
#: under which most of the backbone's keys appear wins (see ``_strip_prefix``), so the order only breaks ties.
CHECKPOINT_PREFIXES: tuple[str, ...] = (
    "module.encoder_q.",
    "module.encoder.",
    "module.backbone.",
    "model.encoder.",
    "model.backbone.",
    "encoder_q.",
    "module.",
    "model.",
    "encoder.",
    "backbone.",
    "",
)

#: Containers under which checkpoints nest the state dict (``{"epoch": .., "state_dict": {...}}``), tried in order.
CHECKPOINT_CONTAINERS: tuple[str, ...] = ("state_dict", "model", "model_state_dict", "module")

#: Classifier heads in pretrained files that a feature extractor has no use for: torchvision's ``fc`` and MoCo's
#: projection MLP ``fc.0``/``fc.2``. Dropped after prefix stripping.
IGNORED_HEAD_PREFIXES: tuple[str, ...] = ("fc.",)

#: How many missing/unexpected keys an error message lists before saying "... and N more".
_KEYS_SHOWN = 8


def _unwrap_state_dict(raw: Any, source: str) -> dict[str, torch.Tensor]:
    state = raw
    while isinstance(state, Mapping) and not any(isinstance(v, torch.Tensor) for v in state.values()):
        for container in CHECKPOINT_CONTAINERS:
            if isinstance(state.get(container), Mapping):
                state = state[container]
                break
        else:
            keys = ", ".join(map(str, list(state)[:_KEYS_SHOWN]))
            raise ValueError(
                f"{source}: no state dict found; top-level keys are [{keys}], expected tensors or one of "
                f"{list(CHECKPOINT_CONTAINERS)}"
            )
    if not isinstance(state, Mapping):
        raise ValueError(f"{source}: expected a state dict (a mapping of names to tensors), got {type(state).__name__}")
    return {str(k): v for k, v in state.items() if isinstance(v, torch.Tensor)}


def _strip_prefix(
    state: Mapping[str, torch.Tensor], expected: set[str]
) -> tuple[str, dict[str, torch.Tensor]]:
    """Pick the known prefix under which most of the model's keys appear; return (prefix, stripped state).

    Keys outside the chosen prefix (MoCo's momentum encoder ``encoder_k``, its ``queue``) belong to other models
    and are not considered; keys under it are matched strictly.
    """
    # The bare names are the baseline: a prefix must match strictly more keys to win, so a file that matches
    # nothing is reported with its own, unstripped keys.
    best_prefix, best_state = "", dict(state)
    best_hits = len(expected.intersection(best_state))
    for prefix in CHECKPOINT_PREFIXES:
        stripped = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        hits = len(expected.intersection(stripped))
        if hits > best_hits:
            best_prefix, best_state, best_hits = prefix, stripped, hits
    best_state = {k: v for k, v in best_state.items() if not k.startswith(IGNORED_HEAD_PREFIXES)}
    return best_prefix, best_state


def _key_list(keys: set[str]) -> str:
    shown = sorted(keys)[:_KEYS_SHOWN]
    more = len(keys) - len(shown)
    return ", ".join(shown) + (f" ... and {more} more" if more > 0 else "")


def load_state_into_backbone(model: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> str:
    """Strip a known prefix from ``state`` and load it strictly into ``model``; return the prefix used.

    Strict means every parameter and buffer of the backbone must be present with the same shape, and no key under
    the prefix may be left over, except BatchNorm's ``num_batches_tracked`` counters, which older files lack and
    which do not affect the forward pass. Mismatches raise ``ValueError`` naming the source and the keys.
    """
    own = model.state_dict()
    expected = set(own)
    prefix, stripped = _strip_prefix(state, expected)
    missing = {k for k in expected - set(stripped) if not k.endswith("num_batches_tracked")}
    unexpected = set(stripped) - expected
    if missing or unexpected:
        parts = [
            f"{source}: checkpoint does not match the {type(model).__name__} backbone (prefix {prefix!r} stripped)"
        ]
        if missing:
            parts.append(f"missing keys ({len(missing)}): {_key_list(missing)}")
        if unexpected:
            parts.append(f"unexpected keys ({len(unexpected)}): {_key_list(unexpected)}")
        raise ValueError("; ".join(parts))
    for key, value in stripped.items():
        if value.shape != own[key].shape:
            raise ValueError(
                f"{source}: key {prefix + key!r} has shape {tuple(value.shape)}, "
                f"the backbone expects {tuple(own[key].shape)}"
            )
    model.load_state_dict(stripped, strict=False)
    return prefix


def load_backbone_checkpoint(model: nn.Module, path: str | os.PathLike[str]) -> str:
    """Load a local checkpoint (.pth/.pt/.tar/.ckpt) into ``model``; return the key prefix that was stripped.

    Accepts a bare state dict or one nested under ``state_dict``/``model``/... (MoCo, timm, Lightning), with keys
    prefixed by ``module.``, ``module.encoder_q.``, ``encoder.``, ``backbone.`` (see :data:`CHECKPOINT_PREFIXES`).
    The file is read with ``torch.load(weights_only=True)``: tensors and plain containers only, nothing executed.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"backbone checkpoint not found: {path}")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # UnpicklingError for disallowed globals, RuntimeError/EOFError for corrupt files
        raise ValueError(f"{path}: cannot read as a weights-only torch checkpoint: {error}") from error
    return load_state_into_backbone(model, _unwrap_state_dict(raw, str(path)), str(path))


def resolve_torchvision_weights(arch: str, name: str) -> Any:
    """Map ``"IMAGENET1K_V2"`` / ``"DEFAULT"`` / ``"imagenet"`` (= DEFAULT) / ``"ResNet50_Weights.IMAGENET1K_V2"`` to
    torchvision's weights enum member for ``arch``."""
    from torchvision.models import get_model_weights

    enum = get_model_weights(arch)
    if name.lower() == "imagenet":  # the config's spelling for "torchvision's recommended ImageNet weights"
        return enum.DEFAULT
    member = name.split(".", 1)[1] if name.startswith(enum.__name__ + ".") else name
    try:
        return enum[member]
    except KeyError:
        raise ValueError(
            f"unknown torchvision weights {name!r} for {arch}; valid choices: {', '.join(enum.__members__)} "
            f"or a path to a local checkpoint file"
        ) from None


#: Backbones whose ``weights`` may also name torchvision weights (the rest take None or a checkpoint path).
_TORCHVISION_ARCHS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")

#: File endings that mark a ``weights`` string as a path even when the file is absent (→ FileNotFoundError,
#: rather than "unknown torchvision weights").
_CHECKPOINT_SUFFIXES = (".pth", ".pt", ".tar", ".ckpt", ".bin")


def _looks_like_path(weights: str) -> bool:
    return os.sep in weights or "/" in weights or weights.endswith(_CHECKPOINT_SUFFIXES) or Path(weights).exists()


def _fetch_torchvision_state_dict(weights_enum: Any) -> dict[str, torch.Tensor]:
    """Download (or read from torch hub's cache) the state dict of a torchvision weights enum member."""
    try:
        return weights_enum.get_state_dict(progress=True, check_hash=True)
    except OSError as error:  # URLError, connection and disk errors are all OSErrors
        raise OSError(
            f"cannot fetch torchvision weights {weights_enum} from {weights_enum.url}: {error}. Without network "
            f"access, download that file elsewhere and pass its local path as the weights instead."
        ) from error


def load_pretrained(model: nn.Module, arch: str, weights: str | os.PathLike[str] | None) -> None:
    """Initialise ``model`` from ``weights``: None/"none", a torchvision weights name, or a local checkpoint path."""
    if weights is None or (isinstance(weights, str) and weights.lower() == "none"):
        return
    if isinstance(weights, os.PathLike) or _looks_like_path(str(weights)):
        load_backbone_checkpoint(model, weights)
        return
    if arch not in _TORCHVISION_ARCHS:
        raise ValueError(
            f"{arch} has no torchvision weights; weights must be None or a path to a checkpoint file, got {weights!r}"
        )
    member = resolve_torchvision_weights(arch, str(weights))
    load_state_into_backbone(model, _fetch_torchvision_state_dict(member), f"torchvision {member}")


# ---------------------------------------------------------------------------------------------------------------
# ResNet (torchvision)
# ---------------------------------------------------------------------------------------------------------------


class ResNetFeatures(nn.Module):
    """A torchvision ResNet without ``avgpool``/``fc``: images → layer4's map (stride 32, 2048 channels for R-50).

    The submodules keep torchvision's names (``conv1``, ``bn1``, ``layer1`` ... ``layer4``) so that torchvision and
    self-supervised checkpoints load key for key.
    """

    def __init__(self, arch: str = "resnet50", zero_init_residual: bool = False) -> None:
        super().__init__()
        import torchvision

        net = torchvision.models.get_model(arch, weights=None, zero_init_residual=zero_init_residual)
        self.arch = arch
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        self.out_channels: int = net.fc.in_features

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(images))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


def _resnet(arch: str) -> BackboneFactory:
    def factory(
        *, weights: str | os.PathLike[str] | None = None, zero_init_residual: bool = False
    ) -> ResNetFeatures:
        model = ResNetFeatures(arch, zero_init_residual=zero_init_residual)
        load_pretrained(model, arch, weights)
        return model

    factory.__name__ = arch
    factory.__doc__ = f"torchvision {arch} feature extractor; weights: None | torchvision weights name | file path."
    return factory


for _arch in _TORCHVISION_ARCHS:
    register_backbone(_arch)(_resnet(_arch))


# ---------------------------------------------------------------------------------------------------------------
# Wide-ResNet (CIFAR, 32 px)
# ---------------------------------------------------------------------------------------------------------------


#: Per-head option defaults a backbone sets (``backbone.head_defaults``, read by ``haf.models.classifier.build_classifier``):
#: on small 32-px networks the reference type-I feature is the plain average-pooled map (WRN-28-8: 512-d), not
#: ResNet-50's max-pool → BN → Linear(·, 600) → BN → ELU.
_POOLED_FEATURE_HEAD_DEFAULTS: dict[str, dict[str, Any]] = {"type1": {"pool": "avg", "hidden_dim": None}}


class _PreActBlock(nn.Module):
    """Pre-activation basic block: BN → ReLU → conv3×3(stride) → BN → ReLU → dropout → conv3×3, plus shortcut.

    When the width or stride changes, the shortcut is a 1×1 conv applied to the *pre-activated* input, as in the
    original Wide-ResNet code; otherwise it is the identity on the raw input.
    """

    def __init__(self, in_planes: int, planes: int, stride: int, dropout: float) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.shortcut: nn.Module | None = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        activated = torch.relu(self.bn1(x))
        skip = x if self.shortcut is None else self.shortcut(activated)
        out = self.conv1(activated)
        out = self.conv2(self.dropout(torch.relu(self.bn2(out))))
        return out + skip


class WideResNet(nn.Module):
    """WRN-depth-k for 32-px inputs: 3 stages of (depth−4)/6 pre-activation blocks, widths 16k, 32k, 64k.

    Output: the final BN → ReLU map, 64k channels at stride 4 (8 × 8 for CIFAR); WRN-28-8 gives 512 channels,
    which the type-I head average-pools into the 512-d feature of the reference.
    """

    def __init__(self, depth: int = 28, widen_factor: int = 8, dropout: float = 0.0, in_channels: int = 3) -> None:
        super().__init__()
        if depth < 10 or (depth - 4) % 6 != 0:
            raise ValueError(f"Wide-ResNet depth must be 6n + 4 with n ≥ 1 (10, 16, 22, 28, 40, ...), got {depth}")
        if widen_factor < 1:
            raise ValueError(f"Wide-ResNet widen_factor must be ≥ 1, got {widen_factor}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"Wide-ResNet dropout must lie in [0, 1), got {dropout}")
        blocks_per_stage = (depth - 4) // 6
        widths = (16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor)
        self.depth, self.widen_factor = depth, widen_factor
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False)
        stages: list[nn.Module] = []
        in_planes = widths[0]
        for stage, (planes, stride) in enumerate(zip(widths[1:], (1, 2, 2))):
            blocks = []
            for index in range(blocks_per_stage):
                blocks.append(_PreActBlock(in_planes, planes, stride if index == 0 else 1, dropout))
                in_planes = planes
            stages.append(nn.Sequential(*blocks))
        self.block1, self.block2, self.block3 = stages
        self.bn = nn.BatchNorm2d(in_planes)
        self.out_channels: int = in_planes
        self.head_defaults = dict(_POOLED_FEATURE_HEAD_DEFAULTS)
        self._init_weights()

    def _init_weights(self) -> None:
        # He init (fan_out) for convs and identity BNs: the initialisation of the original WRN code.
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.block3(self.block2(self.block1(self.conv1(images))))
        return torch.relu(self.bn(x))


@register_backbone("wide_resnet")
def wide_resnet(
    *,
    depth: int = 28,
    widen_factor: int = 8,
    dropout: float = 0.0,
    in_channels: int = 3,
    weights: str | os.PathLike[str] | None = None,
) -> WideResNet:
    """Generic WRN-depth-k (pre-activation, 32-px stem); ``weights``: None or a checkpoint path."""
    model = WideResNet(depth, widen_factor, dropout, in_channels)
    load_pretrained(model, f"wide_resnet{depth}_{widen_factor}", weights)
    return model


def _wrn(depth: int, widen_factor: int) -> BackboneFactory:
    def factory(
        *, dropout: float = 0.0, in_channels: int = 3, weights: str | os.PathLike[str] | None = None
    ) -> WideResNet:
        model = WideResNet(depth, widen_factor, dropout, in_channels)
        load_pretrained(model, f"wrn{depth}_{widen_factor}", weights)
        return model

    factory.__name__ = f"wrn{depth}_{widen_factor}"
    factory.__doc__ = f"WRN-{depth}-{widen_factor}: {64 * widen_factor}-channel map at 1/4 of the input size."
    return factory


# wrn28_8 is the CIFAR-100 reference; wrn28_10 the usual CIFAR baseline; wrn28_2 / wrn16_4 are small enough for
# the CPU demo.
for _depth, _widen in ((28, 8), (28, 10), (28, 2), (16, 4)):
    register_backbone(f"wrn{_depth}_{_widen}")(_wrn(_depth, _widen))


# ---------------------------------------------------------------------------------------------------------------
# CIFAR ResNet (He et al., CVPR 2016, §4.2; option-A shortcuts) — the CIFAR-LT recipe's ResNet-32
# ---------------------------------------------------------------------------------------------------------------


class _OptionAShortcut(nn.Module):
    """Parameter-free shortcut: x[:, :, ::2, ::2] zero-padded by ``pad`` channels on each side."""

    def __init__(self, pad: int) -> None:
        super().__init__()
        self.pad = pad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))


class _BasicBlock(nn.Module):
    """conv3×3(stride) → BN → ReLU → conv3×3 → BN, plus the (option-A) shortcut, then ReLU."""

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            if planes - in_planes != 2 * (planes // 4):
                raise ValueError(f"option-A shortcut pads planes // 4 per side: {in_planes} -> {planes} does not fit")
            self.shortcut = _OptionAShortcut(planes // 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet-(6n + 2) for 32-px inputs: conv3×3(3 → w) → BN → ReLU, then 3 stages of n basic blocks with widths
    w, 2w, 4w (strides 1, 2, 2). ResNet-32 (n = 5) with w = 32 is the CIFAR-LT code's ``resnet32_fe_c100``:
    a 128-channel 8 × 8 map, which the type-I head average-pools into the 128-d feature."""

    def __init__(self, depth: int = 32, width: int = 32, in_channels: int = 3) -> None:
        super().__init__()
        if depth < 8 or (depth - 2) % 6 != 0:
            raise ValueError(f"CIFAR ResNet depth must be 6n + 2 with n ≥ 1 (8, 20, 32, 44, 56, ...), got {depth}")
        if width < 1 or width % 2:
            raise ValueError(f"CIFAR ResNet width must be a positive even number (option-A padding), got {width}")
        blocks = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        stages, in_planes = [], width
        for planes, stride in ((width, 1), (2 * width, 2), (4 * width, 2)):
            stage = []
            for index in range(blocks):
                stage.append(_BasicBlock(in_planes, planes, stride if index == 0 else 1))
                in_planes = planes
            stages.append(nn.Sequential(*stage))
        self.layer1, self.layer2, self.layer3 = stages
        self.out_channels: int = in_planes
        self.head_defaults = dict(_POOLED_FEATURE_HEAD_DEFAULTS)
        for module in self.modules():  # the authors' init: kaiming_normal_ (fan_in) on every conv
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(images)))
        return self.layer3(self.layer2(self.layer1(x)))


@register_backbone("cifar_resnet")
def cifar_resnet(
    *, depth: int = 32, width: int = 32, in_channels: int = 3, weights: str | os.PathLike[str] | None = None
) -> CifarResNet:
    """Generic CIFAR ResNet-(6n + 2), option-A shortcuts; ``weights``: None or a checkpoint path."""
    model = CifarResNet(depth, width, in_channels)
    load_pretrained(model, f"cifar_resnet{depth}", weights)
    return model


@register_backbone("resnet32")
def resnet32(*, in_channels: int = 3, weights: str | os.PathLike[str] | None = None) -> CifarResNet:
    """CIFAR ResNet-32 with widths 32/64/128 (the CIFAR-LT code's resnet32_fe_c100): 128-channel map at 1/4."""
    model = CifarResNet(32, 32, in_channels)
    load_pretrained(model, "resnet32", weights)
    return model


# ---------------------------------------------------------------------------------------------------------------
# Tiny CNN (tests, CPU demo)
# ---------------------------------------------------------------------------------------------------------------


class TinyCNN(nn.Module):
    """conv3×3 → BN → ReLU, ``depth`` times; the width doubles and the map halves after the first layer.

    Milliseconds per batch on a CPU: for tests and the demo, not for accuracy.
    """

    def __init__(self, width: int = 16, depth: int = 3, in_channels: int = 3) -> None:
        super().__init__()
        if width < 1 or depth < 1:
            raise ValueError(f"tiny_cnn needs width ≥ 1 and depth ≥ 1, got width={width}, depth={depth}")
        layers: list[nn.Module] = []
        channels = in_channels
        for index in range(depth):
            out = width if index == 0 else width * 2 ** min(index, 2)
            stride = 1 if index == 0 else 2
            conv = nn.Conv2d(channels, out, 3, stride=stride, padding=1, bias=False)
            layers += [conv, nn.BatchNorm2d(out), nn.ReLU()]
            channels = out
        self.layers = nn.Sequential(*layers)
        self.out_channels: int = channels
        self.head_defaults = dict(_POOLED_FEATURE_HEAD_DEFAULTS)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.layers(images)


@register_backbone("tiny_cnn")
def tiny_cnn(
    *, width: int = 16, depth: int = 3, in_channels: int = 3, weights: str | os.PathLike[str] | None = None
) -> TinyCNN:
    """A few-layer CNN for tests and the CPU demo; ``weights``: None or a checkpoint path."""
    model = TinyCNN(width, depth, in_channels)
    load_pretrained(model, "tiny_cnn", weights)
    return model
