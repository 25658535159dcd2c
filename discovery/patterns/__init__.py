"""Stage 5, across patients: clusters of off-mask regions, their statistics, the causal check
and the three outcomes.

``clustering``: :func:`cluster_regions`; ``stats``: enrichment, multiple testing, exemplar
ranking; ``causal``: remove a cluster's regions and re-score; ``outcomes``: on the tumour /
shortcut / candidate pattern.
"""

from discovery.lazy import attach

__getattr__, __dir__, __all__ = attach(__name__, {
    "clustering": ["PatternSettings", "cluster_regions", "FEATURE_COLUMNS", "STRUCTURE_FEATURES"],
    "stats": ["enrichment_test", "benjamini_hochberg", "match_kind", "top_k_precision"],
    "causal": ["pattern_effects", "rescore_without", "inpaint_parenchyma", "case_edits",
               "CaseEdits", "case_deltas", "case_without", "run_here", "CaseRunner",
               "CENTRE_COLUMNS"],
    "outcomes": ["read_outcomes", "OutcomeReadings", "outcome_panels", "nodule_outcomes",
                 "cluster_readings", "Panel", "Exemplar"],
})
