"""A verdict rule fitted per model: does the map say the prediction rests on the nodule?

The threshold verdict (:func:`discovery.align.metrics.align`) reads two things of a map: where
its peak is and what share of it lies near the mask.  On the demo model it agrees with the
measured reliance on the nodule (:mod:`discovery.model.reliance`) at a balanced accuracy of
0.685, and no threshold of that rule passes 0.78 on Grad-CAM ``layer3``
(docs/method/metrics-and-verdicts.md#richer-rules).  A :class:`VerdictRule` reads a few
more things of a (finer) map, with the prediction's logit, and is *fitted per model* on
calibration cohorts, where the reliance was measured: a class-balanced logistic regression
on standardised :func:`verdict_features`.  It is stored in the model card
(``ModelCard.verdict_rule``) with where it was fitted; a model without one keeps the
threshold verdict.

Every feature is defined for any non-negative map and any non-empty mask:

``log_mass_on_nodule``
    log of the map's sum over the nodule's voxels times the voxel volume (map units x mm^3).
``log_mass_beyond_5mm``
    the same over the voxels more than 5 mm from the nodule: evidence elsewhere.
``log_contrast``
    log of the map's mean on the nodule over its mean within 20 mm around it (unitless).
``near_share_5mm``
    the share of the map within 5 mm of the nodule (its voxels included), in [0, 1].
``peak_within_6mm``
    1.0 when the map's maximum lies within 6 mm of the nodule, else 0.0.
``log_nodule_volume``
    log of the nodule's volume in mm^3.
``logit``
    log(P / (1 - P)) of the prediction, P clipped to [1e-6, 1 - 1e-6]: how far P must
    fall before it halves.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from data_tools.checks import check_spacing
from discovery.align.metrics import (DISTANCE_SLACK_MM, Alignment, check_distance,
                                     check_map_and_mask, distance_to_mask_mm, near_share,
                                     peak_index)

__all__ = ["RULE_FEATURES", "VerdictRule", "verdict_features", "fit_verdict_rule",
           "ruled_alignment", "describe_fit", "describe_verdict_rule"]

#: The features a rule may use, in this order (see the module's docstring).
RULE_FEATURES = ("log_mass_on_nodule", "log_mass_beyond_5mm", "log_contrast", "near_share_5mm",
                 "peak_within_6mm", "log_nodule_volume", "logit")

#: Each feature in words (:func:`describe_verdict_rule`).
FEATURE_WORDS = {"log_mass_on_nodule": "its mass on the nodule",
                 "log_mass_beyond_5mm": "its mass beyond 5 mm",
                 "log_contrast": "its contrast against the 20 mm around the nodule",
                 "near_share_5mm": "its share within 5 mm",
                 "peak_within_6mm": "whether its peak lies within 6 mm",
                 "log_nodule_volume": "the nodule's volume", "logit": "the prediction's logit"}

_NEAR_MM, _PEAK_MM, _AROUND_MM = 5.0, 6.0, 20.0
_TINY = 1e-12


def verdict_features(attr, mask, *, spacing_mm, probability: float,
                     distance_mm=None) -> dict[str, float]:
    """The features of :data:`RULE_FEATURES` for one nodule.

    Parameters
    ----------
    attr : ndarray, shape (z, y, x)
        Non-negative, finite attribution map (raw, as the method gives it; summed as is).
    mask : ndarray of bool or int, shape (z, y, x)
        The nodule; nonzero voxels are inside.  Must not be empty.
    spacing_mm : sequence of 3 floats
        Voxel size ``(dz, dy, dx)`` in mm.
    probability : float
        The prediction's P(malignant), in [0, 1].
    distance_mm : ndarray, shape (z, y, x), optional
        :func:`~discovery.align.metrics.distance_to_mask_mm` of *mask*, when the caller has it.

    Returns
    -------
    dict of str to float
        One finite value per name of :data:`RULE_FEATURES` (logs of zero masses are taken
        at 1e-12).

    Raises
    ------
    ValueError
        On an empty mask, a map that sums to 0, a probability outside [0, 1], or what
        :func:`~discovery.align.metrics.check_map_and_mask` refuses.
    """
    attr, mask = check_map_and_mask(attr, mask)
    spacing = check_spacing(spacing_mm)
    if not mask.any():
        raise ValueError("verdict_features needs a non-empty nodule mask; received an empty one")
    if float(attr.sum()) <= 0.0:
        raise ValueError("verdict_features needs a map with some attribution; it sums to 0")
    if not 0.0 <= float(probability) <= 1.0:
        raise ValueError(f"probability must lie in [0, 1]; received {probability!r}")
    dist = (distance_to_mask_mm(mask, spacing) if distance_mm is None
            else check_distance(distance_mm, mask))
    voxel_mm3 = float(np.prod(spacing))
    on = attr[mask]                                  # float64 (check_map_and_mask)
    around = (dist > 0) & (dist <= _AROUND_MM)
    around_mean = float(attr[around].mean()) if around.any() else 0.0
    p = min(max(float(probability), 1e-6), 1 - 1e-6)
    return {
        "log_mass_on_nodule": math.log(float(on.sum()) * voxel_mm3 + _TINY),
        "log_mass_beyond_5mm": math.log(float(attr[dist > _NEAR_MM].sum()) * voxel_mm3 + _TINY),
        "log_contrast": math.log(float(on.mean()) / max(around_mean, _TINY) + _TINY),
        "near_share_5mm": near_share(attr, dist, _NEAR_MM),
        "peak_within_6mm": float(dist[peak_index(attr)] <= _PEAK_MM + DISTANCE_SLACK_MM),
        "log_nodule_volume": math.log(float(mask.sum()) * voxel_mm3),
        "logit": math.log(p / (1 - p)),
    }


@dataclass(frozen=True)
class VerdictRule:
    """A logistic verdict rule: ``aligned`` when ``intercept + sum(coef * (x - mean) / scale)
    >= 0`` for the features *features* of the map *method* at *layer*.

    Attributes
    ----------
    method, layer : str, str or None
        The map the rule reads (:data:`discovery.explain.methods.METHODS`; None: the card's
        layer).
    features : tuple of str
        Names from :data:`RULE_FEATURES`.
    mean, scale, coef : tuple of float
        One per feature: the standardisation and the logistic weights.
    intercept : float
    provenance : dict
        Where it was fitted (cohorts, nodules, those resting on the nodule, the balanced
        accuracy there), for the card and the docs; not used to decide.
    """

    method: str
    layer: str | None
    features: tuple[str, ...]
    mean: tuple[float, ...]
    scale: tuple[float, ...]
    coef: tuple[float, ...]
    intercept: float
    provenance: dict = field(default_factory=dict, compare=False)

    def __post_init__(self):
        n = len(self.features)
        unknown = [f for f in self.features if f not in RULE_FEATURES]
        if n == 0 or unknown:
            raise ValueError(f"a verdict rule needs features from {RULE_FEATURES}; received "
                             f"{list(self.features)}")
        for name in ("mean", "scale", "coef"):
            values = getattr(self, name)
            if len(values) != n or not all(math.isfinite(float(v)) for v in values):
                raise ValueError(f"verdict rule {name} needs {n} finite values (one per feature); "
                                 f"received {list(values)}")
        if any(float(s) <= 0 for s in self.scale) or not math.isfinite(float(self.intercept)):
            raise ValueError("verdict rule scales must be positive and its intercept finite; "
                             f"received scale {list(self.scale)}, intercept {self.intercept!r}")

    def score(self, values: dict[str, float]) -> float:
        """The logistic's linear score for *values* (:func:`verdict_features`); >= 0: aligned."""
        z = [(float(values[f]) - m) / s for f, m, s in zip(self.features, self.mean, self.scale)]
        return float(self.intercept + sum(c * v for c, v in zip(self.coef, z)))

    def aligned(self, values: dict[str, float]) -> bool:
        """Whether the rule calls the map aligned with the nodule."""
        return self.score(values) >= 0.0

    def to_dict(self) -> dict:
        return {"method": self.method, "layer": self.layer, "features": list(self.features),
                "mean": list(self.mean), "scale": list(self.scale), "coef": list(self.coef),
                "intercept": self.intercept, "provenance": dict(self.provenance)}

    @classmethod
    def from_dict(cls, data: dict) -> "VerdictRule":
        """The rule of a model card's ``verdict_rule``; ValueError naming what is missing."""
        missing = [k for k in ("method", "features", "mean", "scale", "coef", "intercept")
                   if k not in data]
        if missing:
            raise ValueError(f"the verdict_rule of the model card (or sidecar) lacks "
                             f"{', '.join(missing)}; fit it again with `discovery model "
                             "calibrate`")
        return cls(method=str(data["method"]), layer=data.get("layer"),
                   features=tuple(data["features"]),
                   mean=tuple(float(v) for v in data["mean"]),
                   scale=tuple(float(v) for v in data["scale"]),
                   coef=tuple(float(v) for v in data["coef"]),
                   intercept=float(data["intercept"]),
                   provenance=dict(data.get("provenance", {})))


def fit_verdict_rule(values: Sequence[dict[str, float]], rests: Sequence[bool], *,
                     features: Sequence[str], method: str, layer: str | None,
                     provenance: dict | None = None) -> VerdictRule:
    """Fit a :class:`VerdictRule` to nodules whose reliance was measured.

    Parameters
    ----------
    values : sequence of dict
        :func:`verdict_features` of each predicted-malignant nodule.
    rests : sequence of bool
        Whether its prediction rests on it (``rests_on_nodule``); both classes needed.
    features : sequence of str
        Names from :data:`RULE_FEATURES`.
    method, layer : str, str or None
        The map the features were read from.
    provenance : dict, optional
        Stored with the rule.

    Returns
    -------
    VerdictRule
        Class-balanced logistic regression (scikit-learn, L2, C = 1) on the standardised
        features.
    """
    from sklearn.linear_model import LogisticRegression

    y = np.asarray(rests, dtype=bool)
    if len(values) != len(y) or y.all() or not y.any():
        raise ValueError(f"fitting a verdict rule needs nodules of both kinds (resting on the "
                         f"nodule and not), one value set each; received {len(values)} value "
                         f"sets, {int(y.sum())} of {len(y)} resting")
    x = np.array([[float(v[f]) for f in features] for v in values])
    mean, scale = x.mean(axis=0), x.std(axis=0)
    scale = np.where(scale > 0, scale, 1.0)
    fitted = LogisticRegression(class_weight="balanced", max_iter=5000).fit((x - mean) / scale, y)
    return VerdictRule(method=method, layer=layer, features=tuple(features),
                       mean=tuple(float(v) for v in mean), scale=tuple(float(v) for v in scale),
                       coef=tuple(float(v) for v in fitted.coef_[0]),
                       intercept=float(fitted.intercept_[0]), provenance=dict(provenance or {}))


def ruled_alignment(alignment: Alignment, aligned: bool) -> Alignment:
    """*alignment* with the verdict a :class:`VerdictRule` gave.

    ``aligned`` when the rule says so; a threshold verdict ``aligned`` the rule refuses
    becomes ``partial``; ``partial`` and ``off-mask`` stay as the thresholds gave them.  The
    metrics (relevance mass, pointing game, near mass) are the thresholds' map's, unchanged.
    A verdict without metrics (``no-mask``, ``no-attribution``) is returned as it is.
    """
    if alignment.status != "ok":
        return alignment
    if aligned:
        verdict = "aligned"
    elif alignment.verdict == "aligned":
        verdict = "partial"
    else:
        verdict = alignment.verdict
    return dataclasses.replace(alignment, verdict=verdict)


def describe_fit(provenance: dict) -> str:
    """Where a rule was fitted, in words (``"221 nodules of 80 cases, balanced accuracy 0.90
    there"``); ``""`` when its provenance does not say."""
    if not {"nodules", "balanced_accuracy"} <= set(provenance):
        return ""
    cases = f" of {provenance['cases']} cases" if "cases" in provenance else ""
    return (f"{provenance['nodules']} nodules{cases}, balanced accuracy "
            f"{provenance['balanced_accuracy']:.2f} there")


def describe_verdict_rule(rule: VerdictRule) -> str:
    """The rule in words, for reports and the app: which map, which features, where fitted."""
    fit = describe_fit(rule.provenance)
    fitted = f" ({fit})" if fit else ""
    words = [FEATURE_WORDS[f] for f in rule.features]
    listed = ", ".join(words[:-1]) + " and " + words[-1] if len(words) > 1 else words[0]
    return (f"for predicted-malignant nodules 'aligned' is decided by this model's verdict rule: "
            f"its {rule.method} map at {rule.layer or 'the card layer'} read through {listed}, "
            "fitted to where replacing the nodule was measured to take away at least half of "
            f"P(malignant){fitted}; where the rule says no, an 'aligned' becomes 'partial'")
