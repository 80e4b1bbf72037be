"""Training and evaluation: config, data and model assembly, engines, the epoch loop, checkpoints, evaluation."""
