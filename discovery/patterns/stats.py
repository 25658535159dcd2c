"""Statistics on discovered clusters: enrichment, spectral clustering, benchmark scores.

* :func:`enrichment_test`: is a label (predicted or true malignancy) more or less common
  among the *nodules* a cluster touches than in the pool?  Permutation and exact
  (hypergeometric) two-sided p-values; :func:`benjamini_hochberg` for many clusters.
* :func:`spectral_eigengap`: spectral clustering with the eigengap heuristic, as in SpRAy
  (Lapuschkin et al. 2019, Nat. Commun. 10:1096).
* Scores against planted truth (:func:`match_kind`, :func:`top_k_precision`,
  :func:`adjusted_rand`) and exemplar picking (:func:`rank_by_centrality`,
  :func:`exemplars_one_per_group`).

Arrays in, arrays out; deterministic for a given ``seed``.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

# SciPy's stats and scikit-learn are imported where they are used: ``discovery score`` needs
# this module only after every case file is written, and importing them first would add
# about 75 MiB to its peak memory.
from data_tools.checks import check_int

__all__ = [
    "Enrichment",
    "KindMatch",
    "enrichment_test",
    "benjamini_hochberg",
    "spectral_eigengap",
    "labels_by_size",
    "match_kind",
    "top_k_precision",
    "adjusted_rand",
    "rank_by_centrality",
    "exemplars_one_per_group",
]

#: Slack when comparing a statistic's distance from the null mean with the observed one.
_TIE_TOL = 1e-9
#: Upper bound on the number of cells shuffled at once by :func:`enrichment_test`.
_PERMUTATION_CELLS = 1 << 21
#: Eigengaps at or below this are treated as zero (a flat spectrum: one cluster).
_FLAT_GAP = 1e-10
_NOISE_MODES = ("singletons", "label")


def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _check_seed(seed) -> int:
    if not (_is_int(seed) and seed >= 0):
        raise ValueError(f"seed must be a non-negative integer; received {seed!r}")
    return int(seed)


def _as_vector(name: str, x, dtype=None) -> np.ndarray:
    a = np.asarray(x, dtype=dtype)
    if a.ndim != 1:
        raise ValueError(f"{name} must be 1-D; received shape {a.shape}")
    return a


def _as_bool_vector(name: str, x) -> np.ndarray:
    a = _as_vector(name, x)
    if a.dtype == bool:
        return a
    if a.size and not (np.issubdtype(a.dtype, np.number) and np.isin(a, (0, 1)).all()):
        raise ValueError(f"{name} must be bool (or 0/1); received dtype {a.dtype}")
    return a.astype(bool)


def _as_labels(name: str, x) -> np.ndarray:
    a = _as_vector(name, x)
    if a.size == 0:
        return a.astype(np.int64)
    if not np.issubdtype(a.dtype, np.integer) or a.min() < -1:
        raise ValueError(
            f"{name} must hold integer cluster ids >= -1 (-1 = unclustered); received "
            f"dtype {a.dtype}, min {a.min()!r}"
        )
    return a.astype(np.int64)


def _same_length(**arrays) -> None:
    lengths = {k: len(v) for k, v in arrays.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"inputs must have the same length; received {lengths}")


# -------------------------------------------------------------------------- enrichment


@dataclass(frozen=True)
class Enrichment:
    """Enrichment of a label among the nodules of one cluster.

    Attributes
    ----------
    n_in, n_pool, k_in, k_pool : int
        Nodules touched by the cluster / in the pool, and the positives among each.
    share_in, share_pool, ratio : float
        ``k_in / n_in``, ``k_pool / n_pool`` and ``share_in / share_pool``; NaN when a
        denominator is 0 (or a share NaN).
    p_value, p_exact : float
        Two-sided permutation p-value ``(1 + count) / (1 + n_permutations)`` and the
        exact p-value of the same (hypergeometric) null.
    """

    n_in: int
    n_pool: int
    k_in: int
    k_pool: int
    share_in: float
    share_pool: float
    ratio: float
    p_value: float
    p_exact: float


def _hypergeom_two_sided(k_in: int, n_in: int, k_pool: int, n_pool: int) -> float:
    expected = n_in * k_pool / n_pool
    lo, hi = max(0, n_in - (n_pool - k_pool)), min(n_in, k_pool)
    support = np.arange(lo, hi + 1)
    from scipy import stats

    pmf = stats.hypergeom.pmf(support, n_pool, k_pool, n_in)
    far = np.abs(support - expected) >= abs(k_in - expected) - _TIE_TOL
    return float(min(1.0, pmf[far].sum()))


def enrichment_test(
    in_cluster, positive, *, n_permutations: int = 2000, seed: int = 0
) -> Enrichment:
    """Test whether positives are over- or under-represented among a cluster's nodules.

    Parameters
    ----------
    in_cluster : array_like of bool, shape (N,)
        True for each nodule of the pool with at least one region in the cluster.
    positive : array_like of bool, shape (N,)
        The nodule's label (e.g. predicted malignant, or truly malignant).  0/1 integers
        are accepted.
    n_permutations : int, optional
        Random relabellings for :attr:`Enrichment.p_value` (>= 1).
    seed : int, optional
        Seed of :func:`numpy.random.default_rng`; the same seed gives the same p-value.

    Returns
    -------
    Enrichment

    Notes
    -----
    The statistic ``k_in`` is hypergeometric under the null (``positive`` shuffled over
    the pool, drawn in chunks with :meth:`numpy.random.Generator.permuted`), with mean
    ``E = n_in * k_pool / n_pool``.  Both p-values count outcomes at least as far from
    ``E`` as observed, ``|x - E| >= |k_in - E| - 1e-9``: two-sided, and equal to Fisher's
    exact two-sided test when the null is symmetric.  An empty pool or cluster gives NaN
    shares, ratio and p-values; when ``k_in`` cannot vary (pool all positive or all
    negative, or the cluster is the whole pool) both p-values are 1.0.
    """
    inc = _as_bool_vector("in_cluster", in_cluster)
    pos = _as_bool_vector("positive", positive)
    _same_length(in_cluster=inc, positive=pos)
    n_permutations = check_int("n_permutations", n_permutations, 1)
    seed = _check_seed(seed)

    n_pool, n_in = int(inc.size), int(inc.sum())
    k_pool, k_in = int(pos.sum()), int((inc & pos).sum())
    nan = float("nan")
    share_pool = k_pool / n_pool if n_pool else nan
    share_in = k_in / n_in if n_in else nan
    ratio = share_in / share_pool if n_in and n_pool and share_pool > 0 else nan
    head = (n_in, n_pool, k_in, k_pool, share_in, share_pool, ratio)
    if n_pool == 0 or n_in == 0:
        return Enrichment(*head, p_value=nan, p_exact=nan)
    if k_pool in (0, n_pool) or n_in == n_pool:
        return Enrichment(*head, p_value=1.0, p_exact=1.0)

    expected = n_in * k_pool / n_pool
    threshold = abs(k_in - expected) - _TIE_TOL
    rng = np.random.default_rng(seed)
    chunk = max(1, _PERMUTATION_CELLS // n_pool)
    base = pos.astype(np.int8)
    count, done = 0, 0
    while done < n_permutations:
        m = min(chunk, n_permutations - done)
        shuffled = rng.permuted(np.broadcast_to(base, (m, n_pool)), axis=1)
        stat = shuffled[:, inc].sum(axis=1, dtype=np.int64)
        count += int(np.count_nonzero(np.abs(stat - expected) >= threshold))
        done += m
    p_exact = _hypergeom_two_sided(k_in, n_in, k_pool, n_pool)
    return Enrichment(*head, p_value=(1 + count) / (1 + n_permutations), p_exact=p_exact)


def benjamini_hochberg(p_values) -> np.ndarray:
    """Benjamini-Hochberg q-values (false discovery rate adjusted p-values).

    Parameters
    ----------
    p_values : array_like of float, shape (M,)
        p-values in [0, 1]; NaN marks an untested entry.

    Returns
    -------
    numpy.ndarray of float, shape (M,)
        ``q_(i) = min_{j >= i} min(1, p_(j) * m / j)`` over the sorted non-NaN p-values,
        in input order; NaN stays NaN and is not counted in ``m`` (as R's ``p.adjust``).
    """
    p = _as_vector("p_values", p_values, float)
    ok = ~np.isnan(p)
    if np.any((p[ok] < 0) | (p[ok] > 1)):
        raise ValueError(
            f"p_values must lie in [0, 1] or be NaN; received min {p[ok].min()!r}, "
            f"max {p[ok].max()!r}"
        )
    q = np.full(p.shape, np.nan)
    idx = np.flatnonzero(ok)
    order = np.argsort(p[idx], kind="stable")
    scaled = p[idx][order] * idx.size / np.arange(1, idx.size + 1)
    q[idx[order]] = np.minimum(1.0, np.minimum.accumulate(scaled[::-1])[::-1])
    return q


# ------------------------------------------------------------------ spectral clustering


def _knn_spectrum(x: np.ndarray, k: int, m: int):
    """The symmetrised kNN connectivity graph of *x* and the ``m + 1`` smallest eigenvalues
    of its normalised Laplacian."""
    from scipy import linalg, sparse
    from scipy.sparse.csgraph import laplacian
    from sklearn.neighbors import kneighbors_graph

    a = kneighbors_graph(x, k, mode="connectivity", include_self=False)
    a = sparse.csr_matrix(a.maximum(a.T))
    lap = laplacian(a, normed=True)
    return a, linalg.eigh(lap.toarray(), eigvals_only=True, subset_by_index=[0, m])


def spectral_eigengap(
    z, *, max_clusters: int = 10, n_neighbors: int = 10, seed: int = 0
) -> tuple[np.ndarray, int, np.ndarray]:
    """Spectral clustering with the number of clusters chosen by the eigengap (SpRAy).

    Parameters
    ----------
    z : array_like of float, shape (N, D)
        Standardised features, one row per item; finite.
    max_clusters : int, optional
        Largest number of clusters considered (>= 2).
    n_neighbors : int, optional
        Neighbours per point in the kNN graph (>= 1); clipped to ``N - 1``.
    seed : int, optional
        ``random_state`` of :class:`sklearn.cluster.SpectralClustering`.

    Returns
    -------
    labels : numpy.ndarray of int64, shape (N,)
        Cluster ids ``0..k-1`` numbered by decreasing size (ties: first appearance);
        fewer ids if the spectral assignment leaves a cluster empty.
    k : int
        The number of clusters chosen.
    eigengap : numpy.ndarray of float, shape (min(max_clusters, N - 1),)
        ``eigengap[i - 1] = lambda_{i+1} - lambda_i`` for ``i = 1, 2, ...``, with
        ``lambda_1 <= lambda_2 <= ...`` the eigenvalues of the normalised Laplacian
        (dimensionless, in [0, 2]).

    Notes
    -----
    Affinity: the kNN connectivity graph (:func:`sklearn.neighbors.kneighbors_graph`, no
    self loops) made symmetric with ``max(A, A.T)``; labels come from
    :class:`~sklearn.cluster.SpectralClustering` (``assign_labels="cluster_qr"``) on it.
    ``k`` is the ``i`` in ``2..max_clusters`` with the largest gap (first on ties), so
    ``k >= 2``; a gap at ``i = 1`` is shown but never selects ``k = 1``.  Exceptions, when
    all gaps for ``i >= 2`` are <= 1e-10: if ``lambda_2 > 0`` the graph is trivially one
    cluster (e.g. complete) and ``k = 1``, all labels 0; if ``lambda_2 == 0`` the graph has
    more than ``m = min(max_clusters, N - 1)`` components and ``k = m``.  ``N < 3``: all
    labels 0, ``k = 1``, empty ``eigengap``.  Disconnected graphs are expected for
    well-separated clusters, so scikit-learn's "not fully connected" warning is silenced.
    The dense eigensolver costs O(N^3): meant for N up to a few thousand.
    """
    x = np.asarray(z, dtype=float)
    if x.ndim != 2:
        raise ValueError(f"z must be 2-D (N, D); received shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError("z must be finite; received NaN or infinite values")
    max_clusters = check_int("max_clusters", max_clusters, 2)
    n_neighbors = check_int("n_neighbors", n_neighbors, 1)
    seed = _check_seed(seed)
    n = x.shape[0]
    if n < 3:
        return np.zeros(n, dtype=np.int64), 1, np.zeros(0)

    from sklearn.cluster import SpectralClustering

    m = min(max_clusters, n - 1)
    a, eigvals = _knn_spectrum(x, min(n_neighbors, n - 1), m)
    gaps = np.diff(eigvals[: m + 1])
    if not np.all(gaps[1:] <= _FLAT_GAP):
        k = int(np.argmax(gaps[1:])) + 2
    elif eigvals[1] > _FLAT_GAP:
        return np.zeros(n, dtype=np.int64), 1, gaps
    else:
        k = m

    model = SpectralClustering(
        n_clusters=k, affinity="precomputed", random_state=seed, assign_labels="cluster_qr"
    )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Graph is not fully connected")
        raw = model.fit_predict(a)
    return labels_by_size(raw), k, gaps


def labels_by_size(raw) -> np.ndarray:
    """Cluster ids renumbered ``0..M-1`` by decreasing size, ties by first appearance, so
    that the ids are stable whatever numbers the clustering gave.

    Parameters
    ----------
    raw : array_like of int, shape (N,)

    Returns
    -------
    numpy.ndarray of int64, shape (N,)
    """
    raw = np.asarray(raw)
    uniq, first, sizes = np.unique(raw, return_index=True, return_counts=True)
    rank = np.lexsort((first, -sizes))
    new_id = np.empty(uniq.size, dtype=np.int64)
    new_id[rank] = np.arange(uniq.size)
    return new_id[np.searchsorted(uniq, raw)]


# ----------------------------------------------------------------- benchmark evaluation


@dataclass(frozen=True)
class KindMatch:
    """The cluster that best recovers one planted kind.

    Attributes
    ----------
    kind : str
    cluster : int
        Best cluster id (max F1), or -1 when no cluster overlaps the kind.
    precision, recall, f1 : float
        ``|C & T| / |C|``, ``|C & T| / |T|`` and their harmonic mean, in [0, 1].
    n_truth, n_cluster : int
        ``|T|`` (regions of the kind, clustered or not) and ``|C|``.
    """

    kind: str
    cluster: int
    precision: float
    recall: float
    f1: float
    n_truth: int
    n_cluster: int


def match_kind(cluster, truth, kind: str) -> KindMatch:
    """Best-matching cluster for a planted kind, by F1.

    Parameters
    ----------
    cluster : array_like of int, shape (N,)
        Cluster id per region; -1 = unclustered.
    truth : array_like of str, shape (N,)
        The planted kind each region overlaps (``"none"`` for none).
    kind : str

    Returns
    -------
    KindMatch
        The cluster ``C >= 0`` with the largest F1 against ``T = {truth == kind}`` (ties:
        lower id); ``T`` includes unclustered regions, which lower recall.  No region of
        ``kind``: cluster -1, NaN metrics.  No cluster overlapping ``T``: cluster -1,
        precision, recall and F1 0.0, ``n_cluster = 0`` (not an arbitrary cluster).
    """
    c = _as_labels("cluster", cluster)
    t = _as_vector("truth", truth)
    _same_length(cluster=c, truth=t)
    if not isinstance(kind, str):
        raise ValueError(f"kind must be a str; received {type(kind).__name__}")
    in_t = t.astype(str) == kind
    n_truth = int(in_t.sum())
    if n_truth == 0:
        nan = float("nan")
        return KindMatch(kind, -1, nan, nan, nan, 0, 0)
    ids, sizes = np.unique(c[c >= 0], return_counts=True)
    hits = np.array([np.count_nonzero(in_t & (c == i)) for i in ids], dtype=float)
    if hits.size == 0 or hits.max() == 0:
        return KindMatch(kind, -1, 0.0, 0.0, 0.0, n_truth, 0)
    precision, recall = hits / sizes, hits / n_truth
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(hits > 0, 2 * precision * recall / (precision + recall), 0.0)
    b = int(np.argmax(f1))  # ids are sorted, so the first maximum is the lowest id
    return KindMatch(
        kind, int(ids[b]), float(precision[b]), float(recall[b]), float(f1[b]), n_truth,
        int(sizes[b]),
    )


def top_k_precision(ranked_kinds, kind: str, *, k: int = 10) -> float:
    """Share of the first ``min(k, len)`` entries of a ranking equal to ``kind``.

    Parameters
    ----------
    ranked_kinds : array_like of str, shape (M,)
        Kinds in ranked order (best first).
    kind : str
    k : int, optional
        Cut-off (>= 1).

    Returns
    -------
    float
        In [0, 1]; NaN when ``ranked_kinds`` is empty.
    """
    r = _as_vector("ranked_kinds", ranked_kinds)
    k = check_int("k", k, 1)
    return float(np.mean(r[:k].astype(str) == kind)) if r.size else float("nan")


def adjusted_rand(cluster, truth, *, noise: str = "singletons") -> float:
    """Adjusted Rand index between clusters and planted truth, with explicit noise handling.

    Parameters
    ----------
    cluster : array_like of int, shape (N,)
        Cluster id per item; -1 = unclustered (noise).
    truth : array_like, shape (N,)
        True group per item (str or int).
    noise : {"singletons", "label"}, optional
        ``"singletons"``: every unclustered item is its own cluster, so noise never counts
        as agreeing with anything.  ``"label"``: -1 is one ordinary cluster.

    Returns
    -------
    float
        :func:`sklearn.metrics.adjusted_rand_score`; NaN when ``N == 0``.
    """
    c = _as_labels("cluster", cluster)
    t = _as_vector("truth", truth)
    _same_length(cluster=c, truth=t)
    if noise not in _NOISE_MODES:
        raise ValueError(f"noise must be one of {_NOISE_MODES}; received {noise!r}")
    if c.size == 0:
        return float("nan")
    if noise == "singletons":
        is_noise = c == -1
        c[is_noise] = c.max() + 1 + np.arange(int(is_noise.sum()))  # c is a copy
    from sklearn.metrics import adjusted_rand_score

    return float(adjusted_rand_score(t, c))


def rank_by_centrality(z_members) -> np.ndarray:
    """Order of cluster members by Euclidean distance to the members' mean.

    Parameters
    ----------
    z_members : array_like of float, shape (M, D)
        Features of the members (e.g. standardised descriptors); finite.

    Returns
    -------
    numpy.ndarray of int64, shape (M,)
        Row indices, closest to the mean first; ties keep input order (stable sort).
    """
    x = np.asarray(z_members, dtype=float)
    if x.ndim != 2:
        raise ValueError(f"z_members must be 2-D (M, D); received shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError("z_members must be finite; received NaN or infinite values")
    if x.shape[0] == 0:
        return np.zeros(0, dtype=np.int64)
    d = np.linalg.norm(x - x.mean(axis=0), axis=1)  # Euclidean, in the units of z
    return np.argsort(d, kind="stable").astype(np.int64)


def exemplars_one_per_group(order, groups, *, k: int = 5) -> list[int]:
    """Up to ``k`` exemplars, at most one per group, in the given order.

    Parameters
    ----------
    order : array_like of int, shape (L,)
        Member indices in order of preference (e.g. from :func:`rank_by_centrality`).
    groups : array_like, shape (M,)
        Group (e.g. patient) of each member, indexed by member index.
    k : int, optional
        Most exemplars returned (>= 1).

    Returns
    -------
    list of int
        Walking ``order``, the first member of each group not seen yet, until ``k`` are
        kept (fewer if there are fewer groups).
    """
    o, g = _as_vector("order", order), _as_vector("groups", groups)
    k = check_int("k", k, 1)
    if o.size and (not np.issubdtype(o.dtype, np.integer) or o.min() < 0 or o.max() >= g.size):
        raise ValueError(
            f"order must hold integer indices into groups (0..{g.size - 1}); received "
            f"dtype {o.dtype} with values {o.min()!r}..{o.max()!r}"
        )
    kept, seen = [], set()
    for i in o.tolist():
        if g[i] not in seen and len(kept) < k:
            seen.add(g[i])
            kept.append(int(i))
    return kept
