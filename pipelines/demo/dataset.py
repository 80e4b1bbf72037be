"""The embedded demo dataset on disk: a seeded, generated hierarchical image dataset that trains on a CPU in minutes.

The classes are a 3-level tree of visual attributes (colour → pattern → shape, ``demo_spec``), the pixels are drawn
by ``demo_render``; this module writes them as an image folder plus our hierarchy file (layout in
docs/ARCHITECTURE.md), caches them and reads them back as dataset kind ``demo``.

Where: ``haf demo-data ROOT`` (or :func:`ensure_demo_dataset`) writes it anywhere; the ``demo`` reader generates
it by itself only at its cache location ``.cache/demo-data`` and refuses any other missing folder.
"""
from __future__ import annotations

import json
import os
import shutil
import uuid
from dataclasses import asdict
from pathlib import Path

from haf.hierarchy.distance_conventions import DEFAULT_CONVENTION, Convention
from haf.safe_files import naming

from haf.pipelines.demo.render import GENERATOR_VERSION, SUPERSAMPLE, image_rng, iter_images, render_image  # noqa: F401
from haf.pipelines.demo.spec import (  # noqa: F401 - re-exported: the public names of haf.pipelines.demo.dataset
    PATTERNS,
    ROOT_NAME,
    SHAPES,
    SPLITS,
    DemoClass,
    DemoSpec,
    demo_classes,
    demo_edges,
)

MANIFEST_NAME = "demo_manifest.json"
HIERARCHY_NAME = "hierarchy.json"
# The cache location (relative to the working directory; the configs' default dataset.root): the one place the
# demo reader generates the dataset by itself. Anywhere else it is made by `haf demo-data ROOT` only.
DEFAULT_ROOT = ".cache/demo-data"
# DemoSpec fields that `haf demo-data` takes as options (--image-size, ...).
_CLI_SPEC_FIELDS = ("colours", "patterns", "shapes", "image_size", "train_per_class", "val_per_class",
                    "test_per_class", "jpeg_quality")


def _manifest(spec: DemoSpec, seed: int) -> dict:
    return {
        "generator": "haf.pipelines.demo.dataset",
        "version": GENERATOR_VERSION,
        "seed": int(seed),
        "spec": asdict(spec),
        "num_classes": spec.num_classes,
        "counts": {split: spec.per_class(split) * spec.num_classes for split in SPLITS},
    }


def write_demo_dataset(out_dir: str | os.PathLike, spec: DemoSpec, seed: int = 0, progress: bool = False) -> Path:
    """Write the dataset into ``out_dir`` (created; must not exist or be empty). Not atomic: see ensure_demo_dataset.

    The folder (docs/ARCHITECTURE.md): ``{train,val,test}/<leaf class>/<leaf class>_<index>.jpg``, ``hierarchy.json``
    (root ``demo`` → colour → pattern → shape) and ``demo_manifest.json`` (generator version, seed, spec and image
    counts), written last: its presence says the folder is complete.
    """
    from PIL import Image

    from haf.hierarchy import Hierarchy
    from haf.log_setup import progress_bar

    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"demo dataset: output folder {out} exists and is not empty")
    out.mkdir(parents=True, exist_ok=True)
    classes = demo_classes(spec)
    total = sum(spec.per_class(split) for split in SPLITS) * len(classes)
    bar = progress_bar(total, "demo dataset", progress, leave=True, unit="img")
    for split in SPLITS:
        for leaf in classes:
            (out / split / leaf.name).mkdir(parents=True, exist_ok=True)
        for leaf, index, pixels in iter_images(spec, seed, split):
            # Fixed encoder settings (no optimize pass, 4:2:0) so a seed always gives the same bytes.
            Image.fromarray(pixels, mode="RGB").save(
                out / split / leaf.name / f"{leaf.name}_{index:04d}.jpg",
                format="JPEG", quality=spec.jpeg_quality, subsampling=2, optimize=False,
            )
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    hierarchy = Hierarchy.from_edges(demo_edges(spec), classes=[leaf.name for leaf in classes])
    hierarchy.to_json(out / HIERARCHY_NAME)
    # The manifest goes last: its presence says the folder is complete.
    (out / MANIFEST_NAME).write_text(json.dumps(_manifest(spec, seed), indent=2, sort_keys=True) + "\n")
    return out


def read_manifest(root: str | os.PathLike) -> dict | None:
    path = Path(root) / MANIFEST_NAME
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def is_complete(root: str | os.PathLike, spec: DemoSpec, seed: int) -> bool:
    """True when ``root`` holds exactly this spec and seed: manifest matches and every image file is present."""
    root = Path(root)
    if read_manifest(root) != _manifest(spec, seed) or not (root / HIERARCHY_NAME).is_file():
        return False
    for split in SPLITS:
        for leaf in demo_classes(spec):
            folder = root / split / leaf.name
            if not folder.is_dir() or sum(1 for _ in folder.glob("*.jpg")) != spec.per_class(split):
                return False
    return True


def _looks_like_demo(root: Path) -> bool:
    """Only folders made of our own entries may be replaced; anything else is a user's data and is left alone."""
    allowed = set(SPLITS) | {HIERARCHY_NAME, MANIFEST_NAME}
    return all(entry.name in allowed for entry in root.iterdir())


def ensure_demo_dataset(
    root: str | os.PathLike, seed: int = 0, spec: DemoSpec | None = None, progress: bool = False, **spec_options
) -> Path:
    """Return ``root`` holding the demo dataset for ``seed``/``spec``, generating it first if missing or incomplete.

    Generation writes a temporary sibling folder and renames it into place, so a reader never sees half a dataset
    and concurrent callers (e.g. several ranks) all end with the same complete folder. A complete dataset of another
    seed or spec at ``root`` is an error (never silently overwritten); so is a non-demo folder.
    """
    if spec is None:
        spec = DemoSpec(**spec_options)
    elif spec_options:
        raise ValueError(f"demo dataset: pass either spec or spec options, not both ({sorted(spec_options)})")
    root = Path(root).expanduser().absolute()
    if is_complete(root, spec, seed):
        return root
    if root.exists():
        existing = read_manifest(root)
        if existing is not None and existing.get("version") == GENERATOR_VERSION and existing != _manifest(spec, seed):
            wanted = _manifest(spec, seed)
            diff = sorted(
                [k for k in ("seed",) if existing.get(k) != wanted[k]]
                + [f"spec.{k}" for k in wanted["spec"] if existing.get("spec", {}).get(k) != wanted["spec"][k]]
            )
            raise ValueError(
                f"demo dataset: {root} holds another demo dataset (differs in {', '.join(diff) or 'manifest'}); "
                "choose another folder or delete it"
            )
        if not root.is_dir() or not _looks_like_demo(root):
            raise ValueError(f"demo dataset: {root} exists and is not a demo dataset; refusing to overwrite it")
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = root.parent / f".{root.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        with naming(root):  # a full disk while writing images: the error names the dataset folder
            write_demo_dataset(tmp, spec, seed, progress=progress)
        if root.exists() and not is_complete(root, spec, seed):
            # A stale or partial demo folder (checked above): move it aside first, rename is not allowed onto it.
            stale = root.parent / f".{root.name}.stale-{os.getpid()}-{uuid.uuid4().hex[:8]}"
            try:
                os.rename(root, stale)
                shutil.rmtree(stale, ignore_errors=True)
            except FileNotFoundError:
                pass
        try:
            os.rename(tmp, root)
        except OSError:
            # Another process renamed its copy first; theirs is identical if complete.
            if not is_complete(root, spec, seed):
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return root


def is_default_root(root: str | os.PathLike) -> bool:
    """Is ``root`` the demo dataset's cache location (``DEFAULT_ROOT`` below the working directory)?"""
    return os.path.realpath(root) == os.path.realpath(DEFAULT_ROOT)


def demo_data_command(root: str | os.PathLike, seed: int, spec: DemoSpec) -> str:
    """The ``haf demo-data`` command line that generates exactly this dataset at ``root``."""
    default = DemoSpec()
    flags = [f"--{name.replace('_', '-')} {getattr(spec, name)}" for name in _CLI_SPEC_FIELDS
             if getattr(spec, name) != getattr(default, name)]
    return " ".join(["haf demo-data", str(root), f"--seed {seed}", *flags])


def read_demo(
    root: str | os.PathLike,
    seed: int = 0,
    generate: bool = True,
    convention: Convention = DEFAULT_CONVENTION,
    splits: tuple[str, ...] | None = None,
    **spec_options,
):
    """Reader kind ``demo``: the demo dataset at ``root``.

    A missing or incomplete dataset is generated only at the default cache location ``DEFAULT_ROOT`` (and only
    with ``generate``); anywhere else it is an error naming the folder and the ``haf demo-data`` command that
    makes it, so a mistyped ``dataset.root`` (or a checkpoint's stale one) never creates a dataset.
    ``spec_options`` are :class:`DemoSpec` fields (colours, patterns, shapes, image_size, train_per_class, ...).
    Returns a :class:`~haf.pipelines.readers.splits.DatasetSplits` read like any image folder with its hierarchy.json.
    """
    from haf.pipelines.readers.image_folder import read_image_folder

    spec = DemoSpec(**spec_options)
    if not is_complete(root, spec, seed):
        if generate and is_default_root(root):
            root = ensure_demo_dataset(root, seed=seed, spec=spec)
        else:
            state = "does not exist" if not os.path.lexists(root) else "holds no complete demo dataset of this spec"
            where = "" if is_default_root(root) else f" (it is generated on first use only at {DEFAULT_ROOT})"
            raise FileNotFoundError(
                f"demo dataset: {root} {state}{where}; generate it with `{demo_data_command(root, seed, spec)}`"
            )
    root = Path(root)
    return read_image_folder(root, hierarchy=root / HIERARCHY_NAME, convention=convention, splits=splits, name="demo")
