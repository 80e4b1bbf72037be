"""The demo's results in the docs: one rendered block, the same in docs/demo/results.md and the README."""
from __future__ import annotations

import platform
from pathlib import Path

import pytest

from haf.reporting import demo
from haf.reporting.demo_doc import (
    END,
    README,
    RESULTS_DOC,
    START,
    Machine,
    check_docs_root,
    extract_block,
    format_duration,
    render_demo_results,
    replace_block,
    this_machine,
    write_demo_docs,
)

ROOT = Path(__file__).resolve().parents[1]
TABLE = """### demo

| method | runs | top-1 (%) |
|---|---|---|
| cross-entropy (tiny_cnn/type1) | 3 | 45.14 ± 0.00 |
| haframe (tiny_cnn/type2) | 3 | 43.56 ± 4.00 |

Mean ± t-based 95% confidence interval over seeds.
"""
DIFFERENCES = "haframe − cross-entropy, paired by seed (3 seeds):\n  top1  -1.580 ± 4.000  (no clear difference)\n"
MACHINE = Machine(cpu="AMD EPYC 9654", cores=192, usable_cores=2, gpu=None, torch="2.13.0", python="3.11.7",
                  system="Linux 6.8")


def test_readme_and_results_doc_hold_the_same_block():
    readme = (ROOT / README).read_text(encoding="utf-8")
    results = (ROOT / RESULTS_DOC).read_text(encoding="utf-8")
    block = extract_block(results, str(RESULTS_DOC))
    assert extract_block(readme, str(README)) == block
    assert "| haframe (" in block and "paired by seed" in block and "Produced by" in block
    assert "exactly what it produced" not in readme


def test_render_on_a_fabricated_result_set():
    block = render_demo_results(TABLE, DIFFERENCES, MACHINE, wall_seconds=170.4, runs_trained=4, runs_total=6,
                                date="2026-12-06", schedule="2 at a time, 1 CPU thread(s) each")
    assert block.startswith(START + "\n") and block.rstrip().endswith(END)
    assert "### demo" not in block  # the documents give their own heading
    assert "| haframe (tiny_cnn/type2) | 3 | 43.56 ± 4.00 |" in block
    differences = "haframe − cross-entropy, paired by seed (3 seeds):\n  top1  -1.580 ± 4.000  (no clear difference)"
    assert f"```\n{differences}\n```" in block
    assert ("Produced by `make demo` on 2026-12-06: AMD EPYC 9654, 192 logical cores (2 usable), no GPU (CPU "
            "training); torch 2.13.0, Python 3.11.7, Linux 6.8. Wall time 2 min 50 s (4 of 6 runs trained, 2 at a "
            "time, 1 CPU thread(s) each; 2 finished run(s) reused).") in block
    gpu = render_demo_results(TABLE, "", Machine(**{**MACHINE.__dict__, "gpu": "NVIDIA H100"}), wall_seconds=59.6,
                              runs_trained=6, runs_total=6, date="2026-12-06")
    assert "GPU NVIDIA H100" in gpu and "Wall time 1 min 00 s (6 of 6 runs trained)." in gpu
    assert "```" not in gpu  # no differences, no empty code block
    unknown = render_demo_results(TABLE, "", None, wall_seconds=None, runs_trained=0, runs_total=6, date="")
    assert "did not record its machine and wall time" in unknown


@pytest.mark.parametrize("seconds, text", [(0, "0 s"), (59.4, "59 s"), (170.4, "2 min 50 s"), (3600, "1 h 00 min"),
                                           (3725, "1 h 02 min")])
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text


def test_format_duration_refuses_negative_and_nan():
    for bad in (-1.0, float("nan")):
        with pytest.raises(ValueError, match="non-negative"):
            format_duration(bad)


def test_block_markers_must_be_there_once():
    text = f"intro\n{START}\nold\n{END}\noutro\n"
    assert replace_block(text, f"{START}\nnew\n{END}\n", "R.md") == f"intro\n{START}\nnew\n{END}\noutro\n"
    for broken in ("no markers", text + text, f"{END}\n{START}\n"):
        with pytest.raises(ValueError, match="R.md"):
            extract_block(broken, "R.md")


def test_write_demo_docs_writes_both_copies_and_the_plots(tmp_path):
    (tmp_path / "README.md").write_text(f"# Title\n\nbefore\n\n{START}\nstale\n{END}\n\nafter\n", encoding="utf-8")
    plot = tmp_path / "runs" / "hierdist_at_k.png"
    plot.parent.mkdir()
    plot.write_bytes(b"\x89PNG fake")
    other = tmp_path / "runs" / "not_a_doc_plot.png"
    other.write_bytes(b"x")
    block = render_demo_results(TABLE, DIFFERENCES, MACHINE, wall_seconds=5, runs_trained=6, runs_total=6, date="d")
    written = write_demo_docs(tmp_path, block, {"hierdist": plot, "other": other})
    readme = (tmp_path / "README.md").read_text(encoding="utf-8")
    results = (tmp_path / RESULTS_DOC).read_text(encoding="utf-8")
    assert readme.startswith("# Title\n\nbefore\n\n") and readme.endswith("\n\nafter\n") and "stale" not in readme
    assert extract_block(readme, "README") == extract_block(results, "results") == block
    assert (tmp_path / "docs/demo/hierdist_at_k.png").read_bytes() == b"\x89PNG fake"
    assert not (tmp_path / "docs/demo/not_a_doc_plot.png").exists()
    assert len(written) == 3


def test_a_wrong_docs_root_is_refused_before_training(tmp_path, capsys):
    with pytest.raises(FileNotFoundError, match="README not found"):
        check_docs_root(tmp_path)
    (tmp_path / "README.md").write_text("no block here\n")
    with pytest.raises(ValueError, match="one demo-results block"):
        check_docs_root(tmp_path)
    assert demo.main(["--quick", "--update-docs", "--docs-root", str(tmp_path), "--output-dir",
                      str(tmp_path / "never")]) == 2
    assert "one demo-results block" in capsys.readouterr().err
    assert not (tmp_path / "never").exists()


def test_this_machine_names_cpu_cores_and_torch():
    import torch

    machine = this_machine(gpu=False)
    assert machine.cpu and machine.cores >= machine.usable_cores >= 1
    assert machine.torch == torch.__version__ and machine.python == platform.python_version()
    assert machine.gpu is None and "no GPU" in machine.describe()
