"""What the stages agree on, in a module that imports nothing heavy: the columns of the
tables the pipeline stores, the decision threshold, and how a map is named
(``"METHOD@LAYER"``: :func:`parse_map`).

The results store (and so the app's first page) needs these names; the modules that compute
the tables (:mod:`discovery.patterns.causal` needs torch, :mod:`discovery.patterns.clustering` scikit-learn)
re-export them under the same names.
"""

#: Reach (mm) of a nodule's surroundings in the reliance on them
#: (:attr:`discovery.model.reliance.RelianceSettings.surroundings_mm`), and the default margin
#: beyond which the off-mask regions begin (``OffMaskSettings.margin_mm``): one number, so
#: that what the regions leave out is what the surroundings measure.
SURROUNDINGS_MM = 5.0
#: The findings columns of the reliance on the surroundings (the same-named fields of
#: :class:`discovery.model.reliance.Reliance`).
SURROUNDINGS_FIELDS = ("p_without_surroundings", "rests_on_surroundings",
                       "surroundings_median_hu", "surroundings_max_hu")

#: Columns :func:`discovery.patterns.causal.pattern_effects` adds to the cluster table.
EFFECT_COLUMNS = ["effect_n", "effect_mean", "effect_ci_low", "effect_ci_high", "relied_upon"]
#: Columns of the per-nodule flag table of :func:`discovery.patterns.causal.pattern_effects`.
FLAG_COLUMNS = ["case_id", "nodule_id", "probability", "probability_without", "flag_score",
                "flagged", "flag_clusters"]

#: Columns of the cluster table returned by :func:`discovery.patterns.clustering.cluster_regions`.
CLUSTER_COLUMNS = [
    "cluster",
    "n_regions",
    "n_cases",
    "n_nodules",
    "stability",
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


#: Decision threshold on P(malignant) when neither the model card nor the results state one.
DEFAULT_THRESHOLD = 0.5

#: A cluster is *stable* when the clusterings from other seeds find it again at a mean best
#: Jaccard index of at least this (``stability``,
#: :func:`discovery.patterns.mixture.clusterwise_jaccard`): Hennig's (2007) bound for a
#: stable cluster, fixed from the literature, not fitted here.  Only a stable cluster can be
#: a candidate sign (:func:`discovery.patterns.outcomes.cluster_readings`).
STABLE_CLUSTER = 0.75
#: Below this stability a cluster *dissolves* (Hennig 2007): the clusterings from other seeds
#: group its regions otherwise; the app warns about it.
DISSOLVED_CLUSTER = 0.5

#: Smallest change of P(malignant) that the causal check counts: a cluster is relied upon,
#: and a nodule uses a cluster, when removing the regions moves P by at least this much
#: (:func:`discovery.patterns.causal.pattern_effects`); the outcome texts quote it.
MIN_EFFECT = 0.05


def decision_threshold(values) -> float:
    """The decision threshold on P(malignant) recorded in *values*.

    Parameters
    ----------
    values : mapping
        A model card's ``metrics`` or a results store's ``meta()``: the threshold is stored
        under ``"threshold"``.  Absent or empty: :data:`DEFAULT_THRESHOLD`.
    """
    value = values.get("threshold") if values else None
    return DEFAULT_THRESHOLD if value is None or value == "" else float(value)


def parse_map(spec: str) -> tuple[str, str | None]:
    """``(method, layer)`` of a map named ``"METHOD"`` or ``"METHOD@LAYER"`` (a model card's
    ``default_map``, the benchmark's ``--map``); layer None when not named.  ValueError for
    an empty name or part, or more than one ``@``."""
    parts = spec.split("@") if isinstance(spec, str) else []
    if not 1 <= len(parts) <= 2 or not all(parts):
        raise ValueError(f"a map is named 'METHOD' or 'METHOD@LAYER'; received {spec!r}")
    return parts[0], (parts[1] if len(parts) == 2 else None)
