"""`haf report`: grouping, the t-based 95% CI (checked by hand), paper rows, and errors naming the file."""
import csv
import io
import json
import math

import pytest

from haf.cli import main
from haf.reporting.report import load_run, make_report, summarize


def write_run(root, name, *, dataset="cifar100", method="haframe", seed=0, top1=70.0, crm=None, **extra):
    folder = root / name
    folder.mkdir(parents=True)
    metrics = {"top1": top1, "mistake_severity": 2.0 + seed / 10, "hierdist@1": 0.5, "hierdist@5": 1.5,
               "hierdist@20": 2.5, "run": {"dataset": dataset, "method": method, "model": "wrn28_8", "seed": seed}}
    if crm is not None:
        metrics["crm"] = crm
    metrics.update(extra)
    (folder / "metrics.json").write_text(json.dumps(metrics))
    return folder / "metrics.json"


def test_ci_matches_hand_computation():
    # values 70, 72, 74: mean 72, sample s = 2, t_{0.975,2} = 4.302652729..., CI = 4.302652729 * 2 / sqrt(3) = 4.9682755
    summary = summarize([70.0, 72.0, 74.0])
    assert summary.mean == pytest.approx(72.0)
    assert summary.ci == pytest.approx(4.302652729749464 * 2 / math.sqrt(3), rel=1e-9)
    assert summary.ci == pytest.approx(4.9682755, rel=1e-6)
    assert summary.format() == "72.00 ± 4.97"


def test_single_run_has_no_interval_and_empty_has_nan():
    assert summarize([71.5]).ci is None and summarize([71.5]).format() == "71.50"
    assert math.isnan(summarize([]).mean) and summarize([]).format() == "n/a"
    # non-finite values (a mistake severity with no mistakes is NaN) do not poison the mean
    assert summarize([1.0, float("nan"), 3.0]).mean == pytest.approx(2.0)


def test_report_groups_methods_and_seeds(tmp_path):
    for seed, top1 in enumerate([70.0, 72.0, 74.0]):
        write_run(tmp_path, f"haf-{seed}", seed=seed, top1=top1)
    for seed in range(2):
        write_run(tmp_path, f"ce-{seed}", method="cross-entropy", seed=seed, top1=60.0 + seed,
                  crm={"top1": 61.0, "mistake_severity": 1.0, "hierdist@1": 0.4, "hierdist@5": 1.0, "hierdist@20": 2.0})
    markdown, csv_text = make_report([tmp_path])
    rows = {r["method"]: r for r in csv.DictReader(io.StringIO(csv_text))}
    assert set(rows) == {"haframe (wrn28_8)", "cross-entropy (wrn28_8)", "cross-entropy+crm (wrn28_8)"}
    assert float(rows["haframe (wrn28_8)"]["top1_mean"]) == pytest.approx(72.0)
    assert float(rows["haframe (wrn28_8)"]["top1_ci95"]) == pytest.approx(4.9682755, rel=1e-5)
    assert rows["haframe (wrn28_8)"]["runs"] == "3"
    # two seeds: t_{0.975,1} = 12.7062047; s = 0.7071068; CI = 12.7062047 * 0.7071068 / sqrt(2) = 6.35310
    assert float(rows["cross-entropy (wrn28_8)"]["top1_ci95"]) == pytest.approx(6.35310237, rel=1e-5)
    assert float(rows["cross-entropy+crm (wrn28_8)"]["top1_mean"]) == pytest.approx(61.0)
    assert "| haframe (wrn28_8) | 3 | 72.00 ± 4.97 |" in markdown


def test_paper_rows_and_difference(tmp_path):
    write_run(tmp_path, "a", seed=0, top1=78.71)
    markdown, csv_text = make_report([tmp_path], paper=True)
    assert "paper: haframe" in markdown
    assert "77.71 (Δ +1.00)" in markdown  # CIFAR-100 HAFrame top-1 in the paper: 77.71


def test_one_table_per_dataset(tmp_path):
    write_run(tmp_path, "a", dataset="cifar100")
    write_run(tmp_path, "b", dataset="fgvc-aircraft")
    markdown, _ = make_report([tmp_path])
    assert "### cifar100" in markdown and "### fgvc-aircraft" in markdown


@pytest.mark.parametrize("mutate, message", [
    (lambda m: m.pop("run"), "missing key 'run'"),
    (lambda m: m["run"].pop("method"), "missing key run.'method'"),
    (lambda m: m.pop("top1"), "missing key 'top1'"),
    (lambda m: m.update(top1="high"), "key 'top1' should be a number"),
    (lambda m: m["run"].update(seed="one"), "key 'run.seed' should be an integer"),
])
def test_malformed_files_name_file_and_key(tmp_path, mutate, message):
    path = write_run(tmp_path, "bad")
    data = json.loads(path.read_text())
    mutate(data)
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError) as error:
        load_run(path)
    assert str(path) in str(error.value) and message in str(error.value)


def test_duplicate_seed_is_an_error(tmp_path):
    write_run(tmp_path, "a", seed=1)
    write_run(tmp_path, "b", seed=1)
    with pytest.raises(ValueError, match="seed 1"):
        make_report([tmp_path])


def test_cli_writes_markdown_and_csv(tmp_path, capsys):
    write_run(tmp_path / "runs", "a", seed=0)
    write_run(tmp_path / "runs", "b", seed=1)
    assert main(["report", str(tmp_path / "runs"), "--out", str(tmp_path / "out" / "table")]) == 0
    assert "haframe (wrn28_8)" in capsys.readouterr().out
    assert (tmp_path / "out" / "table.md").read_text().startswith("### cifar100")
    assert (tmp_path / "out" / "table.csv").read_text().startswith("dataset,method,runs,top1_mean")


def test_cli_missing_input_is_a_clear_error(tmp_path, capsys):
    assert main(["report", str(tmp_path / "nothing")]) == 2
    assert "nothing" in capsys.readouterr().err


def test_every_subcommand_builds_its_help(capsys):
    # argparse formats HELP strings with %-interpolation: a bare % in any subcommand's HELP crashes `haf --help`.
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for name in ("frame", "report", "plot", "eval", "prepare", "demo-data"):
        assert name in out


def test_subcommand_descriptions_show_a_single_percent_sign(capsys):
    # A HELP string is both the command list's help (%-formatted by argparse) and the subcommand's description
    # (printed as written): its '%%' must read '%' in `haf report --help` too.
    from haf.cli import build_parser

    parser, modules = build_parser()
    for name in modules:
        with pytest.raises(SystemExit):
            main([name, "--help"])
        out = capsys.readouterr().out
        assert "%%" not in out, name
    assert "95% CI" in parser._subparsers._group_actions[0].choices["report"].format_help()


def test_every_subcommand_takes_the_same_verbosity_flags_and_documents_its_options():
    from haf.cli import build_parser

    parser, modules = build_parser()
    commands = parser._subparsers._group_actions[0].choices
    for name in modules:
        options = commands[name]._option_string_actions
        assert {"-q", "--quiet", "-v", "--verbose"} <= set(options), name
        undocumented = sorted({a.option_strings[-1] for a in options.values() if not a.help})
        assert undocumented == [], (name, undocumented)
        for action in commands[name]._subparsers._group_actions if commands[name]._subparsers else ():
            for sub_name, sub_parser in action.choices.items():  # haf plot frame / haf plot runs
                undocumented = sorted({a.option_strings[-1] for a in sub_parser._option_string_actions.values()
                                       if not a.help})
                assert undocumented == [] and sub_parser.description, (name, sub_name, undocumented)
