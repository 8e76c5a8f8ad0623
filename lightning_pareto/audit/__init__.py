"""The sample audit: which training samples help or hurt each class, suspected mislabels, and the
removal check of "What Is The Performance Ceiling of My Classifier?" (section 5.1).

The maths (table, suspect rule, removal bookkeeping) is numpy and torch only, with no Lightning import;
``lightning-pareto audit`` (:mod:`lightning_pareto.experiments.audit`) and the
:class:`~lightning_pareto.callbacks.audit.InfluenceAudit` callback are built on it.
"""

from lightning_pareto.audit.figures import as_images, figure_pixels, removal_figure, top_samples_figure
from lightning_pareto.audit.quality import flip_detection
from lightning_pareto.audit.removal import KINDS, RemovalCheck, rank_correlation, removal_sets, run_removal_check
from lightning_pareto.audit.report import audit_samples, training_labels, write_audit
from lightning_pareto.audit.suspects import column_scale, likely_labels, suspect_scores, suspects
from lightning_pareto.audit.table import TOP_COLUMNS, AuditTable, audit_table

__all__ = [
    "KINDS",
    "TOP_COLUMNS",
    "AuditTable",
    "RemovalCheck",
    "as_images",
    "audit_samples",
    "audit_table",
    "column_scale",
    "figure_pixels",
    "flip_detection",
    "likely_labels",
    "rank_correlation",
    "removal_figure",
    "removal_sets",
    "run_removal_check",
    "suspect_scores",
    "suspects",
    "top_samples_figure",
    "training_labels",
    "write_audit",
]
