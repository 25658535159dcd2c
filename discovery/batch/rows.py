"""The store's rows of an analysed case: its nodules, its off-mask regions, what its
annotation says, and the regions' deep features for the case file."""

from __future__ import annotations

import dataclasses

import numpy as np

from discovery.pipeline import CaseResult
from discovery.regions.descriptors import describe_region
from discovery.schema import SURROUNDINGS_FIELDS

__all__ = ["result_rows", "region_deep", "annotation_rows", "ANNOTATION_KEYS"]


def result_rows(result: CaseResult) -> tuple[list[dict], list[dict]]:
    """``(nodules, regions)``: one row per nodule and one per off-mask region, keyed as the
    store's ``nodules`` and ``regions`` tables are (:mod:`discovery.store.tables`)."""
    nodules, regions = [], []
    case_region = 0
    for nod in result.nodules:
        a, loc, rel = nod.alignment, nod.localization, nod.reliance
        total = float(nod.attribution.sum())
        off_share = float(sum(r.mass_share for r in nod.regions)) if total > 0 else float("nan")
        nodules.append({
            "case_id": result.case_id, "nodule_id": nod.nodule_id,
            "probability": nod.probability, "predicted_label": nod.predicted_label,
            "rma": a.rma, "rra": a.rra, "pointing_hit": a.pointing_hit,
            "peak_distance_mm": a.peak_distance_mm, "near_mass": a.near_mass,
            "detection_auc": loc.auc, "otsu_dice": loc.otsu_dice, "otsu_iou": loc.otsu_iou,
            "ring_0_5": loc.ring_0_5, "ring_5_10": loc.ring_5_10, "ring_10_20": loc.ring_10_20,
            "verdict": a.verdict, "p_without_nodule": rel.p_without_nodule,
            "p_without_control": rel.p_without_control, "rests_on_nodule": rel.rests_on_nodule,
            "reliance_status": rel.status, **{f: getattr(rel, f) for f in SURROUNDINGS_FIELDS},
            "applicability": nod.applicability.code,
            "applicability_detail": nod.applicability.detail,
            "n_offmask_regions": len(nod.regions),
            "offmask_mass_share": off_share, "volume_mm3": nod.site.volume_mm3,
            "center_z": nod.site.center_zyx[0], "center_y": nod.site.center_zyx[1],
            "center_x": nod.site.center_zyx[2], "status": "ok" if a.status == "ok" else a.verdict,
            "error": "" if a.status == "ok" else a.status,
        })
        lo = np.array([s.start for s in nod.box], dtype=float)
        for r, ctx in zip(nod.regions, nod.contexts):
            case_region += 1
            an = ctx.anatomy
            cz, cy, cx = (np.asarray(r.centroid_zyx) + lo).tolist()  # scan voxel coordinates
            regions.append({
                "region_key": f"{result.case_id}/{nod.nodule_id}/r{r.region_index}",
                "case_id": result.case_id, "nodule_id": nod.nodule_id,
                "region_index": r.region_index, "case_region": case_region,
                "probability": nod.probability, "n_voxels": r.n_voxels,
                "volume_mm3": r.volume_mm3, "mass_share": r.mass_share, "peak_value": r.peak_value,
                "centroid_z": cz, "centroid_y": cy, "centroid_x": cx,
                "offset_z_mm": r.offset_mm[0], "offset_y_mm": r.offset_mm[1],
                "offset_x_mm": r.offset_mm[2], "offset_distance_mm": r.offset_distance_mm,
                "distance_to_mask_mm": r.distance_to_mask_mm, "mean_hu": r.mean_hu,
                "max_hu": r.max_hu, "std_hu": r.std_hu,
                "offset_l_mm": ctx.offset_lps_mm[0], "offset_p_mm": ctx.offset_lps_mm[1],
                "offset_s_mm": ctx.offset_lps_mm[2], "direction": ctx.direction,
                "relation": an.relation, "lung_fraction": an.lung_fraction,
                "pleura_distance_mm": an.pleura_distance_mm, "dense_fraction": an.dense_fraction,
                "dense_elongation": an.dense_elongation, "elongation": an.elongation,
                "median_hu": an.hu_median, "p90_hu": an.hu_p90, "halo_max_hu": ctx.halo_max_hu,
                **{f"structure_{k}": v for k, v in dataclasses.asdict(ctx.structure).items()},
                "description": describe_region(r.offset_distance_mm, ctx.direction, an.relation,
                                               r.mean_hu),
                "cluster": -1,
            })
    return nodules, regions


def region_deep(result: CaseResult) -> np.ndarray:
    """Row k-1: the layer activations pooled in region k of the case (``case_region``
    order); shape (regions, channels), float32."""
    rows = [ctx.deep for nod in result.nodules for ctx in nod.contexts]
    return np.stack(rows).astype(np.float32) if rows else np.zeros((0, 0), np.float32)


#: what the annotation says of a nodule that may go into the findings (numbers only: free-text
#: fields such as RT ROI names or SEG segment labels stay out, they can carry anything)
ANNOTATION_KEYS = ("n_readers", "roi_number", "segment_number")


def annotation_rows(case_id: str, nodules) -> list[dict]:
    """The ``annotations`` rows of a case: the numbers its annotation gives per nodule."""
    rows = []
    for nod in nodules:
        for key, value in nod.items():
            name = ("annotated_diameter_mm" if key == "diameter_mm"
                    else key if key.startswith("lidc_") or key in ANNOTATION_KEYS else None)
            if name is None or isinstance(value, (str, bytes, list, tuple, dict)):
                continue
            rows.append({"case_id": case_id, "nodule_id": f"n{int(nod['label'])}",
                         "name": name, "value": float(value)})
    return rows
