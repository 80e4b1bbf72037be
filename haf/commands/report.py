"""`haf report RUN_DIR... `: the paper-style table (mean ± 95% CI over seeds) from many runs' metrics.json."""
from __future__ import annotations

import argparse
from pathlib import Path

HELP = "tabulate many runs (methods × seeds) as mean ± t-based 95%% CI, in Markdown and CSV"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", help="run folders (searched recursively for metrics.json), files or globs")
    parser.add_argument("--out", metavar="PREFIX", help="also write PREFIX.md and PREFIX.csv")
    parser.add_argument("--paper", action="store_true", help="put the paper's published row beside ours, with Δ")
    parser.add_argument("--no-crm", dest="crm", action="store_false", help="leave out the CRM-decoded rows")
    parser.add_argument("--overwrite", action="store_true", help="replace existing output files")
    parser.add_argument("--merge-models", action="store_true", help="group by method only, not (method, model)")


def run(args: argparse.Namespace) -> int:
    from haf.reporting.report import make_report

    from haf.safe_files import atomic_write_text, refuse_existing

    if args.out:  # before the work: a refused output costs nothing
        refuse_existing([f"{args.out}.md", f"{args.out}.csv"], args.overwrite)
    markdown, csv_text = make_report(args.inputs, paper=args.paper, include_crm=args.crm, by_model=not args.merge_models)
    print(markdown)
    if args.out:
        prefix = Path(args.out)
        atomic_write_text(f"{prefix}.md", markdown)
        atomic_write_text(f"{prefix}.csv", csv_text)
        print(f"wrote {prefix}.md and {prefix}.csv")
    return 0
