"""``haf predict CHECKPOINT PATH...``: classify image files or folders with a trained model, one record per image.

Each record: the image path, the predicted class, its probability, its path to the root of the class tree and the
top-k. With ``--target-accuracy A`` the climbing threshold is first calibrated (on the checkpoint's validation
split, or ``--calibration DIR``) so that the node predictions are right with probability ≥ A (docs/PREDICTION.md),
and each record adds the node reached. Batched through a torch DataLoader; under ``torchrun`` each rank predicts a
shard and rank 0 writes the one merged output (JSON or CSV, written atomically).
"""
from __future__ import annotations

import argparse

HELP = "predict classes (and, with --target-accuracy, hierarchy nodes) for image files or folders"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="a last.pt / best.pt written by training")
    parser.add_argument("paths", nargs="+", metavar="PATH", help="image files or folders (searched recursively)")
    parser.add_argument("--top-k", type=int, default=5, help="classes listed per image (default 5)")
    parser.add_argument("--format", choices=("json", "csv"), default="json", help="output format (default json)")
    parser.add_argument("--output", default=None, metavar="FILE", help="write here (default: stdout)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --output file")
    parser.add_argument("--decode", choices=("argmax", "crm"), default="argmax",
                        help="class decision: the top score, or CRM (least expected hierarchical distance)")
    parser.add_argument("--batch-size", type=int, default=64, help="images per batch (default 64)")
    parser.add_argument("--num-workers", type=int, default=0, help="DataLoader worker processes (default 0)")
    parser.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto",
                        help="auto (default): the GPU when there is one")
    parser.add_argument("--target-accuracy", type=float, default=None, metavar="A",
                        help="predict hierarchy nodes: calibrate the climbing threshold so that the nodes are right "
                             "with probability >= A (e.g. 0.95)")
    parser.add_argument("--confidence", type=float, default=None, metavar="1-DELTA",
                        help="with --target-accuracy: hold the accuracy A with this probability over the "
                             "calibration set (e.g. 0.9; default: A in expectation, the split-conformal rule)")
    parser.add_argument("--calibration", default=None, metavar="DIR",
                        help="calibration images <DIR>/<class>/<image> (default: the checkpoint's validation split)")
    parser.add_argument("--data-root", default=None, help="dataset root for the validation split (default: stored)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    import sys

    import torch.distributed as dist

    from haf.inference import load_classifier
    from haf.inference.classifier import records_from_probabilities
    from haf.inference.images import find_images
    from haf.inference.predict import (calibrate, calibration_items, calibration_paths, map_batches, start_ranks,
                                       write_records)

    if args.top_k < 1:
        raise ValueError(f"--top-k must be ≥ 1, got {args.top_k}")
    if args.confidence is not None and args.target_accuracy is None:
        raise ValueError("--confidence needs --target-accuracy")
    if args.output is not None:
        from haf.safe_files import refuse_existing

        refuse_existing([args.output], args.overwrite)
    rank, world, device, started = start_ranks(args.device)
    try:
        files = find_images(args.paths)
        classifier = load_classifier(args.checkpoint, device=device)
        progress = not args.no_progress and sys.stderr.isatty()
        threshold = None
        batches = {"batch_size": args.batch_size, "num_workers": args.num_workers, "progress": progress}
        if args.target_accuracy is not None:
            items, labels, where = calibration_items(classifier, args.calibration, args.data_root)
            paths = map_batches(classifier, items, calibration_paths(classifier, labels, args.decode),
                                description="calibrate", **batches)
            if rank == 0:
                summary = calibrate(paths, args.target_accuracy, args.confidence)
                threshold = summary["threshold"]
                print(f"calibrated on {summary['images']} images of {where}: threshold {threshold:.6g} "
                      f"(accuracy there {summary['calibration_accuracy']:.4f}, coverage "
                      f"{summary['calibration_coverage']:.4f}; flat {summary['flat_accuracy']:.4f})",
                      file=sys.stderr)
            if world > 1:
                shared = [threshold]
                dist.broadcast_object_list(shared, src=0)
                threshold = shared[0]

        def to_records(probs, indices):
            records = records_from_probabilities(classifier, probs, top_k=args.top_k, decode=args.decode,
                                                 threshold=threshold)
            extra = {"threshold": threshold} if threshold is not None else {}
            return [{"image": files[i], **r, **extra} for i, r in zip(indices, records)]

        records = map_batches(classifier, files, to_records, **batches)
        if rank == 0:
            written = write_records(records, args.format, args.output, overwrite=args.overwrite)
            if written:
                print(f"wrote {len(records)} predictions to {written}", file=sys.stderr)
    finally:
        if started:
            dist.barrier()
            dist.destroy_process_group()
    return 0
