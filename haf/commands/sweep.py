"""``haf sweep CONFIG... --seeds 0-4``: train the grid config × seed, resumable, one run per visible GPU.

Finished runs (``metrics.json`` written) are skipped, started ones resumed (:mod:`haf.training.sweep`);
``--dry-run`` lists the runs, ``--print-commands`` prints one ``haf train`` command per run for a cluster
scheduler. After a complete sweep, the table of ``haf report --paper`` over the sweep's folder is printed.
"""
from __future__ import annotations

import argparse

HELP = "train configs × seeds (resumable; one run per visible GPU), e.g. haf sweep cifar100/haframe --seeds 0-4"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("configs", nargs="+", metavar="CONFIG", help="shipped config names or YAML files")
    parser.add_argument("--seeds", default="0-4", help="seeds: a range FIRST-LAST and/or a comma list "
                        "(default 0-4, the paper's five)")
    parser.add_argument("--output-root", default="runs/sweep", help="runs go to OUTPUT_ROOT/<dataset>/"
                        "<config>-seed<seed> (default runs/sweep)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value in every run (repeatable; VALUE is YAML)")
    shown = parser.add_mutually_exclusive_group()
    shown.add_argument("--dry-run", action="store_true", help="list the runs (state, config, seed, folder), one "
                       "per line; train nothing")
    shown.add_argument("--print-commands", action="store_true", help="print one `haf train` command per "
                       "unfinished run (for a cluster scheduler); train nothing")
    parser.add_argument("--no-report", dest="report", action="store_false", help="do not print the report after "
                        "the sweep")


def run(args: argparse.Namespace) -> int:
    from haf.training.sweep import parse_seeds, plan_sweep, run_sweep

    runs = plan_sweep(args.configs, parse_seeds(args.seeds), args.output_root, args.overrides)
    if args.dry_run:
        for item in runs:
            print(f"{item.state}\t{item.config}\tseed {item.seed}\t{item.output_dir}")
        return 0
    if args.print_commands:
        for item in runs:
            if item.state != "finished":
                print(item.shell_command())
        return 0
    failed = run_sweep(runs)
    if failed:
        print(f"haf sweep: {len(failed)} of {len(runs)} runs failed; rerun the same command to retry them")
        return 1
    if args.report:
        from haf.reporting.report import make_report

        markdown, _ = make_report([str(item.output_dir) for item in runs], paper=True)
        print(markdown)
    return 0
