"""``haf prepare``: resize an image tree into a mirror tree (``run``), with its resumable state (``state``) and the
ffmpeg / Pillow resize backends (``resize``)."""
from haf.pipelines.prepare.resize import PART_TAG, Job, ResizeSpec, ffmpeg_command
from haf.pipelines.prepare.run import BACKENDS, PrepareReport, default_workers, prepare_images
from haf.pipelines.prepare.state import DONE_NAME, MANIFEST_NAME

__all__ = ["BACKENDS", "DONE_NAME", "Job", "MANIFEST_NAME", "PART_TAG", "PrepareReport", "ResizeSpec",
           "default_workers", "ffmpeg_command", "prepare_images"]
