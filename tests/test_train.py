"""Training: exact resume after a kill, both engines, the frame stays fixed, metrics.json, the 2-process run.

All runs are CPU, fp32, on a generated K = 8 demo dataset with a 2-layer CNN; a run of 3 epochs × 4 steps takes
seconds. The two-process tests (gloo) are marked ``slow``; they compile nothing (DeepSpeed's shared-memory op is not
loaded on the CPU).
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from train_fixtures import TINY_DEMO_OPTIONS, checkpoint_params, step_records, tiny_run_dict, train_records

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory) -> Path:
    from haf.pipelines import ensure_demo_dataset

    root = tmp_path_factory.mktemp("demo") / "data"
    return ensure_demo_dataset(root, **TINY_DEMO_OPTIONS)  # once for the module (the reader never generates here)


def _run(demo_root: Path, output_dir: Path, resume: bool = False, **sections):
    from haf.training.run_config import load_config
    from haf.training.loop import run_training

    config = load_config(None, data=tiny_run_dict(demo_root, output_dir, **sections))
    return run_training(config, resume=resume)


@pytest.mark.parametrize("deepspeed_section", [
    {"enabled": True},
    {"enabled": False},
    # ZeRO-1 with DeepSpeed's bf16 weights: the optimizer state lives in DeepSpeed's own shard files.
    {"enabled": True, "zero_stage": 1, "precision": "bf16"},
], ids=["deepspeed-engine", "plain-engine", "deepspeed-zero1-bf16"])
def test_resume_after_kill_equals_uninterrupted_run(demo_root, tmp_path, deepspeed_section):
    engine = {"deepspeed": deepspeed_section}
    full, split = tmp_path / "full", tmp_path / "split"
    full_metrics = _run(demo_root, full, **engine)
    # "Kill" after epoch 2: the run stops right after writing its epoch-2 checkpoint, without test metrics.
    assert _run(demo_root, split, train={"stop_after_epoch": 2}, **engine) is None
    assert not (split / "metrics.json").exists()
    assert torch.load(split / "last.pt", weights_only=True)["epoch"] == 2
    resumed_metrics = _run(demo_root, split, resume=True, **engine)

    full_steps = [(r["step"], r["loss"]) for r in step_records(full) if r["epoch"] == 3]
    resumed_steps = [(r["step"], r["loss"]) for r in step_records(split) if r["epoch"] == 3]
    assert len(full_steps) == 4 and resumed_steps == full_steps  # bit-identical per-step losses
    # The first two epochs were logged once each (the JSONL logs are appended, not rewritten, on resume).
    assert [r["epoch"] for r in step_records(split)] == [1] * 4 + [2] * 4 + [3] * 4
    assert [(r["epoch"], r["step"]) for r in train_records(split)] == [(1, 4), (2, 8), (3, 12)]
    assert [r["epoch"] for r in train_records(split, "val")] == [1, 2, 3]
    # The epoch's loss is the mean of its micro-batches' losses.
    epoch3 = [r["loss"] for r in step_records(split) if r["epoch"] == 3]
    assert train_records(split)[2]["loss"] == pytest.approx(sum(epoch3) / 4, rel=1e-12)
    # The schedule reaches the optimizer (through DeepSpeed's wrappers too): lr_t = 0.1·½(1 + cos(π t/3)), the
    # backbone at a tenth of it, in the epoch resumed from a checkpoint as in the others.
    for record in step_records(split) + train_records(split):
        lr_t = 0.1 * 0.5 * (1 + math.cos(math.pi * (record["epoch"] - 1) / 3))
        assert record["lr/backbone"] == pytest.approx(0.1 * lr_t) and record["lr/transformation"] == pytest.approx(lr_t)
    full_params, resumed_params = checkpoint_params(full / "last.pt"), checkpoint_params(split / "last.pt")
    assert full_params.keys() == resumed_params.keys()
    for name in full_params:
        assert torch.equal(full_params[name], resumed_params[name]), name
    assert resumed_metrics == {**full_metrics, "run": {**full_metrics["run"], "output_dir": str(split)}}


def test_resume_differs_without_optimizer_state(demo_root, tmp_path):
    """Control for the test above: dropping the momentum buffers from the checkpoint changes epoch 3, so the
    equality there really depends on restoring the optimizer state."""
    full, split = tmp_path / "full", tmp_path / "split"
    _run(demo_root, full)
    _run(demo_root, split, train={"stop_after_epoch": 2})
    state = torch.load(split / "last.pt", weights_only=True)
    state["optimizer"]["state"] = {}  # momentum buffers gone
    torch.save(state, split / "last.pt")
    _run(demo_root, split, resume=True)
    full_losses = [r["loss"] for r in step_records(full) if r["epoch"] == 3]
    broken_losses = [r["loss"] for r in step_records(split) if r["epoch"] == 3]
    assert full_losses[0] == broken_losses[0]  # same weights and batch at the first step of epoch 3
    assert full_losses[1:] != broken_losses[1:]


def test_plain_and_deepspeed_engines_agree(demo_root, tmp_path):
    """One loop, two engines: on one process both are SGD on the same batches, so the weights agree."""
    _run(demo_root, tmp_path / "ds", train={"epochs": 2})
    _run(demo_root, tmp_path / "plain", train={"epochs": 2}, deepspeed={"enabled": False})
    ds, plain = checkpoint_params(tmp_path / "ds" / "last.pt"), checkpoint_params(tmp_path / "plain" / "last.pt")
    for name in ds:
        torch.testing.assert_close(ds[name], plain[name], rtol=1e-5, atol=1e-6, msg=name)


def test_frame_is_not_optimized_and_unchanged_by_training(demo_root, tmp_path):
    from haf.training.optimization import build_optimizer
    from haf.training.run_config import load_config
    from haf.training.assemble import build_model, prepare_dataset

    config = load_config(None, data=tiny_run_dict(demo_root, tmp_path / "run"))
    data = prepare_dataset(config)
    model = build_model(config, data.dataset, data.distances)
    frame = model.method.frame
    assert "method.frame" not in dict(model.named_parameters())
    optimizer = build_optimizer(model, config.optim)
    optimised = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert id(frame) not in optimised and id(model.method.similarity) not in optimised
    assert optimised == {id(p) for p in model.parameters() if p.requires_grad}
    # The backbone group trains at lr/10, the transformation layers at lr (the reference recipe).
    scales = {group["name"]: group["lr_scale"] for group in optimizer.param_groups}
    assert scales["backbone"] == pytest.approx(0.1) and scales["transformation"] == pytest.approx(1.0)

    # The seed fixes the frame's random rotation: same seed, same frame; another seed, another rotation of it.
    again = build_model(config, data.dataset, data.distances).method.frame
    other = build_model(config.replace(seed=4), data.dataset, data.distances).method.frame
    assert torch.equal(again, frame) and not torch.allclose(other, frame, atol=1e-3)
    torch.testing.assert_close(other.double() @ other.double().T, frame.double() @ frame.double().T, atol=1e-5, rtol=0)

    initial = frame.detach().clone()
    _run(demo_root, tmp_path / "run", train={"epochs": 2})
    trained = checkpoint_params(tmp_path / "run" / "last.pt")
    assert torch.equal(trained["method.frame"], initial)
    # ... while the trainable layers did move.
    assert not torch.equal(trained["head.conv.weight"], model.state_dict()["head.conv.weight"])
    # The frame has the defining properties: W Wᵀ = S, unit rows.
    torch.testing.assert_close(initial.double() @ initial.double().T, trained["method.similarity"].double(),
                               atol=1e-5, rtol=0)


def test_metrics_json_layout_and_crm_for_cross_entropy(demo_root, tmp_path):
    out = tmp_path / "ce"
    record = _run(demo_root, out, train={"epochs": 1}, model={"head": "type1", "head_options": {"hidden_dim": 32}},
                  method={"name": "cross-entropy", "options": {}}, logging={"tensorboard": True})
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))  # the same records for TensorBoard
    written = json.loads((out / "metrics.json").read_text())
    assert written == json.loads(json.dumps(record))
    for key in ("top1", "mistake_severity", "hierdist@1", "hierdist@5"):
        assert math.isfinite(written[key]) or key == "mistake_severity"
    assert "hierdist@20" not in written  # K = 8 < 20: omitted, as haf.metrics does
    assert set(written["crm"]) >= {"top1", "mistake_severity", "hierdist@1", "hierdist@5"}
    run = written["run"]
    assert run["dataset"] == "demo" and run["method"] == "cross-entropy" and run["model"] == "tiny_cnn/type1"
    assert run["seed"] == 3 and run["epochs"] == 1 and run["best_epoch"] == 1 and run["test_images"] == 24
    # haf report reads exactly this file.
    from haf.reporting.report import load_run

    results = load_run(out / "metrics.json")
    assert [r.method for r in results] == ["cross-entropy", "cross-entropy+crm"]
    # Every checkpoint loads with weights_only=True, config included.
    state = torch.load(out / "best.pt", weights_only=True)
    assert state["config"]["method"]["name"] == "cross-entropy" and state["epoch"] == 1


def test_stop_after_epoch_then_resume_needs_same_config(demo_root, tmp_path):
    out = tmp_path / "run"
    _run(demo_root, out, train={"stop_after_epoch": 1})
    with pytest.raises(ValueError, match="optim"):
        _run(demo_root, out, resume=True, optim={"lr": 0.05})


def test_train_script_as_plain_python_process(demo_root, tmp_path):
    """``python haf/train.py --config X --set ...`` on one CPU process, as a user runs it."""
    config_path = tmp_path / "tiny.yaml"
    config_path.write_text(yaml.safe_dump(tiny_run_dict(demo_root, tmp_path / "unused")))
    out = tmp_path / "script"
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    done = subprocess.run(
        [sys.executable, "haf/train.py", "--config", str(config_path), "--set", "train.epochs=1",
         "--output-dir", str(out)], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads((out / "metrics.json").read_text())["run"]["epochs"] == 1
    bad = subprocess.run([sys.executable, "haf/train.py", "--config", str(config_path), "--set", "train.epoch=1"],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "unknown key 'train.epoch'" in bad.stderr and "epochs" in bad.stderr


@pytest.mark.slow
def test_two_processes_match_one_process(demo_root, tmp_path):
    """Two CPU processes (gloo) — `deepspeed --num_gpus 2` with the DeepSpeed engine and `torchrun
    --nproc_per_node 2` with the plain engine (DDP, stopped after epoch 1 and resumed) — hold identical weights on
    both ranks, and match a one-process run on the same global batches. Augmentation is off and BatchNorm uses running statistics
    (model.freeze_batchnorm), so a sample's gradient does not depend on which rank's half-batch it is in; what is
    left is the order of floating-point sums."""
    sections = {"train": {"epochs": 2}, "data": {"augment": False}, "model": {"freeze_batchnorm": True}}
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env["CUDA_VISIBLE_DEVICES"] = ""
    env["TORCH_EXTENSIONS_DIR"] = str(tmp_path / "extensions")  # stays absent: nothing is compiled
    bin_dir = Path(sys.executable).parent
    launches = {
        # deepspeed.enabled auto: the deepspeed launcher gets the DeepSpeed engine.
        # Through this interpreter: a copied virtual environment's launcher scripts may name another one.
        "deepspeed": ([sys.executable, str(bin_dir / "deepspeed"), "--num_gpus", "2", "--master_port",
                       str(_free_port())], "auto"),
        "torchrun": ([sys.executable, str(bin_dir / "torchrun"), "--nproc_per_node", "2", "--master_port",
                      str(_free_port())], False),
    }
    _run(demo_root, tmp_path / "one", **sections)
    one = torch.load(tmp_path / "one" / "last.pt", weights_only=True)
    for name, (launcher, use_deepspeed) in launches.items():
        out = tmp_path / name
        config_path = tmp_path / f"{name}.yaml"
        config_path.write_text(yaml.safe_dump(tiny_run_dict(demo_root, out, deepspeed={"enabled": use_deepspeed},
                                                            **sections)))
        # The torchrun leg is also killed after epoch 1 and resumed on two ranks.
        stages = [["--set", "train.stop_after_epoch=1"], ["--resume"]] if name == "torchrun" else [[]]
        for extra in stages:
            done = subprocess.run([*launcher, "haf/train.py", "--config", str(config_path), *extra], cwd=REPO,
                                  env=env, capture_output=True, text=True, timeout=600)
            assert done.returncode == 0, (name, extra, (done.stdout + done.stderr)[-4000:])
        two = torch.load(out / "last.pt", weights_only=True)
        fingerprints = two["rank_fingerprints"]
        assert fingerprints.shape == (2, 3) and torch.equal(fingerprints[0], fingerprints[1]), name
        for key, value in one["model"].items():
            torch.testing.assert_close(two["model"][key], value, rtol=1e-4, atol=1e-5, msg=f"{name}: {key}")
        # Both runs really trained (the comparison is not between two untouched initialisations).
        assert two["global_step"] == one["global_step"] == 8
        assert two["config"]["deepspeed"]["enabled"] is (name == "deepspeed")
        metrics = json.loads((out / "metrics.json").read_text())
        assert metrics["run"]["test_images"] == 24  # the test split, sharded over 2 ranks, counted once
        assert metrics["top1"] == pytest.approx(json.loads((tmp_path / "one" / "metrics.json").read_text())["top1"])
        # The validation's class means are summed over both ranks' shards: the same diagnostics as one process.
        one_val, two_val = train_records(tmp_path / "one", "val")[-1], train_records(out, "val")[-1]
        assert two_val["epoch"] == one_val["epoch"] == 2
        for key in ("nc_mean", "nc_std", "self_duality"):
            assert two_val[key] == pytest.approx(one_val[key], abs=1e-4), (name, key)
    assert not (tmp_path / "extensions").exists()


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
@pytest.mark.parametrize("deepspeed_enabled", [True, False], ids=["deepspeed-engine", "plain-engine"])
def test_bf16_autocast_reaches_the_model_inside_the_engine(demo_root, tmp_path, device, deepspeed_enabled):
    """precision: bf16-autocast runs the convolutions in bf16 inside the engine's forward (DeepSpeed turns an outer
    autocast off unless its own torch_autocast is configured) while weights and gradients stay fp32."""
    from haf.training.run_config import load_config
    from haf.training.engine import build_engine, setup_distributed, teardown_distributed
    from haf.training.assemble import build_model, prepare_dataset

    config = load_config(None, data=tiny_run_dict(
        demo_root, tmp_path, train={"device": device},
        deepspeed={"enabled": deepspeed_enabled, "precision": "bf16-autocast"}))
    data = prepare_dataset(config)
    context = setup_distributed(device, use_deepspeed=deepspeed_enabled)
    try:
        model = build_model(config, data.dataset, data.distances)
        engine = build_engine(model, config, context)
        seen = []
        first_conv = next(m for m in engine.module.backbone.modules() if isinstance(m, torch.nn.Conv2d))
        first_conv.register_forward_hook(lambda module, inputs, output: seen.append(output.dtype))
        images = torch.randn(4, 3, 16, 16, device=context.device)
        targets = torch.arange(4, device=context.device)
        engine.train()
        with engine.autocast():
            loss = engine.module.loss(engine.forward(images), targets)
        engine.backward(loss)
        assert seen == [torch.bfloat16]
        assert first_conv.weight.dtype == torch.float32 and first_conv.weight.grad.dtype == torch.float32
        assert torch.isfinite(loss)
    finally:
        teardown_distributed(context)


@pytest.fixture(scope="module")
def haframe_run(demo_root, tmp_path_factory) -> Path:
    """A 2-epoch HAFrame run whose logs the tests below read (data.backend auto: the PyTorch loader on CPU)."""
    out = tmp_path_factory.mktemp("haframe") / "run"
    _run(demo_root, out, train={"epochs": 2}, data={"backend": "auto"})
    return out


def test_metrics_jsonl_records_are_what_the_plots_read(haframe_run, tmp_path):
    """One record per epoch and split with an int "epoch" and a "split"; haf.reporting.plots draws the run's curves from it."""
    import numpy as np

    from haf.reporting import plots

    records = plots.read_jsonl(haframe_run / "metrics.jsonl")
    assert [(r["split"], r["epoch"]) for r in records[:4]] == [("train", 1), ("val", 1), ("train", 2), ("val", 2)]
    assert len(records) == 5 and records[4]["split"] == "test" and records[4]["epoch"] in (1, 2)
    for record in records:
        assert type(record["epoch"]) is int and "kind" not in record
    for record in records[0:4:2]:
        assert all(math.isfinite(record[key]) for key in ("loss", "lr", "images_per_s"))
    for record in records[1:4:2]:
        assert all(math.isfinite(record[key]) for key in ("loss", "top1", "hierdist@1", "hierdist@5"))

    drawn = plots.plot_training_curves({"tiny": records}, tmp_path / "curves.png")
    np.testing.assert_array_equal(drawn["train/loss"]["tiny"], [[1, records[0]["loss"]], [2, records[2]["loss"]]])
    np.testing.assert_array_equal(drawn["val/top1"]["tiny"], [[1, records[1]["top1"]], [2, records[3]["top1"]]])
    assert (tmp_path / "curves.png").read_bytes()[:4] == b"\x89PNG"


def test_validation_records_carry_neural_collapse_diagnostics(haframe_run, tmp_path):
    """Every validation of a HAFrame run logs nc_mean, nc_std and self_duality (finite, in their ranges)."""
    from haf.reporting import plots

    records = plots.read_jsonl(haframe_run / "metrics.jsonl")
    val = [r for r in records if r["split"] == "val"]
    assert len(val) == 2
    for record in val:
        assert 0.0 <= record["nc_mean"] <= 2.0 and 0.0 <= record["nc_std"] <= 2.0  # |cos − S| ≤ 2
        assert 0.0 <= record["self_duality"] <= 2.0 and math.isfinite(record["self_duality"])
    assert not any(key in r for r in records if r["split"] != "val" for key in ("nc_mean", "self_duality"))
    drawn = plots.plot_neural_collapse({"tiny": records}, tmp_path / "nc.png")
    assert drawn["self_duality"]["tiny"].tolist() == [[1, val[0]["self_duality"]], [2, val[1]["self_duality"]]]
