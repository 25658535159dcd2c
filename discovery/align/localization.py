"""Localisation summaries of an attribution map against a nodule mask, beyond :mod:`align`.

Same conventions as :mod:`discovery.align.metrics`: ``attr`` holds raw, finite, non-negative
attribution magnitudes and ``mask`` a bool or integer nodule mask (nonzero = inside), both on
the same ``(z, y, x)`` grid; ``spacing_mm`` is ``(dz, dy, dx)`` in mm.  Nothing is
renormalised and every summary is a share, a rank statistic or an overlap, so multiplying
``attr`` by a positive constant leaves it unchanged.

Notation: ``a`` is the attribution, ``M`` the set of mask voxels, ``V`` all voxels.

* **Top-k intersection**: the share of the ``k`` highest-attribution voxels that lie in
  ``M``; ``k = |M|`` (the default) is relevance rank accuracy.
* **Detection AUC**: ROC AUC of ``a`` used as a voxelwise detector of ``M`` (Mann-Whitney U
  with average ranks for ties, so a constant map scores 0.5).
* **Otsu overlap**: Dice and IoU between ``M`` and ``a > t``, with ``t`` Otsu's threshold on
  a 256-bin histogram of ``a`` (Saporta et al. 2022 report Otsu-thresholded IoU).
* **Ring shares**: the share of attribution inside ``M`` and in shells at a physical
  distance ``(lo, hi]`` mm from it, distances measured between voxel centres with
  :func:`scipy.ndimage.distance_transform_edt` on ``~mask`` with ``sampling=spacing_mm``
  (as in :func:`discovery.align.metrics.near_mass`, so ``inside + ring (0, m] == near_mass(m)``).

Degenerate inputs are explicit: an empty mask or an all-zero map gives NaN (never a silent 0
or 1); :func:`localization_summary` says why in ``status``.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import asdict, dataclass
from typing import NamedTuple

import numpy as np

from data_tools.checks import check_spacing
from discovery.align.metrics import (
    DISTANCE_SLACK_MM,
    STATUS_NO_ATTR,
    STATUS_NO_MASK,
    STATUS_OK,
    check_distance,
    check_map_and_mask,
    distance_to_mask_mm,
    is_degenerate,
    rank_share,
)

__all__ = [
    "DEFAULT_RINGS_MM",
    "OTSU_BINS",
    "Overlap",
    "RingShares",
    "Localization",
    "top_k_intersection",
    "detection_auc",
    "otsu_threshold",
    "otsu_overlap",
    "ring_shares",
    "localization_summary",
]

#: Shells (lo, hi] in mm around the mask used by :func:`ring_shares` and, always, by
#: :func:`localization_summary` (its ``ring_*`` fields).
DEFAULT_RINGS_MM: tuple[tuple[float, float], ...] = ((0.0, 5.0), (5.0, 10.0), (10.0, 20.0))

#: Number of histogram bins of the Otsu threshold (as skimage.filters.threshold_otsu).
OTSU_BINS = 256


class Overlap(NamedTuple):
    """Overlap of the Otsu-thresholded map ``a > threshold`` with the mask.

    Attributes
    ----------
    dice : float
        ``2 |F & M| / (|F| + |M|)`` in [0, 1], ``F`` the voxels above the threshold.
    iou : float
        ``|F & M| / |F | M|`` in [0, 1].
    threshold : float
        Otsu's threshold, in the units of ``attr`` (so it scales with ``attr``).
    """

    dice: float
    iou: float
    threshold: float


class RingShares(NamedTuple):
    """Share of total attribution inside the mask and in shells around it.

    Attributes
    ----------
    inside : float
        ``sum_M a / sum_V a`` (relevance mass).
    rings : tuple of float
        One share per shell, in the order of ``rings_mm``.
    rings_mm : tuple of (float, float)
        The shells ``(lo, hi]`` in mm, as validated.
    """

    inside: float
    rings: tuple[float, ...]
    rings_mm: tuple[tuple[float, float], ...]


# --------------------------------------------------------------------------- validation


def _check_k(k, n_voxels: int) -> int:
    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or not 1 <= k <= n_voxels:
        raise ValueError(
            f"k must be an integer in [1, {n_voxels}] (the number of voxels) or None; "
            f"received {k!r}"
        )
    return int(k)


def _check_rings(rings_mm) -> tuple[tuple[float, float], ...]:
    msg = (
        "rings_mm must be a non-empty sequence of (lo, hi) pairs in mm with "
        "0 <= lo < hi (hi may be math.inf); received {!r}"
    )
    try:
        rings = tuple((float(lo), float(hi)) for lo, hi in rings_mm)
    except (TypeError, ValueError):
        raise ValueError(msg.format(rings_mm)) from None
    if not rings or not all(
        math.isfinite(lo) and lo >= 0 and not math.isnan(hi) and hi > lo for lo, hi in rings
    ):
        raise ValueError(msg.format(rings_mm))
    return rings


# ------------------------------------------------------------------- cheap computations


def _topk_share(attr: np.ndarray, mask: np.ndarray, k: int) -> float:
    top = np.argsort(-attr.ravel(), kind="stable")[:k]
    return float(np.count_nonzero(mask.ravel()[top]) / k)


def average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks of *x* (1-D), ties given their average rank: ``scipy.stats.rankdata(x,
    method="average")``, computed here so that scoring does not import ``scipy.stats``
    (about 45 MiB) for it."""
    x = np.asarray(x).ravel()
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    starts = np.flatnonzero(np.r_[True, xs[1:] != xs[:-1]])
    bounds = np.r_[starts, x.size]
    avg = (bounds[:-1] + bounds[1:] + 1) / 2.0            # mean of ranks start+1 .. end
    ranks = np.empty(x.size, dtype=np.float64)
    ranks[order] = np.repeat(avg, np.diff(bounds))
    return ranks


def _auc(attr: np.ndarray, mask: np.ndarray) -> float:
    n_pos = int(np.count_nonzero(mask))
    n_neg = mask.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    ranks = average_ranks(attr.ravel())
    u = float(ranks[mask.ravel()].sum()) - n_pos * (n_pos + 1) / 2.0
    return u / (float(n_pos) * float(n_neg))


def _otsu(attr: np.ndarray) -> float:
    """Otsu's threshold over ``OTSU_BINS`` bins spanning [min, max]; NaN for a constant map.

    Maximises the between-class variance ``w1 w2 (m1 - m2)^2`` over the cut between two
    adjacent bins and returns the centre of the last bin of the lower class (the algorithm
    of skimage.filters.threshold_otsu, in float64).
    """
    lo, hi = float(attr.min()), float(attr.max())
    if lo == hi:
        return math.nan
    counts, edges = np.histogram(attr.ravel(), bins=OTSU_BINS, range=(lo, hi))
    counts = counts.astype(np.float64)
    centres = (edges[:-1] + edges[1:]) / 2.0
    w1 = np.cumsum(counts)
    w2 = np.cumsum(counts[::-1])[::-1]
    # w1, w2 > 0 everywhere: the first bin holds the minimum and the last the maximum.
    m1 = np.cumsum(counts * centres) / w1
    m2 = (np.cumsum((counts * centres)[::-1]) / w2[::-1])[::-1]
    between = w1[:-1] * w2[1:] * (m1[:-1] - m2[1:]) ** 2
    return float(centres[int(np.argmax(between))])


def _overlap(attr: np.ndarray, mask: np.ndarray) -> Overlap:
    t = _otsu(attr)
    if math.isnan(t):
        return Overlap(math.nan, math.nan, math.nan)
    fg = attr > t
    inter = int(np.count_nonzero(fg & mask))
    n_fg, n_m = int(np.count_nonzero(fg)), int(np.count_nonzero(mask))
    union = n_fg + n_m - inter
    return Overlap(dice=2.0 * inter / (n_fg + n_m), iou=inter / union, threshold=t)


def _rings(attr: np.ndarray, mask: np.ndarray, dist: np.ndarray, rings) -> RingShares:
    total = float(attr.sum())
    shares = []
    for lo, hi in rings:
        shell = (dist > lo + DISTANCE_SLACK_MM) & (dist <= hi + DISTANCE_SLACK_MM)
        shares.append(float(attr[shell].sum() / total))
    return RingShares(float(attr[mask].sum() / total), tuple(shares), tuple(rings))


# ------------------------------------------------------------------------ single metrics


def top_k_intersection(attr, mask, *, k: int | None = None) -> float:
    """Share of the ``k`` highest-attribution voxels that lie in the mask.

    Parameters
    ----------
    attr : ndarray, shape (z, y, x)
        Non-negative, finite attribution magnitudes (arbitrary units).
    mask : ndarray of bool or int, shape (z, y, x)
        Annotated nodule; nonzero voxels are inside.
    k : int, optional
        How many top voxels to take, in ``[1, attr.size]``.  Default ``|M|``, which makes
        this :func:`discovery.align.metrics.relevance_rank`.

    Returns
    -------
    float
        In [0, 1]; NaN when the mask is empty or ``attr`` is zero everywhere.  With
        ``k > |M|`` the score cannot exceed ``|M| / k``.

    Raises
    ------
    ValueError
        On shape mismatch, non-finite or negative ``attr``, a non-integer mask, or a ``k``
        that is not an integer in ``[1, attr.size]``.

    Notes
    -----
    Ties are broken as in :func:`discovery.align.metrics.relevance_rank`: a stable sort on ``-attr``
    over the C-order flattening, so of equal voxels the smaller flat index ranks first.
    """
    attr, mask = check_map_and_mask(attr, mask)
    if k is not None:
        k = _check_k(k, attr.size)
    if is_degenerate(attr, mask):
        return math.nan
    if k is None:
        return rank_share(attr, mask)
    return _topk_share(attr, mask, k)


def detection_auc(attr, mask) -> float:
    """ROC AUC of the attribution as a voxelwise detector of the mask.

    Parameters
    ----------
    attr : ndarray, shape (z, y, x)
        Non-negative, finite attribution magnitudes.
    mask : ndarray of bool or int, shape (z, y, x)
        Annotated nodule; nonzero voxels are inside (positives).

    Returns
    -------
    float
        The probability that a random mask voxel outranks a random non-mask voxel, ties
        counting 1/2, in [0, 1]: 1 = every mask voxel above every other voxel, 0.5 =
        chance (or a constant map).  NaN when the mask is empty, when it covers the whole
        grid (no negatives), or when ``attr`` is zero everywhere.

    Notes
    -----
    Mann-Whitney: ``(R_M - |M| (|M| + 1) / 2) / (|M| |V \\ M|)`` with ``R_M`` the sum over
    ``M`` of the average ranks (:func:`scipy.stats.rankdata`) of ``attr``.  Equals
    ``sklearn.metrics.roc_auc_score(mask.ravel(), attr.ravel())``.  Unlike the top-k scores
    it does not depend on the voxel order.
    """
    attr, mask = check_map_and_mask(attr, mask)
    if is_degenerate(attr, mask):
        return math.nan
    return _auc(attr, mask)


def otsu_threshold(attr) -> float:
    """Otsu's threshold of a map, on a 256-bin histogram spanning its [min, max].

    Parameters
    ----------
    attr : ndarray, shape (z, y, x)
        Non-negative, finite attribution magnitudes.

    Returns
    -------
    float
        Threshold in the units of ``attr``: the foreground is ``attr > threshold``.  NaN
        for a constant map (including an all-zero one).  Matches
        ``skimage.filters.threshold_otsu(attr)`` except that a constant map gives NaN
        here (skimage returns the constant).
    """
    attr, _ = check_map_and_mask(attr, np.zeros(np.shape(attr), dtype=bool))
    return _otsu(attr)


def otsu_overlap(attr, mask) -> Overlap:
    """Dice and IoU between the mask and the Otsu-thresholded map.

    Parameters
    ----------
    attr : ndarray, shape (z, y, x)
        Non-negative, finite attribution magnitudes.
    mask : ndarray of bool or int, shape (z, y, x)
        Annotated nodule; nonzero voxels are inside.

    Returns
    -------
    Overlap
        ``(dice, iou, threshold)`` with the foreground ``attr > threshold`` and the
        threshold from :func:`otsu_threshold`.  All three are NaN when the mask is empty or
        ``attr`` is constant (an all-zero map included): Otsu needs two levels.
    """
    attr, mask = check_map_and_mask(attr, mask)
    if not mask.any():
        return Overlap(math.nan, math.nan, math.nan)
    return _overlap(attr, mask)


def ring_shares(attr, mask, spacing_mm, *, rings_mm=DEFAULT_RINGS_MM) -> RingShares:
    """Share of total attribution inside the mask and in physical shells around it.

    Parameters
    ----------
    attr : ndarray, shape (z, y, x)
        Non-negative, finite attribution magnitudes.
    mask : ndarray of bool or int, shape (z, y, x)
        Annotated nodule; nonzero voxels are inside.
    spacing_mm : sequence of 3 floats
        Voxel size ``(dz, dy, dx)`` in mm.
    rings_mm : sequence of (lo, hi), optional
        Shells in mm, ``0 <= lo < hi`` (``hi`` may be ``math.inf``).  A voxel outside the
        mask whose centre lies at distance ``d`` from the nearest mask voxel centre belongs
        to the shell when ``lo < d <= hi``.  Shells may overlap or leave gaps; each share
        is computed on its own.

    Returns
    -------
    RingShares
        ``inside`` (relevance mass), ``rings`` (one share per shell, in the given order)
        and ``rings_mm``.  Shares are NaN when the mask is empty or ``attr`` is all zero.
        ``inside`` plus the shares of contiguous shells from 0 to ``m`` equals
        :func:`discovery.align.metrics.near_mass` with ``margin_mm=m``.

    Notes
    -----
    The shells follow the spacing: with ``(dz, dy, dx) = (2.5, 0.7, 0.7)`` the voxel just
    above the mask is 2.5 mm away but the one beside it 0.7 mm.
    """
    attr, mask = check_map_and_mask(attr, mask)
    spacing_mm = check_spacing(spacing_mm)
    rings = _check_rings(rings_mm)
    if is_degenerate(attr, mask):
        return RingShares(math.nan, tuple(math.nan for _ in rings), rings)
    return _rings(attr, mask, distance_to_mask_mm(mask, spacing_mm), rings)


# ------------------------------------------------------------------------------ summary


@dataclass(frozen=True)
class Localization:
    """Every localisation summary of one attribution map against one nodule mask.

    Attributes
    ----------
    topk : float
        :func:`top_k_intersection` with the ``k`` given to :func:`localization_summary`
        (default ``|M|``: relevance rank).
    auc : float
        :func:`detection_auc`.
    otsu_dice, otsu_iou : float
        :func:`otsu_overlap` (NaN for a constant map even when ``status`` is ``"ok"``).
    inside : float
        Share of attribution inside the mask (relevance mass).
    ring_0_5, ring_5_10, ring_10_20 : float
        Shares in the shells ``(0, 5]``, ``(5, 10]`` and ``(10, 20]`` mm of
        :data:`DEFAULT_RINGS_MM`; ``1 - inside - ring_0_5 - ring_5_10 - ring_10_20`` lies
        beyond 20 mm.
    status : str
        ``"ok"``, or why every metric is NaN (empty mask, all-zero map).  ``auc`` is also
        NaN, with ``"ok"``, when the mask covers the whole grid.
    """

    topk: float
    auc: float
    otsu_dice: float
    otsu_iou: float
    inside: float
    ring_0_5: float
    ring_5_10: float
    ring_10_20: float
    status: str

    def as_row(self) -> dict:
        """The fields as a flat ``{name: value}`` dict (a CSV row), in field order."""
        return asdict(self)


def _nan_localization(status: str) -> Localization:
    nan = math.nan
    return Localization(nan, nan, nan, nan, nan, nan, nan, nan, status)


def localization_summary(attr, mask, spacing_mm, *, k: int | None = None,
                         distance_mm=None) -> Localization:
    """All localisation summaries from one distance pass.

    Parameters
    ----------
    attr : ndarray, shape (z, y, x)
        Non-negative, finite attribution magnitudes (not renormalised here).
    mask : ndarray of bool or int, shape (z, y, x)
        Annotated nodule; nonzero voxels are inside.
    spacing_mm : sequence of 3 floats
        Voxel size ``(dz, dy, dx)`` in mm.
    k : int, optional
        ``k`` of the top-k intersection; default ``|M|``.
    distance_mm : ndarray, shape (z, y, x), optional
        :func:`discovery.align.metrics.distance_to_mask_mm` of the same mask and spacing, when the
        caller already has it (e.g. for :func:`discovery.align.metrics.align`); computed otherwise.

    Returns
    -------
    Localization
        Flat float fields plus ``status``; ``as_row()`` gives a CSV row.  Empty mask (which
        takes precedence) or all-zero map: every field NaN and ``status`` says which.

    Raises
    ------
    ValueError
        On shape mismatch, non-finite or negative ``attr``, a non-integer mask, bad
        ``spacing_mm`` or a bad ``k``.

    Notes
    -----
    The Euclidean distance transform of ``~mask`` is the only expensive step and is done
    once; the other summaries are a sort, a ranking and a histogram of ``attr``.
    """
    attr, mask = check_map_and_mask(attr, mask)
    spacing_mm = check_spacing(spacing_mm)
    if k is not None:
        k = _check_k(k, attr.size)
    if not mask.any():
        return _nan_localization(STATUS_NO_MASK)
    if float(attr.sum()) == 0.0:
        return _nan_localization(STATUS_NO_ATTR)

    dist = (distance_to_mask_mm(mask, spacing_mm) if distance_mm is None  # the one expensive pass
            else check_distance(distance_mm, mask))
    rings = _rings(attr, mask, dist, DEFAULT_RINGS_MM)
    overlap = _overlap(attr, mask)
    return Localization(
        topk=rank_share(attr, mask) if k is None else _topk_share(attr, mask, k),
        auc=_auc(attr, mask),
        otsu_dice=overlap.dice,
        otsu_iou=overlap.iou,
        inside=rings.inside,
        ring_0_5=rings.rings[0],
        ring_5_10=rings.rings[1],
        ring_10_20=rings.rings[2],
        status=STATUS_OK,
    )
