"""A tiny trained run on an own image folder whose hierarchy file lives elsewhere (not a test module)."""
from __future__ import annotations

import shutil
from pathlib import Path

from train_fixtures import TINY_DEMO_OPTIONS, tiny_run_dict


def train_image_folder_run(base: Path, method: str = "haframe", epochs: int = 2) -> dict[str, Path]:
    """``base/data/{train,val,test}/<class>/*.jpg`` (no hierarchy.json inside), the tree in ``base/tree/my_tree.json``,
    a run in ``base/run`` trained on it. Returns the paths."""
    from haf.pipelines import ensure_demo_dataset
    from haf.training.loop import run_training
    from haf.training.run_config import load_config

    demo = ensure_demo_dataset(base / "demo", **TINY_DEMO_OPTIONS)
    data, tree_dir, out = base / "data", base / "tree", base / "run"
    for split in ("train", "val", "test"):
        shutil.copytree(demo / split, data / split)
    tree_dir.mkdir()
    tree = tree_dir / "my_tree.json"
    shutil.copyfile(demo / "hierarchy.json", tree)
    options = {} if method == "haframe" else {"options": {}}
    model = {} if method == "haframe" else {"head": "type1", "head_options": {"hidden_dim": 16}}
    run = tiny_run_dict(demo, out, train={"epochs": epochs}, method={"name": method, **options}, model=model)
    run["deepspeed"] = {"enabled": False, "zero_stage": 0, "precision": "fp32"}  # the plain engine: no C++ build
    run["dataset"] = {"kind": "image-folder", "root": str(data), "options": {"hierarchy": str(tree)}}
    config = load_config(None, data=run)
    run_training(config)
    return {"data": data, "tree": tree, "run": out, "demo": demo}
