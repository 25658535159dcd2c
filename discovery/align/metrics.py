"""Agreement between an attribution map and an annotated nodule mask.

All functions take an attribution map ``attr`` (raw, non-negative magnitudes such as a
ReLU'd Grad-CAM upsampled to the CT grid) and a mask on the same ``(z, y, x)`` grid.
Attribution is never renormalised here: every metric below is a ratio or a location,
so multiplying ``attr`` by a positive constant leaves all of them unchanged.

Notation: ``a`` is the attribution, ``M`` the set of mask voxels, ``V`` all voxels.

* **Relevance mass** (RMA): ``sum_M a / sum_V a``.
* **Relevance rank** (RRA): with ``K = |M|``, the fraction of the ``K`` highest-attribution
  voxels that lie in ``M``.
* **Pointing game**: does the voxel of maximum attribution lie in ``M`` (or within a
  physical tolerance of it)?
* **Peak distance**: Euclidean distance in mm from that voxel to the nearest mask voxel.
* **Near mass**: the share of attribution within a physical margin of ``M``.

Distances are measured between voxel *centres* with
:func:`scipy.ndimage.distance_transform_edt` on ``~mask`` with ``sampling=spacing_mm``, so
anisotropic voxels are handled in millimetres.  :func:`align` computes that distance map
once and derives every distance-based summary from it.

Degenerate inputs are explicit: an empty mask or an all-zero map gives NaN for every metric
(never a silent 0 or 1), and :func:`align` says why in ``verdict`` and ``status``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from data_tools.checks import check_nonneg, check_spacing
from discovery.model.edit import bounding_box, grow_mm  # also re-exported (align.*)

__all__ = [
    "relevance_mass",
    "relevance_rank",
    "pointing_game",
    "peak_distance_mm",
    "near_mass",
    "near_share",
    "peak_index",
    "distance_to_mask_mm",
    "grow_mm",
    "AlignThresholds",
    "Alignment",
    "align",
    "VERDICTS",
    "Agreement",
    "MIN_VERDICT_AGREEMENT",
    "describe_agreement",
    "verdict_agreement",
    "describe_verdicts",
]

#: Every verdict :func:`align` can return.
VERDICTS = ("aligned", "partial", "off-mask", "no-mask", "no-attribution")

STATUS_OK = "ok"
STATUS_NO_MASK = "empty mask: no annotated voxels for this nodule"
STATUS_NO_ATTR = "attribution is zero everywhere"

#: Slack (mm) added to distance comparisons so that a voxel exactly at the tolerance or
#: margin is not lost to floating-point rounding in the distance transform.
DISTANCE_SLACK_MM = 1e-6


# --------------------------------------------------------------------------- validation


def check_map_and_mask(attr, mask) -> tuple[np.ndarray, np.ndarray]:
    """Validate an (attr, mask) pair; return float64 attr and bool mask."""
    attr = np.asarray(attr)
    mask = np.asarray(mask)
    if attr.ndim != 3:
        raise ValueError(f"attr must be a 3-D (z, y, x) array; received shape {attr.shape}")
    if attr.shape != mask.shape:
        raise ValueError(
            f"attr and mask must have the same (z, y, x) shape; received attr {attr.shape} "
            f"and mask {mask.shape}"
        )
    if attr.dtype.kind not in "biuf":
        raise ValueError(f"attr must be a real numeric array; received dtype {attr.dtype}")
    if mask.dtype.kind not in "biu":
        raise ValueError(
            f"mask must be bool or integer (nonzero = inside); received dtype {mask.dtype}. "
            "Threshold a probabilistic mask before calling."
        )
    attr = attr.astype(np.float64, copy=False)
    if not np.all(np.isfinite(attr)):
        n_bad = int(np.count_nonzero(~np.isfinite(attr)))
        raise ValueError(f"attr must be finite; received {n_bad} NaN or infinite voxel(s)")
    if attr.size and attr.min() < 0:
        raise ValueError(
            f"attr must be non-negative; received a minimum of {attr.min():.6g}. "
            "Apply ReLU (np.maximum(attr, 0)) to the attribution map first."
        )
    return attr, mask.astype(bool, copy=False)


def _distance_to_mask_mm(mask: np.ndarray, spacing_mm) -> np.ndarray:
    """Distance (mm) from every voxel centre to the nearest mask voxel centre; 0 inside.

    The single expensive pass.  ``mask`` must be non-empty.
    """
    return ndimage.distance_transform_edt(~mask, sampling=spacing_mm)


def distance_to_mask_mm(mask, spacing_mm) -> np.ndarray:
    """The distance map that :func:`align` and
    :func:`discovery.align.localization.localization_summary` share.

    Compute it once and pass it to both as ``distance_mm=`` when a caller needs both
    summaries of the same mask (the pipeline does): the Euclidean distance transform is the
    only expensive step of either.

    Parameters
    ----------
    mask : ndarray of bool or int, shape (z, y, x)
        Annotated nodule, non-empty.
    spacing_mm : sequence of 3 floats
        Voxel size ``(dz, dy, dx)`` in mm.

    Returns
    -------
    ndarray, shape (z, y, x), float64
        Distance in mm from every voxel centre to the nearest mask voxel centre; 0 inside.
    """
    mask = np.asarray(mask)
    if mask.ndim != 3 or mask.dtype.kind not in "biu":
        raise ValueError("mask must be a 3-D bool or integer (z, y, x) array; received "
                         f"shape {mask.shape}, dtype {mask.dtype}")
    if not mask.any():
        raise ValueError("mask is empty: the distance to it is undefined")
    return _distance_to_mask_mm(mask.astype(bool, copy=False), check_spacing(spacing_mm))


def check_distance(distance_mm, mask: np.ndarray) -> np.ndarray:
    """A caller's precomputed distance map, checked against *mask*'s grid."""
    distance_mm = np.asarray(distance_mm)
    if distance_mm.shape != mask.shape or distance_mm.dtype.kind != "f":
        raise ValueError(
            "distance_mm must be the float (z, y, x) map of distance_to_mask_mm(mask, "
            f"spacing_mm) on the mask's grid {mask.shape}; received shape "
            f"{distance_mm.shape}, dtype {distance_mm.dtype}")
    return distance_mm


def peak_index(attr: np.ndarray) -> tuple[int, int, int]:
    """Index of the maximum; the first in C order when several voxels share it."""
    z, y, x = np.unravel_index(int(np.argmax(attr)), attr.shape)
    return int(z), int(y), int(x)


def is_degenerate(attr: np.ndarray, mask: np.ndarray) -> bool:
    return (not mask.any()) or float(attr.sum()) == 0.0


# ------------------------------------------------------------------------ single metrics


def relevance_mass(attr, mask) -> float:
    """Relevance mass accuracy: the share of attribution inside the mask.

    Parameters
    ----------
    attr : ndarray, shape (z, y, x)
        Non-negative, finite attribution magnitudes (arbitrary units).
    mask : ndarray of bool or int, shape (z, y, x)
        Annotated nodule; nonzero voxels are inside.

    Returns
    -------
    float
        ``sum_M a / sum_V a`` in [0, 1]; NaN when the mask is empty or ``attr`` sums to 0.

    Raises
    ------
    ValueError
        On shape mismatch, non-finite or negative ``attr``, or a non-integer mask.
    """
    attr, mask = check_map_and_mask(attr, mask)
    if is_degenerate(attr, mask):
        return math.nan
    return float(attr[mask].sum() / attr.sum())


def relevance_rank(attr, mask) -> float:
    """Relevance rank accuracy: the fraction of the ``|M|`` top-ranked voxels inside the mask.

    Parameters
    ----------
    attr : ndarray, shape (z, y, x)
        Non-negative, finite attribution magnitudes.
    mask : ndarray of bool or int, shape (z, y, x)
        Annotated nodule; nonzero voxels are inside.

    Returns
    -------
    float
        In [0, 1]; NaN when the mask is empty or ``attr`` is zero everywhere.

    Notes
    -----
    Voxels are ranked by a *stable* sort on ``-attr`` over the C-order (z, then y, then x)
    flattening, so among voxels of equal attribution the one with the smaller flat index
    ranks first.  On maps with large plateaus (e.g. a coarse Grad-CAM upsampled with
    nearest-neighbour interpolation) the result therefore depends on that order; the
    answer is deterministic, not tie-averaged.
    """
    attr, mask = check_map_and_mask(attr, mask)
    if is_degenerate(attr, mask):
        return math.nan
    return rank_share(attr, mask)


def rank_share(attr: np.ndarray, mask: np.ndarray) -> float:
    k = int(np.count_nonzero(mask))
    top = np.argsort(-attr.ravel(), kind="stable")[:k]
    return float(np.count_nonzero(mask.ravel()[top]) / k)


def pointing_game(attr, mask, spacing_mm, tolerance_mm: float = 0.0) -> float:
    """Whether the attribution peak falls on (or within a tolerance of) the mask.

    Parameters
    ----------
    attr : ndarray, shape (z, y, x)
        Non-negative, finite attribution magnitudes.
    mask : ndarray of bool or int, shape (z, y, x)
        Annotated nodule; nonzero voxels are inside.
    spacing_mm : sequence of 3 floats
        Voxel size ``(dz, dy, dx)`` in mm.
    tolerance_mm : float, optional
        A peak whose centre is within this Euclidean distance (mm, inclusive) of a mask
        voxel centre counts as a hit.  0 means the peak must lie inside the mask.

    Returns
    -------
    float
        1.0 for a hit, 0.0 for a miss, NaN when the mask is empty or ``attr`` is all zero.

    Notes
    -----
    When several voxels share the maximum, the first in C order is the peak.
    """
    attr, mask = check_map_and_mask(attr, mask)
    spacing_mm = check_spacing(spacing_mm)
    tolerance_mm = check_nonneg(tolerance_mm, "tolerance_mm")
    if is_degenerate(attr, mask):
        return math.nan
    d = float(_distance_to_mask_mm(mask, spacing_mm)[peak_index(attr)])
    return 1.0 if d <= tolerance_mm + DISTANCE_SLACK_MM else 0.0


def peak_distance_mm(attr, mask, spacing_mm) -> float:
    """Distance in mm from the attribution peak to the nearest mask voxel.

    Parameters
    ----------
    attr : ndarray, shape (z, y, x)
        Non-negative, finite attribution magnitudes.
    mask : ndarray of bool or int, shape (z, y, x)
        Annotated nodule; nonzero voxels are inside.
    spacing_mm : sequence of 3 floats
        Voxel size ``(dz, dy, dx)`` in mm.

    Returns
    -------
    float
        Euclidean distance between voxel centres in mm; 0 when the peak is inside the mask;
        NaN when the mask is empty or ``attr`` is all zero.

    Notes
    -----
    When several voxels share the maximum, the first in C order is the peak.
    """
    attr, mask = check_map_and_mask(attr, mask)
    spacing_mm = check_spacing(spacing_mm)
    if is_degenerate(attr, mask):
        return math.nan
    dist = _distance_to_mask_mm(mask, spacing_mm)
    return float(dist[peak_index(attr)])


def near_mass(attr, mask, spacing_mm, margin_mm: float) -> float:
    """Share of attribution within a physical margin of the mask.

    Parameters
    ----------
    attr : ndarray, shape (z, y, x)
        Non-negative, finite attribution magnitudes.
    mask : ndarray of bool or int, shape (z, y, x)
        Annotated nodule; nonzero voxels are inside.
    spacing_mm : sequence of 3 floats
        Voxel size ``(dz, dy, dx)`` in mm.
    margin_mm : float
        Voxels whose centre is within this distance (mm, inclusive) of a mask voxel centre
        count as near; the mask itself is always included.  ``margin_mm=0`` equals RMA.

    Returns
    -------
    float
        In [0, 1]; NaN when the mask is empty or ``attr`` is all zero.
    """
    attr, mask = check_map_and_mask(attr, mask)
    spacing_mm = check_spacing(spacing_mm)
    margin_mm = check_nonneg(margin_mm, "margin_mm")
    if is_degenerate(attr, mask):
        return math.nan
    dist = _distance_to_mask_mm(mask, spacing_mm)
    return near_share(attr, dist, margin_mm)


def near_share(attr: np.ndarray, dist: np.ndarray, margin_mm: float) -> float:
    """Share of *attr* where the distance map *dist* is within *margin_mm* (with
    :data:`DISTANCE_SLACK_MM`): :func:`near_mass` from a distance map already made."""
    near = dist <= margin_mm + DISTANCE_SLACK_MM
    return float(attr[near].sum() / attr.sum())


# ------------------------------------------------------------------------------ verdict


@dataclass(frozen=True)
class AlignThresholds:
    """Thresholds turning the alignment metrics into a verdict.

    Attributes
    ----------
    pointing_tolerance_mm : float
        Tolerance of the pointing game (mm).  Grad-CAM at ``layer3`` lives on 6 mm cells once
        upsampled to the CT, so a peak a cell or so off a nodule is still "looking at it".
    near_margin_mm : float
        Margin (mm) defining "near the mask" for :func:`near_mass`.
    aligned_near_mass : float
        Minimum near mass for "aligned" (with a pointing hit).
    offmask_near_mass : float
        Near mass below which a pointing miss is "off-mask".

    Notes
    -----
    Why not RMA?  A coarse map spreads a cell's value over all voxels it covers, so a
    nodule of a few millimetres can never hold most of the attribution even when the
    model clearly looks at it: RMA is reported but does not decide the verdict.  The
    verdict combines where the peak is (pointing game with a tolerance) with how much
    attribution lies near the nodule (near mass).

    **Calibrated to the model's behaviour.**  The defaults (10 mm, 10 mm, 0.60, 0.30) were
    fitted so that ``aligned`` agrees with "the prediction rests on the nodule"
    (:mod:`discovery.model.reliance`: removing the nodule takes away at least half of the
    probability, beyond a volume-matched control) on predicted-malignant nodules of
    *calibration* cohorts only: the demo model on demo-like cohorts of seeds 101 and 102 and
    the discovery benchmark's seed-2 model on its test-like cohort of seed 20002 (161
    nodules, 37 resting on the nodule), by the largest pooled balanced accuracy over a grid
    of margins 0-15 mm, tolerances 0-15 mm and cut-offs 0-1 (0.790; settings within 0.005
    of the best count as tied, and the margin nearest the former 5 mm wins);
    ``offmask_near_mass`` keeps half the aligned cut-off, as before
    (``benchmarks/verdict_agreement.py``).  Nothing is tuned per planted kind.  The former
    defaults (4 mm, 5 mm, 0.5, 0.25) agreed with the reliance at balanced accuracy 0.51 on
    the demo cohort; the landscape is flat (every margin from 2 to 15 mm reaches 0.75-0.79
    on the calibration cohorts) and no setting of this rule reaches 0.9: at 6 mm cells a
    map cannot tell the nodule from a bead 9-16 mm away, and a layer-3 cell sees far beyond
    its 6 mm (docs/method/metrics-and-verdicts.md).
    """

    pointing_tolerance_mm: float = 10.0
    near_margin_mm: float = 10.0
    aligned_near_mass: float = 0.60
    offmask_near_mass: float = 0.30

    def __post_init__(self):
        check_nonneg(self.pointing_tolerance_mm, "pointing_tolerance_mm")
        check_nonneg(self.near_margin_mm, "near_margin_mm")
        for name in ("aligned_near_mass", "offmask_near_mass"):
            v = check_nonneg(getattr(self, name), name)
            if v > 1.0:
                raise ValueError(f"{name} must be a share in [0, 1]; received {v!r}")
        if self.offmask_near_mass > self.aligned_near_mass:
            raise ValueError(
                "offmask_near_mass must not exceed aligned_near_mass; received "
                f"offmask_near_mass={self.offmask_near_mass!r}, "
                f"aligned_near_mass={self.aligned_near_mass!r}"
            )


@dataclass(frozen=True)
class Alignment:
    """Alignment of one attribution map with one nodule mask.

    Attributes
    ----------
    rma : float
        Relevance mass, in [0, 1].
    rra : float
        Relevance rank, in [0, 1].
    pointing_hit : float
        1.0 / 0.0: pointing game *with* ``thresholds.pointing_tolerance_mm``.
        (The strict, zero-tolerance hit is ``peak_distance_mm == 0``.)
    peak_distance_mm : float
        Distance (mm) from the attribution peak to the nearest mask voxel; 0 inside.
    near_mass : float
        Share of attribution within ``thresholds.near_margin_mm`` of the mask.
    verdict : str
        One of :data:`VERDICTS`.
    status : str
        ``"ok"``, or why the metrics are NaN.

    All metrics are NaN when ``status != "ok"``.
    """

    rma: float
    rra: float
    pointing_hit: float
    peak_distance_mm: float
    near_mass: float
    verdict: str
    status: str


def _nan_alignment(verdict: str, status: str) -> Alignment:
    nan = math.nan
    return Alignment(nan, nan, nan, nan, nan, verdict, status)


def align(attr, mask, *, spacing_mm, thresholds: AlignThresholds = AlignThresholds(),
          distance_mm=None) -> Alignment:
    """Compare an attribution map with a nodule mask and give a verdict.

    Parameters
    ----------
    attr : ndarray, shape (z, y, x)
        Non-negative, finite attribution magnitudes (not renormalised here).
    mask : ndarray of bool or int, shape (z, y, x)
        Annotated nodule; nonzero voxels are inside.
    spacing_mm : sequence of 3 floats
        Voxel size ``(dz, dy, dx)`` in mm.
    thresholds : AlignThresholds, optional
        Tolerance, margin and near-mass cut-offs of the verdict.
    distance_mm : ndarray, shape (z, y, x), optional
        :func:`distance_to_mask_mm` of the same mask and spacing, when the caller already
        has it; computed here otherwise.

    Returns
    -------
    Alignment
        Verdict, in order of precedence:

        * ``"no-mask"``: the mask is empty (all metrics NaN);
        * ``"no-attribution"``: ``attr`` sums to 0 (all metrics NaN);
        * ``"aligned"``: pointing hit within the tolerance and
          ``near_mass >= aligned_near_mass``;
        * ``"off-mask"``: pointing miss and ``near_mass < offmask_near_mass``;
        * ``"partial"``: anything else.

    Raises
    ------
    ValueError
        On shape mismatch, non-finite or negative ``attr``, a non-integer mask, or bad
        ``spacing_mm``.

    Notes
    -----
    One Euclidean distance transform of ``~mask`` (the only expensive step) feeds the
    peak distance, the pointing game and the near mass.
    """
    attr, mask = check_map_and_mask(attr, mask)
    spacing_mm = check_spacing(spacing_mm)
    if not isinstance(thresholds, AlignThresholds):
        raise ValueError(
            f"thresholds must be an AlignThresholds; received {type(thresholds).__name__}"
        )
    if not mask.any():
        return _nan_alignment("no-mask", STATUS_NO_MASK)
    total = float(attr.sum())
    if total == 0.0:
        return _nan_alignment("no-attribution", STATUS_NO_ATTR)

    dist = (_distance_to_mask_mm(mask, spacing_mm) if distance_mm is None  # the one expensive pass
            else check_distance(distance_mm, mask))
    rma = float(attr[mask].sum() / total)
    rra = rank_share(attr, mask)
    peak_d = float(dist[peak_index(attr)])
    hit = peak_d <= thresholds.pointing_tolerance_mm + DISTANCE_SLACK_MM
    near = near_share(attr, dist, thresholds.near_margin_mm)

    if hit and near >= thresholds.aligned_near_mass:
        verdict = "aligned"
    elif not hit and near < thresholds.offmask_near_mass:
        verdict = "off-mask"
    else:
        verdict = "partial"
    return Alignment(
        rma=rma,
        rra=rra,
        pointing_hit=1.0 if hit else 0.0,
        peak_distance_mm=peak_d,
        near_mass=near,
        verdict=verdict,
        status=STATUS_OK,
    )


@dataclass(frozen=True)
class Agreement:
    """How well ``verdict == "aligned"`` agrees with "the prediction rests on the nodule".

    Attributes
    ----------
    balanced_accuracy : float
        Mean of ``sensitivity`` and ``specificity``; NaN when either class is empty.
    sensitivity : float
        Share of the nodules that rest on the nodule whose verdict is ``aligned``.
    specificity : float
        Share of the nodules that do not whose verdict is not ``aligned``.
    n, n_rests : int
        Nodules compared (predicted malignant, reliance measured) and how many rest on the
        nodule.
    """

    balanced_accuracy: float
    sensitivity: float
    specificity: float
    n: int
    n_rests: int


def verdict_agreement(verdicts, rests_on_nodule, predicted_label) -> Agreement:
    """Agreement of the verdicts with the reliance measure on predicted-malignant nodules.

    Parameters
    ----------
    verdicts : sequence of str, shape (n,)
        :func:`align` verdicts.
    rests_on_nodule : sequence of float, shape (n,)
        1 / 0 / NaN (:class:`discovery.model.reliance.Reliance`); NaN rows are left out.
    predicted_label : sequence of int, shape (n,)
        1 for predicted malignant; only those rows are compared.

    Returns
    -------
    Agreement
    """
    verdicts = np.asarray(verdicts, dtype=object)
    rests = np.asarray(rests_on_nodule, dtype=float)
    predicted = np.asarray(predicted_label, dtype=float)
    if not (verdicts.shape == rests.shape == predicted.shape) or verdicts.ndim != 1:
        raise ValueError("verdicts, rests_on_nodule and predicted_label must be 1-D of one "
                         f"length; received {verdicts.shape}, {rests.shape}, {predicted.shape}")
    keep = (predicted == 1) & np.isfinite(rests)
    aligned, truth = verdicts[keep] == "aligned", rests[keep] >= 0.5
    sens = float(aligned[truth].mean()) if truth.any() else math.nan
    spec = float((~aligned[~truth]).mean()) if (~truth).any() else math.nan
    return Agreement(balanced_accuracy=(sens + spec) / 2, sensitivity=sens, specificity=spec,
                     n=int(keep.sum()), n_rests=int(truth.sum()))


#: Balanced accuracy under which :func:`describe_agreement` calls the verdicts weak evidence of
#: what the model does (issue 18's target for the agreement).
MIN_VERDICT_AGREEMENT = 0.9


def describe_agreement(agreement: Agreement) -> tuple[str, bool]:
    """*agreement* in one plain sentence for the app and the reports, and whether it is weak.

    Parameters
    ----------
    agreement : Agreement
        :func:`verdict_agreement` of a cohort.

    Returns
    -------
    sentence : str
        What was compared, the balanced accuracy with its sensitivity and specificity (or,
        when one class is empty, the one share that can be measured), and what to make of it.
    weak : bool
        True when the balanced accuracy is below :data:`MIN_VERDICT_AGREEMENT`, or when only
        one class exists and its share is: then an ``aligned`` verdict alone is weak evidence
        that the prediction rests on the nodule.  False when nothing could be compared.
    """
    a = agreement
    if a.n == 0:
        return ("Whether the verdicts agree with what the model does could not be measured: "
                "no predicted-malignant nodule has a measured reliance on the nodule.", False)
    what = (f"Do the verdicts agree with what the model does? Of {a.n} predicted-malignant "
            f"nodule{'s' if a.n != 1 else ''} with a measured reliance, {a.n_rests} rest"
            f"{'s' if a.n_rests == 1 else ''} on the nodule (replacing it with lung parenchyma "
            "takes away at least half of P(malignant), beyond a control's change); ")
    if math.isfinite(a.balanced_accuracy):
        score = a.balanced_accuracy
        told = (f"'aligned' agrees with that at balanced accuracy {score:.2f} (sensitivity "
                f"{a.sensitivity:.2f}, specificity {a.specificity:.2f})")
    elif a.n_rests:
        score = a.sensitivity
        told = f"{a.sensitivity:.0%} of them are 'aligned'"
    else:
        score = a.specificity
        told = f"{1 - a.specificity:.0%} of them are nevertheless 'aligned'"
    weak = not score >= MIN_VERDICT_AGREEMENT
    tail = (" A verdict alone is therefore weak evidence that a prediction rests on its "
            "nodule on this cohort: the 'On the tumour' outcome asks for both. Calibrating "
            "the model on scans of its kind (discovery model calibrate) fits it a verdict rule "
            "to this measure."
            if weak else " The verdicts can be read as what the model uses.")
    return what + told + "." + tail, weak


def describe_verdicts(thresholds: AlignThresholds = AlignThresholds()) -> str:
    """The verdict rule of *thresholds* in words, for reports and the app (so that the text
    always says what :func:`align` does): ``"aligned (the attribution peak within 10 mm of the
    mask and at least 60 % of the attention within 10 mm of it), off-mask (...), partial
    otherwise"``."""
    t = thresholds
    near = f"{t.near_margin_mm:g} mm of it"
    return (f"aligned (the attribution peak within {t.pointing_tolerance_mm:g} mm of the mask "
            f"and at least {t.aligned_near_mass:.0%} of the attention within {near}), "
            f"off-mask (the peak further away and less than {t.offmask_near_mass:.0%} of the "
            f"attention within {near}), partial otherwise")
