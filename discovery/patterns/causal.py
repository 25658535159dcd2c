"""Does the model rely on a pattern?  Remove it and re-score.

The causal check of a cluster of off-mask regions: for every nodule with member regions, the
members' voxels are replaced with *local lung parenchyma* (values resampled from the
parenchyma around them), the nodule's ROI is re-extracted from the edited scan, and the model
scores it again.  The mean change in probability over the nodules says whether the model
relies on the pattern; its sign says in which direction.

Only the scan is edited, never the model; the edit is confined to the removed voxels, and the
nodule itself (its annotated mask) is never touched.
"""

from __future__ import annotations

import logging
import zipfile
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pandas as pd
import torch
from scipy import ndimage

from data_tools.checks import check_spacing
from data_tools.volume import Mask, Volume
from discovery.align.metrics import bounding_box, grow_mm
from discovery.model.card import ModelCard
from discovery.model.rois import nodule_sites, roi_input
from discovery.schema import EFFECT_COLUMNS, FLAG_COLUMNS  # noqa: F401 -- re-exported

log = logging.getLogger(__name__)

__all__ = [
    "PARENCHYMA_BAND_HU",
    "FALLBACK_PARENCHYMA_HU",
    "inpaint_parenchyma",
    "Effect",
    "summarize_effects",
    "rescore_without",
    "case_deltas",
    "case_without",
    "CaseRunner",
    "run_here",
    "pattern_effects",
    "EFFECT_COLUMNS",
    "FLAG_COLUMNS",
]


#: HU band of aerated lung parenchyma sampled to fill removed voxels.
PARENCHYMA_BAND_HU = (-950.0, -600.0)
#: Used when no parenchyma voxel is found anywhere near the removed voxels.
FALLBACK_PARENCHYMA_HU = -850.0


_SLACK_MM = 1e-6  # distance ties with the ball's <= r² test, kept inside


def inpaint_parenchyma(
    hu,
    remove,
    *,
    spacing_mm,
    protect=None,
    shell_mm: float = 6.0,
    band_hu: tuple[float, float] = PARENCHYMA_BAND_HU,
    seed: int = 0,
) -> np.ndarray:
    """Replace voxels with values drawn from the lung parenchyma around them.

    Parameters
    ----------
    hu : ndarray, shape (z, y, x)
        CT in HU (not modified).
    remove : ndarray of bool, shape (z, y, x)
        Voxels to replace.
    spacing_mm : sequence of 3 floats
        Voxel size ``(dz, dy, dx)`` in mm.
    protect : ndarray of bool, shape (z, y, x), optional
        Voxels never edited and never sampled (e.g. the nodule mask); they are removed from
        ``remove`` first.
    shell_mm : float
        Donor voxels are those within ``shell_mm`` of ``remove`` (outside it and outside
        ``protect``) whose HU lies in ``band_hu``.
    band_hu : (float, float)
        HU band counted as aerated parenchyma, inclusive.
    seed : int
        Donor values are drawn with replacement by ``numpy.random.default_rng(seed)``.

    Returns
    -------
    ndarray, float32, shape (z, y, x)
        A copy of ``hu`` with ``remove & ~protect`` filled.  Drawing donors (rather than
        using their mean) keeps the local noise texture, so the edit does not leave a
        conspicuously smooth hole.

    Notes
    -----
    Without donors in the shell, parenchyma voxels of the whole array are used; without
    any, the constant :data:`FALLBACK_PARENCHYMA_HU`.  An empty ``remove`` returns an
    unchanged copy.
    """
    hu = np.asarray(hu)
    remove = np.asarray(remove)
    if hu.ndim != 3 or remove.shape != hu.shape:
        raise ValueError(
            f"hu must be 3-D and remove the same shape; received {hu.shape} and {remove.shape}"
        )
    if remove.dtype != bool:
        raise ValueError(f"remove must be a boolean mask; received dtype {remove.dtype}")
    spacing = np.asarray(check_spacing(spacing_mm))
    if not (np.isfinite(shell_mm) and shell_mm > 0):
        raise ValueError(f"shell_mm must be positive; received {shell_mm!r}")
    lo_hu, hi_hu = float(band_hu[0]), float(band_hu[1])
    if not hi_hu > lo_hu:
        raise ValueError(f"band_hu must be (low, high) with high > low; received {band_hu!r}")
    out = np.array(hu, dtype=np.float32, copy=True)
    if protect is not None:
        protect = np.asarray(protect, dtype=bool)
        if protect.shape != hu.shape:
            raise ValueError(f"protect must have shape {hu.shape}; received {protect.shape}")
        remove = remove & ~protect
    if not remove.any():
        return out
    # Work in the bounding box of the removed voxels grown by the shell.
    box = bounding_box(remove, np.ceil(shell_mm / spacing).astype(int) + 1)
    rem = remove[box]
    # the shell: voxels within shell_mm (centre to centre) of a removed voxel, i.e. the
    # dilation by the physical ball, computed with one distance transform of the box
    near = ndimage.distance_transform_edt(~rem, sampling=spacing) <= shell_mm + _SLACK_MM
    shell = near & ~rem
    if protect is not None:
        shell &= ~protect[box]
    values = out[box]
    in_band = (values >= lo_hu) & (values <= hi_hu)
    donors = values[shell & in_band]
    if donors.size == 0:
        whole = (out >= lo_hu) & (out <= hi_hu) & ~remove
        if protect is not None:
            whole &= ~protect
        donors = out[whole]
    rng = np.random.default_rng(seed)
    n = int(rem.sum())
    fill = rng.choice(donors, size=n) if donors.size else np.full(n, FALLBACK_PARENCHYMA_HU)
    values[rem] = fill.astype(np.float32)
    return out


@dataclass(frozen=True)
class Effect:
    """Summary of the probability changes of one pattern's causal check.

    Attributes
    ----------
    n : int
        Nodules re-scored.
    mean_delta : float
        Mean of ``p_after - p_before`` (probability units); negative = removing the
        pattern lowers the malignancy probability.  NaN when ``n == 0``.
    ci_low, ci_high : float
        95 % percentile-bootstrap interval of the mean (2000 resamples, seeded); NaN when
        ``n < 2``.
    relied_upon : bool
        ``|mean_delta| >= min_effect`` and the interval excludes 0.
    """

    n: int
    mean_delta: float
    ci_low: float
    ci_high: float
    relied_upon: bool


def summarize_effects(deltas, *, min_effect: float = 0.05, seed: int = 0,
                      n_boot: int = 2000) -> Effect:
    """Mean change in probability with a bootstrap interval and the reliance verdict.

    Parameters
    ----------
    deltas : array-like, shape (n,)
        ``p_after - p_before`` per nodule.
    min_effect : float
        Smallest absolute mean change (probability units) called reliance.
    """
    d = np.asarray(deltas, dtype=float).ravel()
    if d.size and not np.all(np.isfinite(d)):
        raise ValueError("deltas must be finite")
    if not (np.isfinite(min_effect) and min_effect >= 0):
        raise ValueError(f"min_effect must be >= 0; received {min_effect!r}")
    if d.size == 0:
        return Effect(0, float("nan"), float("nan"), float("nan"), False)
    mean = float(d.mean())
    if d.size < 2:
        return Effect(1, mean, float("nan"), float("nan"), False)
    rng = np.random.default_rng(seed)
    boots = d[rng.integers(0, d.size, size=(n_boot, d.size))].mean(axis=1)
    lo, hi = (float(v) for v in np.percentile(boots, [2.5, 97.5]))
    relied = abs(mean) >= min_effect and (lo > 0 or hi < 0)
    return Effect(int(d.size), mean, lo, hi, bool(relied))


def rescore_without(
    model: torch.nn.Module,
    card: ModelCard,
    volume: Volume,
    center_zyx,
    remove,
    *,
    protect=None,
    seed: int = 0,
) -> tuple[float, float]:
    """Malignancy probability of a nodule before and after removing voxels.

    Parameters
    ----------
    model, card
        From :func:`discovery.model.card.load_model` (used as is; put it in ``eval()``).
    volume : Volume
        The scan in HU.
    center_zyx : sequence of 3 floats
        Nodule centre, scan voxel coordinates (the ROI centre).
    remove : ndarray of bool, shape ``volume.shape``
        Voxels to replace with local parenchyma (:func:`inpaint_parenchyma`).
    protect : ndarray of bool, optional
        Never edited (the nodule's mask).

    Returns
    -------
    (p_before, p_after) : tuple of float
        Softmax probability of class 1 on the original and the edited ROI.
    """
    edited = inpaint_parenchyma(volume.array, remove, spacing_mm=volume.spacing_mm,
                                protect=protect, seed=seed)
    x = torch.from_numpy(np.stack([roi_input(Volume(arr, volume.affine), center_zyx, card)
                                   for arr in (volume.array, edited)]))
    with torch.no_grad():
        p = torch.softmax(model(x), dim=1)[:, 1].numpy()
    return float(p[0]), float(p[1])


#: ``load(case_id) -> (volume, mask, region_map)``: the scan, its nodule label mask and the
#: case's off-mask region map (region ``k`` = row ``case_region == k``), all on one grid.
CaseLoader = Callable[[str], "tuple[Volume, Mask, np.ndarray]"]


def _try_load(load: CaseLoader, case_id: str):
    """``load(case_id)``, or None (with a warning naming the case only) when its stored
    arrays cannot be read: one unreadable case must not cost the cohort its causal check."""
    try:
        return load(case_id)
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        log.warning("causal check skips case %s: its stored arrays cannot be read (%s)",
                    case_id, type(exc).__name__)
        return None


def _regions_by_case(regions: pd.DataFrame):
    for case_id, rows in regions.groupby("case_id", sort=True):
        yield str(case_id), rows


def _open_case(load: CaseLoader, case_id: str):
    """``(volume, region_map, sites by nodule id, protect)`` of a case, *protect* being every
    annotated nodule's voxels; None when its stored arrays cannot be read."""
    loaded = _try_load(load, case_id)
    if loaded is None:
        return None
    volume, mask, region_map = loaded
    return volume, region_map, {s.nodule_id: s for s in nodule_sites(mask)}, mask.array > 0


def _removal(region_map: np.ndarray, case_regions, reach_mm: float, spacing_mm) -> np.ndarray:
    return grow_mm(np.isin(region_map, np.asarray(case_regions, dtype=int)), reach_mm, spacing_mm)


def case_deltas(case_id: str, rows: pd.DataFrame, *, load: CaseLoader, model: torch.nn.Module,
                card: ModelCard, clusters, seed: int = 0, reach_mm: float = 3.0):
    """One case's part of the causal check (:func:`pattern_effects`): for each of its
    nodules and each cluster in *clusters* with member regions in *rows*, ``(nodule_id,
    cluster, p_before, p_after)``, sorted by nodule and cluster; None when the case's stored
    arrays cannot be read."""
    opened = _open_case(load, case_id)
    if opened is None:
        return None
    volume, region_map, sites, protect = opened
    known = {int(c) for c in clusters}
    out = []
    for (nodule_id, c), grp in rows.groupby(["nodule_id", "cluster"], sort=True):
        site = sites.get(str(nodule_id))
        if site is None or int(c) not in known:
            continue
        remove = _removal(region_map, grp["case_region"], reach_mm, volume.spacing_mm)
        p0, p1 = rescore_without(model, card, volume, site.center_zyx, remove,
                                 protect=protect, seed=seed)
        out.append((str(nodule_id), int(c), p0, p1))
    return out


def case_without(case_id: str, rows: pd.DataFrame, *, load: CaseLoader,
                 model: torch.nn.Module, card: ModelCard, seed: int = 0,
                 reach_mm: float = 3.0):
    """One case's part of the shortcut flag (:func:`pattern_effects`): ``{nodule_id:
    p_without}``, the probability of each nodule of *rows* with all its regions in *rows*
    removed together; None when the case's stored arrays cannot be read."""
    opened = _open_case(load, case_id)
    if opened is None:
        return None
    volume, region_map, sites, protect = opened
    out = {}
    for nodule_id, grp in rows.groupby(rows["nodule_id"].astype(str), sort=True):
        remove = _removal(region_map, grp["case_region"], reach_mm, volume.spacing_mm)
        _, out[nodule_id] = rescore_without(model, card, volume, sites[nodule_id].center_zyx,
                                            remove, protect=protect, seed=seed)
    return out


#: ``run(step, jobs) -> results``: computes ``step(case_id, rows, **kwargs)`` for each
#: ``(case_id, rows, kwargs)`` of *jobs* (``step`` is :func:`case_deltas` or
#: :func:`case_without`; the runner supplies ``load``, ``model`` and ``card``), results in the
#: order of *jobs*.  E.g. on the worker processes of a batch.
CaseRunner = Callable[[Callable[..., object], list], list]


def run_here(load: CaseLoader, model: torch.nn.Module, card: ModelCard) -> CaseRunner:
    """The :data:`CaseRunner` that computes the steps here, one case after the other."""
    def run(step, jobs):
        return [step(case_id, rows, load=load, model=model, card=card, **options)
                for case_id, rows, options in jobs]
    return run


def pattern_effects(
    regions: pd.DataFrame,
    clusters: pd.DataFrame,
    *,
    load: CaseLoader,
    model: torch.nn.Module,
    card: ModelCard,
    threshold: float = 0.5,
    min_effect: float = 0.05,
    seed: int = 0,
    reach_mm: float = 3.0,
    run: CaseRunner | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The causal check of every cluster, and the case-level shortcut flag.

    For each cluster and each nodule with member regions, the member regions' voxels and
    every voxel within ``reach_mm`` of them are replaced with local parenchyma
    (:func:`inpaint_parenchyma`; all annotated nodules are protected) and the nodule is
    re-scored: ``delta = p_after - p_before``.  The reach matches the region's halo
    (:data:`discovery.pipeline.HALO_MM`): a structure that the near-nodule margin cut in two
    is removed whole, not just the half outside the margin.  A cluster is
    *relied upon* when its mean delta is at least ``min_effect`` in size and its bootstrap
    interval excludes 0 (:func:`summarize_effects`).

    Then, for every nodule with regions in clusters the model relies on *for* malignancy
    (relied upon with a negative mean delta), those regions are removed together:
    ``flag_score = max(0, p - p_without)`` and the nodule is ``flagged`` when it is
    predicted malignant (``p >= threshold``) but would not be without them - a prediction
    that rests off the mask, on a pattern the model relies on.

    Parameters
    ----------
    regions : pandas.DataFrame
        Clustered regions (:func:`discovery.patterns.clustering.cluster_regions`): ``case_id``,
        ``nodule_id``, ``case_region``, ``cluster``.
    clusters : pandas.DataFrame
        The cluster table (needs ``cluster``).
    load : callable
        ``load(case_id) -> (Volume, Mask, region_map)``.
    model, card
        The scoring model (used as is, in ``eval()`` mode) and its card.
    threshold : float
        Decision threshold of the model.
    min_effect : float
        Smallest absolute mean change in probability called reliance.
    run : callable, optional
        Computes the per-case steps elsewhere (:data:`CaseRunner`, e.g. on a batch's worker
        processes); default: here, one case after the other, with *load*, *model*, *card*.
        The result does not depend on where the steps run.

    Returns
    -------
    clusters : pandas.DataFrame
        A copy with :data:`EFFECT_COLUMNS`.
    flags : pandas.DataFrame
        One row per nodule with at least one clustered region, :data:`FLAG_COLUMNS`
        (``probability_without`` NaN and ``flag_score`` 0 when none of its regions is in a
        relied-upon cluster; ``flag_clusters`` a comma-separated list of cluster ids).
    """
    for col in ("case_id", "nodule_id", "case_region", "cluster"):
        if col not in regions.columns:
            raise ValueError(f"regions is missing column {col!r}; pass cluster_regions() output")
    if "cluster" not in clusters.columns:
        raise ValueError("clusters is missing column 'cluster'")
    if run is None:
        run = run_here(load, model, card)
    clustered = regions[regions["cluster"].astype(int) >= 0]
    deltas: dict[int, list[float]] = {int(c): [] for c in clusters["cluster"]}
    base: dict[tuple[str, str], float] = {}
    unreadable: set[str] = set()
    by_case = list(_regions_by_case(clustered))
    options = {"clusters": sorted(deltas), "seed": seed, "reach_mm": reach_mm}
    for (case_id, _), found in zip(by_case, run(case_deltas, [(c, r, options) for c, r in by_case])):
        if found is None:
            unreadable.add(case_id)
            continue
        for nodule_id, c, p0, p1 in found:
            base[(case_id, nodule_id)] = p0
            deltas[c].append(p1 - p0)
    out = clusters.copy()
    effects = {c: summarize_effects(d, min_effect=min_effect, seed=seed) for c, d in deltas.items()}
    out["effect_n"] = [effects[int(c)].n for c in out["cluster"]]
    out["effect_mean"] = [effects[int(c)].mean_delta for c in out["cluster"]]
    out["effect_ci_low"] = [effects[int(c)].ci_low for c in out["cluster"]]
    out["effect_ci_high"] = [effects[int(c)].ci_high for c in out["cluster"]]
    out["relied_upon"] = [bool(effects[int(c)].relied_upon) for c in out["cluster"]]

    supporting = {c for c, e in effects.items() if e.relied_upon and e.mean_delta < 0}
    readable = [(c, r) for c, r in by_case if c not in unreadable]
    mine = {c: r[r["cluster"].astype(int).isin(supporting)] for c, r in readable}
    # only the cases with regions in supporting clusters are read again
    again = [(c, mine[c], {"seed": seed, "reach_mm": reach_mm}) for c, _ in readable if len(mine[c])]
    without = dict(zip([c for c, _, _ in again], run(case_without, again)))
    flags = []
    for case_id, rows in readable:
        if case_id in without and without[case_id] is None:
            continue
        for nodule_id in sorted(rows["nodule_id"].astype(str).unique()):
            p0 = base[(case_id, nodule_id)]
            sel = mine[case_id][mine[case_id]["nodule_id"].astype(str) == nodule_id]
            p_without, ids = float("nan"), ""
            if len(sel):
                p_without = without[case_id][nodule_id]
                ids = ",".join(str(c) for c in sorted(sel["cluster"].astype(int).unique()))
            score = max(0.0, p0 - p_without) if np.isfinite(p_without) else 0.0
            flagged = bool(np.isfinite(p_without) and p0 >= threshold and p_without < threshold)
            flags.append({"case_id": case_id, "nodule_id": nodule_id, "probability": p0,
                          "probability_without": p_without, "flag_score": score,
                          "flagged": flagged, "flag_clusters": ids})
    return out, pd.DataFrame(flags, columns=FLAG_COLUMNS)
