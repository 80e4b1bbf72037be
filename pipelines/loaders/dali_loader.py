"""DALI input pipelines: one definition for every split, on the GPU (mixed decoder) or on CPU only.

The batch plan — which files, in which order, on which rank (``epoch_plan``) and every random crop/flip
(``transforms``) — is computed in Python from (seed, epoch, rank, batch) and fed through ``external_source``; the
pipeline only decodes and executes it. Why not ``fn.readers.file``: this gives, at once, exact resume (no hidden
reader or operator RNG state, no per-epoch pipeline reseeding), the same order and the same augmentation as the
reference DataLoader (the two paths are compared sample for sample, train transforms included), the evaluation
sharding rule "every sample exactly once across ranks" without reader padding, and a decoder failure mapped to the
file that caused it. The cost is reading file bytes in the main process (a few tens of µs per file) while DALI's
threads decode the previous batches.

The graph is drawn on :func:`build_pipeline`; how a decoding failure is traced to its file, on :class:`DaliLoader`.
"""
from __future__ import annotations

import math
from collections import deque
from typing import Iterator

import numpy as np
import torch

from haf.optional_deps import require
from haf.pipelines.loaders.encoded_images import CorruptImageError, encoded_size, read_encoded
from haf.pipelines.loaders.base import Loader, LoaderOptions
from haf.pipelines.readers.splits import Split
from haf.pipelines.loaders.transforms import Box, SampleOps, TransformSpec, batch_uniforms, plan_sample

# Batches DALI prepares ahead of the consumer: 2 is DALI's default and enough to overlap decoding with the step.
PREFETCH_QUEUE_DEPTH = 2


def _dali():
    """Import DALI lazily: `import haf.pipelines` must not require it (or a GPU driver) to be importable."""
    dali = require("nvidia.dali", purpose="data.backend: dali (the DALI input pipeline)")
    require("nvidia.dali.fn", purpose="data.backend: dali (the DALI input pipeline)")
    require("nvidia.dali.types", purpose="data.backend: dali (the DALI input pipeline)")
    return dali.fn, dali.pipeline_def, dali.types


ALL_COLUMNS = (
    "data", "region_anchor", "region_shape", "size", "roi_start", "roi_end", "crop_anchor", "crop_shape", "mirror"
)


def pipeline_columns(spec: TransformSpec, needs_resize: bool) -> tuple[str, ...]:
    """The per-sample inputs a pipeline for ``spec`` consumes (the source feeds only these)."""
    skip = set()
    if not needs_resize:
        skip.add("size")
    if not _fused_centre_crop(spec):
        skip.update(("roi_start", "roi_end"))
    if not spec.kind.crop_may_pad:
        skip.update(("crop_anchor", "crop_shape"))
    return tuple(c for c in ALL_COLUMNS if c not in skip)


def _fused_centre_crop(spec: TransformSpec) -> bool:
    """ImageNet-style eval: resize + centre crop run as one ROI resize of a ROI-decoded window (see below)."""
    return spec.op == "resize-center-crop"


def fused_centre_crop(ops: SampleOps) -> tuple[Box, tuple[float, float], tuple[float, float], tuple[int, int]]:
    """Rewrite "resize the region to R, then crop C" as "decode window W, resample ROI [a, b) of W to C's size".

    The crop C of the resized image samples the source at y = (c + 0.5) · s − 0.5 with s = region / R per axis,
    using a triangle filter of radius max(s, 1). Resampling the source ROI [a, b) = [C.top · s, C.bottom · s)
    straight to C's size uses the same positions and the same radius, so the result is the same up to float
    rounding (measured: ≤ 1 level), while the resize computes only C's pixels (35% fewer at 224/256) and the
    decoder decodes only the window W = ROI ± (radius + 2 px), clamped to the region (ROI decoding skips the
    rest). Inside the region the filter reads real pixels past the ROI, as the two-step version does, so the
    region's own edges are the only edges either version sees.
    """
    r_top, r_left, r_h, r_w = ops.region
    c_top, c_left, c_h, c_w = ops.crop
    scale_y, scale_x = r_h / ops.resize[0], r_w / ops.resize[1]
    start = (c_top * scale_y, c_left * scale_x)
    end = ((c_top + c_h) * scale_y, (c_left + c_w) * scale_x)
    window = []
    for a, b, scale, extent in ((start[0], end[0], scale_y, r_h), (start[1], end[1], scale_x, r_w)):
        margin = max(scale, 1.0) + 2.0
        lo, hi = max(0, math.floor(a - margin)), min(extent, math.ceil(b + margin))
        window.append((lo, hi))
    (y0, y1), (x0, x1) = window
    box = (r_top + y0, r_left + x0, y1 - y0, x1 - x0)
    return box, (start[0] - y0, start[1] - x0), (end[0] - y0, end[1] - x0), (c_h, c_w)


def build_pipeline(
    source,
    spec: TransformSpec,
    *,
    from_files: bool,
    needs_resize: bool,
    device: str,
    output_layout: str,
    output_dtype: torch.dtype,
    batch_size: int,
    num_threads: int,
    device_id: int | None,
    seed: int,
):
    """The pipeline for one split. ``source`` is a :class:`_PlanSource` (its ``columns`` are set here).

    ``device`` "gpu": mixed decoding and GPU operators (output on GPU ``device_id``); "cpu": CPU operators only,
    ``device_id=None``, runs without a GPU. The graph is static per (spec, from_files); per-sample geometry arrives
    through ``source``::

        external_source ─ encoded bytes ─ decoders.image_slice(region)   (ROI decoding, ImageNet-style)
                        └ or uint8 HWC arrays / decoders.image ─ slice(region, zero padding)
                                                           (pad-4 crops; reflect: the padded array is fed)
          → resize(size, INTERP_LINEAR, antialias)   (eval: one ROI resize = resize + centre crop, fused_centre_crop)
          → [slice(crop, zero padding)]               (the padded random crop after a squash, "squash-pad-crop")
          → crop_mirror_normalize(mirror, mean·255, std·255, CHW or HWC, float32/float16)
    """
    fn, pipeline_def, types = _dali()
    if from_files and spec.kind.reflect:
        raise ValueError(f"transform {spec.op!r} reflect-pads, which the DALI graph does for in-memory arrays only "
                         "(CIFAR-100); use data.backend torch for image files")
    roi_decode = from_files and spec.kind.region_inside  # region always inside the image → decode only it
    fused_crop = _fused_centre_crop(spec)
    columns = pipeline_columns(spec, needs_resize)
    source.columns = columns
    slice_args = dict(axis_names="HW", normalized_anchor=False, normalized_shape=False)
    dali_dtype = types.FLOAT16 if output_dtype == torch.float16 else types.FLOAT  # bf16: cast after (no DALI type)

    @pipeline_def(enable_conditionals=False)
    def haf_pipeline():
        nodes = fn.external_source(
            source=source,
            num_outputs=len(columns),
            batch=True,
            layout=[None if (name != "data" or from_files) else "HWC" for name in columns],
        )
        node = dict(zip(columns, nodes))
        data, region_anchor, region_shape = node["data"], node["region_anchor"], node["region_shape"]
        decoder_device = "mixed" if device == "gpu" else "cpu"
        if roi_decode:
            image = fn.decoders.image_slice(
                data,
                region_anchor,
                region_shape,
                device=decoder_device,
                output_type=types.RGB,
                adjust_orientation=False,  # as torchvision/PIL: the stored pixel grid, no EXIF rotation
                **slice_args,
            )
        else:
            if from_files:
                image = fn.decoders.image(data, device=decoder_device, output_type=types.RGB, adjust_orientation=False)
            else:
                image = data.gpu() if device == "gpu" else data
            image = fn.slice(
                image, region_anchor, region_shape, out_of_bounds_policy="pad", fill_values=0, **slice_args
            )
        if needs_resize:
            roi = dict(roi_start=node["roi_start"], roi_end=node["roi_end"], roi_relative=False) if fused_crop else {}
            image = fn.resize(image, size=node["size"], interp_type=types.INTERP_LINEAR, antialias=True, **roi)
        if spec.kind.crop_may_pad:  # the random crop after a squash: zero padding where it leaves the image
            image = fn.slice(image, node["crop_anchor"], node["crop_shape"], out_of_bounds_policy="pad",
                             fill_values=0, **slice_args)
        return fn.crop_mirror_normalize(
            image,
            mirror=node["mirror"],
            mean=[255.0 * m for m in spec.mean],
            std=[255.0 * s for s in spec.std],
            dtype=dali_dtype,
            output_layout=output_layout,
        )

    return haf_pipeline(
        batch_size=batch_size,
        num_threads=num_threads,
        device_id=device_id,
        # Unused by the graph (no random operator); set for reproducible DALI internals, folded into DALI's range.
        seed=seed % 2**31,
        prefetch_queue_depth=PREFETCH_QUEUE_DEPTH,
    )


class _PlanSource:
    """Feeds one epoch's batches, starting at batch ``start``; remembers what it fed, in order.

    ``pending`` holds (batch number, kept sample indices) for every batch handed to DALI and not yet consumed:
    outputs come back in the same order, so the head of ``pending`` always belongs to the next output — and to
    the batch that failed, when one does.
    """

    def __init__(self, loader: "DaliLoader", plan: list[np.ndarray], start: int):
        self.loader, self.plan, self.next_batch = loader, plan, start
        self.pending: deque[tuple[int, np.ndarray]] = deque()
        self.error: BaseException | None = None  # an error raised here, re-raised as is by the loader
        self.columns: tuple[str, ...] = ALL_COLUMNS  # narrowed by build_pipeline to what the graph consumes

    def __call__(self):
        try:
            return self._next()
        except StopIteration:
            raise
        except BaseException as error:
            self.error = error
            raise

    def _next(self):
        loader = self.loader
        split, spec, o = loader.split, loader.spec, loader.options
        fused_crop = _fused_centre_crop(spec)
        while True:
            number = self.next_batch
            if number >= len(self.plan):
                raise StopIteration
            self.next_batch += 1
            indices = self.plan[number]
            uniforms = batch_uniforms(o.seed, loader.epoch, o.rank, number, len(indices))
            columns: dict[str, list[np.ndarray]] = {name: [] for name in self.columns}
            kept = []
            for j, index in enumerate(indices):
                if split.files is not None:
                    path = split.files[index]
                    if path in loader.bad_files:
                        continue
                    try:
                        data = read_encoded(path)
                        height, width = encoded_size(data, path)
                    except CorruptImageError:
                        if o.on_error == "raise":
                            raise
                        loader.bad_files.add(path)
                        loader.skipped_files.append(path)
                        continue
                else:
                    data = np.ascontiguousarray(split.arrays[index])
                    height, width = data.shape[:2]
                ops = plan_sample(spec, uniforms[j], height, width)
                if ops.reflect_pad:  # DALI pads with constants only: feed the reflect-padded array instead
                    data, ops = reflect_padded(data, ops)
                for name, value in _ops_arrays(data, ops, fused_crop).items():
                    if name in columns:
                        columns[name].append(value)
                kept.append(index)
            if kept:
                self.pending.append((number, np.asarray(kept, dtype=np.int64)))
                return tuple(columns[name] for name in self.columns)


def reflect_padded(data: np.ndarray, ops: SampleOps) -> tuple[np.ndarray, SampleOps]:
    """An H×W×C array reflect-padded by ``ops.reflect_pad`` and the ops re-expressed on it (region shifted)."""
    p = ops.reflect_pad
    padded = np.pad(data, ((p, p), (p, p), (0, 0)), mode="reflect")
    return padded, ops.on_reflect_padded()


def _ops_arrays(data: np.ndarray, ops: SampleOps, fused_crop: bool) -> dict[str, np.ndarray]:
    """One sample's inputs, named as in ALL_COLUMNS; coordinates as float32 (DALI's slice-argument type)."""
    f32 = np.float32
    region, size = ops.region, ops.resize
    roi_start = roi_end = (0.0, 0.0)
    if fused_crop:
        region, roi_start, roi_end, size = fused_centre_crop(ops)
    return {
        "data": data,
        "region_anchor": np.array(region[:2], f32),
        "region_shape": np.array(region[2:], f32),
        "size": np.array(size, f32),
        "roi_start": np.array(roi_start, f32),
        "roi_end": np.array(roi_end, f32),
        "crop_anchor": np.array(ops.crop[:2], f32),
        "crop_shape": np.array(ops.crop[2:], f32),
        "mirror": np.array(int(ops.flip), np.int32),
    }


class DaliLoader(Loader):
    """DALI backend (see the module docstring). One pipeline per epoch pass; rebuilt only after a skipped file.

    A decoding failure surfaces as a DALI ``RuntimeError`` for the batch; the loader re-decodes that batch's files
    one by one on a CPU probe pipeline to name the culprit, then raises :class:`CorruptImageError` or
    (``on_error="skip"``) restarts the pipeline at the same batch without that file. Nothing waits on a failed
    batch, so nothing hangs.
    """

    def __init__(self, split: Split, options: LoaderOptions):
        super().__init__(split, options)
        self.bad_files: set[str] = set()  # files found corrupt under on_error="skip": never fed again

    def _start(self, plan: list[np.ndarray], start: int):
        plugin = require("nvidia.dali.plugin.pytorch", purpose="data.backend: dali (the DALI input pipeline)")
        DALIGenericIterator, LastBatchPolicy = plugin.DALIGenericIterator, plugin.LastBatchPolicy

        o = self.options
        source = _PlanSource(self, plan, start)
        device_id = None
        if o.dali_device == "gpu":
            device_id = o.device.index if o.device.index is not None else torch.cuda.current_device()
        pipe = build_pipeline(
            source,
            self.spec,
            from_files=self.split.files is not None,
            needs_resize=self._needs_resize(),
            device=o.dali_device,
            output_layout="HWC" if o.channels_last else "CHW",
            output_dtype=o.dtype,
            batch_size=o.batch_size,
            num_threads=max(1, o.workers),
            device_id=device_id,
            seed=o.seed,
        )
        pipe.build()
        iterator = DALIGenericIterator(
            pipe, ["images"], last_batch_policy=LastBatchPolicy.PARTIAL, auto_reset=False, prepare_first_batch=False
        )
        return source, iterator

    def _needs_resize(self) -> bool:
        """False only for in-memory arrays already at the output size (CIFAR at 32 px): skip a no-op resample."""
        arrays, s = self.split.arrays, self.spec.image_size
        return not (arrays is not None and arrays.shape[1:3] == (s + self.spec.crop_bottom, s))

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        plan = self.batch_plan()
        if self.start_batch >= len(plan):
            return
        source, iterator = self._start(plan, self.start_batch)
        while True:
            try:
                outputs = next(iterator)
            except StopIteration:
                return
            except Exception as error:
                if source.error is not None:  # raised by our own source (e.g. a corrupt header): as is
                    raise source.error from None
                number, indices = source.pending[0]
                culprits = self._find_corrupt([self.split.files[i] for i in indices]) if self.split.files else []
                if not culprits:
                    raise RuntimeError(f"DALI failed on batch {number} of epoch {self.epoch}: {error}") from error
                if self.options.on_error == "raise":
                    others = f"; also corrupt in this batch: {', '.join(culprits[1:])}" if culprits[1:] else ""
                    raise CorruptImageError(culprits[0], f"decoding failed in the DALI pipeline{others}") from error
                self.bad_files.update(culprits)
                self.skipped_files.extend(culprits)
                del iterator
                source, iterator = self._start(plan, number)  # same batch again, without the culprits
                continue
            _, indices = source.pending.popleft()
            images = outputs[0]["images"]
            if self.options.channels_last:
                images = images.permute(0, 3, 1, 2)  # NHWC storage seen as NCHW: channels-last strides
            yield self._finish(images, self.labels[indices])

    def _find_corrupt(self, paths: list[str]) -> list[str]:
        """Decode each file alone on a 1-sample CPU DALI pipeline; the ones that fail are the culprits.

        A DALI pipeline is not reusable after an error, so a fresh probe is built after each failure (~10 ms).
        """
        fn, pipeline_def, types = _dali()

        @pipeline_def(enable_conditionals=False)
        def probe():
            data = fn.external_source(name="encoded")
            return fn.decoders.image(data, device="cpu", output_type=types.RGB, adjust_orientation=False)

        def fresh():
            pipe = probe(batch_size=1, num_threads=1, device_id=None, prefetch_queue_depth=1, exec_async=False,
                         exec_pipelined=False)
            pipe.build()
            return pipe

        pipe, culprits = fresh(), []
        for path in paths:
            try:
                pipe.feed_input("encoded", [read_encoded(path)])
                pipe.run()
            except Exception:
                culprits.append(path)
                pipe = fresh()
        return culprits
