"""Which training engine a launch gets (``deepspeed.enabled``: auto / true / false), and that no run compiles a C++
extension on the CPU: a one-process run never imports DeepSpeed, and DeepSpeed's CPU engine loads no op."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from train_fixtures import TINY_DEMO_OPTIONS, tiny_run_dict

REPO = Path(__file__).resolve().parents[1]


def _ds(**fields):
    from haf.training.schema import DeepSpeedConfig

    return DeepSpeedConfig(**fields)


@pytest.mark.parametrize("fields, environ, expected", [
    ({}, {}, False),  # python haf/train.py: the plain engine
    ({}, {"WORLD_SIZE": "1", "RANK": "0"}, False),  # torchrun --nproc_per_node 1
    ({}, {"WORLD_SIZE": "2"}, True),  # torchrun / mpirun with several ranks
    ({}, {"OMPI_COMM_WORLD_SIZE": "4"}, True),
    ({}, {"WORLD_SIZE": "1", "CROSS_SIZE": "1"}, True),  # the deepspeed launcher, even for one rank
    ({"zero_stage": 1}, {}, True),  # a DeepSpeed feature asks for DeepSpeed
    ({"precision": "bf16"}, {}, True),
    ({"precision": "bf16-autocast"}, {}, False),  # autocast is not DeepSpeed-only
    ({"enabled": False}, {"WORLD_SIZE": "8"}, False),
    ({"enabled": True}, {}, True),
], ids=["one-process", "torchrun-1", "two-ranks", "mpi", "deepspeed-launcher", "zero", "bf16-weights",
        "autocast", "false", "true"])
def test_auto_picks_deepspeed_only_when_asked_or_launched_on_several_ranks(fields, environ, expected):
    pytest.importorskip("deepspeed")
    from haf.training.engine import resolve_engine

    assert resolve_engine(_ds(**fields), environ) is expected


def test_without_deepspeed_auto_falls_back_and_a_deepspeed_feature_is_one_line(monkeypatch):
    import importlib.util

    from haf.optional_deps import MissingExtraError
    from haf.training import engine

    real = importlib.util.find_spec
    monkeypatch.setattr(engine.importlib.util, "find_spec",
                        lambda name, *a: None if name == "deepspeed" else real(name, *a))
    assert engine.resolve_engine(_ds(), {"WORLD_SIZE": "2"}) is False  # DDP instead
    for fields, key in (({"enabled": True}, "deepspeed.enabled: true"), ({"zero_stage": 2}, "deepspeed.zero_stage")):
        # the one wording of a missing extra (haf.optional_deps), as the README and the wheel check print it
        with pytest.raises(MissingExtraError, match=rf"^{key}.* \(the DeepSpeed engine\) needs deepspeed, which is "
                                                    r"not installed: pip install 'haf\[deepspeed\]'"):
            engine.resolve_engine(_ds(**fields), {})


def test_config_default_is_auto_and_accepts_booleans():
    from haf.training.run_config import load_config

    assert load_config("demo").deepspeed.enabled == "auto"
    assert load_config("demo", ["deepspeed.enabled=false"]).deepspeed.enabled is False
    with pytest.raises(ValueError, match="deepspeed.enabled"):
        load_config("demo", ["deepspeed.enabled=sometimes"])


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory) -> Path:
    from haf.pipelines import ensure_demo_dataset

    return ensure_demo_dataset(tmp_path_factory.mktemp("demo") / "data", **TINY_DEMO_OPTIONS)


@pytest.mark.slow
def test_one_process_run_never_imports_deepspeed(demo_root, tmp_path):
    """The default (auto) one-process run: the plain engine, DeepSpeed never imported (so nothing of it can
    compile), and the run's config.yaml states the engine it got."""
    config = tmp_path / "tiny.yaml"
    data = tiny_run_dict(demo_root, tmp_path / "run", train={"epochs": 1})
    data["deepspeed"].pop("enabled")
    config.write_text(yaml.safe_dump(data))
    probe = ("import sys, runpy; sys.argv = ['haf/train.py', '--config', sys.argv[1]]; "
             "code = 0\ntry:\n    runpy.run_path('haf/train.py', run_name='__main__')\n"
             "except SystemExit as e:\n    code = e.code\n"
             "print('deepspeed imported:', any(m == 'deepspeed' or m.startswith('deepspeed.') for m in sys.modules))\n"
             "sys.exit(code)")
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "CROSS_SIZE")}
    env.update(CUDA_VISIBLE_DEVICES="", TORCH_EXTENSIONS_DIR=str(tmp_path / "extensions"))
    done = subprocess.run([sys.executable, "-c", probe, str(config)], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.splitlines()[-1] == "deepspeed imported: False"
    assert "engine: plain PyTorch on cpu, 1 rank(s)" in done.stderr
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["deepspeed"]["enabled"] is False
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["run"]["epochs"] == 1
    assert not (tmp_path / "extensions").exists()


def test_deepspeed_on_cpu_loads_no_op(demo_root, tmp_path, monkeypatch):
    """DeepSpeed asked for on the CPU: its process group starts without building the shared-memory all-reduce
    (or probing the compiler), so no op is JIT-loaded."""
    pytest.importorskip("deepspeed")
    import deepspeed.ops
    from deepspeed.ops.op_builder.builder import OpBuilder

    from haf.training.loop import run_training
    from haf.training.run_config import load_config

    loads = []
    monkeypatch.setattr(OpBuilder, "load", lambda self, *a, **k: loads.append(self.name))
    monkeypatch.setattr(OpBuilder, "jit_load", lambda self, *a, **k: loads.append(self.name))
    monkeypatch.setattr(deepspeed.ops, "_probe_compatible_ops", lambda: loads.append("probe") or {}, raising=False)
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "extensions"))
    config = load_config(None, data=tiny_run_dict(demo_root, tmp_path / "run", train={"epochs": 1},
                                                  deepspeed={"enabled": True}))
    run_training(config)
    assert loads == []
    assert not (tmp_path / "extensions").exists()
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["deepspeed"]["enabled"] is True
