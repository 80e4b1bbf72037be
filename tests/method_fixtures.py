"""The small hand-worked tree the method tests share (a helper module, not a test file).

Four leaves a, b, c, d under two parents, {a, b} and {c, d}: siblings are at distance 1, cousins at 2.
``LEVEL_LABELS`` is the 2-level table (parent, leaf); ``THREE_LEVELS`` a 3-level one (2 → 3 → 4 nodes) in
which leaf c is its parent's only child, for the per-level methods.
"""
import numpy as np

DISTANCES = np.array([[0, 1, 2, 2], [1, 0, 2, 2], [2, 2, 0, 1], [2, 2, 1, 0]])
LEVEL_LABELS = np.array([[0, 0], [0, 1], [1, 2], [1, 3]])
THREE_LEVELS = np.array([[0, 0, 0], [0, 1, 1], [1, 2, 2], [1, 2, 3]])
