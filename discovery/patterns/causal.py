"""Does the model rely on a pattern?  Remove it and re-score.

The causal check of a cluster of off-mask regions: for every nodule with member regions, the
members' voxels are replaced with *local lung parenchyma* (values resampled from the
parenchyma around them), the nodule's ROI is re-extracted from the edited scan, and the model
scores it again.  The mean change in probability over the nodules says whether the model
relies on the pattern; its sign says in which direction.

Only the scan is edited, never the model; the edit is confined to the removed voxels, and the
nodule itself (its annotated mask) is never touched.

Both probabilities of a change come from the stored scan (HU rounded to int16, as
``discovery score`` keeps it), so the change measures the edit alone: ``p_before`` is not the
stored ``probability`` of the nodule, which the pipeline computed on the scan as read (on the
demo cohort they differ by up to 3e-4).  Each case is read once and each ROI scored once: a
nodule's unedited ROI once, each edited ROI once, in batches whose composition does not change
a ROI's probability (:func:`~discovery.model.edit.score_inputs`).

The edit and the scoring live in :mod:`discovery.model.edit` (so that the pipeline's reliance
on the nodule, :mod:`discovery.model.reliance`, uses the same ones); ``inpaint_parenchyma``
and its constants are re-exported here.
"""

from __future__ import annotations

import logging
import math
import zipfile
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pandas as pd
import torch

from data_tools.volume import Mask, Volume
from discovery.align.metrics import grow_mm
from discovery.model.card import ModelCard
from discovery.model.edit import (  # noqa: F401 -- the constants re-exported
    FALLBACK_PARENCHYMA_HU,
    PARENCHYMA_BAND_HU,
    ROI_BATCH,
    SHELL_MM,
    bounding_box,
    inpaint_parenchyma,
    reach_voxels,
    score_inputs,
)
from discovery.model.rois import label_boxes, nodule_sites, roi_input
from discovery.patterns.clustering import N_EXEMPLARS
from discovery.patterns.stats import exemplars_one_per_group
from discovery.schema import EFFECT_COLUMNS, FLAG_COLUMNS, MIN_EFFECT  # noqa: F401 -- re-exported

log = logging.getLogger(__name__)

__all__ = [
    "PARENCHYMA_BAND_HU",
    "FALLBACK_PARENCHYMA_HU",
    "inpaint_parenchyma",
    "Effect",
    "summarize_effects",
    "rescore_without",
    "ALL_OFF_MASK",
    "CaseEdits",
    "case_edits",
    "case_deltas",
    "case_without",
    "CaseRunner",
    "CaseLoader",
    "CENTRE_COLUMNS",
    "ROI_BATCH",
    "run_here",
    "pattern_effects",
    "EFFECT_COLUMNS",
    "FLAG_COLUMNS",
]


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


def summarize_effects(deltas, *, min_effect: float = MIN_EFFECT, seed: int = 0,
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
    p = score_inputs(model, [roi_input(Volume(arr, volume.affine), center_zyx, card)
                            for arr in (volume.array, edited)])
    return float(p[0]), float(p[1])


#: ``load(case_id) -> (volume, mask, region_map)``: the scan, its nodule label mask and the
#: case's off-mask region map (region ``k`` = row ``case_region == k``), all on one grid.
CaseLoader = Callable[[str], "tuple[Volume, Mask, np.ndarray]"]

#: The "cluster" id under which :func:`case_edits` and :func:`case_deltas` (``together=True``)
#: report a nodule with all of its regions in the rows removed at once.
ALL_OFF_MASK = -2

#: The nodule-centre columns of the findings table (scan voxel coordinates), which
#: :func:`pattern_effects` copies onto the region rows when given ``nodules``.
CENTRE_COLUMNS = ("center_z", "center_y", "center_x")


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


def _centres(rows: pd.DataFrame, mask: Mask) -> dict[str, tuple[float, float, float]]:
    """Nodule id -> centre (scan voxel coordinates): the stored :data:`CENTRE_COLUMNS` of
    *rows* when they have them for every row (the centres the pipeline computed, stored
    exactly), else the centres of mass of the mask's labels
    (:func:`~discovery.model.rois.nodule_sites`)."""
    if all(c in rows.columns for c in CENTRE_COLUMNS):
        xyz = np.column_stack([pd.to_numeric(rows[c], errors="coerce").to_numpy(dtype=float)
                               for c in CENTRE_COLUMNS])
        if len(xyz) and np.isfinite(xyz).all():
            ids = rows["nodule_id"].astype(str).to_numpy()
            return {nid: tuple(float(v) for v in row) for nid, row in zip(ids, xyz)}
    return {s.nodule_id: s.center_zyx for s in nodule_sites(mask)}


@dataclass(frozen=True)
class _Opened:
    """A case read for the causal check: the scan, its region map, the annotated nodules'
    voxels (never edited), the nodule centres by id, each region's bounding box
    (``boxes[k - 1]`` for region ``k``, None if absent) and a float32 working copy of the
    scan that each edit writes into and restores."""

    volume: Volume
    region_map: np.ndarray
    protect: np.ndarray
    centres: dict
    boxes: list
    work: np.ndarray


def _open_case(load: CaseLoader, case_id: str, rows: pd.DataFrame) -> _Opened | None:
    """The case as :class:`_Opened`; None when its stored arrays cannot be read."""
    loaded = _try_load(load, case_id)
    if loaded is None:
        return None
    volume, mask, region_map = loaded
    boxes = label_boxes(region_map)
    return _Opened(volume, region_map, mask.array > 0, _centres(rows, mask), boxes,
                   np.array(volume.array, dtype=np.float32, copy=True))


def _removal(opened: _Opened, case_regions, reach_mm: float):
    """``(box, voxels)``: the regions *case_regions* and all within *reach_mm* of them, less
    the protected voxels, as a box of the scan and the mask inside it; None when empty.
    The same voxels as growing ``np.isin(region_map, case_regions)`` over the whole scan:
    the box is the regions' bounding box grown by :func:`grow_mm`'s own margin."""
    regs = np.asarray(case_regions, dtype=int)
    found = [opened.boxes[k - 1] for k in regs if 0 < k <= len(opened.boxes)
             and opened.boxes[k - 1] is not None]
    if not found:
        return None
    spacing = np.asarray(opened.volume.spacing_mm, dtype=float)
    grow = reach_voxels(reach_mm, spacing)
    shape = opened.region_map.shape
    box = tuple(slice(max(min(b[a].start for b in found) - int(grow[a]), 0),
                      min(max(b[a].stop for b in found) + int(grow[a]), shape[a]))
                for a in range(3))
    voxels = grow_mm(np.isin(opened.region_map[box], regs), reach_mm, spacing)
    voxels &= ~opened.protect[box]
    return (box, voxels) if voxels.any() else None


def _edited_roi(opened: _Opened, case_regions, centre, card: ModelCard, *, seed: int,
                reach_mm: float) -> np.ndarray:
    """The ROI around *centre* of the scan with regions *case_regions* (and all within
    *reach_mm* of them) replaced by local parenchyma (:func:`inpaint_parenchyma`).

    The edit is made on the box it can change (the removed voxels' bounding box grown by the
    donor shell, as :func:`inpaint_parenchyma` bounds its own work), written into the case's
    working copy for the ROI and restored: the same ROI as editing a copy of the whole scan
    (tested), without a whole-scan copy and mask per edit."""
    volume = opened.volume
    removal = _removal(opened, case_regions, reach_mm)
    if removal is None:
        return roi_input(volume, centre, card)
    where, voxels = removal
    spacing = np.asarray(volume.spacing_mm, dtype=float)
    inner = bounding_box(voxels)
    shell = reach_voxels(SHELL_MM, spacing)
    box = tuple(slice(max(w.start + i.start - int(g), 0), min(w.start + i.stop + int(g), n))
                for w, i, g, n in zip(where, inner, shell, volume.shape))
    remove = np.zeros([b.stop - b.start for b in box], dtype=bool)
    remove[tuple(slice(w.start - b.start, w.stop - b.start) for w, b in zip(where, box))] = voxels
    values = inpaint_parenchyma(volume.array[box], remove, spacing_mm=spacing,
                                protect=opened.protect[box], seed=seed, fallback=False)
    if values is None:       # no parenchyma in the shell: drawn from the whole scan
        whole = np.zeros(volume.shape, dtype=bool)
        whole[box] = remove
        edited = inpaint_parenchyma(volume.array, whole, spacing_mm=spacing,
                                    protect=opened.protect, seed=seed)
        return roi_input(Volume(edited, volume.affine), centre, card)
    opened.work[box] = values
    try:
        return roi_input(Volume(opened.work, volume.affine), centre, card)
    finally:
        opened.work[box] = volume.array[box]


@dataclass(frozen=True)
class CaseEdits:
    """What one case's step of the causal check measured (:func:`case_edits`).

    Attributes
    ----------
    before : dict of str to float
        Nodule id -> its probability on the stored scan, unedited (``p_before``).
    after : dict of (str, int) to float
        ``(nodule_id, cluster)`` -> its probability with that cluster's regions of the nodule
        removed; ``(nodule_id, ALL_OFF_MASK)``: all of its regions in the rows removed at once.
    members : dict of str to float
        ``region_key`` -> ``p_after - p_before`` of its nodule with that region alone removed
        (its halo included), for the rows' clustered regions when asked for.
    """

    before: dict
    after: dict
    members: dict


def _edits(rows: pd.DataFrame, known: set, centres: dict, together: bool, members: bool):
    """The edits of one case: ``(nodule_id, key, case_regions)``, key a cluster id,
    :data:`ALL_OFF_MASK` or ``("region", region_key)`` for a clustered region that shares its
    nodule's cluster with others (alone in it, its edit is the cluster's); and
    ``{region_key: (nodule_id, cluster)}`` for the regions alone in theirs."""
    nid = rows["nodule_id"].astype(str)
    edits, alone = [], {}
    for (n, c), grp in rows.groupby([nid, rows["cluster"].astype(int)], sort=True):
        if n not in centres or c not in known:
            continue
        edits.append((n, c, grp["case_region"]))
        if not members:
            continue
        keys = grp["region_key"].astype(str).tolist()
        if len(keys) == 1:
            alone[keys[0]] = (n, c)
        else:
            edits += [(n, ("region", k), [r]) for k, r in zip(keys, grp["case_region"])]
    if together:
        edits += [(n, ALL_OFF_MASK, grp["case_region"])
                  for n, grp in rows.groupby(nid, sort=True) if n in centres]
    return edits, alone


def case_edits(case_id: str, rows: pd.DataFrame, *, load: CaseLoader, model: torch.nn.Module,
               card: ModelCard, clusters, seed: int = 0, reach_mm: float = 3.0,
               together: bool = False, members: bool = False) -> CaseEdits | None:
    """One case's part of the causal check (:func:`pattern_effects`), read once and scored
    in a few forward passes (:func:`~discovery.model.edit.score_inputs`): each nodule's ROI
    as it is, and once per edit with regions replaced by local parenchyma (halo
    *reach_mm* included): per cluster of *clusters* with member regions in *rows*; with
    *together*, all of the nodule's regions in *rows* (whatever their cluster, ``-1``
    included); with *members*, each clustered region alone (*rows* then need
    ``region_key``; a region alone in its nodule's cluster reuses the cluster's edit, which
    is the same edit).  None when the case's stored arrays cannot be read.  Nodule centres
    come from the rows' :data:`CENTRE_COLUMNS` when they have them, else from the mask."""
    if members and "region_key" not in rows.columns:
        raise ValueError("case_edits(members=True) needs a 'region_key' column in rows")
    opened = _open_case(load, case_id, rows)
    if opened is None:
        return None
    centres = opened.centres
    edits, alone = _edits(rows, {int(c) for c in clusters}, centres, together, members)
    nodules = list(dict.fromkeys(n for n, _, _ in edits))
    rois = [roi_input(opened.volume, centres[n], card) for n in nodules]
    rois += [_edited_roi(opened, regs, centres[n], card, seed=seed, reach_mm=reach_mm)
             for n, _, regs in edits]
    p = [float(v) for v in score_inputs(model, rois)]
    before = dict(zip(nodules, p[:len(nodules)]))
    after, change = {}, {}
    for (n, key, _), p1 in zip(edits, p[len(nodules):]):
        if isinstance(key, tuple):
            change[key[1]] = p1 - before[n]
        else:
            after[(n, key)] = p1
    change.update({k: after[where] - before[where[0]] for k, where in alone.items()})
    return CaseEdits(before, after, change)


def case_deltas(case_id: str, rows: pd.DataFrame, *, load: CaseLoader, model: torch.nn.Module,
                card: ModelCard, clusters, seed: int = 0, reach_mm: float = 3.0,
                together: bool = False):
    """One case's per-cluster changes, as a list: for each of its nodules and each cluster
    in *clusters* with member regions in *rows*, ``(nodule_id, cluster, p_before,
    p_after)``, sorted by nodule and cluster; with *together*, also ``(nodule_id,
    ALL_OFF_MASK, p_before, p_after)`` for each nodule with rows (:func:`case_edits`, whose
    edits these are).  None when the case's stored arrays cannot be read."""
    found = case_edits(case_id, rows, load=load, model=model, card=card, clusters=clusters,
                       seed=seed, reach_mm=reach_mm, together=together)
    if found is None:
        return None
    return [(n, c, found.before[n], p1) for (n, c), p1 in sorted(found.after.items())]


def case_without(case_id: str, rows: pd.DataFrame, *, load: CaseLoader,
                 model: torch.nn.Module, card: ModelCard, seed: int = 0,
                 reach_mm: float = 3.0):
    """One case's part of the shortcut flag (:func:`pattern_effects`): ``{nodule_id:
    p_without}``, the probability of each nodule of *rows* with all its regions in *rows*
    removed together (only the edited ROIs are scored); None when the case's stored arrays
    cannot be read."""
    opened = _open_case(load, case_id, rows)
    if opened is None:
        return None
    groups = [(nid, grp["case_region"])
              for nid, grp in rows.groupby(rows["nodule_id"].astype(str), sort=True)]
    rois = [_edited_roi(opened, regs, opened.centres[nid], card, seed=seed,
                        reach_mm=reach_mm) for nid, regs in groups]
    return {nid: float(p) for (nid, _), p in zip(groups, score_inputs(model, rois))}


#: ``run(step, jobs) -> results``: computes ``step(case_id, rows, **kwargs)`` for each
#: ``(case_id, rows, kwargs)`` of *jobs* (``step`` is :func:`case_edits`, :func:`case_deltas`
#: or :func:`case_without`; the runner supplies ``load``, ``model`` and ``card``), results in the
#: order of *jobs*.  E.g. on the worker processes of a batch.
CaseRunner = Callable[[Callable[..., object], list], list]


def run_here(load: CaseLoader, model: torch.nn.Module, card: ModelCard) -> CaseRunner:
    """The :data:`CaseRunner` that computes the steps here, one case after the other."""
    def run(step, jobs):
        return [step(case_id, rows, load=load, model=model, card=card, **options)
                for case_id, rows, options in jobs]
    return run


def _check_effect_inputs(regions: pd.DataFrame, clusters: pd.DataFrame, nodules) -> None:
    for col in ("case_id", "nodule_id", "case_region", "cluster"):
        if col not in regions.columns:
            raise ValueError(f"regions is missing column {col!r}; pass cluster_regions() output")
    if "cluster" not in clusters.columns:
        raise ValueError("clusters is missing column 'cluster'")
    if nodules is not None:
        missing = [c for c in ("case_id", "nodule_id", *CENTRE_COLUMNS)
                   if c not in nodules.columns]
        if missing:
            raise ValueError(f"nodules is missing column(s) {missing}; pass the findings table")


def _with_centres(regions: pd.DataFrame, nodules: pd.DataFrame | None) -> pd.DataFrame:
    """*regions* with each row's nodule centre (:data:`CENTRE_COLUMNS`, NaN where *nodules*
    has none) from *nodules*; *regions* itself without *nodules*."""
    if nodules is None:
        return regions

    def key(df: pd.DataFrame) -> pd.Series:
        return df["case_id"].astype(str) + "\x1f" + df["nodule_id"].astype(str)

    table = nodules.assign(_key=key(nodules)).drop_duplicates("_key").set_index("_key")
    where = key(regions)
    return regions.assign(**{c: where.map(pd.to_numeric(table[c], errors="coerce")).to_numpy(
        dtype=float) for c in CENTRE_COLUMNS})


@dataclass
class _Pass:
    """What the first pass over the cases found: per cluster the deltas (in case, nodule
    order), per nodule ``p_before``, per (case, nodule, cluster) ``p_after``, per clustered
    region its own delta (``region_key -> p_after - p_before``, when asked for) and the
    cases whose arrays could not be read."""

    deltas: dict[int, list[float]]
    before: dict[tuple[str, str], float]
    after: dict[tuple[str, str, int], float]
    members: dict[str, float]
    unreadable: set[str]


def _first_pass(run: CaseRunner, by_case: list, cluster_ids: list[int], seed: int,
                reach_mm: float, members: bool) -> _Pass:
    """Each case read once (:func:`case_edits`): every nodule as it is, without each
    cluster's regions, without all of its regions (``after[(case, nodule,
    ALL_OFF_MASK)]``) and, with *members*, without each clustered region alone."""
    found = _Pass({c: [] for c in cluster_ids}, {}, {}, {}, set())
    options = {"clusters": cluster_ids, "seed": seed, "reach_mm": reach_mm, "together": True,
               "members": members}
    jobs = [(c, r, options) for c, r in by_case]
    for (case_id, _rows), edits in zip(by_case, run(case_edits, jobs)):
        if edits is None:
            found.unreadable.add(case_id)
            continue
        for (nodule_id, c), p1 in sorted(edits.after.items()):
            p0 = edits.before[nodule_id]
            found.before[(case_id, nodule_id)] = p0
            found.after[(case_id, nodule_id, c)] = p1
            if c != ALL_OFF_MASK:
                found.deltas[c].append(p1 - p0)
        found.members.update(edits.members)
    return found


def _effect_table(clusters: pd.DataFrame, effects: dict[int, Effect]) -> pd.DataFrame:
    out = clusters.copy()
    ids = [int(c) for c in out["cluster"]]
    out["effect_n"] = [effects[c].n for c in ids]
    out["effect_mean"] = [effects[c].mean_delta for c in ids]
    out["effect_ci_low"] = [effects[c].ci_low for c in ids]
    out["effect_ci_high"] = [effects[c].ci_high for c in ids]
    out["relied_upon"] = [bool(effects[c].relied_upon) for c in ids]
    return out


def _flag_rows(by_case: list, found: _Pass, threshold: float,
               min_effect: float) -> list[dict]:
    """The flag rows of :func:`pattern_effects`, from the first pass alone."""
    flags = []
    for case_id, rows in by_case:
        if case_id in found.unreadable:
            continue
        clusters = rows["cluster"].astype(int).groupby(rows["nodule_id"].astype(str))
        for nodule_id, theirs in clusters:
            if (case_id, nodule_id) not in found.before:
                continue  # no centre for this nodule: not re-scored
            p0 = found.before[(case_id, nodule_id)]
            p_without = found.after[(case_id, nodule_id, ALL_OFF_MASK)]
            drops = sorted((found.after[(case_id, nodule_id, c)] - p0, c)   # largest first
                           for c in set(theirs) if (case_id, nodule_id, c) in found.after)
            ids = [c for delta, c in drops if -delta >= min_effect]
            flags.append({"case_id": case_id, "nodule_id": nodule_id, "probability": p0,
                          "probability_without": p_without,
                          "flag_score": max(0.0, p0 - p_without),
                          "flagged": bool(p0 >= threshold and p_without < threshold),
                          "flag_clusters": ",".join(str(c) for c in ids)})
    return flags


def _exemplars_by_effect(clusters: pd.DataFrame, regions: pd.DataFrame,
                         effects: dict[int, Effect], member: dict[str, float]) -> pd.DataFrame:
    """*clusters* with each cluster's ``exemplars`` (the region keys a reviewer is shown
    first) re-chosen: its members in order of their own effect (*member*: each region
    removed on its own, :attr:`CaseEdits.members`) in the cluster's direction (the largest drop
    first when removing the cluster lowers the probability on average, the largest rise
    first otherwise; regions without an effect last, then by ``region_key``), one per case,
    up to :data:`~discovery.patterns.clustering.N_EXEMPLARS`.  A cluster that mixes a
    structure the model uses with background then shows that structure first (on the
    discovery benchmark's sign condition, seeds 5 and 6: 8 of the top 10 on a planted tail,
    against 1 and 3 of the 10 nearest the cluster's centre).  A cluster without a mean
    effect keeps its exemplars."""
    out = clusters.copy()
    picked = []
    for c, old in zip(out["cluster"].astype(int), out["exemplars"]):
        mean = effects[c].mean_delta if c in effects else math.nan
        m = regions[regions["cluster"].astype(int) == c].sort_values("region_key", kind="stable")
        if not np.isfinite(mean) or m.empty:
            picked.append(list(old))
            continue
        delta = m["region_key"].astype(str).map(member).to_numpy(dtype=float)
        directed = np.where(np.isfinite(delta), delta if mean <= 0 else -delta, np.inf)
        order = np.argsort(directed, kind="stable")
        keep = exemplars_one_per_group(order, m["case_id"].astype(str).to_numpy(),
                                       k=N_EXEMPLARS)
        picked.append([str(m["region_key"].iloc[i]) for i in keep])
    out["exemplars"] = pd.Series(picked, index=out.index, dtype=object)
    return out


def pattern_effects(
    regions: pd.DataFrame,
    clusters: pd.DataFrame,
    *,
    load: CaseLoader,
    model: torch.nn.Module,
    card: ModelCard,
    threshold: float | None = None,
    min_effect: float = MIN_EFFECT,
    seed: int = 0,
    reach_mm: float = 3.0,
    run: CaseRunner | None = None,
    nodules: pd.DataFrame | None = None,
    exemplars_by_effect: bool = True,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The causal check of every cluster, and the case-level shortcut flag.

    For each cluster and each nodule with member regions, the member regions' voxels and
    their halo (``reach_mm``, :data:`discovery.pipeline.HALO_MM`) are replaced with local
    parenchyma (:func:`inpaint_parenchyma`; annotated nodules protected) and the nodule is
    re-scored: ``delta = p_after - p_before``, both on the stored scan.  A cluster is
    *relied upon* when its mean delta is at least ``min_effect`` in size and its bootstrap
    interval excludes 0 (:func:`summarize_effects`).

    The flag asks each nodule whether its prediction rests on what the map found off its
    mask: all of its off-mask regions (clustered or not, with their halos) removed together,
    ``flag_score = max(0, p - p_without)``; ``flagged`` when predicted malignant (``p >=
    threshold``) but not without them, however the regions were clustered
    (docs/benchmarks/discovery.md#flag).  ``flag_clusters``: the nodule's clusters whose
    regions alone lower its probability by ``min_effect`` or more, largest drop first.
    Each case is read once for all this (:func:`case_edits`).

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
    threshold : float, optional
        Decision threshold of the model; default ``card.threshold``.
    min_effect : float
        Smallest absolute mean change in probability called reliance.
    run : callable, optional
        Computes the per-case steps elsewhere (:data:`CaseRunner`, e.g. on a batch's worker
        processes); default: here, with *load*, *model*, *card*.  Same result anywhere.
    nodules : pandas.DataFrame, optional
        The findings table (``case_id``, ``nodule_id``, :data:`CENTRE_COLUMNS`): the stored
        nodule centres (the masks' centres are not computed again).
    exemplars_by_effect : bool
        Re-choose the ``exemplars`` by each member's own effect (more ROIs, same pass).

    Returns
    -------
    clusters : pandas.DataFrame
        A copy with :data:`EFFECT_COLUMNS`.
    flags : pandas.DataFrame
        One row per re-scored nodule with off-mask regions, :data:`FLAG_COLUMNS`
        (``flag_clusters`` comma-separated, empty when no cluster alone moves it).
    """
    _check_effect_inputs(regions, clusters, nodules)
    run = run_here(load, model, card) if run is None else run
    threshold = card.threshold if threshold is None else float(threshold)
    every = _with_centres(regions, nodules)
    by_case = list(_regions_by_case(every))
    members = bool(exemplars_by_effect and "exemplars" in clusters and "region_key" in every)
    found = _first_pass(run, by_case, sorted({int(c) for c in clusters["cluster"]}), seed,
                        reach_mm, members)
    effects = {c: summarize_effects(d, min_effect=min_effect, seed=seed)
               for c, d in found.deltas.items()}
    flags = _flag_rows(by_case, found, threshold, min_effect)
    table = _effect_table(clusters, effects)
    if members:
        table = _exemplars_by_effect(table, every[every["cluster"].astype(int) >= 0], effects,
                                     found.members)
    return table, pd.DataFrame(flags, columns=FLAG_COLUMNS)
