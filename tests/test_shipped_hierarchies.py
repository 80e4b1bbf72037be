"""Every hierarchy file a paper config points at is shipped, loads, and has the paper's K and height."""
from pathlib import Path

import pytest

from haf.hierarchy import load_hierarchy
from haf.reporting.paper_results import PAPER_DATASETS
from haf.training.run_config import load_config

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted(p for p in (ROOT / "configs").glob("*/*.yaml") if not p.name.startswith("_"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_config_hierarchy_file_is_shipped_and_matches_the_paper(path, monkeypatch):
    monkeypatch.chdir(ROOT)  # config paths are relative to the working directory, as on the command line
    config = load_config(path)
    hierarchy_file = dict(config.dataset.options).get("hierarchy")
    if hierarchy_file is None:
        # FGVC-Aircraft and iNat2019 build their trees from the dataset's own metadata files; synthetic-tree
        # generates its tree.
        assert config.dataset.kind in ("fgvc-aircraft", "inat2019", "synthetic-tree"), \
            f"{path}: no hierarchy file for {config.dataset.kind}"
        return
    tree = load_hierarchy(ROOT / hierarchy_file)
    expected = PAPER_DATASETS[config.dataset.kind]  # cifar100-lt: the CIFAR-100 hierarchy, unchanged
    assert (tree.num_classes, tree.height) == (expected["num_classes"], expected["height"])
