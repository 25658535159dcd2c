"""Cohort-level patterns of off-mask attention.

Off-mask regions (:mod:`discovery.regions.offmask`) from many nodules are described by a few
physical descriptors, standardised, and clustered; each cluster is summarised by who it
involves (cases, nodules, predicted malignancy), what it looks like (density, size,
distance from the nodule) and a handful of exemplars for a human to review.

Per cluster: size, patients, enrichment of predicted-malignant (and, where the true label
is known, truly malignant) nodules among the nodules it involves, with a permutation
p-value and Benjamini-Hochberg q-values across clusters, exemplars from different patients
nearest the cluster centre, and a plain-language description built from the descriptors.
Whether the *model relies* on a cluster is a separate, causal question answered by
:mod:`discovery.patterns.causal`.

Exploratory: a cluster is a hypothesis about what the model attends to, not a finding.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from discovery.patterns.mixture import clusterwise_jaccard, keep_medoid, mixture_selections
from discovery.patterns.stats import (
    benjamini_hochberg,
    enrichment_test,
    exemplars_one_per_group,
    rank_by_centrality,
    spectral_eigengap,
)
from discovery.regions.descriptors import AT_CENTRE, DENSITY_BANDS, RELATIONS
from discovery.regions.structures import DENSE_HU, LUCENT_HU
from discovery.schema import CLUSTER_COLUMNS  # noqa: F401 -- re-exported

__all__ = [
    "FEATURE_COLUMNS",
    "HU_FEATURES",
    "HU_SCALE",
    "STRUCTURE_FEATURES",
    "OTHER_FEATURES",
    "CLUSTER_COLUMNS",
    "DENSITY_BANDS_HU",
    "PatternSettings",
    "region_features",
    "density_band",
    "describe_pattern",
    "cluster_regions",
    "pca_scores",
]

#: Descriptors used for clustering by default, as built by :func:`region_features` from the
#: region table.  Chosen on the planted-structure benchmark (``benchmarks/discovery.py``,
#: tuning seed 0): density of what the region covers (``halo_max_hu``, ``p90_hu``,
#: ``std_hu``), how much of the map it holds (``log_mass_share``, natural log), where it
#: sits relative to the pleura (``pleura_distance_mm``, capped at :data:`PLEURA_CAP_MM`, NaN
#: -> the cap) and whether it holds a tubular dense structure (``dense_fraction``,
#: ``dense_elongation``, NaN -> 1) and how the structure it attends is oriented to the
#: nodule (``radial_alignment``: ``|cos|`` of the structure's main axis with the direction
#: away from the nodule, 0 without a structure of ``min_structure_mm3``), the one shape
#: descriptor that separates a strand running out from the nodule (a spicule, a pleural tag,
#: a feeding vessel) from attention that merely reaches the same tissue beside it.  Position
#: and direction are *described* but not clustered on: the same structure appears on every
#: side of a nodule.
FEATURE_COLUMNS = [
    "halo_max_hu",
    "p90_hu",
    "std_hu",
    "log_mass_share",
    "pleura_distance_mm",
    "dense_fraction",
    "dense_elongation",
    "radial_alignment",
]
#: The default feature set: what the region *points at* rather than the blob
#: (:mod:`discovery.regions.structures`): the structure's densest voxel
#: (``structure_max_hu``; the structure's own, so attention that grazes a dense object's rim
#: reads its core), its size (``log_structure_volume``, natural log of mm³), its distance from
#: the nodule (``structure_gap_mm``, capped at :data:`GAP_CAP_MM`), how strongly it runs
#: radially from the nodule (``structure_radiality``: ``structure_radial`` times
#: ``1 - 1/structure_elongation``, since the main axis of a round structure is not defined
#: and its ``|cos|`` is noise) and the pleura distance.  Regions without a structure of
#: ``min_structure_mm3`` are not clustered.  Why these: docs/benchmarks/discovery.md
#: (#structure-density for the last two changes).
STRUCTURE_FEATURES = [
    "structure_max_hu",
    "log_structure_volume",
    "structure_gap_mm",
    "structure_radiality",
    "pleura_distance_mm",
]
#: Descriptors that may be clustered on beside those of the two sets: the unweighted
#: ``structure_radial`` (the default before 2026-12-07's ``structure_radiality``).
OTHER_FEATURES = ["structure_radial"]
_ALL_FEATURES = tuple(dict.fromkeys(FEATURE_COLUMNS + STRUCTURE_FEATURES + OTHER_FEATURES))
_STRUCTURE_ONLY = tuple(f for f in _ALL_FEATURES if f.startswith(("structure_", "log_structure")))
_NEEDS_STRUCTURE = _STRUCTURE_ONLY + ("radial_alignment",)
#: Median ``|cos|`` from which a cluster's structures are described as running radially
#: from the nodule (within about 32 degrees of the radial direction).
RADIAL_COS = 0.85
#: Cap (mm) on the structure's distance from the nodule: beyond it, "apart from the nodule".
GAP_CAP_MM = 30.0
#: Cap (mm) on the pleura distance feature: beyond it, "far from the pleura" is all we need.
PLEURA_CAP_MM = 30.0
#: The descriptors measured in Hounsfield units: an absolute physical scale, so they are
#: compared on it (:attr:`PatternSettings.hu_scale`) rather than on the cohort's spread.
HU_FEATURES = ("halo_max_hu", "structure_max_hu", "p90_hu", "std_hu")
#: Default width (HU) of one standardised unit of an HU descriptor: about the step between
#: neighbouring tissue classes (fat -100, soft tissue 40, calcification above 200, cortical
#: bone 1000 and more).  The benchmark's figures are the same from 200 to 300 HU.
HU_SCALE = 250.0


#: Density bands ``(name, lower HU inclusive, upper HU exclusive)`` (as in
#: :data:`discovery.regions.descriptors.DENSITY_BANDS`).
DENSITY_BANDS_HU = tuple((name.replace(" density", ""), lo, hi) for name, lo, hi in DENSITY_BANDS)

_REQUIRED_COLUMNS = [
    "case_id",
    "nodule_id",
    "region_key",
    "probability",
    "volume_mm3",
    "mass_share",
    "offset_distance_mm",
    "mean_hu",
    "halo_max_hu",
    "p90_hu",
    "std_hu",
    "pleura_distance_mm",
    "dense_fraction",
    "dense_elongation",
    "relation",
    "direction",
]
#: Needed on top of :data:`_REQUIRED_COLUMNS` when clustering on :data:`STRUCTURE_FEATURES`.
_STRUCTURE_COLUMNS = ["structure_volume_mm3", "structure_gap_mm", "structure_radial"]
#: Region columns a feature needs on top of those (absent from tables scored before it).
_FEATURE_COLUMNS_NEEDED = {"structure_max_hu": ["structure_max_hu"],
                           "structure_radiality": ["structure_elongation"]}
_METHODS = ("hdbscan", "spectral", "agglomerative", "gmm")
_MAP_METHODS = ("tsne", "pca")
#: Fewer regions than this are mapped by PCA: t-SNE needs perplexity < n.
MIN_TSNE_POINTS = 10
#: Direction of a cluster whose members agree on none (no direction has half of them).
VARIED = "in varied directions"
#: Exemplars kept per cluster (at most one per case).
N_EXEMPLARS = 10
_MALIGNANT_PROBABILITY = 0.5


def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


@dataclass(frozen=True)
class PatternSettings:
    """How regions are clustered and clusters are tested.

    Attributes
    ----------
    min_cluster_size : int
        Smallest group reported as a cluster (>= 2); smaller groups of the mixture, spectral
        and agglomerative methods become -1 (unclustered).
    min_samples : int or None
        HDBSCAN's density parameter; None means ``min_cluster_size``.
    seed : int
        Seeds the mixture and the spectral clustering, the permutation tests and the 2-D map.
    method : {"gmm", "hdbscan", "spectral", "agglomerative"}
        ``"gmm"`` (the default: a Gaussian mixture of lowest BIC, at most ``max_clusters``
        components, overlapping ones merged, :func:`discovery.patterns.mixture.gaussian_mixture_bic`;
        groups under ``min_cluster_size`` -> -1; chosen with ``benchmarks/discovery.py``,
        docs/benchmarks/discovery.md#mixture), ``"hdbscan"`` (the default before it; noise
        stays -1), ``"spectral"`` (SpRAy-style kNN graph, number of clusters by the
        eigengap; groups under ``min_cluster_size`` -> -1) or Ward ``"agglomerative"`` cut
        at ``distance_threshold``.
    distance_threshold : float or None
        Ward linkage distance (standardised units); required for ``"agglomerative"``.
    n_permutations : int
        Permutations of each enrichment test.
    n_neighbors, max_clusters : int
        ``"spectral"``: neighbours per region in the kNN graph and the largest number of
        clusters the eigengap may pick (:func:`discovery.patterns.stats.spectral_eigengap`);
        ``"gmm"``: ``max_clusters`` is the largest number of components tried.
    mixture_runs : int
        ``"gmm"``: independent selections of the mixture, from seeds ``seed .. seed +
        mixture_runs - 1``; the partition that agrees best with the others is kept
        (:func:`discovery.patterns.mixture.medoid_partition`).  Default 5: a single selection
        put the benchmark's planted tail in one cluster or split it in two depending on the
        seed (docs/benchmarks/discovery.md#medoid-mixture); 1 is the single selection of
        before.  The others give each cluster's ``stability`` (NaN with 1).
    features : tuple of str
        The clustering descriptors: :data:`STRUCTURE_FEATURES` (the default: what each
        region points at) or :data:`FEATURE_COLUMNS` (the region's own blob; the default
        before), or any non-empty subset of their union with :data:`OTHER_FEATURES`.
    min_structure_mm3 : float
        With a structure descriptor among ``features``: regions whose attended structure
        (:mod:`discovery.regions.structures`) is smaller than this (mm³; 0 when the region covers
        aerated parenchyma only) are not clustered, as attention spilling over air has no
        structure to describe.  They keep ``cluster = -1`` and ``features_complete = False``.
        Default 1 mm³, about a voxel: any structure, whatever its size (15 before: on the
        3 mm LayerCAM regions it left out a third of the tail's regions).
    hu_scale : float or None
        Width (HU) of one standardised unit of the descriptors in Hounsfield units
        (:data:`HU_FEATURES`): each is centred on its median and divided by this fixed width
        (default :data:`HU_SCALE`).  ``None`` scales them like the others, by the cohort's
        interquartile range, which collapses when a dense structure is common: with the
        marker bead beside a quarter of the regions, the IQR of ``halo_max_hu`` spans soft
        tissue to metal and the bead's 2,700 HU difference became 1.4 units
        (docs/benchmarks/discovery.md, "HU descriptors on a fixed scale").
    map_method : {"tsne", "pca"}
        The 2-D display map: ``"tsne"`` (the default; t-SNE, PCA-initialised, seeded, perplexity
        ``min(30, (n - 1) / 3)``; needs at least :data:`MIN_TSNE_POINTS` regions, fewer fall
        back to PCA) or ``"pca"``.  The map is for display only; clustering never uses it.
    """

    min_cluster_size: int = 5
    min_samples: int | None = None
    seed: int = 0
    method: str = "gmm"
    distance_threshold: float | None = None
    n_permutations: int = 2000
    n_neighbors: int = 10
    max_clusters: int = 10
    mixture_runs: int = 5
    features: tuple = tuple(STRUCTURE_FEATURES)
    min_structure_mm3: float = 1.0
    hu_scale: float | None = HU_SCALE
    map_method: str = "tsne"

    def __post_init__(self):
        for name, least in (("n_neighbors", 1), ("max_clusters", 2), ("mixture_runs", 1)):
            v = getattr(self, name)
            if not (_is_int(v) and v >= least):
                raise ValueError(f"{name} must be an integer >= {least}; received {v!r}")
        feats = self.features
        if (isinstance(feats, str) or not isinstance(feats, (tuple, list)) or not feats
                or not set(feats) <= set(_ALL_FEATURES) or len(set(feats)) != len(feats)):
            raise ValueError(f"features must be distinct names from {list(_ALL_FEATURES)}; "
                             f"received {feats!r}")
        object.__setattr__(self, "features", tuple(feats))
        v = self.min_structure_mm3
        if isinstance(v, bool) or not isinstance(v, (int, float, np.number)) or not (
                np.isfinite(v) and v >= 0):
            raise ValueError(f"min_structure_mm3 must be a finite number >= 0; received {v!r}")
        h = self.hu_scale
        if h is not None and (isinstance(h, bool) or not isinstance(h, (int, float, np.number))
                              or not (np.isfinite(h) and h > 0)):
            raise ValueError(f"hu_scale must be None or a finite number > 0 (HU); received {h!r}")
        if self.map_method not in _MAP_METHODS:
            raise ValueError(f"map_method must be one of {_MAP_METHODS}; "
                             f"received {self.map_method!r}")
        if not (_is_int(self.min_cluster_size) and self.min_cluster_size >= 2):
            raise ValueError(
                f"min_cluster_size must be an integer >= 2; received {self.min_cluster_size!r}"
            )
        ms = self.min_samples
        if ms is not None and not (_is_int(ms) and ms >= 1):
            raise ValueError(
                f"min_samples must be None or an integer >= 1; received {self.min_samples!r}"
            )
        if self.method not in _METHODS:
            raise ValueError(f"method must be one of {_METHODS}; received {self.method!r}")
        if not (_is_int(self.seed) and self.seed >= 0):
            raise ValueError(f"seed must be an integer >= 0; received {self.seed!r}")
        if not (_is_int(self.n_permutations) and self.n_permutations >= 1):
            raise ValueError(f"n_permutations must be an integer >= 1; received {self.n_permutations!r}")
        if self.method == "agglomerative":
            t = self.distance_threshold
            if not (isinstance(t, (int, float, np.number)) and np.isfinite(t) and t > 0):
                raise ValueError(
                    "method='agglomerative' needs a positive finite distance_threshold; "
                    f"received {t!r}"
                )


# ---------------------------------------------------------------------------- features


def _check_regions(regions, features) -> pd.DataFrame:
    if not isinstance(regions, pd.DataFrame):
        raise ValueError(f"regions must be a pandas DataFrame; received {type(regions).__name__}")
    required = _REQUIRED_COLUMNS + (_STRUCTURE_COLUMNS if set(features) & set(_NEEDS_STRUCTURE)
                                    else [])
    required += [c for f in features for c in _FEATURE_COLUMNS_NEEDED.get(f, [])]
    missing = [c for c in required if c not in regions.columns]
    if missing:
        raise ValueError(
            f"regions is missing column(s) {missing}; expected the region table of "
            "`discovery score` (offmask descriptors + anatomy + attended structure; a table "
            "scored before the structure columns existed needs scoring again) plus "
            "'probability' and 'region_key'"
        )
    keys = regions["region_key"]
    if keys.isna().any() or keys.duplicated().any():
        dup = keys[keys.duplicated()].astype(str).head(3).tolist()
        raise ValueError(
            f"region_key must be unique and non-missing; received duplicates such as {dup}"
        )
    p = pd.to_numeric(regions["probability"], errors="coerce").to_numpy(dtype=float)
    if len(p) and not (np.all(np.isfinite(p)) and p.min() >= 0 and p.max() <= 1):
        raise ValueError("probability must be finite and in [0, 1] for every region")
    for col in ("volume_mm3", "mass_share"):
        v = pd.to_numeric(regions[col], errors="coerce").to_numpy(dtype=float)
        if len(v) and not (np.all(np.isfinite(v)) and v.min() > 0):
            raise ValueError(f"{col} must be finite and > 0 for every region")
    return regions


def _num(regions: pd.DataFrame, col: str) -> pd.Series:
    return pd.to_numeric(regions[col], errors="coerce").astype(float)


def region_features(regions: pd.DataFrame, *, features=tuple(FEATURE_COLUMNS),
                    min_structure_mm3: float = 15.0) -> pd.DataFrame:
    """The clustering descriptors of each region, unscaled.

    Parameters
    ----------
    regions : pandas.DataFrame
        The region table (see :data:`_REQUIRED_COLUMNS`; with structure descriptors among
        ``features``, also ``structure_volume_mm3``, ``structure_gap_mm`` and
        ``structure_radial``, and the column each needs: ``structure_max_hu``;
        ``structure_elongation`` for ``structure_radiality``).
    features : sequence of str
        Names from :data:`FEATURE_COLUMNS`, :data:`STRUCTURE_FEATURES` and
        :data:`OTHER_FEATURES`.
    min_structure_mm3 : float
        With a structure descriptor of :data:`STRUCTURE_FEATURES` among ``features``:
        regions whose attended structure is smaller (mm³) get NaN in every column, so they
        are not clustered.  ``radial_alignment`` takes 0 for them instead.

    Returns
    -------
    pandas.DataFrame
        Columns ``features`` in that order, same index as ``regions``: ``log_mass_share`` is
        ``log(mass_share)``; ``pleura_distance_mm`` is capped at :data:`PLEURA_CAP_MM` and a
        region with no voxel in the lung (NaN) gets the cap; ``dense_elongation`` of a
        region without a dense component (NaN) is 1 (round); ``log_structure_volume`` is
        ``log(structure_volume_mm3)``; ``structure_gap_mm`` is capped at :data:`GAP_CAP_MM`
        (NaN, no nodule to measure from, -> the cap); ``radial_alignment`` is
        ``structure_radial`` where the region attends a structure of at least
        ``min_structure_mm3`` with a main axis, else 0 (nothing oriented: the row stays in);
        ``structure_radial`` of a structure too small for a main axis (fewer than 3
        voxels) is 0 likewise (with NaN the row was left out: a third of the unclustered
        regions of LayerCAM ``layer2``, docs/benchmarks/discovery.md#mixture);
        ``structure_radiality`` is that ``structure_radial`` times
        ``1 - 1/structure_elongation`` (clipped to [0, 1]): 0 for a round structure, whose
        main axis is not defined, and close to ``structure_radial`` for a strand.  Other
        missing values (an unknown ``p90_hu``) stay NaN and keep the row out of clustering.
    """
    features = list(features)
    out = pd.DataFrame(index=regions.index)
    for c in ("halo_max_hu", "structure_max_hu", "p90_hu", "std_hu", "dense_fraction"):
        if c in features:
            out[c] = _num(regions, c)
    if {"structure_radial", "structure_radiality"} & set(features):
        radial = _num(regions, "structure_radial")   # too small for a main axis: 0
        radial = radial.where(_num(regions, "structure_volume_mm3").isna() | radial.notna(), 0.0)
        out["structure_radial"] = radial
        if "structure_radiality" in features:
            axis = (1.0 - 1.0 / _num(regions, "structure_elongation")).clip(0.0, 1.0)
            out["structure_radiality"] = (radial * axis).where(radial != 0.0, 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        if "log_mass_share" in features:
            out["log_mass_share"] = np.log(_num(regions, "mass_share"))
        if "log_structure_volume" in features:
            v = _num(regions, "structure_volume_mm3")
            out["log_structure_volume"] = np.log(v.where(v > 0))
    if "pleura_distance_mm" in features:
        out["pleura_distance_mm"] = (_num(regions, "pleura_distance_mm")
                                     .clip(upper=PLEURA_CAP_MM).fillna(PLEURA_CAP_MM))
    if "dense_elongation" in features:
        out["dense_elongation"] = _num(regions, "dense_elongation").fillna(1.0)
    if "structure_gap_mm" in features:
        out["structure_gap_mm"] = (_num(regions, "structure_gap_mm")
                                   .clip(upper=GAP_CAP_MM).fillna(GAP_CAP_MM))
    if "radial_alignment" in features:
        big = (_num(regions, "structure_volume_mm3") >= min_structure_mm3).to_numpy()
        out["radial_alignment"] = np.where(big, _num(regions, "structure_radial").fillna(0.0), 0.0)
    out = out[features]
    if set(features) & set(_STRUCTURE_ONLY):
        volume = _num(regions, "structure_volume_mm3")
        small = ~((volume >= min_structure_mm3) & (volume > 0))
        out.loc[small.to_numpy(), :] = np.nan
    return out


def _median(df: pd.DataFrame, col: str) -> float:
    """Median of a numeric column, NaN when the column is absent (older region tables)."""
    return float(_num(df, col).median()) if col in df.columns else float("nan")


def _standardise(x: np.ndarray, features, hu_scale: float | None) -> np.ndarray:
    """Centre each column on its median and divide by its scale.

    The scale is ``hu_scale`` for the columns of :data:`HU_FEATURES` (when not None), and
    otherwise IQR/1.349 (std-equivalent); the std, then 1, where that is 0.
    """
    centre = np.median(x, axis=0)
    q75, q25 = np.percentile(x, [75, 25], axis=0)
    scale = (q75 - q25) / 1.349
    std = x.std(axis=0)
    scale = np.where(scale > 0, scale, std)
    scale = np.where(scale > 0, scale, 1.0)
    if hu_scale is not None:
        scale = np.where(np.isin(list(features), HU_FEATURES), float(hu_scale), scale)
    return (x - centre) / scale


# ------------------------------------------------------------------------- description


def density_band(hu: float) -> str:
    """Name of the density band of a HU value (see :data:`DENSITY_BANDS_HU`)."""
    hu = float(hu)
    if not np.isfinite(hu):
        return "unknown density"
    for name, lo, hi in DENSITY_BANDS_HU:
        if lo <= hu < hi:
            return name
    return DENSITY_BANDS_HU[-1][0]  # pragma: no cover - bands cover the real line


def _most_common(values: pd.Series) -> tuple[str, float]:
    counts = values.astype(str).value_counts()
    if counts.empty:
        return "", float("nan")
    top = sorted(counts.index[counts == counts.iloc[0]])[0]  # ties: alphabetical
    return top, float(counts[top] / counts.sum())


def describe_pattern(*, relation: str, relation_share: float, direction: str,
                     distance_mm: float, halo_max_hu: float, mean_hu: float,
                     structure_gap_mm: float = float("nan"),
                     structure_radial: float = float("nan"),
                     structure_median_hu: float = float("nan")) -> str:
    """A plain-language description of a cluster from its members' descriptors.

    Parameters
    ----------
    relation : str
        Most common anatomical relation (:data:`discovery.regions.descriptors.RELATIONS`).
    relation_share : float
        Share of members with that relation, in [0, 1].
    direction : str
        Most common direction words, or ``"varied directions"``.
    distance_mm : float
        Median distance (mm) from the nodule centre.
    halo_max_hu : float
        Median densest HU within reach of the regions: names the structure's density.
    mean_hu : float
        Mean of the regions' mean HU (the attended tissue overall).
    structure_gap_mm, structure_radial : float, optional
        Medians of the members' attended structures (:mod:`discovery.regions.structures`): distance
        from the nodule (mm) and ``|cos|`` with the radial direction.  When the gap is known
        the description says where the structure starts, and "running radially from it"
        when the median ``|cos|`` is at least :data:`RADIAL_COS`.
    structure_median_hu : float, optional
        Median of the members' attended structures' median HU: at or below
        :data:`discovery.regions.structures.LUCENT_HU` the description names the structure
        an air space darker than the lung, below ``DENSE_HU`` ground glass (the densest
        voxel near them is usually a vessel's, which says nothing of what they attend).

    Returns
    -------
    str
        For example ``"pleura-adjacent (80 % of regions), about 14 mm lateral of the
        nodule; densest structure soft tissue (median peak 60 HU); region mean -700 HU;
        attended structure 2 mm from the nodule, running radially from it"``.
    """
    if relation not in RELATIONS:
        raise ValueError(f"relation must be one of {RELATIONS}; received {relation!r}")
    if direction == AT_CENTRE:
        where = AT_CENTRE
    elif direction == VARIED:
        where = f"about {distance_mm:.0f} mm from the nodule, {VARIED}"
    else:
        where = f"about {distance_mm:.0f} mm {direction} of the nodule"
    text = (f"{relation} ({100 * relation_share:.0f} % of regions), {where}; densest structure "
            f"{density_band(halo_max_hu)} (median peak {halo_max_hu:.0f} HU); "
            f"region mean {mean_hu:.0f} HU")
    if np.isfinite(structure_gap_mm):
        what = ("an air space darker than the lung" if structure_median_hu <= LUCENT_HU else
                "ground glass" if structure_median_hu < DENSE_HU else "")
        what += f" (median {structure_median_hu:.0f} HU), " if what else ""
        text += f"; attended structure {what}{structure_gap_mm:.0f} mm from the nodule"
        if np.isfinite(structure_radial) and structure_radial >= RADIAL_COS:
            text += ", running radially from it"
    return text


# -------------------------------------------------------------------------- clustering


def _renumber(labels: np.ndarray, min_size: int) -> np.ndarray:
    labels = labels.astype(np.int64).copy()
    if not (labels >= 0).any():
        return np.full(len(labels), -1, dtype=np.int64)
    sizes = np.bincount(labels[labels >= 0])
    small = (labels >= 0) & (sizes[np.maximum(labels, 0)] < min_size)
    labels[small] = -1
    ids = [c for c in dict.fromkeys(labels.tolist()) if c >= 0]
    ids.sort(key=lambda c: -int(np.count_nonzero(labels == c)))
    remap = {c: i for i, c in enumerate(ids)}
    return np.array([remap.get(c, -1) for c in labels], dtype=np.int64)


def _fit_labels(z: np.ndarray, settings: PatternSettings) -> tuple[np.ndarray, list]:
    """Cluster ids of the rows of *z* (-1 = none), and the other partitions found on the
    way (the mixture's selections not kept; empty for the other methods)."""
    n = len(z)
    min_samples = settings.min_samples
    if min_samples is None:
        min_samples = settings.min_cluster_size
    if n < settings.min_cluster_size or (settings.method == "hdbscan" and n < min_samples):
        return np.full(n, -1, dtype=np.int64), []
    if settings.method in ("hdbscan", "gmm") and n < 2 * settings.min_cluster_size:
        # HDBSCAN's clusters other than the root come from splits into two children of at
        # least min_cluster_size each, and the root is never one (allow_single_cluster is
        # False): with fewer than twice that many rows every row is noise.  The mixture
        # follows it (one group of all the rows is no pattern).  Said here, so a single
        # scan's few regions do not import scikit-learn (0.6 s; tested equal).
        return np.full(n, -1, dtype=np.int64), []
    # scikit-learn is imported here, not with the module (see discovery.patterns.stats)
    from sklearn.cluster import HDBSCAN, AgglomerativeClustering

    if settings.method == "hdbscan":
        model = HDBSCAN(
            min_cluster_size=settings.min_cluster_size,
            min_samples=settings.min_samples,
            allow_single_cluster=False,
            copy=True,
        )
        labels = model.fit(z).labels_.astype(np.int64)
        labels[labels < 0] = -1  # -2 / -3 (infinite / missing) cannot occur: rows are finite
    elif settings.method == "gmm":        # gaussian_mixture_bic, keeping the other runs
        (labels, _), others = keep_medoid(mixture_selections(
            z, max_components=settings.max_clusters, seed=settings.seed,
            runs=settings.mixture_runs))
        if (labels == 0).all():           # one group of every region: no pattern (as HDBSCAN)
            return np.full(n, -1, dtype=np.int64), []
        return _renumber(labels, settings.min_cluster_size), others
    elif settings.method == "spectral":
        labels, _, _ = spectral_eigengap(z, seed=settings.seed, n_neighbors=settings.n_neighbors,
                                         max_clusters=settings.max_clusters)
    else:
        model = AgglomerativeClustering(
            n_clusters=None, distance_threshold=float(settings.distance_threshold), linkage="ward"
        )
        labels = model.fit(z).labels_.astype(np.int64)
    return _renumber(labels, settings.min_cluster_size), []


def _embed(z: np.ndarray, settings: PatternSettings) -> tuple[np.ndarray, str]:
    """Deterministic 2-D map of standardised features, and the method actually used.

    Zeros (method ``"none"``) when there is no spread; PCA below :data:`MIN_TSNE_POINTS`
    rows or when asked for; otherwise seeded, PCA-initialised t-SNE.
    """
    emb = np.zeros((len(z), 2))
    if len(z) < 2 or np.allclose(z, z[0]):
        return emb, "none"
    if settings.map_method == "tsne" and len(z) >= MIN_TSNE_POINTS:
        from sklearn.manifold import TSNE

        perplexity = float(min(30.0, (len(z) - 1) / 3.0))
        tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", learning_rate="auto",
                    random_state=settings.seed, method="barnes_hut")
        return tsne.fit_transform(z).astype(float), "tsne"
    k = min(2, len(z), z.shape[1])
    emb[:, :k] = pca_scores(z, k)
    return emb, "pca"


def pca_scores(z: np.ndarray, k: int) -> np.ndarray:
    """The first *k* principal-component scores of the rows of *z*, shape ``(n, k)``.

    The same computation, in the same order, as scikit-learn's
    ``PCA(n_components=k, svd_solver="full").fit_transform(z)`` (centred rows, SciPy's SVD,
    each component's sign set so that its largest-magnitude loading is positive; tested
    equal), without importing scikit-learn (0.6 s).
    """
    from scipy import linalg

    x = np.array(z, dtype=np.float64)
    x -= np.mean(x, axis=0)
    u, s, vt = linalg.svd(x, full_matrices=False)
    rows = np.arange(vt.shape[0])
    signs = np.sign(vt[rows, np.argmax(np.abs(vt), axis=1)])
    u *= signs[np.newaxis, :]
    u = u[:, :k]
    u *= s[:k]
    return u


_INT_COLUMNS = ("cluster", "n_regions", "n_cases", "n_nodules")
_OBJECT_COLUMNS = ("relation", "direction", "exemplars", "description")


def _empty_cluster_table() -> pd.DataFrame:
    df = pd.DataFrame({c: [] for c in CLUSTER_COLUMNS})
    return df.astype({c: "int64" if c in _INT_COLUMNS else "object" if c in _OBJECT_COLUMNS
                      else "float64" for c in CLUSTER_COLUMNS})


def _nodule_pool(out: pd.DataFrame, complete: np.ndarray):
    """Nodule key of every region, and the pool: nodules with at least one clusterable
    region, with their predicted and (if known) true labels."""
    # Unit separator: a case id or nodule id containing "/" cannot merge two nodules.
    keys = out["case_id"].astype(str) + "\x1f" + out["nodule_id"].astype(str)
    # region_key order, so the pool (and the permutation draws) ignore the input row order
    order = np.argsort(out["region_key"].astype(str).to_numpy(), kind="stable")
    sub = out.iloc[order][complete[order]]
    sub_keys = keys.iloc[order][complete[order]]
    first = ~sub_keys.duplicated()
    pool_keys = sub_keys[first].to_numpy()
    predicted = (sub["probability"].astype(float)[first] >= _MALIGNANT_PROBABILITY).to_numpy()
    truth = None
    if "malignant" in sub.columns:
        t = pd.to_numeric(sub["malignant"], errors="coerce")[first].to_numpy(dtype=float)
        truth = t
    return keys, pool_keys, predicted, truth


def cluster_regions(
    regions: pd.DataFrame, *, settings: PatternSettings = PatternSettings()
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Cluster off-mask regions across a cohort and summarise each cluster.

    Parameters
    ----------
    regions : pandas.DataFrame
        The region table of ``discovery score`` (:data:`_REQUIRED_COLUMNS`) with
        ``probability`` (the nodule's predicted malignancy, in [0, 1]) and a unique
        ``region_key``.  An optional ``malignant`` column (the nodule's true label, 0/1, NaN
        when unknown) adds the truth enrichment columns.
    settings : PatternSettings, optional

    Returns
    -------
    regions : pandas.DataFrame
        A copy of the input (same index and order) with ``cluster`` (0..C-1 by size, -1 =
        unclustered or not offered), ``embedding_x``/``embedding_y`` (2-D display map of the
        standardised features, see ``PatternSettings.map_method``; NaN for rows not offered)
        and ``features_complete``; ``attrs["map_method"]`` names the map actually drawn
        (``"tsne"``, ``"pca"`` or ``"none"``).
    clusters : pandas.DataFrame
        One row per cluster, columns :data:`CLUSTER_COLUMNS`:

        * ``n_regions``, ``n_cases`` (patients), ``n_nodules``, ``mean_probability``;
        * ``stability``: how well the cluster reappears when the mixture is selected from
          the other seeds (:func:`discovery.patterns.mixture.clusterwise_jaccard`, mean
          best Jaccard index; NaN for the other methods or ``mixture_runs=1``);
        * ``share_predicted_malignant`` among the cluster's nodules, ``pool_predicted_malignant``
          among all nodules with a clusterable region, their ratio ``enrichment_predicted``,
          the two-sided permutation ``p_predicted`` (:func:`discovery.patterns.stats.enrichment_test`,
          units are nodules) and ``q_predicted`` (Benjamini-Hochberg over the clusters);
        * the same for the true label (``*_truth_*``), NaN without a ``malignant`` column;
        * ``mean_mean_hu``, ``median_halo_max_hu``, ``mean_offset_distance_mm``,
          ``mean_volume_mm3``, the most common ``relation`` and ``direction``;
        * ``exemplars``: up to :data:`N_EXEMPLARS` region keys nearest the cluster mean in
          standardised feature space, at most one per patient;
        * ``description`` (:func:`describe_pattern`).

        Empty, with these columns, when too few regions are complete or no cluster forms.

    Notes
    -----
    Features (:data:`FEATURE_COLUMNS`) are standardised robustly (median, IQR/1.349, falling
    back to the standard deviation, then 1).  Rows are processed in ``region_key`` order, so
    the result does not depend on the input order.  Regions of one nodule are not
    independent, which is why enrichment counts nodules, not regions.
    """
    if not isinstance(settings, PatternSettings):
        raise ValueError(f"settings must be a PatternSettings; received {type(settings).__name__}")
    regions = _check_regions(regions, settings.features)
    out = regions.copy()
    fit = _fit_regions(out, settings)
    out["cluster"] = fit.cluster
    out["embedding_x"] = fit.embedding[:, 0]
    out["embedding_y"] = fit.embedding[:, 1]
    out["features_complete"] = fit.complete
    out.attrs["map_method"] = fit.map_used
    n_clusters = int(fit.cluster.max()) + 1 if len(out) else 0
    if n_clusters == 0:
        return out, _empty_cluster_table()
    return out, _cluster_table(out, fit, n_clusters, settings)


@dataclass(frozen=True)
class _Fit:
    """The clustering of a region table, row for row: ``cluster`` (-1 = none), the 2-D
    ``embedding`` (NaN for rows not offered), the standardised features ``z`` (NaN likewise),
    ``complete`` (all features finite), the ``region_key`` strings ``keys``, the map
    method actually used and each cluster's ``stability`` (:func:`clusterwise_jaccard`
    against the mixture's other selections; NaN for the other methods)."""

    cluster: np.ndarray
    embedding: np.ndarray
    z: np.ndarray
    complete: np.ndarray
    keys: np.ndarray
    map_used: str
    stability: np.ndarray


def _fit_regions(out: pd.DataFrame, settings: PatternSettings) -> _Fit:
    """Standardise the complete rows (in ``region_key`` order), cluster and map them."""
    n = len(out)
    feats = region_features(out, features=settings.features,
                            min_structure_mm3=settings.min_structure_mm3).to_numpy(dtype=float)
    complete = np.all(np.isfinite(feats), axis=1)
    keys = out["region_key"].astype(str).to_numpy()
    pos = np.flatnonzero(complete)
    pos = pos[np.argsort(keys[pos], kind="stable")]

    cluster = np.full(n, -1, dtype=np.int64)
    embedding = np.full((n, 2), np.nan)
    map_used = "none"
    z_all = np.full((n, len(settings.features)), np.nan)
    stability = np.zeros(0)
    if len(pos):
        z = _standardise(feats[pos], settings.features, settings.hu_scale)
        z_all[pos] = z
        cluster[pos], others = _fit_labels(z, settings)
        stability = clusterwise_jaccard(cluster[pos], others)
        embedding[pos], map_used = _embed(z, settings)
    return _Fit(cluster, embedding, z_all, complete, keys, map_used, stability)


def _cluster_table(out: pd.DataFrame, fit: _Fit, n_clusters: int,
                   settings: PatternSettings) -> pd.DataFrame:
    """One row per cluster (:data:`CLUSTER_COLUMNS`), q-values across the clusters."""
    nodule_keys, pool_keys, predicted, truth = _nodule_pool(out, fit.complete)
    known = None if truth is None else np.isfinite(truth)
    rows = []
    for c in range(n_clusters):
        idx = np.flatnonzero(fit.cluster == c)
        idx = idx[np.argsort(fit.keys[idx], kind="stable")]
        in_cluster = np.isin(pool_keys, nodule_keys.to_numpy()[idx])
        e_pred = enrichment_test(in_cluster, predicted, n_permutations=settings.n_permutations,
                                 seed=settings.seed)
        if known is not None and known.any():
            e_true = enrichment_test(in_cluster[known], truth[known] > 0.5,
                                     n_permutations=settings.n_permutations, seed=settings.seed)
            truth_cols = (e_true.share_in, e_true.share_pool, e_true.ratio, e_true.p_value)
        else:
            truth_cols = (np.nan,) * 4
        rows.append(_cluster_row(c, out.iloc[idx], fit.z[idx], int(in_cluster.sum()), e_pred,
                                 truth_cols) | {"stability": float(fit.stability[c])})
    table = pd.DataFrame(rows, columns=CLUSTER_COLUMNS)
    table["q_predicted"] = benjamini_hochberg(table["p_predicted"].to_numpy(dtype=float))
    return table.astype(_empty_cluster_table().dtypes.to_dict())


def _cluster_row(c: int, m: pd.DataFrame, z: np.ndarray, n_nodules: int, e_pred,
                 truth_cols: tuple) -> dict:
    """The row of cluster *c* from its members *m* (``region_key`` order) and their
    standardised features *z*; ``q_predicted`` is filled in across clusters later."""
    order = rank_by_centrality(z)
    picked = exemplars_one_per_group(order, m["case_id"].astype(str).to_numpy(), k=N_EXEMPLARS)
    relation, relation_share = _most_common(m["relation"])
    direction, direction_share = _most_common(m["direction"])
    if direction_share < 0.5:
        direction = VARIED
    mean_hu = float(_num(m, "mean_hu").mean())
    halo = float(_num(m, "halo_max_hu").median())
    dist = float(_num(m, "offset_distance_mm").median())
    return {
        "cluster": c,
        "n_regions": len(m),
        "n_cases": int(m["case_id"].nunique()),
        "n_nodules": n_nodules,
        "mean_probability": float(_num(m, "probability").mean()),
        "share_predicted_malignant": e_pred.share_in,
        "pool_predicted_malignant": e_pred.share_pool,
        "enrichment_predicted": e_pred.ratio,
        "p_predicted": e_pred.p_value,
        "q_predicted": np.nan,
        "share_truth_malignant": truth_cols[0],
        "pool_truth_malignant": truth_cols[1],
        "enrichment_truth": truth_cols[2],
        "p_truth": truth_cols[3],
        "mean_mean_hu": mean_hu,
        "median_halo_max_hu": halo,
        "mean_offset_distance_mm": float(_num(m, "offset_distance_mm").mean()),
        "mean_volume_mm3": float(_num(m, "volume_mm3").mean()),
        "relation": relation,
        "direction": direction,
        "exemplars": [str(m["region_key"].iloc[i]) for i in picked],
        "description": describe_pattern(relation=relation, relation_share=relation_share,
                                        direction=direction, distance_mm=dist,
                                        halo_max_hu=halo, mean_hu=mean_hu,
                                        structure_gap_mm=_median(m, "structure_gap_mm"),
                                        structure_radial=_median(m, "structure_radial"),
                                        structure_median_hu=_median(m, "structure_median_hu")),
    }
