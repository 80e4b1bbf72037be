"""Dataset readers: each on-disk format (image folder, FGVC-Aircraft, iNat2019, tieredImageNet-H, CIFAR-100(-LT),
the synthetic tree) becomes a :class:`~haf.pipelines.readers.splits.DatasetSplits`; ``registry`` picks one by kind."""
