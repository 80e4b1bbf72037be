"""The field's evaluation metrics, streaming and DDP-mergeable: top-1, mistake severity and HierDist@k
(``hierarchical``), CRM decoding (``crm``), neural-collapse diagnostics (``collapse``), and the input checks they
share (``inputs``)."""
from haf.metrics.collapse import ClassMeans, class_means, neural_collapse_metrics, self_duality
from haf.metrics.crm import crm_predict, crm_scores
from haf.metrics.hierarchical import (
    DEFAULT_KS,
    SHOT_GROUPS,
    GroupedHierarchicalMetrics,
    HierarchicalMetrics,
    hierarchical_metrics,
    ranked_top_k,
    shot_groups,
)
from haf.metrics.inputs import as_distances

__all__ = ["DEFAULT_KS", "SHOT_GROUPS", "ClassMeans", "GroupedHierarchicalMetrics", "HierarchicalMetrics",
           "as_distances", "class_means", "crm_predict", "crm_scores", "hierarchical_metrics",
           "neural_collapse_metrics", "ranked_top_k", "self_duality", "shot_groups"]
