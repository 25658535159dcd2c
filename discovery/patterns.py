"""Cohort-level patterns of off-mask attention.

Off-mask regions (:mod:`discovery.offmask`) from many nodules are described by a few
physical descriptors, standardised, and clustered; each cluster is summarised by who it
involves (cases, nodules, predicted malignancy), what it looks like (density, size,
distance from the nodule) and a handful of exemplars for a human to review.

This is exploratory: a cluster is a hypothesis about what the model attends to, not a
finding.  Nothing here tests whether a cluster is stable under resampling or associated
with the prediction beyond reporting the members' mean probability.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.cluster import HDBSCAN, AgglomerativeClustering
from sklearn.decomposition import PCA

__all__ = [
    "FEATURE_COLUMNS",
    "CLUSTER_COLUMNS",
    "DENSITY_BANDS_HU",
    "PatternSettings",
    "region_features",
    "density_band",
    "describe_pattern",
    "cluster_regions",
]

#: Descriptors used for clustering, as built by :func:`region_features`.
#: ``log_volume_mm3`` is the natural log of ``volume_mm3``; ``direction_z/y/x`` is the unit
#: vector from the nodule centre to the region centroid (in mm, grid axes).
FEATURE_COLUMNS = [
    "offset_distance_mm",
    "distance_to_mask_mm",
    "log_volume_mm3",
    "mean_hu",
    "max_hu",
    "mass_share",
    "direction_z",
    "direction_y",
    "direction_x",
]

#: Columns of the cluster table returned by :func:`cluster_regions`.
CLUSTER_COLUMNS = [
    "cluster",
    "n_regions",
    "n_cases",
    "n_nodules",
    "mean_probability",
    "share_predicted_malignant",
    "mean_mean_hu",
    "mean_offset_distance_mm",
    "mean_volume_mm3",
    "exemplars",
    "description",
]

#: Density bands ``(name, lower HU inclusive, upper HU exclusive)``.
DENSITY_BANDS_HU = (
    ("air/lung", -np.inf, -500.0),
    ("fat", -500.0, -30.0),
    ("soft tissue", -30.0, 150.0),
    ("calcified", 150.0, 1200.0),
    ("metal-like", 1200.0, np.inf),
)

_REQUIRED_COLUMNS = [
    "case_id",
    "nodule_id",
    "region_key",
    "probability",
    "volume_mm3",
    "mass_share",
    "offset_z_mm",
    "offset_y_mm",
    "offset_x_mm",
    "offset_distance_mm",
    "distance_to_mask_mm",
    "mean_hu",
    "max_hu",
]
_METHODS = ("hdbscan", "agglomerative")
_MAX_EXEMPLARS = 5
_MALIGNANT_PROBABILITY = 0.5


def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


@dataclass(frozen=True)
class PatternSettings:
    """How regions are clustered.

    Attributes
    ----------
    min_cluster_size : int
        Smallest group reported as a cluster (>= 2).  With ``"agglomerative"``, smaller
        groups are set to -1 (unclustered) afterwards.
    min_samples : int or None
        HDBSCAN's density parameter; None means ``min_cluster_size``.
    seed : int
        Recorded for reproducibility.  Both methods and the PCA map are deterministic
        today, so it does not change any output yet.
    method : {"hdbscan", "agglomerative"}
        ``"hdbscan"`` (noise stays -1) or Ward ``"agglomerative"`` cut at
        ``distance_threshold``.
    distance_threshold : float or None
        Ward linkage distance (in standardised units) at which to cut; required for
        ``"agglomerative"``, ignored otherwise.
    """

    min_cluster_size: int = 3
    min_samples: int | None = None
    seed: int = 0
    method: str = "hdbscan"
    distance_threshold: float | None = None

    def __post_init__(self):
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
        if self.method == "agglomerative":
            t = self.distance_threshold
            if not (isinstance(t, (int, float, np.number)) and np.isfinite(t) and t > 0):
                raise ValueError(
                    "method='agglomerative' needs a positive finite distance_threshold; "
                    f"received {t!r}"
                )


# ---------------------------------------------------------------------------- features


def _check_regions(regions) -> pd.DataFrame:
    if not isinstance(regions, pd.DataFrame):
        raise ValueError(f"regions must be a pandas DataFrame; received {type(regions).__name__}")
    missing = [c for c in _REQUIRED_COLUMNS if c not in regions.columns]
    if missing:
        raise ValueError(
            f"regions is missing column(s) {missing}; expected regions_table() output plus "
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
    v = pd.to_numeric(regions["volume_mm3"], errors="coerce").to_numpy(dtype=float)
    if len(v) and not (np.all(np.isfinite(v)) and v.min() > 0):
        raise ValueError("volume_mm3 must be finite and > 0 for every region")
    return regions


def region_features(regions: pd.DataFrame) -> pd.DataFrame:
    """The clustering descriptors of each region, unscaled.

    Parameters
    ----------
    regions : pandas.DataFrame
        At least the :func:`discovery.offmask.regions_table` columns.

    Returns
    -------
    pandas.DataFrame
        Columns :data:`FEATURE_COLUMNS`, same index as ``regions``.  Missing descriptors
        (e.g. ``distance_to_mask_mm`` of a nodule with an empty mask) stay NaN.  A region
        centred exactly on the nodule centre has direction ``(0, 0, 0)``.
    """
    out = pd.DataFrame(index=regions.index)
    for c in ("offset_distance_mm", "distance_to_mask_mm", "mean_hu", "max_hu", "mass_share"):
        out[c] = pd.to_numeric(regions[c], errors="coerce").astype(float)
    with np.errstate(divide="ignore", invalid="ignore"):
        volume = pd.to_numeric(regions["volume_mm3"], errors="coerce").astype(float)
        out["log_volume_mm3"] = np.log(volume)
    offset_cols = ["offset_z_mm", "offset_y_mm", "offset_x_mm"]
    offset = regions[offset_cols].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=float)
    norm = np.linalg.norm(offset, axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        direction = np.where(norm > 0, offset / norm, 0.0)
    direction[~np.isfinite(norm[:, 0])] = np.nan
    out["direction_z"], out["direction_y"], out["direction_x"] = direction.T
    return out[FEATURE_COLUMNS]


def _robust_standardise(x: np.ndarray) -> np.ndarray:
    """Centre on the median, scale by IQR/1.349 (std-equivalent); std, then 1, if that is 0."""
    centre = np.median(x, axis=0)
    q75, q25 = np.percentile(x, [75, 25], axis=0)
    scale = (q75 - q25) / 1.349
    std = x.std(axis=0)
    scale = np.where(scale > 0, scale, std)
    scale = np.where(scale > 0, scale, 1.0)
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


def _size_word(volume_mm3: float) -> str:
    # 50 mm³ ~ a 4.6 mm sphere; 500 mm³ ~ a 9.8 mm sphere.
    if volume_mm3 < 50:
        return "small"
    if volume_mm3 < 500:
        return "medium"
    return "large"


def describe_pattern(mean_hu: float, volume_mm3: float, offset_distance_mm: float) -> str:
    """A short plain-language description of a cluster.

    Parameters
    ----------
    mean_hu : float
        Mean over the cluster's regions of each region's mean HU.
    volume_mm3 : float
        Mean region volume (mm³).
    offset_distance_mm : float
        Mean distance (mm) from the nodule centre to the region centroid.

    Returns
    -------
    str
        For example ``"calcified density (mean 420 HU), small (14 mm³), about 12 mm from
        the nodule centre"``.
    """
    return (
        f"{density_band(mean_hu)} density (mean {mean_hu:.0f} HU), "
        f"{_size_word(volume_mm3)} ({volume_mm3:.0f} mm³), "
        f"about {offset_distance_mm:.0f} mm from the nodule centre"
    )


# -------------------------------------------------------------------------- clustering


def _fit_labels(z: np.ndarray, settings: PatternSettings) -> np.ndarray:
    n = len(z)
    min_samples = settings.min_samples
    if min_samples is None:
        min_samples = settings.min_cluster_size
    if n < settings.min_cluster_size or (settings.method == "hdbscan" and n < min_samples):
        return np.full(n, -1, dtype=np.int64)
    if settings.method == "hdbscan":
        model = HDBSCAN(
            min_cluster_size=settings.min_cluster_size,
            min_samples=settings.min_samples,
            allow_single_cluster=False,
            copy=True,
        )
        labels = model.fit(z).labels_.astype(np.int64)
        labels[labels < 0] = -1  # -2 / -3 (infinite / missing) cannot occur: rows are finite
    else:
        model = AgglomerativeClustering(
            n_clusters=None, distance_threshold=float(settings.distance_threshold), linkage="ward"
        )
        labels = model.fit(z).labels_.astype(np.int64)
        sizes = np.bincount(labels)
        labels[sizes[labels] < settings.min_cluster_size] = -1
    # Renumber: largest cluster first, ties by first appearance.
    ids = [c for c in dict.fromkeys(labels.tolist()) if c >= 0]
    ids.sort(key=lambda c: -int(np.count_nonzero(labels == c)))
    remap = {c: i for i, c in enumerate(ids)}
    return np.array([remap.get(c, -1) for c in labels], dtype=np.int64)


def _embed(z: np.ndarray) -> np.ndarray:
    """Deterministic 2-D PCA map of standardised features (zeros when there is no spread)."""
    emb = np.zeros((len(z), 2))
    if len(z) < 2 or np.allclose(z, z[0]):
        return emb
    k = min(2, len(z), z.shape[1])
    emb[:, :k] = PCA(n_components=k, svd_solver="full").fit_transform(z)
    return emb


def _empty_cluster_table() -> pd.DataFrame:
    df = pd.DataFrame({c: [] for c in CLUSTER_COLUMNS})
    return df.astype(
        {
            "cluster": "int64",
            "n_regions": "int64",
            "n_cases": "int64",
            "n_nodules": "int64",
            "mean_probability": "float64",
            "share_predicted_malignant": "float64",
            "mean_mean_hu": "float64",
            "mean_offset_distance_mm": "float64",
            "mean_volume_mm3": "float64",
            "exemplars": "object",
            "description": "object",
        }
    )


def _exemplars(members: pd.DataFrame, z: np.ndarray) -> list[str]:
    """Up to 5 region keys nearest the members' mean in standardised space, one per case."""
    d = np.linalg.norm(z - z.mean(axis=0), axis=1)
    order = sorted(range(len(members)), key=lambda i: (d[i], str(members["region_key"].iloc[i])))
    picked, seen = [], set()
    for i in order:
        case = members["case_id"].iloc[i]
        if case in seen:
            continue
        seen.add(case)
        picked.append(str(members["region_key"].iloc[i]))
        if len(picked) == _MAX_EXEMPLARS:
            break
    return picked


def cluster_regions(
    regions: pd.DataFrame, *, settings: PatternSettings = PatternSettings()
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Cluster off-mask regions across a cohort and summarise each cluster.

    Parameters
    ----------
    regions : pandas.DataFrame
        Concatenated :func:`discovery.offmask.regions_table` outputs plus ``probability``
        (the nodule's predicted malignancy probability, in [0, 1]) and ``region_key`` (a
        unique string per region).
    settings : PatternSettings, optional
        Method and minimum cluster size.

    Returns
    -------
    regions : pandas.DataFrame
        A copy of the input (same index and row order) with added columns

        * ``cluster`` (int): 0..C-1, largest cluster first; -1 = unclustered (noise, or
          not offered to the clustering, see below);
        * ``embedding_x``, ``embedding_y`` (float): 2-D PCA map of the standardised
          features, for display only; NaN for rows not offered to the clustering;
        * ``features_complete`` (bool): False when a descriptor was missing (e.g.
          ``distance_to_mask_mm`` is NaN for a nodule with an empty mask); such rows are
          left out of standardisation, clustering and the map.
    clusters : pandas.DataFrame
        One row per cluster, columns :data:`CLUSTER_COLUMNS`: ``cluster``, ``n_regions``,
        ``n_cases``, ``n_nodules`` (distinct ``(case_id, nodule_id)``),
        ``mean_probability``, ``share_predicted_malignant`` (share of regions whose
        nodule has ``probability >= 0.5``), ``mean_mean_hu``, ``mean_offset_distance_mm``,
        ``mean_volume_mm3``, ``exemplars`` (list of up to 5 ``region_key``, nearest the
        cluster mean in standardised space first, at most one per case) and
        ``description`` (see :func:`describe_pattern`).  Empty, with these columns, when
        there are fewer complete regions than ``min_cluster_size`` (or, for HDBSCAN,
        ``min_samples``), or no cluster forms.

    Raises
    ------
    ValueError
        On missing columns, duplicate ``region_key``, probabilities outside [0, 1], or
        non-positive volumes.

    Notes
    -----
    Features (:data:`FEATURE_COLUMNS`) are standardised robustly: median-centred and
    divided by IQR/1.349, falling back to the standard deviation, then to 1, for a
    constant feature.  Rows are processed in ``region_key`` order, so the result does not
    depend on the input row order.  HDBSCAN is run with ``allow_single_cluster=False``
    (its default): a cohort whose regions all look alike comes back as noise, not as
    one cluster.  Regions of one nodule are not independent and large
    cases contribute more regions; shares and means are per region, not per case.
    """
    if not isinstance(settings, PatternSettings):
        raise ValueError(f"settings must be a PatternSettings; received {type(settings).__name__}")
    regions = _check_regions(regions)
    out = regions.copy()
    n = len(out)

    feats = region_features(out).to_numpy(dtype=float)
    complete = np.all(np.isfinite(feats), axis=1)
    keys = out["region_key"].astype(str).to_numpy()
    # Positions of complete rows, in region_key order (input-order independent).
    pos = np.flatnonzero(complete)
    pos = pos[np.argsort(keys[pos], kind="stable")]

    cluster = np.full(n, -1, dtype=np.int64)
    embedding = np.full((n, 2), np.nan)
    z_all = np.full((n, len(FEATURE_COLUMNS)), np.nan)
    if len(pos):
        z = _robust_standardise(feats[pos])
        z_all[pos] = z
        cluster[pos] = _fit_labels(z, settings)
        embedding[pos] = _embed(z)

    out["cluster"] = cluster
    out["embedding_x"] = embedding[:, 0]
    out["embedding_y"] = embedding[:, 1]
    out["features_complete"] = complete

    rows = []
    for c in range(int(cluster.max()) + 1 if n else 0):
        idx = np.flatnonzero(cluster == c)
        idx = idx[np.argsort(keys[idx], kind="stable")]
        m = out.iloc[idx]
        prob = m["probability"].astype(float)
        mean_hu = float(m["mean_hu"].astype(float).mean())
        mean_vol = float(m["volume_mm3"].astype(float).mean())
        mean_dist = float(m["offset_distance_mm"].astype(float).mean())
        rows.append(
            {
                "cluster": c,
                "n_regions": len(m),
                "n_cases": int(m["case_id"].nunique()),
                "n_nodules": int(len(m[["case_id", "nodule_id"]].drop_duplicates())),
                "mean_probability": float(prob.mean()),
                "share_predicted_malignant": float((prob >= _MALIGNANT_PROBABILITY).mean()),
                "mean_mean_hu": mean_hu,
                "mean_offset_distance_mm": mean_dist,
                "mean_volume_mm3": mean_vol,
                "exemplars": _exemplars(m, z_all[idx]),
                "description": describe_pattern(mean_hu, mean_vol, mean_dist),
            }
        )
    table = _empty_cluster_table()
    if rows:
        table = pd.DataFrame(rows, columns=CLUSTER_COLUMNS).astype(table.dtypes.to_dict())
    return out, table
