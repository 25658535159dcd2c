"""Stage 3, map against mask: alignment metrics, the verdict, localisation, several readers.

``metrics``: relevance mass / rank, pointing game, near mass and :func:`align` (the verdict);
``localization``: top-k, detection AUC, Otsu overlap, distance rings; ``readers``: the same
metrics against several readers' masks and their consensus; ``rule``: a verdict rule fitted
per model to the measured reliance on the nodule.
"""

from discovery.lazy import attach

__getattr__, __dir__, __all__ = attach(__name__, {
    "metrics": ["AlignThresholds", "Alignment", "align", "relevance_mass", "relevance_rank",
                "pointing_game", "peak_distance_mm", "near_mass", "distance_to_mask_mm",
                "grow_mm", "bounding_box", "VERDICTS", "Agreement", "verdict_agreement",
                "describe_verdicts"],
    "localization": ["Localization", "localization_summary"],
    "readers": ["consensus_mask", "reader_metrics"],
    "rule": ["VerdictRule", "verdict_features", "fit_verdict_rule", "ruled_alignment",
             "describe_verdict_rule", "RULE_FEATURES"],
})
