"""Column lists of the tables the pipeline stores, in a module that imports nothing heavy.

The results store (and so the app's first page) needs these names; the modules that compute
the tables (:mod:`discovery.causal` needs torch, :mod:`discovery.patterns` scikit-learn)
re-export them under the same names.
"""

#: Columns :func:`discovery.causal.pattern_effects` adds to the cluster table.
EFFECT_COLUMNS = ["effect_n", "effect_mean", "effect_ci_low", "effect_ci_high", "relied_upon"]
#: Columns of the per-nodule flag table of :func:`discovery.causal.pattern_effects`.
FLAG_COLUMNS = ["case_id", "nodule_id", "probability", "probability_without", "flag_score",
                "flagged", "flag_clusters"]

#: Columns of the cluster table returned by :func:`discovery.patterns.cluster_regions`.
CLUSTER_COLUMNS = [
    "cluster",
    "n_regions",
    "n_cases",
    "n_nodules",
    "mean_probability",
    "share_predicted_malignant",
    "pool_predicted_malignant",
    "enrichment_predicted",
    "p_predicted",
    "q_predicted",
    "share_truth_malignant",
    "pool_truth_malignant",
    "enrichment_truth",
    "p_truth",
    "mean_mean_hu",
    "median_halo_max_hu",
    "mean_offset_distance_mm",
    "mean_volume_mm3",
    "relation",
    "direction",
    "exemplars",
    "description",
]
