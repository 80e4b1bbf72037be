"""`pytest bench/` stays runnable: every benchmark module imports and its benchmarks collect (nothing is timed)."""
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_every_benchmark_module_collects():
    run = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", "bench/"],
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    collected = [line for line in run.stdout.splitlines() if "::" in line]
    modules = {line.split("::")[0] for line in collected}
    expected = {f"bench/{p.name}" for p in (REPO / "bench").glob("bench_*.py")}
    assert modules == expected, f"benchmark modules without collected benchmarks: {sorted(expected - modules)}"
