"""The published numbers of Liang & Davis (ICCV 2023), as data (docs/METHOD.md).

Each row: mean of 5 runs for top-1 (%), mistake severity, HierDist@1/@5/@20. Dataset and method keys use the
names of this project's configs, so ``haf report --paper DATASET`` can put the paper's row beside ours.
"""
from __future__ import annotations

from types import MappingProxyType

METRIC_KEYS = ("top1", "mistake_severity", "hierdist@1", "hierdist@5", "hierdist@20")


def _row(top1: float, severity: float, hd1: float, hd5: float, hd20: float) -> MappingProxyType:
    return MappingProxyType(dict(zip(METRIC_KEYS, (top1, severity, hd1, hd5, hd20))))


# (dataset, method) -> metrics. "crm" is cross-entropy (type-I) decoded with CRM.
PAPER_RESULTS = MappingProxyType({
    ("fgvc-aircraft", "cross-entropy"): _row(79.18, 2.12, 0.44, 2.10, 2.67),
    ("fgvc-aircraft", "haframe"): _row(80.49, 2.02, 0.39, 1.74, 2.45),
    ("cifar100", "cross-entropy"): _row(77.65, 2.34, 0.52, 2.25, 3.19),
    ("cifar100", "crm"): _row(77.63, 2.30, 0.51, 1.11, 2.18),
    ("cifar100", "haframe"): _row(77.71, 2.21, 0.49, 1.11, 2.18),
    ("inat2019", "cross-entropy"): _row(70.68, 2.22, 0.65, 1.95, 3.37),
    ("inat2019", "crm"): _row(70.67, 2.16, 0.63, 1.17, 1.75),
    ("inat2019", "haframe"): _row(70.89, 2.04, 0.59, 1.14, 1.73),
    ("tiered-imagenet", "cross-entropy"): _row(73.63, 6.94, 1.83, 5.70, 7.34),
    ("tiered-imagenet", "haframe"): _row(74.00, 6.89, 1.79, 4.94, 6.15),
})

# Dataset facts the paper states beside its tables (hierarchy height, number of classes).
PAPER_DATASETS = MappingProxyType({
    "fgvc-aircraft": MappingProxyType({"height": 3, "num_classes": 100, "model": "ResNet-50"}),
    "cifar100": MappingProxyType({"height": 5, "num_classes": 100, "model": "WRN-28-8"}),
    "inat2019": MappingProxyType({"height": 7, "num_classes": 1010, "model": "ResNet-50"}),
    "tiered-imagenet": MappingProxyType({"height": 12, "num_classes": 608, "model": "ResNet-50"}),
})


def paper_row(dataset: str, method: str) -> MappingProxyType | None:
    """The paper's row for (dataset, method), or None when the paper has none."""
    return PAPER_RESULTS.get((dataset, method))
