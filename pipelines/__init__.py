"""Input pipelines (installed as ``haf.pipelines``): dataset readers, DALI, the reference DataLoader, ffmpeg."""
