"""``analyze_scan``: the one place where the per-scan steps are chained.

scan + mask -> nodule sites -> ROIs -> probabilities + Grad-CAM (one forward/backward) ->
the reliance on the nodule (each nodule and volume-matched controls replaced by parenchyma and
re-scored, :mod:`discovery.model.reliance`, forward passes only) -> maps placed back on the
scan grid -> alignment metrics per nodule -> off-mask regions, each described by its anatomy
(lung field from HU), the structure it points at, its direction in the patient frame and the
network's own features pooled inside it.

All metrics are computed on the **scan grid**, inside each ROI's bounding box, with the
scan's own voxel spacing: the mask is used exactly as annotated and only the attribution map is
interpolated.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch

from data_tools.volume import Mask, Volume
from discovery.align.localization import Localization, localization_summary
from discovery.align.metrics import (
    Alignment,
    AlignThresholds,
    align,
    distance_to_mask_mm,
    grow_mm,
)
from discovery.align.rule import (VerdictRule, describe_verdict_rule, ruled_alignment,
                                  verdict_features)
from discovery.explain.methods import (
    AttributionInfo,
    predict_and_explain,
)
from discovery.model.card import ModelCard
from discovery.model.domain import Applicability, applicability
from discovery.model.reliance import Reliance, RelianceSettings, nodule_reliance
from discovery.model.rois import (
    NoduleSite,
    Roi,
    extract_roi,
    network_input,
    nodule_sites,
    roi_to_scan,
)
from discovery.regions.descriptors import (
    RegionAnatomy,
    direction_words,
    lung_components,
    lung_mask,
    offset_lps_mm,
    region_descriptors,
)
from discovery.regions.offmask import (
    OffMaskRegion,
    OffMaskSettings,
    extract_offmask_regions,
)
from discovery.regions.structures import (
    NO_STRUCTURE,
    AttendedStructure,
    attended_structure,
)
from discovery.schema import parse_map

__all__ = ["ScoreSettings", "RegionContext", "NoduleResult", "CaseResult", "analyze_scan",
           "pool_region_features", "resolve_map"]

log = logging.getLogger(__name__)

#: Reach (mm) of :attr:`RegionContext.halo_max_hu` around a region.
HALO_MM = 3.0
#: The reliance of a nodule result built without measuring it.
NOT_MEASURED = Reliance(math.nan, math.nan, 0, math.nan, "not measured")


@dataclass(frozen=True)
class ScoreSettings:
    """Settings of the per-scan analysis.

    Attributes
    ----------
    method : str or None
        Attribution method (:data:`discovery.explain.methods.METHODS`).  None (the
        default): the model card's ``default_map`` (:func:`resolve_map`; the demo model's
        is LayerCAM at ``layer2``), Grad-CAM for a card without one.
    layer : str or None
        The CAM layer (dotted module name, e.g. ``"layer2"``: 16^3 cells of 3 mm on the demo
        model); ``"fine+coarse"`` for the fused methods.  None: the layer of the card's
        ``default_map`` when *method* comes from it, else the card's ``gradcam_layer`` (the
        fused methods: ``layer2+layer3``).  The regions' ``deep``
        features are the activations of this layer (the coarse one when fused); for
        Integrated Gradients and Occlusion it chooses only those.
    lossless_ct : bool
        Store the CT of a case file exactly everywhere; False (default): the air around the
        patient is stored as -1000 HU (:func:`discovery.store.arrays.flatten_outside_air`;
        the analysis always sees the CT as read).
    verdict_rule : bool
        Decide the predicted-malignant nodules' verdicts by the model card's verdict rule
        when it has one (:mod:`discovery.align.rule`: its own map, computed beside this one,
        one more forward and backward pass per batch); False: the thresholds of *align*
        for every nodule.
    """

    align: AlignThresholds = field(default_factory=AlignThresholds)
    offmask: OffMaskSettings = field(default_factory=OffMaskSettings)
    method: str | None = None
    batch_size: int = 8
    reliance: RelianceSettings = field(default_factory=RelianceSettings)
    layer: str | None = None
    lossless_ct: bool = False
    verdict_rule: bool = True


def resolve_map(settings: ScoreSettings, card: ModelCard) -> ScoreSettings:
    """*settings* with the map named: a ``method`` of None becomes the card's
    ``default_map`` (its layer too, unless ``layer`` is set), or Grad-CAM without one."""
    if settings.method is not None:
        return settings
    method, layer = parse_map(card.default_map or "gradcam")
    return dataclasses.replace(settings, method=method, layer=settings.layer or layer)


@dataclass(frozen=True, eq=False)
class RegionContext:
    """What surrounds one off-mask region (aligned with ``NoduleResult.regions``).

    Attributes
    ----------
    anatomy : RegionAnatomy
        Lung relation, density and shape (:func:`discovery.regions.descriptors.region_descriptors`).
    offset_lps_mm : tuple of 3 floats
        Nodule centre to region centroid in patient LPS mm.
    direction : str
        The offset in words ("lateral and posterior"; see
        :func:`discovery.regions.descriptors.direction_words`).
    halo_max_hu : float
        Largest HU within ``HALO_MM`` of the region, the nodule itself excluded: a dense
        structure that the near-nodule margin cut in half (a marker bead 4 mm from the
        tumour) still shows its true density here.
    deep : ndarray, shape (C,), float32
        The network's activations at the CAM layer (``ScoreSettings.layer``, else the card's;
        the coarse one for a fused method) averaged over the layer cells the region covers
        (weighted by covered scan voxels).
    structure : AttendedStructure
        The dense structure within ``HALO_MM`` of the region that carries most of its
        attribution (:func:`discovery.regions.structures.attended_structure`).
    """

    anatomy: RegionAnatomy
    offset_lps_mm: tuple[float, float, float]
    direction: str
    halo_max_hu: float
    deep: np.ndarray
    structure: AttendedStructure = NO_STRUCTURE


@dataclass(frozen=True, eq=False)
class NoduleResult:
    """Everything computed for one annotated nodule.

    ``attribution`` and ``region_labels`` are crops of the scan grid at ``box``;
    ``contexts[i]`` describes ``regions[i]``; ``reliance`` says how much the prediction rests
    on the nodule itself (NaN with a status when not measured).
    """

    site: NoduleSite
    probability: float
    predicted_label: int
    alignment: Alignment
    localization: Localization
    regions: list[OffMaskRegion]
    box: tuple[slice, slice, slice]
    attribution: np.ndarray
    region_labels: np.ndarray
    info: AttributionInfo
    contexts: list[RegionContext] = field(default_factory=list)
    reliance: Reliance = NOT_MEASURED
    applicability: Applicability = Applicability((), "")

    @property
    def nodule_id(self) -> str:
        return self.site.nodule_id


@dataclass(frozen=True, eq=False)
class CaseResult:
    """The analysis of one scan.

    Attributes
    ----------
    attribution : ndarray, shape (z, y, x), float32
        Raw Grad-CAM magnitudes on the scan grid (maximum over the nodules' ROIs, 0 elsewhere).
    region_map : ndarray, shape (z, y, x), int16
        Off-mask regions numbered 1..R across the case (see ``region_index``).
    region_index : list of (nodule_id, region_index)
        Entry ``k - 1`` says which nodule's region ``k`` of ``region_map`` is.
    """

    case_id: str
    nodules: list[NoduleResult]
    attribution: np.ndarray
    region_map: np.ndarray
    region_index: list[tuple[str, int]]
    status: str


@contextmanager
def _stage(timings: dict[str, float] | None, name: str):
    t0 = time.perf_counter()
    try:
        yield
    finally:
        if timings is not None:
            timings[name] = timings.get(name, 0.0) + time.perf_counter() - t0


def pool_region_features(activations: np.ndarray, region_zyx: np.ndarray, roi: Roi) -> np.ndarray:
    """Average a layer's activations over the cells a region covers.

    Parameters
    ----------
    activations : ndarray, shape (C, d, h, w)
        One ROI's feature maps on the layer's grid (the layer spans the whole ROI).
    region_zyx : ndarray, shape (n, 3)
        Scan voxel coordinates of the region's voxels.
    roi : Roi
        The ROI the activations belong to.

    Returns
    -------
    ndarray, shape (C,), float32
        Mean over the region's voxels of the activation vector of the cell each voxel falls
        in (voxels outside the ROI are clipped to the nearest cell).  Zeros when ``n == 0``.
    """
    act = np.asarray(activations, dtype=np.float32)
    if act.ndim != 4:
        raise ValueError(f"activations must be (C, d, h, w); received shape {act.shape}")
    pts = np.asarray(region_zyx, dtype=float).reshape(-1, 3)
    if len(pts) == 0:
        return np.zeros(act.shape[0], dtype=np.float32)
    size = np.asarray(roi.hu.shape, dtype=float)
    cells = np.asarray(act.shape[1:])
    u = (pts - roi.offset_zyx) / roi.scale_zyx  # ROI voxel coordinates
    idx = np.clip(np.floor((u + 0.5) * cells / size).astype(int), 0, cells - 1)
    flat = np.ravel_multi_index(idx.T, tuple(cells))
    weights = np.bincount(flat, minlength=int(np.prod(cells))).astype(np.float64)
    return (act.reshape(act.shape[0], -1) @ weights / weights.sum()).astype(np.float32)


def verdict_rule_meta(card: ModelCard, settings: ScoreSettings) -> dict[str, str]:
    """What a results store records of the verdict rule a scoring uses: its SHA-256
    (``verdict_rule_sha256``, "" for none) and its words (``verdict_rule_text``, for the
    reports)."""
    if not (settings.verdict_rule and card.verdict_rule):
        return {"verdict_rule_sha256": "", "verdict_rule_text": ""}
    return {"verdict_rule_sha256": card.verdict_rule_sha256,
            "verdict_rule_text": describe_verdict_rule(VerdictRule.from_dict(card.verdict_rule))}


def analyze_scan(
    volume: Volume,
    mask: Mask | None,
    model: torch.nn.Module,
    card: ModelCard,
    *,
    case_id: str,
    settings: ScoreSettings = ScoreSettings(),
    timings: dict[str, float] | None = None,
) -> CaseResult:
    """Classify, explain, align and extract off-mask regions for every nodule of one scan.

    Parameters
    ----------
    volume : Volume
        CT in HU, shape (z, y, x).
    mask : Mask or None
        Label mask on the same grid, one label per nodule.  None or empty: no nodules to
        score; the result has no nodules and ``status`` says why.
    model, card
        From :func:`discovery.model.card.load_model`.
    case_id : str
        Pseudonymous id (carried, never derived from paths here).
    timings : dict, optional
        When given, seconds per stage are added to it (``roi``, ``model``, ``reliance``,
        ``descriptors``, ``align``, ``offmask``); used by ``benchmarks/pipeline.py``.

    Notes
    -----
    The lung field's labelling and closings run on as many threads as torch's operators
    (``torch.get_num_threads()``, which a batch sets per worker); the result does not
    depend on it.  A *settings* ``method`` of None is the card's default map
    (:func:`resolve_map`).
    """
    settings = resolve_map(settings, card)
    shape = volume.shape
    attribution = np.zeros(shape, dtype=np.float32)
    region_map = np.zeros(shape, dtype=np.int16)
    if mask is None:
        return CaseResult(case_id, [], attribution, region_map, [], "no-mask: no mask file for this case")
    sites = nodule_sites(mask)
    if not sites:
        return CaseResult(case_id, [], attribution, region_map, [], "no-mask: the mask is empty")

    with _stage(timings, "roi"):
        rois = [extract_roi(volume, s.center_zyx, size_vox=card.roi_size_vox,
                            spacing_mm=card.roi_spacing_mm) for s in sites]
        inputs = np.stack([network_input(r.hu, card) for r in rois])  # (N, C, S, S, S)
    rule = (VerdictRule.from_dict(card.verdict_rule)
            if settings.verdict_rule and card.verdict_rule else None)
    with _stage(timings, "model"):
        probs, maps, acts, info = _score_rois(inputs, model, method=settings.method,
                                              layer=settings.layer, batch_size=settings.batch_size)
        rule_maps = _rule_maps(rule, inputs, model, settings, maps, info)
    with _stage(timings, "descriptors"):
        scene = _scene(volume, rois, threads=torch.get_num_threads())
    with _stage(timings, "reliance"):
        reliances = nodule_reliance(model, card, volume, mask, sites=sites,
                                    probabilities=[float(p[1]) for p in probs],
                                    lung=scene.lung, settings=settings.reliance)
    with _stage(timings, "applicability"):
        fits = _applicability(volume, sites, inputs, card)
    results: list[NoduleResult] = []
    region_index: list[tuple[str, int]] = []
    for site, roi, prob, roi_map, act, rel, fit, rule_map in zip(sites, rois, probs, maps, acts,
                                                                 reliances, fits, rule_maps):
        p1 = float(prob[1])
        malignant = int(p1 >= card.threshold)
        nodule = _analyze_nodule(volume, mask, scene, site, roi, roi_map, act, settings=settings,
                                 timings=timings, probability=p1, predicted_label=malignant,
                                 info=info, reliance=rel, fit=fit,
                                 rule=(rule, rule_map) if rule is not None and malignant else None)
        box, labels = nodule.box, nodule.region_labels
        np.maximum(attribution[box], nodule.attribution, out=attribution[box])
        for region in nodule.regions:
            region_index.append((site.nodule_id, region.region_index))
            region_map[box][labels == region.region_index] = len(region_index)
        results.append(nodule)
    return CaseResult(case_id, results, attribution, region_map, region_index, "ok")


def _rule_maps(rule: VerdictRule | None, inputs: np.ndarray, model: torch.nn.Module,
               settings: ScoreSettings, maps: np.ndarray, info: AttributionInfo):
    """The verdict rule's map of every ROI (None each without a rule): *maps* itself when
    the rule reads the map just computed (same method and layer; a rule without a layer
    reads the model's CAM layer), else one more pass."""
    if rule is None:
        return [None] * len(inputs)
    if rule.method == settings.method and (rule.layer or getattr(model, "cam_layer", None)
                                           ) == info.layer:
        return maps
    return _score_rois(inputs, model, method=rule.method, layer=rule.layer,
                       batch_size=settings.batch_size)[1]


def _applicability(volume: Volume, sites: list[NoduleSite], inputs: np.ndarray,
                   card: ModelCard) -> list[Applicability]:
    """The applicability flags of every nodule (:func:`discovery.model.domain.applicability`):
    its mask's bounding box in mm against the model's field of view, the scan and the nodule
    against the card's training domain."""
    spacing = np.asarray(volume.spacing_mm, dtype=float)
    domain = card.domain
    out = []
    for site, roi_input in zip(sites, inputs):
        box = site.box
        extent = ([(s.stop - s.start) * sp for s, sp in zip(box, spacing)] if box is not None
                  else [0.0, 0.0, 0.0])
        out.append(applicability(domain=domain, field_of_view_mm=card.field_of_view_mm,
                                 spacing_mm=spacing, extent_mm=extent,
                                 volume_mm3=site.volume_mm3,
                                 roi_input=roi_input))
    return out


def _score_rois(inputs: np.ndarray, model: torch.nn.Module, *, method: str, layer: str | None,
                batch_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, AttributionInfo]:
    """Probabilities ``(N, C)``, *method*'s maps ``(N, z, y, x)`` (at *layer*) and that
    layer's activations of every ROI (*inputs*: the network inputs ``(N, C, S, S, S)``), in
    batches of *batch_size*, from one forward (+ backward) pass per batch.  Called for the
    scoring's map and, with its own method and layer, for the verdict rule's map
    (:mod:`discovery.align.rule`)."""
    probs_all, maps_all, acts_all = [], [], []
    info = None
    for start in range(0, len(inputs), batch_size):
        batch = torch.from_numpy(np.ascontiguousarray(inputs[start:start + batch_size]))
        probs, maps, info, acts = predict_and_explain(model, batch, method=method, layer=layer,
                                                      return_activations=True)
        if info.signed:
            # Alignment and off-mask regions measure where the evidence *for* the target
            # class lies: the positive part of a signed map, taken here, explicitly.
            maps = np.maximum(maps, 0.0)
        probs_all.append(probs)
        maps_all.append(maps)
        acts_all.append(acts)
    return np.concatenate(probs_all), np.concatenate(maps_all), np.concatenate(acts_all), info


@dataclass(frozen=True, eq=False)
class _Scene:
    """What every nodule of a scan shares: the lungs' air, the lung field in the ROI boxes,
    the midline (patient x, mm) and the union of the annotated nodules."""

    lung: np.ndarray
    midline_x_mm: float


def _scene(volume: Volume, rois: list[Roi], *, threads: int = 1) -> _Scene:
    shape, spacing = volume.shape, volume.spacing_mm
    # the lung field only where the regions can be: the ROI boxes (most of a full-size
    # scan's time went into closing the whole lungs)
    air = lung_components(volume.array, spacing_mm=spacing, threads=threads)
    lung = lung_mask(volume.array, spacing_mm=spacing, components=air,
                     within=[roi.scan_box(shape) for roi in rois], threads=threads)
    if air.any():  # the midline: halfway between the lungs' air, in patient x
        midline_x = float(volume.voxel_to_world(np.argwhere(air[::2, ::2, ::2]).mean(axis=0)
                                                * 2)[0])
    else:
        midline_x = float(volume.voxel_to_world((np.asarray(shape) - 1) / 2.0)[0])
    return _Scene(lung=lung, midline_x_mm=midline_x)


def _analyze_nodule(volume: Volume, mask: Mask, scene: _Scene, site: NoduleSite, roi: Roi,
                    roi_map: np.ndarray, act: np.ndarray, *, settings: ScoreSettings,
                    timings: dict[str, float] | None, probability: float, predicted_label: int,
                    info: AttributionInfo, reliance: Reliance = NOT_MEASURED,
                    fit: Applicability = Applicability((), ""),
                    rule: tuple[VerdictRule, np.ndarray] | None = None) -> NoduleResult:
    """Alignment, localisation, off-mask regions and their contexts of one nodule; *rule*:
    the card's verdict rule and its map of this ROI, which then decide the verdict."""
    spacing = volume.spacing_mm
    with _stage(timings, "align"):
        box, attr = roi_to_scan(roi_map, roi, volume.shape)
        labels_box = mask.array[box]
        annotated, own = labels_box > 0, labels_box == site.label
        hu = np.asarray(volume.array[box], dtype=np.float32)   # int16 HU (score) -> float
        dist = distance_to_mask_mm(own, spacing) if own.any() else None  # shared by both
        alignment = align(attr, own, spacing_mm=spacing, thresholds=settings.align,
                          distance_mm=dist)
        localization = localization_summary(attr, own, spacing, distance_mm=dist)
        if rule is not None and alignment.status == "ok":     # a mask and a map: metrics
            rule_attr = roi_to_scan(rule[1], roi, volume.shape)[1]
            if rule_attr.sum() > 0:
                values = verdict_features(rule_attr, own, spacing_mm=spacing,
                                          probability=probability, distance_mm=dist)
                alignment = ruled_alignment(alignment, rule[0].aligned(values))
    lo = np.array([s.start for s in box], dtype=float)
    with _stage(timings, "offmask"):
        labels, regions = extract_offmask_regions(
            attr, annotated, hu, spacing_mm=spacing,
            nodule_center_zyx=tuple(np.asarray(site.center_zyx) - lo), settings=settings.offmask,
        )
    with _stage(timings, "descriptors"):
        contexts = [_region_context(volume, hu, scene, site, roi, act, box, labels, region,
                                    attr, own, annotated, dist) for region in regions]
    return NoduleResult(
        site=site, probability=probability, predicted_label=predicted_label, alignment=alignment,
        localization=localization, regions=regions, box=box, attribution=attr,
        region_labels=labels, info=info, contexts=contexts, reliance=reliance,
        applicability=fit,
    )


def _region_context(volume: Volume, hu: np.ndarray, scene: _Scene, site: NoduleSite, roi: Roi,
                    act: np.ndarray, box, labels: np.ndarray, region: OffMaskRegion,
                    attr: np.ndarray, own: np.ndarray, annotated: np.ndarray,
                    dist: np.ndarray | None) -> RegionContext:
    """What surrounds one off-mask region (:class:`RegionContext`); *hu*, *own*,
    *annotated* and *labels* are crops of the scan grid at *box*."""
    spacing = volume.spacing_mm
    lung = scene.lung[box]
    lo = np.array([s.start for s in box], dtype=float)
    inside = labels == region.region_index
    halo = grow_mm(inside, HALO_MM, spacing) & ~own
    off = offset_lps_mm(region.offset_mm, volume.affine)
    return RegionContext(
        anatomy=region_descriptors(inside, hu, lung, spacing_mm=spacing),
        offset_lps_mm=tuple(float(v) for v in off),
        direction=direction_words(off, nodule_lps_mm=volume.voxel_to_world(site.center_zyx),
                                  midline_x_mm=scene.midline_x_mm),
        halo_max_hu=float(hu[halo].max()),
        deep=pool_region_features(act, np.argwhere(inside) + lo, roi),
        structure=attended_structure(inside, hu, lung, attr, own, spacing_mm=spacing,
                                     exclude=annotated, distance_mm=dist, grow_by_mm=HALO_MM),
    )
