"""Do a method's maps pass the faithfulness check on this model and cohort?  The rule.

The measure is ROAD's (:func:`discovery.explain.faithfulness.road_curves`): per nodule, the
MoRF-LeRF gap, the area between the deletion curve that removes the map's least relevant
voxels first and the one that removes its most relevant first, with removed voxels imputed
from their neighbours (plus noise) rather than set to a constant.

The rule, per method, on the **predicted-malignant** nodules (P(malignant) at or above the
decision threshold; for a benign prediction the malignant probability starts near 0, there
is nothing to remove and every order gives a flat curve):

1. the gap is positive on at least :data:`MIN_SHARE_POSITIVE` (90 %) of them, and
2. the median gap is above the median gap of random maps (a random order against its
   reverse, about 0),

judged only when at least :data:`MIN_NODULES` (5) such nodules have a gap; otherwise the
method is *undetermined*.  A random map passes (1) on about half the nodules, so (1) asks
for a map that ranks the model's evidence consistently, nodule after nodule.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

__all__ = ["FaithfulnessVerdict", "faithfulness_verdict", "faithfulness_warning",
           "method_summary", "MIN_SHARE_POSITIVE", "MIN_NODULES", "RULE"]

#: Share of predicted-malignant nodules whose MoRF-LeRF gap must be positive.
MIN_SHARE_POSITIVE = 0.9
#: Predicted-malignant nodules with a gap needed before a method is judged at all.
MIN_NODULES = 5
#: The rule in one sentence, for reports.
RULE = (f"a method passes when removing its most relevant voxels first lowers P(malignant) "
        f"more than removing its least relevant first (MoRF-LeRF gap > 0, removed voxels "
        f"imputed from their neighbours plus noise) on at least {MIN_SHARE_POSITIVE:.0%} of "
        f"the predicted-malignant nodules, with a median gap above that of random maps; it is "
        f"not judged on fewer than {MIN_NODULES} such nodules")


@dataclass(frozen=True)
class FaithfulnessVerdict:
    """The rule applied to one method.

    Attributes
    ----------
    status : str
        ``"passes"``, ``"fails"``, ``"undetermined"`` (fewer than :data:`MIN_NODULES`
        predicted-malignant nodules with a gap) or ``"not checked"`` (no gap at all, e.g.
        rows written by a ``discovery sanity`` older than this measure).
    n : int
        Predicted-malignant nodules with a finite gap.
    n_positive : int
        Those whose gap is positive.
    median_gap, median_gap_random : float
        Medians over those nodules (NaN when none; ``median_gap_random`` NaN without a
        random control).
    sentence : str
        The verdict in plain words, starting with the status.
    """

    status: str
    n: int
    n_positive: int
    median_gap: float
    median_gap_random: float
    sentence: str


def faithfulness_verdict(gap, gap_random, predicted_label) -> FaithfulnessVerdict:
    """Apply the rule (module docstring) to one method's nodules.

    Parameters
    ----------
    gap, gap_random : array-like of float, shape (N,)
        Per nodule: the MoRF-LeRF gap of the method's map and of random maps (NaN where not
        measured).
    predicted_label : array-like of int, shape (N,)
        1 for a predicted-malignant nodule.

    Returns
    -------
    FaithfulnessVerdict
    """
    gap = np.asarray(gap, dtype=np.float64)
    gap_random = np.asarray(gap_random, dtype=np.float64)
    label = np.asarray(predicted_label)
    if not gap.shape == gap_random.shape == label.shape or gap.ndim != 1:
        raise ValueError("gap, gap_random and predicted_label must be 1-D of one length; "
                         f"received shapes {gap.shape}, {gap_random.shape}, {label.shape}")
    keep = (label == 1) & np.isfinite(gap)
    g, r = gap[keep], gap_random[keep & np.isfinite(gap_random)]
    n, n_pos = int(g.size), int((g > 0).sum())
    med = float(np.median(g)) if n else float("nan")
    med_r = float(np.median(r)) if r.size else float("nan")
    if not np.isfinite(gap).any():
        return FaithfulnessVerdict("not checked", 0, 0, med, med_r,
                                   "not checked: no MoRF-LeRF gap is stored for it (re-run "
                                   "`discovery sanity`)")
    if n < MIN_NODULES:
        return FaithfulnessVerdict(
            "undetermined", n, n_pos, med, med_r,
            f"undetermined: {n} predicted-malignant nodule{'s' if n != 1 else ''} with a "
            f"measured gap, the rule needs at least {MIN_NODULES}")
    share_ok = n_pos >= MIN_SHARE_POSITIVE * n
    above = bool(med > med_r) if np.isfinite(med_r) else True
    status = "passes" if share_ok and above else "fails"
    random_txt = (f" against {med_r:.2f} for random maps" if np.isfinite(med_r)
                  else " (no random control)")
    sentence = (f"{status} on this model and cohort: removing the most relevant voxels first "
                f"lowers P(malignant) more than removing the least relevant first on {n_pos} "
                f"of {n} predicted-malignant nodules ({n_pos / n:.0%}; the rule asks for "
                f"{MIN_SHARE_POSITIVE:.0%}), median gap {med:.2f}{random_txt}")
    return FaithfulnessVerdict(status, n, n_pos, med, med_r, sentence)


def method_summary(rows: pd.DataFrame) -> dict:
    """Both measures of one method over its nodules, and the verdict.

    Parameters
    ----------
    rows : pandas.DataFrame
        The method's rows of the ``sanity_perturbation`` table (one per nodule: columns
        ``predicted_label``, ``deletion_auc``, ``deletion_auc_random``, ``insertion_auc``,
        ``insertion_auc_random``, ``road_morf_auc``, ``road_lerf_auc``, ``road_gap``,
        ``road_random_auc``, ``road_gap_random``).

    Returns
    -------
    dict
        ``n``; the old measure over all nodules: ``deletion_auc``, ``deletion_auc_random``,
        ``insertion_auc``, ``insertion_auc_random`` (medians), ``beats_random`` (share whose
        deletion area is below the random orders') and ``beats_random_malignant`` (the same
        among predicted-malignant nodules); over the ``n_malignant`` predicted-malignant
        nodules: ``fill_gap`` (median insertion minus deletion area with the constant
        eraser: the gap of the old measure), ``road_morf_auc``, ``road_lerf_auc``,
        ``road_random_auc``, ``road_gap``, ``road_gap_random`` (medians), ``road_gap_positive``
        (share with a positive gap); ``status`` and ``verdict`` (:func:`faithfulness_verdict`).
        Medians of no value are NaN.
    """
    def median(values) -> float:
        values = pd.to_numeric(values, errors="coerce")
        return float(values.median()) if values.notna().any() else float("nan")

    mal = rows["predicted_label"] == 1
    beats = rows["deletion_auc"] < rows["deletion_auc_random"]
    m = rows[mal]
    v = faithfulness_verdict(pd.to_numeric(rows["road_gap"], errors="coerce"),
                             pd.to_numeric(rows["road_gap_random"], errors="coerce"),
                             rows["predicted_label"])
    return {
        "n": int(len(rows)),
        **{c: median(rows[c]) for c in ("deletion_auc", "deletion_auc_random")},
        "beats_random": float(beats.mean()) if len(rows) else float("nan"),
        "beats_random_malignant": float(beats[mal].mean()) if mal.any() else float("nan"),
        **{c: median(rows[c]) for c in ("insertion_auc", "insertion_auc_random")},
        "n_malignant": int(mal.sum()),
        "fill_gap": median(m["insertion_auc"] - m["deletion_auc"]),
        **{c: median(m[c]) for c in ("road_morf_auc", "road_lerf_auc", "road_random_auc")},
        "road_gap": v.median_gap, "road_gap_random": v.median_gap_random,
        "road_gap_positive": v.n_positive / v.n if v.n else float("nan"),
        "status": v.status, "verdict": v.sentence,
    }


def faithfulness_warning(summary: pd.DataFrame, method: str | None,
                         layer: str | None = None) -> str | None:
    """The warning to show above the three outcomes, or None when *method* passes.

    Parameters
    ----------
    summary : pandas.DataFrame
        :func:`discovery.store.tables.sanity_summary` (columns ``method``, ``status``,
        ``verdict`` and, where recorded, ``layer``; may be empty).
    method : str or None
        The attribution method the results were scored with (store meta ``method``).
    layer : str or None
        The layer they were scored with (store meta ``gradcam_layer``).  When given, a
        check recorded at another layer does not count: those were other maps.
    """
    if not method:
        return ("The attribution method these results were scored with is not recorded, so "
                "whether its maps are faithful to the model is unknown: read the outcomes "
                "below as unconfirmed.")
    rows = summary[summary["method"] == method] if "method" in summary else summary.iloc[:0]
    checked_at = (rows["layer"].iloc[0] if len(rows) and "layer" in rows else None)
    if layer and isinstance(checked_at, str) and checked_at and checked_at != layer:
        return (f"These results were scored with {method} at {layer}, but its maps were "
                f"checked at {checked_at} (other maps), so whether these are faithful to the "
                f"model is unknown: `discovery sanity RESULTS --methods {method}` checks them "
                "at the results' layer. Read the outcomes below as unconfirmed.")
    status = str(rows["status"].iloc[0]) if len(rows) else "not checked"
    if status == "passes":
        return None
    if status == "fails":
        return (f"These results were scored with {method}, whose maps fail the faithfulness "
                f"check: {rows['verdict'].iloc[0]}. The outcomes below rest on those maps: "
                "read them as unconfirmed.")
    why = (rows["verdict"].iloc[0] if len(rows) else
           f"not checked: `discovery sanity RESULTS --methods {method}` checks it")
    return (f"These results were scored with {method}, whose maps have not been shown to be "
            f"faithful to the model on this cohort ({why}). Read the outcomes below as "
            "unconfirmed.")
