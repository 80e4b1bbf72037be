"""HAFrame loss, forward + backward: the fused Triton path against the reference paths.

Paths (same inputs, gradient wrt the features): ``loop`` (a) the paper's per-class loop, ``eager`` (b) the
vectorised reference (the ratios' denominator), ``compiled`` (c) = (b) under ``torch.compile``, ``fused`` =
``haf.kernels.frame_loss(..., backend="triton")``. Features fp32 or bf16, frame and S fp32 buffers; fp32 matmul
precision fixed for the run (``HAF_BENCH_MATMUL_PRECISION``, default "high").

GPU: the five shapes of docs/METHOD.md §11, time ratios, TFLOP/s (4·B·D·K), peak extra memory. CPU: reference paths
only, large shapes shrunk ~10×, one intra-op thread (``HAF_BENCH_CPU_THREADS``), (c) only with
``HAF_BENCH_COMPILE_CPU=1``. ``-k host``: host cost per step with device work removed (bench/RESULTS.md says how).

Run: ``pytest bench/bench_frame_loss.py`` (``-s`` to see the summary as it is printed).
"""
from __future__ import annotations

import os
import platform
import time
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F

import haf.losses as reference
from haf.kernels import frame_loss

HAS_CUDA = torch.cuda.is_available()
DEVICE = "cuda" if HAS_CUDA else "cpu"
MATMUL_PRECISION = os.environ.get("HAF_BENCH_MATMUL_PRECISION", "high")
COMPILE_ON_CPU = os.environ.get("HAF_BENCH_COMPILE_CPU", "") == "1"
#: Intra-op threads on CPU runs. One by default: on a shared, oversubscribed machine two spinning OpenMP threads made
#: the (64, 100, 100) step 150× slower (64 ms instead of 0.4 ms); one thread gives figures that repeat.
CPU_THREADS = int(os.environ.get("HAF_BENCH_CPU_THREADS", "1"))
ALPHA = 0.4  # CIFAR-100 / iNat2019's weight; the value does not change the work
IGNORED_EVERY = 17  # a few ignored rows, as in real batches with padding


@dataclass(frozen=True)
class Shape:
    name: str
    batch: int
    dim: int
    classes: int
    regime: str  # "paper" or "large"
    reduced_from: tuple[int, int, int] | None = None  # CPU stand-in for this GPU shape
    loop: bool = True  # run baseline (a) at this shape

    @property
    def flops(self) -> int:
        return 4 * self.batch * self.dim * self.classes

    def label(self) -> str:
        return f"({self.batch}, {self.dim}, {self.classes})"


GPU_SHAPES = [
    Shape("fgvc", 64, 100, 100, "paper"),
    Shape("inat", 256, 1010, 1010, "paper"),
    Shape("tiered", 1024, 608, 608, "paper"),
    Shape("large-square", 4096, 10000, 10000, "large"),
    Shape("large-wide", 8192, 2048, 32000, "large"),
]
CPU_SHAPES = [
    Shape("fgvc", 64, 100, 100, "paper"),
    Shape("inat", 256, 1010, 1010, "paper"),
    Shape("tiered", 1024, 608, 608, "paper", loop=False),
    Shape("large-square", 512, 1000, 1000, "large", reduced_from=(4096, 10000, 10000), loop=False),
    Shape("large-wide", 512, 256, 4000, "large", reduced_from=(8192, 2048, 32000), loop=False),
]
SHAPES = GPU_SHAPES if HAS_CUDA else CPU_SHAPES
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
PATHS = ["loop", "eager", "compiled", "fused"]

#: (shape name, dtype name, path) -> {"seconds": best round, "peak_bytes": extra memory or None}
RESULTS: dict[tuple[str, str, str], dict] = {}


def _loss_fn(path: str):
    if path == "loop":
        return reference.hierarchy_frame_loss_loop
    if path == "eager":
        return reference.hierarchy_frame_loss
    if path == "compiled":
        return _compiled()
    return lambda *args: frame_loss(*args, backend="triton")


_COMPILED = None


def _compiled():
    global _COMPILED
    if _COMPILED is None:
        _COMPILED = torch.compile(reference.hierarchy_frame_loss)
    return _COMPILED


def _skip_reason(shape: Shape, path: str) -> str | None:
    if path == "fused" and not HAS_CUDA:
        return "fused path needs a GPU (on CPU it runs only in Triton's interpreter: correctness, not speed)"
    if path == "compiled" and not HAS_CUDA and not COMPILE_ON_CPU:
        return "torch.compile on CPU takes over a minute per shape here; set HAF_BENCH_COMPILE_CPU=1 to include it"
    if path == "loop" and not shape.loop:
        return "per-class loop skipped at this CPU shape (seconds per call); it runs at every GPU shape"
    return None


def _inputs(shape: Shape, dtype: torch.dtype):
    gen = torch.Generator(device="cpu").manual_seed(shape.batch + shape.classes)
    frame = F.normalize(torch.randn(shape.classes, shape.dim, generator=gen), dim=1)
    gram = (frame @ frame.T).clamp(-1.0, 1.0)
    similarity = 0.5 * (gram + gram.T)  # bitwise symmetric, as S built from a hierarchy is
    features = torch.randn(shape.batch, shape.dim, generator=gen)
    target = torch.randint(0, shape.classes, (shape.batch,), generator=gen)
    target[::IGNORED_EVERY] = -100
    to = {"device": DEVICE}
    return (features.to(dtype=dtype, **to).requires_grad_(), frame.to(**to), target.to(**to), similarity.to(**to))


def _sync() -> None:
    if HAS_CUDA:
        torch.cuda.synchronize()


def _step(loss_fn, features, frame, target, similarity) -> None:
    features.grad = None
    loss = loss_fn(features, frame, target, similarity, ALPHA)
    loss.backward()
    _sync()


def _peak_extra_bytes(loss_fn, inputs) -> int | None:
    if not HAS_CUDA:
        return None  # max_memory_allocated is a CUDA allocator statistic
    inputs[0].grad = None
    _sync()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    _step(loss_fn, *inputs)
    return torch.cuda.max_memory_allocated() - base


@pytest.fixture(scope="module", autouse=True)
def matmul_precision_and_threads():
    previous = torch.get_float32_matmul_precision(), torch.get_num_threads()
    torch.set_float32_matmul_precision(MATMUL_PRECISION)
    if not HAS_CUDA:
        torch.set_num_threads(CPU_THREADS)
    yield
    torch.set_float32_matmul_precision(previous[0])
    torch.set_num_threads(previous[1])


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("dtype_name", list(DTYPES))
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: s.name)
def test_frame_loss_forward_backward(benchmark, shape: Shape, dtype_name: str, path: str):
    reason = _skip_reason(shape, path)
    if reason:
        pytest.skip(reason)
    inputs = _inputs(shape, DTYPES[dtype_name])
    loss_fn = _loss_fn(path)
    _step(loss_fn, *inputs)  # warm-up: compilation, caches, allocator
    peak = _peak_extra_bytes(loss_fn, inputs)
    slow = path == "loop" or shape.regime == "large"
    benchmark.group = f"frame-loss {shape.name} {shape.label()} {dtype_name}"
    rounds = 3 if slow else (20 if HAS_CUDA else 8)
    start = time.perf_counter()
    benchmark.pedantic(_step, args=(loss_fn, *inputs), rounds=rounds, iterations=1, warmup_rounds=1)
    if benchmark.disabled:  # --benchmark-disable: pedantic made a single call, timed here
        seconds = time.perf_counter() - start
    else:
        seconds = benchmark.stats.stats.min  # least disturbed round on a shared machine
    RESULTS[(shape.name, dtype_name, path)] = {"seconds": seconds, "peak_bytes": peak}
    benchmark.extra_info.update(
        {"shape": shape.label(), "dtype": dtype_name, "path": path, "tflops": shape.flops / seconds / 1e12,
         "peak_extra_mib": None if peak is None else peak / 2**20, "matmul_precision": MATMUL_PRECISION}
    )
    assert seconds > 0


def _environment() -> list[str]:
    import triton

    device = torch.cuda.get_device_name() if HAS_CUDA else f"CPU ({platform.processor() or platform.machine()}, " \
                                                           f"{os.cpu_count()} cores visible, " \
                                                           f"{CPU_THREADS} intra-op thread(s))"
    return [
        f"device: {device}; torch {torch.__version__}; triton {triton.__version__}; python {platform.python_version()}",
        f"float32 matmul precision: {MATMUL_PRECISION} (torch.set_float32_matmul_precision, fixed for the run)",
    ]


def summary_lines() -> list[str]:
    lines = ["", "HAFrame loss forward+backward — best of the rounds; ratios are time(eager) / time(path)"]
    lines += _environment()
    if not HAS_CUDA:
        lines.append("CPU run: reference paths only, large shapes reduced (see 'reduced from'); fused not timed.")
    header = f"{'shape (B, D, K)':<22}{'dtype':<6}{'path':<10}{'ms':>10}{'× eager':>9}{'TFLOP/s':>9}" \
             f"{'peak MiB':>10}{'% eager mem':>12}  note"
    lines += [header, "-" * len(header)]
    for shape in SHAPES:
        for dtype_name in DTYPES:
            eager = RESULTS.get((shape.name, dtype_name, "eager"))
            for path in PATHS:
                row = RESULTS.get((shape.name, dtype_name, path))
                if row is None:
                    continue
                ratio = f"{eager['seconds'] / row['seconds']:.2f}" if eager else "—"
                peak = row["peak_bytes"]
                peak_text = "n/a" if peak is None else f"{peak / 2**20:.1f}"
                share = "n/a"
                if peak is not None and eager and eager["peak_bytes"]:
                    share = f"{100 * peak / eager['peak_bytes']:.1f}"
                note = f"reduced from {shape.reduced_from}" if shape.reduced_from else ""
                lines.append(
                    f"{shape.label():<22}{dtype_name:<6}{path:<10}{row['seconds'] * 1e3:>10.3f}{ratio:>9}"
                    f"{shape.flops / row['seconds'] / 1e12:>9.3f}{peak_text:>10}{share:>12}  {note}"
                )
    return lines


class _SummaryPlugin:
    """Prints the summary at the end of the terminal report (a test module cannot define that hook itself)."""

    def pytest_terminal_summary(self, terminalreporter) -> None:
        if RESULTS:
            for line in summary_lines():
                terminalreporter.write_line(line)


@pytest.fixture(scope="module", autouse=True)
def print_summary(request):
    manager = request.config.pluginmanager
    if manager.get_plugin("haf-frame-loss-summary") is None:
        manager.register(_SummaryPlugin(), "haf-frame-loss-summary")
    yield


# ---------------------------------------------------------------------------------------------------------------
# Host cost (any machine): what one forward + backward costs the CPU, device work removed
# ---------------------------------------------------------------------------------------------------------------
HOST_SHAPES = [(256, 1010, 1010), (1024, 608, 608), (64, 100, 100)]
HOST_JSON = os.path.join(os.path.dirname(__file__), "results", "frame_loss_host.json")
HOST_ROUNDS = int(os.environ.get("HAF_BENCH_HOST_ROUNDS", "1000"))
#: aten ops that allocate or re-view memory without running a kernel.
_NO_LAUNCH = {"empty", "empty_strided", "slice", "select", "view", "detach", "unsqueeze", "alias", "t",
              "as_strided", "_unsafe_view", "expand", "lift_fresh", "transpose", "reshape"}
#: Autograd's seed gradient (``ones_like`` of the scalar loss): issued by ``backward()`` itself, the same on every
#: path, and not counted as a launch of either.
_SEED = "ones_like"
#: "Tiny": the most elements a torch op left on the fused path may touch (device work of such an op is nil).
_TINY = 16


class _DispatchLog:
    """Every aten op a call dispatches: (name, most elements among its tensor arguments and results)."""

    def __init__(self, fn) -> None:
        from torch.utils._python_dispatch import TorchDispatchMode
        from torch.utils._pytree import tree_leaves

        ops = self.ops = []

        class Log(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                sizes = [t.numel() for t in tree_leaves((args, kwargs, out)) if isinstance(t, torch.Tensor)]
                ops.append((func.__name__.split(".")[0], max(sizes, default=0)))
                return out

        with Log():
            fn()

    def launches(self) -> int:
        return sum(name not in _NO_LAUNCH and name != _SEED for name, _ in self.ops)

    def device_work(self) -> list[tuple[str, int]]:
        """Ops that run a kernel on more than a tiny tensor (the fused path must have none left)."""
        return [(name, size) for name, size in self.ops if name not in _NO_LAUNCH and size > _TINY]


def _interleaved_median_us(fns: dict, rounds: int, block: int = 50) -> dict:
    """Median per-call time of each function. The functions take turns in blocks of ``block`` calls (each timed
    alone), so all see the same machine load while each runs warm, as it does in a training loop (timing them
    call by call instead made whichever followed the eager reference pay for the caches it evicted); the garbage
    collector is paused while timing, as ``timeit`` does."""
    import gc

    for fn in fns.values():
        for _ in range(10):
            fn()
    samples = {name: [] for name in fns}
    clock = time.perf_counter_ns
    enabled = gc.isenabled()
    gc.disable()
    try:
        for _ in range(max(1, rounds // block)):
            for name, fn in fns.items():
                for _ in range(block):
                    start = clock()
                    fn()
                    samples[name].append(clock() - start)
            gc.collect()
    finally:
        if enabled:
            gc.enable()
    return {name: sorted(values)[len(values) // 2] / 1e3 for name, values in samples.items()}


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            names = [line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")]
    except OSError:
        names = []
    return names[0] if names else (platform.processor() or platform.machine())


def test_host_cost_fused_vs_eager(monkeypatch):
    """Host cost of one forward + backward, device work removed, at the three paper shapes.

    Fused: the public ``frame_loss(..., backend="triton")`` at the real shape, bf16 features, with every Triton
    launch replaced by a counted no-op; what remains is allocation, views and the autograd seed, checked here to
    touch no more than tiny tensors (the host's target-range check, which exists only for CPU tensors, is removed:
    a GPU run has none). Eager: the reference at (4, 4, 4), where its ~70 kernels do no measurable work. Launches:
    Triton launches + dispatched aten ops that run a kernel; autograd's seed gradient is counted on neither side.
    Also timed: the fused step without its per-call input checks (``FusedFrameLossFunction.apply`` called
    directly), which prices those checks. Triton's own launch cost (its Python launcher) is not included."""
    import json

    from haf.kernels.dense import fused as fused

    if HAS_CUDA == fused.INTERPRETED:
        pytest.skip("the fused launcher needs CUDA tensors, or CPU tensors with TRITON_INTERPRET=1")
    launched = []
    monkeypatch.setattr(fused, "_launch", lambda kernel, grid, *args, **meta: launched.append(kernel))
    monkeypatch.setattr(fused, "check_target_range", lambda *args: None)
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    rows, checks = [], []
    try:
        for batch, dim, classes in HOST_SHAPES:
            h, frame, target, similarity = _inputs(Shape("host", batch, dim, classes, "paper"), torch.bfloat16)
            call = (frame, target, similarity, ALPHA, "mean", -100, False, None, False)

            def fused_step():
                h.grad = None
                frame_loss(h, frame, target, similarity, ALPHA, backend="triton").backward()

            def unchecked_step():
                h.grad = None
                fused.FusedFrameLossFunction.apply(h, call).backward()

            x = h[:4, :4].detach().float().clone().requires_grad_()
            tiny = (frame[:4, :4], target[:4].clamp_min(0) % 4, similarity[:4, :4])

            def eager_step():
                x.grad = None
                reference.hierarchy_frame_loss(x, *tiny, ALPHA).backward()

            fused_step()
            launched.clear()
            fused_log = _DispatchLog(fused_step)
            assert fused_log.device_work() == [], f"device work left on the fused path: {fused_log.device_work()}"
            fused_launches = len(launched) + fused_log.launches()
            times = _interleaved_median_us({"fused": fused_step, "eager": eager_step, "unchecked": unchecked_step},
                                           HOST_ROUNDS)
            rows.append({"shape": [batch, dim, classes], "fused_us": round(times["fused"], 1),
                         "eager_us": round(times["eager"], 1), "fused_launches": fused_launches,
                         "eager_launches": _DispatchLog(eager_step).launches()})
            checks.append({"shape": [batch, dim, classes], "checked_us": round(times["fused"], 1),
                           "unchecked_us": round(times["unchecked"], 1)})
    finally:
        torch.set_num_threads(previous_threads)
    result = {"device": torch.cuda.get_device_name() if HAS_CUDA else f"CPU ({_cpu_name()})",
              "torch": torch.__version__, "rows": rows, "input_checks": checks}
    os.makedirs(os.path.dirname(HOST_JSON), exist_ok=True)
    temporary = HOST_JSON + ".tmp"
    with open(temporary, "w") as handle:
        json.dump(result, handle, indent=1)
    os.replace(temporary, HOST_JSON)
    for row, check in zip(rows, checks):
        print(f"{row} eager/fused {row['eager_us'] / row['fused_us']:.1f}x; checks {check}")
        assert row["fused_launches"] <= 3 and row["eager_launches"] > row["fused_launches"]
        assert row["fused_us"] > 0 and row["eager_us"] > 0
