"""``haf eval CHECKPOINT``: evaluate a training checkpoint on a split, print the metric table, write JSON.

The checkpoint carries its config (dataset, model, method, seed), its classes, class tree, distances and the frame,
so nothing else is needed: the dataset is read from the stored ``dataset.root`` unless ``--data-root`` or
``--set dataset.root=...`` says otherwise, and a hierarchy file that is gone is replaced by the stored tree. A
dataset whose classes or distances differ from the checkpoint's is refused (``--allow-hierarchy-change``: warned).
Besides the flat metrics it reports hierarchical selective ones (hAURC, coverage at 90/95/99 % accuracy). The JSON has the layout of a training run's ``metrics.json`` (``haf report`` reads both).
"""
from __future__ import annotations

import argparse

HELP = "evaluate a training checkpoint on a dataset split (top-1, mistake severity, HierDist@k, CRM)"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="a last.pt / best.pt written by haf/train.py")
    parser.add_argument("--split", default=None, help="split to evaluate (default: the config's test split)")
    parser.add_argument("--data-root", default=None, help="dataset root (default: the one stored in the checkpoint)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a stored config value, e.g. --set data.backend=torch (repeatable)")
    parser.add_argument("--batch-size", type=int, default=None, help="evaluation batch size (default: the config's)")
    parser.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto",
                        help="auto (default): the GPU when there is one")
    parser.add_argument("--crm", choices=("auto", "on", "off"), default="auto",
                        help="also score CRM decoding (auto: for probabilistic methods such as cross-entropy)")
    parser.add_argument("--json", dest="json_out", default=None, metavar="FILE",
                        help="write the metrics as JSON here (default: eval-<split>.json beside the checkpoint)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing --json FILE (the default file beside the checkpoint is replaced)")
    parser.add_argument("--allow-hierarchy-change", action="store_true",
                        help="evaluate even when the dataset's hierarchy (class distances) differs from the "
                             "checkpoint's, with a warning (default: refused, naming the first differing pair)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from haf.safe_files import refuse_existing
    from haf.training.evaluation import evaluate_checkpoint

    if args.json_out is not None:  # before the evaluation: a refused output costs nothing
        refuse_existing([args.json_out], args.overwrite)
    result = evaluate_checkpoint(
        args.checkpoint, split=args.split, data_root=args.data_root, overrides=args.overrides,
        batch_size=args.batch_size, device=args.device, crm=args.crm, json_out=args.json_out,
        progress=not args.no_progress, allow_hierarchy_change=args.allow_hierarchy_change,
    )
    print(result["table"])
    print(f"wrote {result['json_path']}")
    return 0
