"""``score_folder``: score every case of an input, record failures, then find patterns.

A bad case never stops the batch: its error is recorded as a ``failed`` row (a readable message
that names the problem, never a source path) and the next case runs.  After the cases, the
off-mask regions of the whole cohort are clustered once, and ``findings.csv`` and
``patterns.csv`` are written (temporary file, then rename).
"""

from __future__ import annotations

import logging
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from data_tools.cases import CaseSpec, discover_cases, read_case, read_labels
from data_tools.dicom import DEFAULT_MAX_BYTES
from data_tools.errors import DataError
from data_tools.volume import Mask, Volume

from .descriptors import describe_region
from .causal import pattern_effects
from .model import load_model
from .patterns import PatternSettings, cluster_regions
from .pipeline import CaseResult, ScoreSettings, analyze_scan
from .store import ResultsStore, load_case_arrays, save_case_arrays

__all__ = ["BatchSummary", "score_folder", "write_tables", "recluster", "safe_error",
           "read_labels"]

log = logging.getLogger(__name__)

Progress = Callable[[int, int, str], None]


@dataclass(frozen=True)
class BatchSummary:
    """What a batch did: counts and wall time (s)."""

    n_cases: int
    n_ok: int
    n_failed: int
    n_no_mask: int
    n_nodules: int
    n_regions: int
    n_clusters: int
    seconds: float
    failed: list[tuple[str, str]] = field(default_factory=list)
    layouts: dict[str, int] = field(default_factory=dict)  # cases per input layout


def safe_error(exc: BaseException, *paths: Path | str | None) -> str:
    """A message for *exc* that is safe to store and print.

    Input errors (:class:`DataError`) are written to name files by base name only; anything
    else is reported as its type and message.  In both, every given path is replaced by
    ``<input>``, any remaining absolute path is cut to its base name, and anything shaped
    like a DICOM UID (five or more dot-separated numbers, e.g. a LUNA16 file named after its
    series UID) becomes ``<uid>`` (defence in depth: a third-party message may quote either).
    """
    text = str(exc) if isinstance(exc, DataError) else f"{type(exc).__name__}: {exc}"
    for p in paths:
        if p is None:
            continue
        for variant in sorted({str(p), str(Path(p).resolve())}, key=len, reverse=True):
            text = text.replace(variant, "<input>")
    text = re.sub(r"(?:/[^/\s'\"]+)+/([^/\s'\"]+)", r"\1", text)
    text = re.sub(r"(?<![\d.])\d+(?:\.\d+){4,}(?![\d])", "<uid>", text)
    if isinstance(exc, DataError):
        return text
    return f"unexpected error while scoring ({text}); please report it"


def result_rows(result: CaseResult) -> tuple[list[dict], list[dict]]:
    nodules, regions = [], []
    case_region = 0
    for nod in result.nodules:
        a, loc = nod.alignment, nod.localization
        total = float(nod.attribution.sum())
        off_share = float(sum(r.mass_share for r in nod.regions)) if total > 0 else float("nan")
        nodules.append({
            "case_id": result.case_id, "nodule_id": nod.nodule_id,
            "probability": nod.probability, "predicted_label": nod.predicted_label,
            "rma": a.rma, "rra": a.rra, "pointing_hit": a.pointing_hit,
            "peak_distance_mm": a.peak_distance_mm, "near_mass": a.near_mass,
            "detection_auc": loc.auc, "otsu_dice": loc.otsu_dice, "otsu_iou": loc.otsu_iou,
            "ring_0_5": loc.ring_0_5, "ring_5_10": loc.ring_5_10, "ring_10_20": loc.ring_10_20,
            "verdict": a.verdict, "n_offmask_regions": len(nod.regions),
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
                "description": describe_region(r.offset_distance_mm, ctx.direction, an.relation,
                                               r.mean_hu),
                "cluster": -1,
            })
    return nodules, regions


def _region_deep(result: CaseResult) -> np.ndarray:
    rows = [ctx.deep for nod in result.nodules for ctx in nod.contexts]
    return np.stack(rows).astype(np.float32) if rows else np.zeros((0, 0), np.float32)


#: what the annotation says of a nodule that may go into the findings (numbers only: free-text
#: fields such as RT ROI names or SEG segment labels stay out, they can carry anything)
_ANNOTATION_KEYS = ("n_readers", "roi_number", "segment_number")


def _annotation_rows(case_id: str, nodules) -> list[dict]:
    rows = []
    for nod in nodules:
        for key, value in nod.items():
            name = ("annotated_diameter_mm" if key == "diameter_mm"
                    else key if key.startswith("lidc_") or key in _ANNOTATION_KEYS else None)
            if name is None or isinstance(value, (str, bytes, list, tuple, dict)):
                continue
            rows.append({"case_id": case_id, "nodule_id": f"n{int(nod['label'])}",
                         "name": name, "value": float(value)})
    return rows


def _score_one(spec: CaseSpec, model, card, results_dir: Path, settings: ScoreSettings,
               store: ResultsStore, max_bytes: int | None) -> tuple[str, int, int]:
    case = read_case(spec, max_bytes=max_bytes)
    volume, mask = case.volume, case.mask
    result = analyze_scan(volume, mask, model, card, case_id=spec.case_id, settings=settings)
    ct = np.clip(np.rint(volume.array), -32768, 32767).astype(np.int16)
    arrays = save_case_arrays(
        results_dir, spec.case_id, ct=ct,
        mask=(mask.array if mask is not None else np.zeros(volume.shape, np.int16)).astype(np.int16),
        attribution=result.attribution, region_map=result.region_map, affine=volume.affine,
        # row k-1: layer activations pooled in region k of region_map (the case_region order)
        region_deep=_region_deep(result),
    )
    nodules, regions = result_rows(result)
    status = "ok" if result.status == "ok" else "no-mask"
    store.put_case(
        {"case_id": spec.case_id, "status": status,
         "error": "" if status == "ok" else result.status.split(": ", 1)[-1],
         "n_nodules": len(nodules), "shape": list(volume.shape),
         "spacing_mm": [round(s, 4) for s in volume.spacing_mm], "source_kind": spec.image_kind,
         "layout": spec.layout, "mask_source": case.mask_source, "arrays": arrays},
        nodules, regions, _annotation_rows(spec.case_id, case.nodules),
    )
    return status, len(nodules), len(regions)


def recluster(store: ResultsStore, settings: PatternSettings = PatternSettings(), *,
              model=None, card=None, results_dir: str | Path | None = None) -> int:
    """Cluster all off-mask regions in the store; return the number of clusters.

    With ``model``, ``card`` and ``results_dir``, every cluster also gets its causal check
    and the nodules their shortcut flags (:func:`discovery.causal.pattern_effects`), scans
    read back from ``results_dir/cases/<case_id>.npz``.
    """
    regions = store.regions()
    if regions.empty:
        store.set_patterns(regions.assign(cluster=[], embedding_x=[], embedding_y=[]),
                           pd.DataFrame(columns=["cluster"]))
        return 0
    regions = regions.drop(columns=["cluster", "embedding_x", "embedding_y"])
    labels = store.labels()
    if len(labels):  # the truth-enrichment columns, where labels are known
        regions = regions.merge(labels, on=["case_id", "nodule_id"], how="left")
    clustered, clusters = cluster_regions(regions, settings=settings)
    flags = None
    if model is not None and card is not None and results_dir is not None and len(clusters):
        def load(case_id: str):
            a = load_case_arrays(results_dir, case_id)
            affine = a["affine"]
            return (Volume(a["ct"].astype(np.float32), affine), Mask(a["mask"], affine),
                    a["region_map"])

        clusters, flags = pattern_effects(
            clustered, clusters, load=load, model=model, card=card,
            threshold=float(card.metrics.get("threshold", 0.5)), seed=settings.seed)
    store.set_patterns(clustered, clusters, flags)
    return int(len(clusters))


def _atomic_csv(df: pd.DataFrame, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    df.to_csv(tmp, index=False, float_format="%.6g")
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def write_tables(store: ResultsStore, results_dir: Path) -> None:
    """Write ``findings.csv`` and ``patterns.csv`` from the store."""
    _atomic_csv(store.findings(), results_dir / "findings.csv")
    clusters = store.clusters()
    clusters["exemplars"] = [";".join(x) for x in clusters["exemplars"]]
    _atomic_csv(clusters, results_dir / "patterns.csv")


def score_folder(
    input_path: str | Path,
    results_dir: str | Path,
    *,
    model_dir: str | Path | None = None,
    settings: ScoreSettings = ScoreSettings(),
    pattern_settings: PatternSettings = PatternSettings(),
    labels: str | Path | None = None,
    layout: str = "auto",
    max_bytes: int | None = DEFAULT_MAX_BYTES,
    progress: Progress | None = None,
) -> BatchSummary:
    """Score every case under *input_path* into *results_dir*.

    Parameters
    ----------
    input_path : path
        A folder of case folders, one case folder, or a manifest CSV (see
        :func:`data_tools.cases.discover_cases`).
    results_dir : path
        Created if needed; holds ``discovery.sqlite``, ``findings.csv``, ``patterns.csv`` and
        ``cases/<case_id>.npz``.
    model_dir : path, optional
        Model folder; default the committed demo model.
    labels : path, optional
        Known true labels (:func:`read_labels`), stored with the results; the pattern
        clusters then also report enrichment against the true label.
    layout : str
        Input layout (:data:`data_tools.layouts.LAYOUTS`; ``"auto"`` recognises it).
    max_bytes : int or None
        Refuse a scan whose float32 volume would be larger (checked from the headers).
    progress : callable(done, total, case_id), optional

    Returns
    -------
    BatchSummary
    """
    t0 = time.perf_counter()
    results_dir = Path(results_dir)
    model, card = load_model(model_dir)
    specs = discover_cases(input_path, layout=layout)
    known = read_labels(labels) if labels is not None else None  # bad file: fail before scoring
    store = ResultsStore(results_dir)
    if known is not None:
        store.set_labels(known)
    store.set_meta(model_sha256=card.weights_sha256, roi_size_vox=list(card.roi_size_vox),
                   roi_spacing_mm=list(card.roi_spacing_mm), gradcam_layer=card.gradcam_layer,
                   method=settings.method, hu_window=list(card.hu_window),
                   threshold=float(card.metrics.get("threshold", 0.5)))
    n_ok = n_failed = n_no_mask = n_nod = n_reg = 0
    failed: list[tuple[str, str]] = []
    for i, spec in enumerate(specs):
        try:
            status, k_nod, k_reg = _score_one(spec, model, card, results_dir, settings, store,
                                               max_bytes)
        except Exception as exc:  # noqa: BLE001 -- a batch records every failure and goes on
            message = safe_error(exc, input_path, spec.image, spec.mask)
            # no traceback in the log: frames and messages of third-party code may quote paths
            log.warning("case %s failed: %s", spec.case_id, message)
            store.put_case({"case_id": spec.case_id, "status": "failed", "error": message,
                            "source_kind": spec.image_kind, "layout": spec.layout}, [], [])
            failed.append((spec.case_id, message))
            n_failed += 1
        else:
            n_ok += status == "ok"
            n_no_mask += status == "no-mask"
            n_nod += k_nod
            n_reg += k_reg
        if progress is not None:
            progress(i + 1, len(specs), spec.case_id)
    n_clusters = recluster(store, pattern_settings, model=model, card=card, results_dir=results_dir)
    write_tables(store, results_dir)
    store.close()
    return BatchSummary(
        n_cases=len(specs), n_ok=n_ok, n_failed=n_failed, n_no_mask=n_no_mask, n_nodules=n_nod,
        n_regions=n_reg, n_clusters=n_clusters, seconds=time.perf_counter() - t0, failed=failed,
        layouts={k: sum(s.layout == k for s in specs) for k in sorted({s.layout for s in specs})},
    )
