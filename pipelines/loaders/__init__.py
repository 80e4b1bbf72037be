"""Batches from a read dataset: the DALI pipeline (fast path) beside the reference torch ``DataLoader``, one
``make_loader`` over both (``loader``), the backend rule, the transforms and epoch plan they share."""
