"""HAFrame at speed: hierarchy -> frame -> loss -> model -> train.

Hierarchy-aware fixed-frame classification (Liang & Davis, ICCV 2023): the last linear layer is fixed to a
frame whose pairwise cosines encode a class hierarchy, and the penultimate features are trained to collapse
onto it. See ``docs/ARCHITECTURE.md`` for how the modules fit together.
"""

__version__ = "0.1.0"
