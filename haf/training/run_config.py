"""Loading the run config: YAML files (with ``base:`` composition) + ``--set dotted.key=value`` → a validated
:class:`haf.training.schema.RunConfig`.

Loading is strict: an unknown key, a wrong type or a value outside its choices raises ``ValueError`` naming the
file, the dotted key and the valid keys/choices. ``base: other.yaml`` (or a list, relative to the including file)
is loaded first and the including file deep-merged on top (mappings key by key, everything else replaced), except
that a choice's options do not outlive a change of the choice (``method.options`` of ``method.name``,
``model.backbone_options`` of ``model.backbone``, ``dataset.options`` of ``dataset.kind``: :func:`merge_layer`).
A config, and each ``base:``, is named by a file path (a ``base:`` relative to the including file's folder) or by
its name among the shipped configs (``demo``, ``cifar100/haframe``); a file that exists wins
(:func:`resolve_config_path`). In a config file of your own the paths of :data:`FILE_RELATIVE_KEYS` are relative
to that file's folder when they exist there, else to the working directory. ``dataset.options`` are checked
against the reader's signature, a ``data.augment`` list against torchvision and ``model.backbone`` against the
backbone registry (:func:`check_dataset_and_backbone`). Keys a config
leaves to its dataset (``data.transforms`` / ``data.normalize``: null) are resolved on load
(:func:`resolve_data_defaults`), so a loaded config always states them.
"""
from __future__ import annotations

import dataclasses
import difflib
import os
import types
import typing
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence, Union

from haf.shipped import shipped_dir  # noqa: F401  (re-exported: its home is haf.shipped)
from haf.training.yaml_load import YamlRefused, load_yaml
from haf.training.schema import NormalizeConfig, RunConfig, TransformsConfig, check_semantics

BASE_KEY = "base"  # composition key; removed after merging, never part of the validated object
# Paths in a user's config file that resolve against that file's folder when they exist there (dotted keys).
FILE_RELATIVE_KEYS = ("dataset.root", "dataset.options.hierarchy", "model.backbone_module")

# Defaults of a dataset that names no transforms: small images (≤ 64 px, or CIFAR-100's arrays) the pad-4 crop,
# larger ones the ImageNet convention; the statistics of haf.pipelines.loaders.transforms' presets.
SMALL_IMAGE_SIZE = 64
_TRANSFORM_DEFAULTS = {
    "small": ("pad-crop", "squash", [0.5071, 0.4865, 0.4409], [0.2673, 0.2564, 0.2762]),
    "large": ("random-resized-crop", "resize-center-crop", [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
}


# ------------------------------------------------------------------------------------------ config names
def list_configs() -> list[str]:
    """Names of the shipped run configs (``demo``, ``cifar100/haframe``, ...): fragments (``_*.yaml``) and
    ``base.yaml`` are composed by others, not run."""
    root = shipped_dir("configs")
    return sorted(p.relative_to(root).with_suffix("").as_posix() for p in root.rglob("*.yaml")
                  if not p.name.startswith("_") and p.name != "base.yaml")


def _shipped_config(name: str) -> Path | None:
    """The shipped config file of ``name`` (``demo``, ``cifar100/haframe``, ``base``; ``.yaml`` optional)."""
    name = name.removesuffix(".yaml")
    if not name or Path(name).is_absolute() or ".." in Path(name).parts:
        return None
    try:
        candidate = shipped_dir("configs") / f"{name}.yaml"
    except FileNotFoundError:
        return None
    return candidate if candidate.is_file() else None


def _close_configs(name: str) -> str:
    """``; did you mean a, b?`` over the shipped config names (difflib), or nothing when none is close."""
    try:
        names = list_configs()
    except FileNotFoundError:
        return ""
    close = difflib.get_close_matches(name.removesuffix(".yaml"), names, n=3, cutoff=0.6)
    return f"; did you mean {', '.join(close)}?" if close else ""


def resolve_config_path(name_or_path: str | Path) -> Path:
    """A config file path as given when it exists, else the shipped config of that name (``.yaml`` optional)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    shipped = _shipped_config(path.as_posix())
    if shipped is not None:
        return shipped
    raise FileNotFoundError(f"config file not found: {name_or_path} (nor a shipped config of that name"
                            f"{_close_configs(str(name_or_path))}; `haf config --list` shows the names)")


def _resolve_base(including: Path, base: str) -> Path:
    """A ``base:`` entry: a file relative to the including file's folder when it exists (other than the including
    file itself: ``demo.yaml`` may say ``base: demo``), else a shipped config."""
    candidate = including.parent / base
    for path in (candidate, candidate.with_name(candidate.name + ".yaml")):
        if path.is_file() and path.resolve() != including.resolve():
            return path
    shipped = _shipped_config(base)
    if shipped is not None:
        return shipped
    if any(p.is_file() and p.resolve() == including.resolve()
           for p in (candidate, candidate.with_name(candidate.name + ".yaml"))):
        raise ValueError(f"{including}: key '{BASE_KEY}': {base!r} is this file itself (a config cannot base "
                         f"itself; nor a shipped config of that name{_close_configs(base)})")
    raise FileNotFoundError(f"{including}: key '{BASE_KEY}': config file not found: {candidate} (nor a shipped "
                            f"config named {base!r}{_close_configs(base)}; `haf config --list` shows the names)")


def _is_shipped(path: Path) -> bool:
    try:
        return path.resolve().is_relative_to(shipped_dir("configs").resolve())
    except FileNotFoundError:
        return False


def _anchor_paths(data: dict, folder: Path) -> dict:
    """Each :data:`FILE_RELATIVE_KEYS` value that is a relative path existing under ``folder`` made absolute; other
    values stay as written (relative to the working directory; a hierarchy may also name a shipped file)."""
    for dotted in FILE_RELATIVE_KEYS:
        *parents, leaf = dotted.split(".")
        node: Any = data
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if not isinstance(node, dict) or not isinstance(node.get(leaf), str):
            continue
        value = Path(node[leaf]).expanduser()
        if not value.is_absolute() and (folder / value).exists():
            node[leaf] = str((folder / value).resolve())
    return data


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
    if path is not None:
        path = resolve_config_path(path)
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
    config = resolve_data_defaults(config)
    check_semantics(config)
    check_dataset_and_backbone(config)
    if validate_method:
        # Store the method's options as validated and defaulted (gamma 2 → 2.0, omitted keys filled in), so the
        # saved config says exactly what ran.
        options = dataclasses.asdict(validate_method_options(config))
        config = dataclasses.replace(config, method=dataclasses.replace(config.method, options=options))
    return config


def config_from_dict(data: Mapping[str, Any], source: str = "<checkpoint>") -> RunConfig:
    """Rebuild a config stored as a plain dict (checkpoints), with the same validation."""
    config = dataclasses.replace(_build(RunConfig, _plain(data), "", source), source=source)
    config = resolve_data_defaults(config)
    check_semantics(config)
    return config


def resolve_data_defaults(config: RunConfig) -> RunConfig:
    """Fill ``data.transforms`` / ``data.normalize`` keys left null from the dataset (the paper configs set all)."""
    d = config.data
    small = config.dataset.kind == "cifar100" or d.image_size <= SMALL_IMAGE_SIZE
    train, eval_, mean, std = _TRANSFORM_DEFAULTS["small" if small else "large"]
    transforms = TransformsConfig(d.transforms.train or train, d.transforms.eval or eval_)
    normalize = NormalizeConfig(list(d.normalize.mean or mean), list(d.normalize.std or std))
    return dataclasses.replace(config, data=dataclasses.replace(d, transforms=transforms, normalize=normalize))


def load_yaml_tree(path: Path, _seen: tuple[Path, ...] = ()) -> dict:
    """Read ``path`` and its ``base:`` chain (deep-merged, the including file winning)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    resolved = path.resolve()
    if resolved in _seen:
        chain = " -> ".join(str(p) for p in (*_seen, resolved))
        raise ValueError(f"{path}: circular '{BASE_KEY}:' chain: {chain}")
    data = load_yaml(path.read_text(), str(path))  # duplicate keys, alias bombs, recursive anchors: refused
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: the top level must be a mapping of sections, got {type(data).__name__}")
    if not _is_shipped(path):
        data = _anchor_paths(data, resolved.parent)
    bases = data.pop(BASE_KEY, None)
    if bases is None:
        return data
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
        raise ValueError(f"{path}: key '{BASE_KEY}' must be a config name or path, or a list of them, got {bases!r}")
    merged: dict = {}
    for base in bases:
        merged = merge_layer(merged, load_yaml_tree(_resolve_base(path, base), (*_seen, resolved)))
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


#: (section, choice key) → the keys of that section that belong to one choice: a layer that changes the choice does
#: not inherit them (they are validated against that one method / backbone / head / reader).
CHOICE_DEPENDENT_KEYS: dict[tuple[str, str], tuple[str, ...]] = {
    ("method", "name"): ("options",),
    ("model", "backbone"): ("backbone_options", "pretrained"),
    ("model", "head"): ("head_options",),
    ("dataset", "kind"): ("options",),
}


def merge_layer(base: Mapping[str, Any], top: Mapping[str, Any]) -> dict:
    """:func:`deep_merge` of one config layer over another, except that a choice's own keys
    (:data:`CHOICE_DEPENDENT_KEYS`: ``method.options``, ``model.backbone_options``, ...) do not outlive a change of
    that choice."""
    return deep_merge(_without_other_choices_keys(base, top), top)


def _without_other_choices_keys(base: Mapping[str, Any], top: Mapping[str, Any]) -> Mapping[str, Any]:
    """``base`` minus the keys of each choice that ``top`` changes (another method, backbone, head or reader)."""
    out = dict(base)
    for (section, choice), dependent in CHOICE_DEPENDENT_KEYS.items():
        base_section, top_section = out.get(section), top.get(section)
        if not (isinstance(base_section, Mapping) and isinstance(top_section, Mapping)):
            continue
        if choice not in top_section or top_section[choice] == base_section.get(choice):
            continue
        out[section] = {k: v for k, v in base_section.items() if k not in dependent}
    return out


def apply_override(raw: dict, override: str) -> dict:
    """``a.b.c=value`` → raw with raw[a][b][c] = yaml(value); missing intermediate mappings are created, and
    unknown keys are left for validation to reject (with the valid choices)."""
    key, sep, text = override.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ValueError(f"--set {override!r}: expected dotted.key=value, e.g. --set train.epochs=2")
    try:
        value = load_yaml(text, f"--set {key}") if text.strip() else ""
    except YamlRefused:
        raise
    except ValueError:
        value = text  # not YAML: keep the literal string (e.g. a path with ':' in it)
    parts = key.split(".")
    if len(parts) == 2 and tuple(parts) in CHOICE_DEPENDENT_KEYS:
        # Another method (backbone, head, reader) does not inherit this one's options (see merge_layer).
        raw = _without_other_choices_keys(raw, {parts[0]: {parts[1]: value}})
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
        from haf.models.backbone_registry import close_matches

        raise ValueError(f"{where}: unknown key '{key}' in {section}{close_matches(unknown[0], list(fields))}; "
                         f"valid keys: {', '.join(fields)}")
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
        for option in options:
            if option is type(None):
                continue
            try:
                return _check_value(option, value, key, where, source)
            except ValueError:
                pass
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


def check_dataset_and_backbone(config: RunConfig) -> None:
    """``dataset.options`` against the reader's options (names and types, from its signature), a ``data.augment``
    list against torchvision's transforms, and ``model.backbone`` / ``model.backbone_options`` against the backbone
    registry; one line naming the key."""
    from haf.models.backbones import backbone_factory, check_factory_options, import_backbone_module
    from haf.pipelines.readers.registry import reader_options

    where = config.source or "<config>"
    ds, model = config.dataset, config.model
    accepted = reader_options(ds.kind)
    for name, value in ds.options.items():
        key = f"dataset.options.{name}"
        if name not in accepted:
            if "**" in accepted:
                continue
            from haf.models.backbone_registry import close_matches

            raise ValueError(f"{where}: unknown key '{key}' for dataset kind {ds.kind!r}"
                             f"{close_matches(name, list(accepted))}; valid options: {', '.join(accepted)}")
        _check_value(accepted[name], value, key, where, where)
    augment = config.data.augment
    if not isinstance(augment, bool):
        from haf.pipelines.loaders.augment_list import check_augment

        if config.data.backend == "dali":
            raise ValueError(f"{where}: key 'data.augment': a list of torchvision transforms runs on the torch "
                             "backend only; set data.backend: torch (or auto)")
        try:
            check_augment(augment, config.data.image_size)
        except ValueError as error:
            raise ValueError(f"{where}: {error}") from None
    try:
        import_backbone_module(model.backbone_module)
    except (ValueError, FileNotFoundError) as error:
        raise type(error)(f"{where}: {error}") from None
    try:
        factory = backbone_factory(model.backbone)
        options = {**model.backbone_options, **({"weights": model.pretrained} if model.pretrained else {})}
        check_factory_options("backbone", model.backbone, factory, options)
    except (ValueError, ImportError) as error:  # ImportError: a family's optional package is missing
        raise ValueError(f"{where}: key 'model.backbone': {error}") from None


def _describe(hint: Any) -> str:
    if typing.get_origin(hint) is Literal:
        return "one of " + ", ".join(str(c) for c in typing.get_args(hint))
    if typing.get_origin(hint) in (list, tuple, Sequence):
        return "a list"
    return {int: "an integer", float: "a number", str: "a string", bool: "true/false", dict: "a mapping",
            os.PathLike: "a path", type(None): "null"}.get(
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
