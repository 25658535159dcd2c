"""Does the prediction rest on the nodule?  Remove it, re-score, and compare with a control.

For one annotated nodule, on the scan grid inside the nodule's ROI:

* **nodule removed**: the nodule's mask voxels are replaced with local lung parenchyma
  (:func:`discovery.model.edit.inpaint_parenchyma`; the other annotated nodules are
  protected) and the ROI re-scored: ``p_without_nodule``;
* **volume-matched controls**: the same blob (the nodule's mask, same shape and voxel
  count) is moved to :attr:`RelianceSettings.n_controls` places elsewhere in the ROI, each
  lying in aerated parenchyma (at least ``min_parenchyma`` of its voxels in
  :data:`~discovery.model.edit.PARENCHYMA_BAND_HU`, else the places with the largest share,
  at least :data:`FALLBACK_PARENCHYMA_SHARE`) and no closer than ``gap_mm`` to any annotated
  nodule, chosen with ``numpy.random.default_rng(seed)`` among all such places; each is
  inpainted the same way and the ROI re-scored; ``p_without_control`` is their mean.  The
  control measures what an edit of that size does where nothing is (on the demo cohort:
  median change 0.000, largest 0.10).

With ``p`` the nodule's malignancy probability (the pipeline's), ``drop_nodule = p -
p_without_nodule`` and ``drop_control = p - p_without_control``, the prediction **rests on
the nodule** when

    ``drop_nodule - drop_control >= max(min_drop, relative_drop * p)``

i.e. removing the nodule lowers the malignancy probability by more than the same edit
elsewhere does, by at least ``relative_drop`` of the probability itself (and at least
``min_drop``, so that a near-zero probability never "rests" on anything).  For a
predicted-malignant nodule (``p`` at least 0.5) the defaults (0.5, 0.05) ask that removing
the nodule takes away at least half of the probability beyond the control's change.

Degenerate cases are explicit: an empty nodule mask gives NaN for everything with a status;
when no control place exists (a nodule of more than about 20 mm fills too much of its 48 mm
ROI for a blob of its size to fit beside it; a ROI without parenchyma),
``p_without_control`` is NaN, the rule is read with ``drop_control = 0`` and the status
says so.

**The nodule's surroundings** are measured the same way: the voxels within
``surroundings_mm`` (5 mm, the off-mask regions' margin) of the nodule's mask, outside every
annotated nodule and, when the lung field is given, inside it, are replaced by parenchyma
and the ROI re-scored: ``p_without_surroundings``.  The prediction **rests on its
surroundings** when ``p - p_without_surroundings >= max(min_drop, relative_drop * p)`` (the
same thresholds, read against no change: replacing lung with lung changes nothing where
nothing is).  This is the part of the scan the off-mask regions cannot see (they begin
beyond the margin): a sign that hugs the nodule (a rim of ground glass, spicules, a strand's
root) shows up here, with ``surroundings_median_hu`` and ``surroundings_max_hu``, the
median and largest HU of the replaced voxels, saying what was there (a largest value of
metal density means a clip or marker beside the nodule: a shortcut, not a sign).

The extra ROIs of a scan are scored together without gradients
(:func:`discovery.model.edit.score_inputs`), ``2 + n_controls`` per nodule.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from scipy import fft, ndimage

from data_tools.checks import check_int, check_nonneg, check_spacing
from data_tools.volume import Mask, Volume
from discovery.model.card import ModelCard
from discovery.model.edit import (PARENCHYMA_BAND_HU, bounding_box, grow_mm, inpaint_parenchyma,
                                  reach_voxels, score_inputs)
from discovery.model.rois import NoduleSite, nodule_sites, roi_input
from discovery.schema import SURROUNDINGS_MM

__all__ = ["RelianceSettings", "Reliance", "RELIANCE_OK", "control_blobs", "nodule_reliance",
           "reliance_from_probabilities", "reliance_text", "surroundings", "surroundings_text"]

RELIANCE_OK = "ok"
#: Smallest parenchyma share of a control when no place reaches ``min_parenchyma``: the
#: controls then go to the places with the largest share (a nodule that fills most of its
#: ROI leaves no room wholly in parenchyma).
FALLBACK_PARENCHYMA_SHARE = 0.5
STATUS_EMPTY = "empty mask: no annotated voxels for this nodule"
STATUS_NO_CONTROL = "no control place in the ROI's parenchyma: read against no change"


@dataclass(frozen=True)
class RelianceSettings:
    """How the nodule and its controls are removed, and the rule.

    Attributes
    ----------
    n_controls : int
        Volume-matched controls per nodule (their probabilities are averaged); 0 disables
        them.
    gap_mm : float
        Every control voxel is further than this (mm, voxel centres) from every annotated
        nodule.
    min_parenchyma : float
        Smallest share of a control's voxels lying in aerated parenchyma.
    relative_drop : float
        Share of the probability that removing the nodule must take away, beyond the
        controls' change, for the prediction to rest on it.
    min_drop : float
        Smallest such drop in probability units.
    shell_mm : float
        Donor shell of :func:`~discovery.model.edit.inpaint_parenchyma`.
    surroundings_mm : float
        Reach (mm, from the mask's voxel centres) of the surroundings that are removed for
        ``p_without_surroundings``; 0 disables that measure.  Matches
        :attr:`discovery.regions.offmask.OffMaskSettings.margin_mm`, where the off-mask
        regions begin.
    seed : int
        Control places and donor draws.
    """

    n_controls: int = 2
    gap_mm: float = 3.0
    min_parenchyma: float = 0.9
    relative_drop: float = 0.5
    min_drop: float = 0.05
    shell_mm: float = 6.0
    surroundings_mm: float = SURROUNDINGS_MM
    seed: int = 0

    def __post_init__(self):
        check_int("n_controls", self.n_controls)
        check_int("seed", self.seed)
        for name in ("gap_mm", "shell_mm", "min_drop", "surroundings_mm"):
            check_nonneg(getattr(self, name), name)
        for name in ("min_parenchyma", "relative_drop"):
            v = check_nonneg(getattr(self, name), name)
            if v > 1.0:
                raise ValueError(f"{name} must be a share in [0, 1]; received {v!r}")
        if self.shell_mm <= 0:
            raise ValueError(f"shell_mm must be positive; received {self.shell_mm!r}")


@dataclass(frozen=True)
class Reliance:
    """How much one nodule's prediction rests on the nodule itself.

    Attributes
    ----------
    p_without_nodule : float
        Malignancy probability with the nodule replaced by parenchyma.
    p_without_control : float
        Mean malignancy probability with a volume-matched blob replaced elsewhere in the
        ROI; NaN when no control place was found.
    n_controls : int
        Controls averaged.
    rests_on_nodule : float
        1.0 / 0.0 by the module's rule; NaN when the mask is empty.
    status : str
        ``"ok"`` or why something is NaN.
    p_without_surroundings : float
        Malignancy probability with the nodule's surroundings (``surroundings_mm``)
        replaced by parenchyma; NaN when not measured (disabled, an empty mask, no voxel
        around the nodule to replace).
    rests_on_surroundings : float
        1.0 / 0.0 by the module's rule for the surroundings; NaN when not measured.
    surroundings_median_hu, surroundings_max_hu : float
        Median and largest HU of the replaced surroundings, before the edit (the largest
        tells a metal clip or marker beside the nodule); NaN when not measured.
    """

    p_without_nodule: float
    p_without_control: float
    n_controls: int
    rests_on_nodule: float
    status: str
    p_without_surroundings: float = math.nan
    rests_on_surroundings: float = math.nan
    surroundings_median_hu: float = math.nan
    surroundings_max_hu: float = math.nan


def reliance_from_probabilities(probability: float, p_without_nodule: float,
                                p_without_controls, *, p_without_surroundings: float = math.nan,
                                surroundings_median_hu: float = math.nan,
                                surroundings_max_hu: float = math.nan,
                                settings: RelianceSettings = RelianceSettings()) -> Reliance:
    """Apply the rules (module docstring) to re-scored probabilities.

    Parameters
    ----------
    probability : float
        The nodule's malignancy probability as scored.
    p_without_nodule : float
        The probability with the nodule removed.
    p_without_controls : sequence of float
        The probability with each control removed (may be empty).
    p_without_surroundings : float, optional
        The probability with the nodule's surroundings removed; NaN (the default): not
        measured, and ``rests_on_surroundings`` is NaN.
    surroundings_median_hu, surroundings_max_hu : float, optional
        Carried into the result.

    Returns
    -------
    Reliance
    """
    controls = np.asarray(p_without_controls, dtype=float).ravel()
    values = np.concatenate([[probability, p_without_nodule], controls])
    if not np.all(np.isfinite(values)):
        raise ValueError(f"probabilities must be finite; received {values.tolist()}")
    p_control = float(controls.mean()) if controls.size else math.nan
    drop_control = probability - p_control if controls.size else 0.0
    extra = (probability - p_without_nodule) - drop_control
    needed = max(settings.min_drop, settings.relative_drop * probability)
    status = RELIANCE_OK if controls.size or settings.n_controls == 0 else STATUS_NO_CONTROL
    p_around = float(p_without_surroundings)
    rests_around = (math.nan if not math.isfinite(p_around)
                    else 1.0 if probability - p_around >= needed else 0.0)
    return Reliance(p_without_nodule=float(p_without_nodule), p_without_control=p_control,
                    n_controls=int(controls.size),
                    rests_on_nodule=1.0 if extra >= needed else 0.0, status=status,
                    p_without_surroundings=p_around, rests_on_surroundings=rests_around,
                    surroundings_median_hu=float(surroundings_median_hu),
                    surroundings_max_hu=float(surroundings_max_hu))


def _distance_mm(mask: np.ndarray, spacing) -> np.ndarray:
    if not mask.any():
        return np.full(mask.shape, np.inf)
    return ndimage.distance_transform_edt(~mask, sampling=spacing)


def control_blobs(hu, own, annotated, *, spacing_mm,
                  settings: RelianceSettings = RelianceSettings()) -> list[np.ndarray]:
    """Places for the volume-matched controls of one nodule.

    Parameters
    ----------
    hu : ndarray, shape (z, y, x)
        CT in HU: the region the controls may occupy (the nodule's ROI box on the scan).
    own : ndarray of bool, shape (z, y, x)
        The nodule's mask voxels (the blob that is moved).
    annotated : ndarray of bool, shape (z, y, x)
        Every annotated nodule (``own`` included): the controls keep ``gap_mm`` from them.
    spacing_mm : sequence of 3 floats
        Voxel size in mm.

    Returns
    -------
    list of ndarray of bool, shape (z, y, x)
        Up to ``settings.n_controls`` masks, each ``own``'s voxel pattern translated to a
        place lying wholly in the array, further than ``gap_mm`` from ``annotated`` and at
        least ``min_parenchyma`` in parenchyma (else as much as any place is, at least
        :data:`FALLBACK_PARENCHYMA_SHARE`); distinct places drawn with the seed.  Empty when
        ``own`` is empty or no place qualifies.
    """
    hu, own = np.asarray(hu), np.asarray(own, dtype=bool)
    annotated = np.asarray(annotated, dtype=bool) | own
    if hu.ndim != 3 or own.shape != hu.shape or annotated.shape != hu.shape:
        raise ValueError("hu, own and annotated must be 3-D arrays of one shape; received "
                         f"{hu.shape}, {own.shape}, {annotated.shape}")
    spacing = check_spacing(spacing_mm)
    box = bounding_box(own)
    if settings.n_controls == 0 or box is None:
        return []
    blob = own[box]
    if any(b > s for b, s in zip(blob.shape, hu.shape)):
        return []
    lo_hu, hi_hu = PARENCHYMA_BAND_HU
    good = ((hu >= lo_hu) & (hu <= hi_hu)).astype(np.float32)
    banned = (_distance_mm(annotated, spacing) <= settings.gap_mm + 1e-6).astype(np.float32)
    kernel = blob.astype(np.float32)
    on_good = _sum_under(good, kernel)
    on_banned = _sum_under(banned, kernel)
    share = np.where(on_banned < 0.5, on_good / float(blob.sum()), -1.0)
    floor = min(settings.min_parenchyma, float(share.max()))
    places = np.argwhere(share >= max(floor, FALLBACK_PARENCHYMA_SHARE) - 1e-4)
    if len(places) == 0:
        return []
    rng = np.random.default_rng(settings.seed)
    pick = rng.choice(len(places), size=min(settings.n_controls, len(places)), replace=False)
    out = []
    for idx in sorted(int(i) for i in pick):
        m = np.zeros(hu.shape, dtype=bool)
        z, y, x = places[idx]
        m[z:z + blob.shape[0], y:y + blob.shape[1], x:x + blob.shape[2]] = blob
        out.append(m)
    return out


def _sum_under(a: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """``sum(a[p + i] * kernel[i])`` at every place ``p`` where *kernel* lies wholly inside
    *a* (shape ``a.shape - kernel.shape + 1``), by FFT: ``scipy.signal.fftconvolve(a,
    kernel[::-1, ::-1, ::-1], mode="valid")`` without importing ``scipy.signal`` (which
    imports ``scipy.stats``: 0.7 s and 45 MiB of scoring's start-up)."""
    shape = [fft.next_fast_len(n + m - 1, real=True) for n, m in zip(a.shape, kernel.shape)]
    product = fft.rfftn(a, shape) * fft.rfftn(kernel[::-1, ::-1, ::-1], shape)
    full = fft.irfftn(product, shape)
    return full[tuple(slice(m - 1, n) for n, m in zip(a.shape, kernel.shape))]


def _nan_reliance(status: str) -> Reliance:
    return Reliance(math.nan, math.nan, 0, math.nan, status)


def _crop(volume: Volume, center_zyx, card: ModelCard, pad_mm: float):
    """The scan box the nodule's ROI covers (``inner``, relative to the crop) inside a crop
    grown by *pad_mm* (donors for the inpainting): ``(outer slices, inner slices)``."""
    spacing = np.asarray(volume.spacing_mm, dtype=float)
    size = np.asarray(card.roi_size_vox, dtype=int)
    scale = np.asarray(card.roi_spacing_mm, dtype=float) / spacing
    offset = np.asarray(center_zyx, dtype=float) - (size - 1) / 2.0 * scale
    shape = np.asarray(volume.shape)
    lo = np.clip(np.floor(offset).astype(int), 0, shape)
    hi = np.clip(np.ceil(offset + (size - 1) * scale).astype(int) + 1, 0, shape)
    pad = reach_voxels(pad_mm, spacing)
    out_lo, out_hi = np.maximum(lo - pad, 0), np.minimum(hi + pad, shape)
    outer = tuple(slice(int(a), int(b)) for a, b in zip(out_lo, out_hi))
    inner = tuple(slice(int(a - o), int(b - o)) for a, b, o in zip(lo, hi, out_lo))
    return outer, inner


def surroundings(own: np.ndarray, annotated: np.ndarray, *, spacing_mm, reach_mm: float,
                 lung: np.ndarray | None = None) -> np.ndarray:
    """The surroundings of one nodule: voxels within *reach_mm* of *own* (voxel centres),
    outside every annotated nodule and, when *lung* is given, inside it.

    Parameters
    ----------
    own, annotated : ndarray of bool, shape (z, y, x)
        The nodule's mask voxels; every annotated nodule's.
    spacing_mm : sequence of 3 floats
        Voxel size in mm.
    reach_mm : float
        How far the surroundings reach (mm); 0 gives none.
    lung : ndarray of bool, shape (z, y, x), optional
        The lung field: the surroundings stay inside it (the chest wall beside a
        juxtapleural nodule is not "what surrounds it in the lung").

    Returns
    -------
    ndarray of bool, shape (z, y, x)
    """
    own = np.asarray(own, dtype=bool)
    out = grow_mm(own, reach_mm, spacing_mm) & ~own & ~np.asarray(annotated, dtype=bool)
    if lung is not None:
        out &= np.asarray(lung, dtype=bool)
    return out


def _nodule_inputs(volume: Volume, labels: np.ndarray, site: NoduleSite, card: ModelCard,
                   settings: RelianceSettings, lung: np.ndarray | None = None):
    """Network inputs of one nodule: ``[nodule removed, surroundings removed (when any),
    control 1, ...]``, whether the surroundings' input is there and their median and largest
    HU; None when its mask is empty.  All edits are made on a crop of the scan around the ROI."""
    spacing = volume.spacing_mm
    outer, inner = _crop(volume, site.center_zyx, card, settings.shell_mm)
    sub = np.asarray(volume.array[outer], dtype=np.float32)
    annotated = labels[outer] > 0
    own = labels[outer] == site.label
    if not own.any():
        return None
    lo = np.array([s.start for s in outer], dtype=float)
    shift = np.eye(4)
    shift[:3, 3] = lo
    affine = np.asarray(volume.affine, dtype=float) @ shift
    centre = np.asarray(site.center_zyx, dtype=float) - lo

    def scored(edited: np.ndarray) -> np.ndarray:
        return roi_input(Volume(edited, affine), centre, card)

    inputs = [scored(inpaint_parenchyma(sub, own, spacing_mm=spacing, protect=annotated & ~own,
                                        shell_mm=settings.shell_mm, seed=settings.seed))]
    around = surroundings(own, annotated, spacing_mm=spacing, reach_mm=settings.surroundings_mm,
                          lung=None if lung is None else lung[outer])
    around_hu = (math.nan, math.nan)
    if around.any():
        around_hu = (float(np.median(sub[around])), float(sub[around].max()))
        inputs.append(scored(inpaint_parenchyma(sub, around, spacing_mm=spacing,
                                                protect=annotated, shell_mm=settings.shell_mm,
                                                seed=settings.seed)))
    for i, blob in enumerate(control_blobs(sub[inner], own[inner], annotated[inner],
                                           spacing_mm=spacing, settings=settings)):
        remove = np.zeros(sub.shape, dtype=bool)
        remove[inner] = blob
        inputs.append(scored(inpaint_parenchyma(sub, remove, spacing_mm=spacing,
                                                protect=annotated, shell_mm=settings.shell_mm,
                                                seed=settings.seed + 1 + i)))
    return inputs, bool(around.any()), around_hu


def nodule_reliance(model: torch.nn.Module, card: ModelCard, volume: Volume, mask: Mask, *,
                    sites: list[NoduleSite] | None = None, probabilities=None,
                    lung: np.ndarray | None = None,
                    settings: RelianceSettings = RelianceSettings()) -> list[Reliance]:
    """The reliance of every nodule of one scan on the nodule itself (module docstring).

    Parameters
    ----------
    model, card
        From :func:`discovery.model.card.load_model` (used as is; put it in ``eval()``).
    volume : Volume
        The scan in HU.
    mask : Mask
        Its label mask, one label per nodule, on the same grid.
    sites : list of NoduleSite, optional
        The nodules, with the ROI centres; default :func:`~discovery.model.rois.nodule_sites`.
    probabilities : sequence of float, optional
        Each site's malignancy probability as scored (the pipeline's); scored here (on the
        unedited ROIs, in the same passes) when not given.
    lung : ndarray of bool, shape (z, y, x), optional
        The lung field on the scan grid (at least around the nodules): the surroundings
        removed stay inside it (:func:`surroundings`).  Without it they are not limited.

    Returns
    -------
    list of Reliance
        One per site, in order.  A site whose label has no voxel in *mask* gets NaN and a
        status.  All the edited ROIs of the scan are scored together, without gradients.
    """
    if mask.shape != volume.shape:
        raise ValueError(f"mask and volume must share the grid; received {mask.shape} and "
                         f"{volume.shape}")
    sites = nodule_sites(mask) if sites is None else list(sites)
    if probabilities is not None and len(probabilities) != len(sites):
        raise ValueError(f"one probability per site is needed; received {len(probabilities)} "
                         f"for {len(sites)} sites")
    if lung is not None and np.shape(lung) != volume.shape:
        raise ValueError(f"the lung field must be on the scan's grid {volume.shape}; received "
                         f"{np.shape(lung)}")
    labels = np.asarray(mask.array)
    per_site = [_nodule_inputs(volume, labels, s, card, settings, lung) for s in sites]
    rois = [x for edited in per_site if edited for x in edited[0]]
    unedited = [] if probabilities is not None else [roi_input(volume, s.center_zyx, card)
                                                      for s in sites]
    scores = score_inputs(model, rois + unedited)
    p = scores[:len(rois)]
    if probabilities is None:
        probabilities = scores[len(rois):]
    out, at = [], 0
    for prob, edited in zip(probabilities, per_site):
        if edited is None:
            out.append(_nan_reliance(STATUS_EMPTY))
            continue
        inputs, has_around, around_hu = edited
        got = p[at:at + len(inputs)].astype(float)
        at += len(inputs)
        first = 2 if has_around else 1
        out.append(reliance_from_probabilities(
            float(prob), got[0], got[first:],
            p_without_surroundings=got[1] if has_around else math.nan,
            surroundings_median_hu=around_hu[0], surroundings_max_hu=around_hu[1],
            settings=settings))
    return out


def reliance_text(rests_on_nodule, p_without_nodule, p_without_control, status="") -> str:
    """The reliance in words for tables: ``"yes (0.188 / 0.984)"`` -- whether the prediction
    rests on the nodule, then P(malignant) without the nodule and without the control (``–``
    where NaN); ``"– (why)"`` when it was not measured."""
    def num(v) -> str:
        try:
            v = float(v)
        except (TypeError, ValueError):
            return "–"
        return f"{v:.3f}" if math.isfinite(v) else "–"

    if num(rests_on_nodule) == "–":
        return f"– ({status if isinstance(status, str) and status else 'not measured'})"
    answer = "yes" if float(rests_on_nodule) >= 0.5 else "no"
    return f"{answer} ({num(p_without_nodule)} / {num(p_without_control)})"


def surroundings_text(rests_on_surroundings, p_without_surroundings,
                      surroundings_median_hu=math.nan) -> str:
    """The reliance on the nodule's surroundings in words: ``"yes (0.212; median -610 HU)"``
    -- whether the prediction rests on them, P(malignant) without them and what they were;
    ``"– (not measured)"`` when NaN."""
    try:
        rests, p = float(rests_on_surroundings), float(p_without_surroundings)
    except (TypeError, ValueError):
        return "– (not measured)"
    if not (math.isfinite(rests) and math.isfinite(p)):
        return "– (not measured)"
    answer = "yes" if rests >= 0.5 else "no"
    try:
        hu = float(surroundings_median_hu)
    except (TypeError, ValueError):
        hu = math.nan
    what = f"; median {hu:.0f} HU" if math.isfinite(hu) else ""
    return f"{answer} ({p:.3f}{what})"
