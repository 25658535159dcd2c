"""What a model was trained on, and whether a nodule lies inside it (applicability flags).

A classifier answers with confidence wherever it is run.  :class:`TrainingDomain` records,
in the model card, what its training data covered: slice thickness and in-plane pixel
spacing of the scans, the nodules' sizes (equivalent-sphere diameter), and the intensity
statistics of its training ROIs *as the network saw them* (per input channel, the ROI's mean
and standard deviation in the network's input units: :func:`roi_statistics`).
:func:`applicability` compares one nodule with it and returns the flags a reader must see
beside the verdict:

=====================  ========================================================================
``larger-than-roi``    the nodule's extent along some axis exceeds the model's field of view
                       (``roi_size_vox * roi_spacing_mm``): the classifier sees part of it, and
                       the map cannot cover it (checked for every model)
``slice-thickness``    the scan's slice spacing is outside the training range
``pixel-spacing``      the scan's in-plane spacing is outside the training range
``nodule-size``        the nodule's equivalent diameter is outside the training range
``intensity``          an intensity statistic of the nodule's ROI is far from training (outside
                       the training 1st-99th percentile range widened by a quarter of its
                       width on each side): a different scanner, reconstruction kernel or
                       modality than the model knows, e.g. a real scan given to a model
                       trained on phantoms
``domain-unknown``     the card records no training domain: only ``larger-than-roi`` could be
                       checked (a bundle or module without one, or a card written before)
=====================  ========================================================================

Ranges are checked with a relative tolerance of :data:`SPACING_TOLERANCE` on spacings and
:data:`SIZE_TOLERANCE` on sizes (a 2.4 mm slice is not "outside" 2.5-5 mm).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import numpy as np

__all__ = ["TrainingDomain", "Applicability", "FLAGS", "roi_statistics", "training_domain",
           "applicability", "equivalent_diameter_mm", "applicability_summary"]

#: The flags and what each means (shown in the reports and the app).
FLAGS = {
    "larger-than-roi": "the nodule is larger than the model's field of view: it sees part of it",
    "slice-thickness": "slice spacing outside the training range",
    "pixel-spacing": "in-plane pixel spacing outside the training range",
    "nodule-size": "nodule size outside the training range",
    "intensity": "image intensities unlike the training ROIs (another scanner, kernel or kind "
                 "of image)",
    "domain-unknown": "the model card records no training domain: only the field of view "
                      "was checked",
}
#: Relative tolerance on the spacing ranges.
SPACING_TOLERANCE = 0.1
#: Relative tolerance on the nodule-size range.
SIZE_TOLERANCE = 0.1
#: The intensity range is the training 1st-99th percentile range widened by this fraction of
#: its width on each side.
INTENSITY_WIDEN = 0.25


@dataclass(frozen=True)
class TrainingDomain:
    """What a model's training data covered (stored in the model card as a dict).

    Attributes
    ----------
    slice_thickness_mm, pixel_spacing_mm, nodule_diameter_mm : (float, float)
        Smallest and largest slice spacing (z), in-plane spacing (the larger of y and x) and
        nodule equivalent-sphere diameter of the training data, in mm.
    roi_statistics : dict of str to (float, float)
        Per statistic of :func:`roi_statistics` (``"mean_c0"``, ``"std_c0"``, ...), the 1st
        and 99th percentile over the training ROIs.
    n_rois : int
        Training ROIs the statistics come from.
    source : str
        Where the domain comes from (e.g. ``"discovery train"``, ``"cohort settings"``).
    """

    slice_thickness_mm: tuple[float, float]
    pixel_spacing_mm: tuple[float, float]
    nodule_diameter_mm: tuple[float, float]
    roi_statistics: dict[str, tuple[float, float]] = field(default_factory=dict)
    n_rois: int = 0
    source: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"slice_thickness_mm": list(self.slice_thickness_mm),
                "pixel_spacing_mm": list(self.pixel_spacing_mm),
                "nodule_diameter_mm": list(self.nodule_diameter_mm),
                "roi_statistics": {k: list(v) for k, v in self.roi_statistics.items()},
                "n_rois": int(self.n_rois), "source": self.source}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainingDomain":
        """The domain a card stores; ValueError naming the field when one is missing or bad."""
        try:
            pair = {k: _pair(d[k], k) for k in ("slice_thickness_mm", "pixel_spacing_mm",
                                                 "nodule_diameter_mm")}
            stats = {str(k): _pair(v, f"roi_statistics.{k}")
                     for k, v in dict(d.get("roi_statistics", {})).items()}
        except KeyError as exc:
            raise ValueError(f"training_domain is missing {exc.args[0]!r}") from None
        return cls(**pair, roi_statistics=stats, n_rois=int(d.get("n_rois", 0)),
                   source=str(d.get("source", "")))


def _pair(value, name: str) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"training_domain.{name} must be [low, high]; received {value!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and lo <= hi):
        raise ValueError(f"training_domain.{name} must be finite with low <= high; received "
                         f"{value!r}")
    return lo, hi


@dataclass(frozen=True)
class Applicability:
    """The applicability of a model to one nodule.

    Attributes
    ----------
    flags : tuple of str
        Keys of :data:`FLAGS` that fired, in the order of :data:`FLAGS`; empty when the
        nodule lies inside everything checked.
    detail : str
        One sentence per flag with the measured value and the range (empty without flags).
    """

    flags: tuple[str, ...]
    detail: str

    @property
    def code(self) -> str:
        """``"ok"``, or the flags joined by ``"; "`` (the ``applicability`` column)."""
        return "; ".join(self.flags) if self.flags else "ok"


def roi_statistics(roi_input) -> dict[str, float]:
    """Intensity statistics of one ROI as the network sees it.

    Parameters
    ----------
    roi_input : ndarray, shape (C, z, y, x)
        The network input of one ROI (the card's windows applied).

    Returns
    -------
    dict
        ``mean_c{k}`` and ``std_c{k}`` (population) of each channel *k*, in input units.
    """
    x = np.asarray(roi_input, dtype=np.float64)
    if x.ndim != 4 or x.shape[0] < 1 or x.size == 0:
        raise ValueError(f"roi_input must be (C, z, y, x) with C >= 1; received shape {x.shape}")
    flat = x.reshape(x.shape[0], -1)
    out: dict[str, float] = {}
    for k, channel in enumerate(flat):
        out[f"mean_c{k}"] = float(channel.mean())
        out[f"std_c{k}"] = float(channel.std())
    return out


def training_domain(*, spacings_mm: Iterable[Sequence[float]], diameters_mm: Iterable[float],
                    roi_inputs: Iterable, source: str) -> TrainingDomain:
    """The :class:`TrainingDomain` of a training set.

    Parameters
    ----------
    spacings_mm : iterable of (dz, dy, dx)
        Voxel spacing of every training scan, mm.
    diameters_mm : iterable of float
        Equivalent-sphere diameter of every training nodule, mm.
    roi_inputs : iterable of ndarray (C, z, y, x)
        The training ROIs as the network sees them.
    source : str
        Recorded as :attr:`TrainingDomain.source`.
    """
    sp = np.asarray(list(spacings_mm), dtype=float).reshape(-1, 3)
    d = np.asarray(list(diameters_mm), dtype=float)
    stats = [roi_statistics(r) for r in roi_inputs]
    if len(sp) == 0 or len(d) == 0 or not stats:
        raise ValueError("a training domain needs at least one scan, nodule and ROI")
    in_plane = sp[:, 1:].max(axis=1)
    keys = list(stats[0])
    table = np.array([[s[k] for k in keys] for s in stats])
    lo, hi = np.percentile(table, 1, axis=0), np.percentile(table, 99, axis=0)
    return TrainingDomain(
        slice_thickness_mm=(float(sp[:, 0].min()), float(sp[:, 0].max())),
        pixel_spacing_mm=(float(in_plane.min()), float(in_plane.max())),
        nodule_diameter_mm=(float(d.min()), float(d.max())),
        roi_statistics={k: (float(a), float(b)) for k, a, b in zip(keys, lo, hi)},
        n_rois=len(stats), source=source)


def equivalent_diameter_mm(volume_mm3: float) -> float:
    """Diameter (mm) of the sphere of *volume_mm3*."""
    return float((6.0 * max(float(volume_mm3), 0.0) / math.pi) ** (1.0 / 3.0))


def _outside(value: float, lo: float, hi: float, tol: float) -> bool:
    return value < lo * (1.0 - tol) or value > hi * (1.0 + tol)


def applicability(*, domain: TrainingDomain | None, field_of_view_mm: Sequence[float],
                  spacing_mm: Sequence[float], extent_mm: Sequence[float], volume_mm3: float,
                  roi_input=None) -> Applicability:
    """Which :data:`FLAGS` apply to one nodule.

    Parameters
    ----------
    domain : TrainingDomain or None
        The model's training domain (None: ``domain-unknown``).
    field_of_view_mm : sequence of 3 floats
        The model's ROI edge lengths ``(z, y, x)`` in mm.
    spacing_mm : sequence of 3 floats
        The scan's voxel spacing ``(dz, dy, dx)``, mm.
    extent_mm : sequence of 3 floats
        The nodule mask's bounding-box edge lengths ``(z, y, x)`` in mm (voxel count times
        spacing).
    volume_mm3 : float
        The nodule's volume.
    roi_input : ndarray (C, z, y, x), optional
        The nodule's ROI as the network sees it (the intensity check is skipped without it).
    """
    fov = np.asarray(field_of_view_mm, dtype=float)
    ext = np.asarray(extent_mm, dtype=float)
    fired: dict[str, str] = {}
    if np.any(ext > fov):
        axis = int(np.argmax(ext - fov))
        fired["larger-than-roi"] = (f"the nodule spans {ext[axis]:.0f} mm along {'zyx'[axis]}, "
                                    f"the model sees {fov[axis]:.0f} mm")
    if domain is None:
        fired["domain-unknown"] = FLAGS["domain-unknown"]
    else:
        _domain_flags(fired, domain, spacing_mm, volume_mm3, roi_input)
    flags = tuple(k for k in FLAGS if k in fired)
    return Applicability(flags, "; ".join(fired[k] for k in flags))


def _domain_flags(fired: dict, domain: TrainingDomain, spacing_mm, volume_mm3, roi_input) -> None:
    dz, in_plane = float(spacing_mm[0]), float(max(spacing_mm[1], spacing_mm[2]))
    lo, hi = domain.slice_thickness_mm
    if _outside(dz, lo, hi, SPACING_TOLERANCE):
        fired["slice-thickness"] = f"slice spacing {dz:.2f} mm, training {lo:.2f}-{hi:.2f} mm"
    lo, hi = domain.pixel_spacing_mm
    if _outside(in_plane, lo, hi, SPACING_TOLERANCE):
        fired["pixel-spacing"] = f"pixel spacing {in_plane:.2f} mm, training {lo:.2f}-{hi:.2f} mm"
    diameter = equivalent_diameter_mm(volume_mm3)
    lo, hi = domain.nodule_diameter_mm
    if _outside(diameter, lo, hi, SIZE_TOLERANCE):
        fired["nodule-size"] = f"nodule {diameter:.0f} mm across, training {lo:.0f}-{hi:.0f} mm"
    if roi_input is not None and domain.roi_statistics:
        stats = roi_statistics(roi_input)
        far = []
        for key, (lo, hi) in domain.roi_statistics.items():
            if key not in stats:
                continue
            pad = INTENSITY_WIDEN * (hi - lo)
            if not lo - pad <= stats[key] <= hi + pad:
                far.append(f"{key} {stats[key]:.3f} (training {lo:.3f}-{hi:.3f})")
        if far:
            fired["intensity"] = "intensity " + ", ".join(far)


def applicability_summary(codes) -> str | None:
    """The sentence a report or the app shows above the outcomes when some nodules lie outside
    what the model knows (or could not be checked), or None when all were checked and are ok.

    Parameters
    ----------
    codes : iterable of str or None
        The ``applicability`` column of the scored nodules (``"ok"``, flags joined by ``"; "``;
        None or empty for results scored before the flags, left out).
    """
    codes = [str(c) for c in codes if isinstance(c, str) and c]
    flags = [set(c.split("; ")) - {"ok"} for c in codes]
    outside = [f - {"domain-unknown"} for f in flags if f - {"domain-unknown"}]
    unknown = sum("domain-unknown" in f for f in flags)
    sentences = []
    if outside:
        counts = ", ".join(f"{k} {n}" for k in FLAGS
                           if (n := sum(k in f for f in outside)))
        sentences.append(f"{len(outside)} of {len(codes)} scored nodules lie outside what the "
                         f"model knows ({counts}): their verdicts and outcomes are the model's "
                         "answers on inputs unlike its training data.")
    if unknown:
        sentences.append(f"The model card records no training domain: for {unknown} of "
                         f"{len(codes)} nodules only the field of view could be checked.")
    return " ".join(sentences) or None
