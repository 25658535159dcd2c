"""Gaussian-mixture clustering: components chosen by BIC, then merged where they overlap.

A density-based clustering (HDBSCAN) keeps a cluster only where the density dips around
it: a structure whose regions form a tight mode *inside* a spread background (a strand
running from the nodule to the pleura, among regions that merely reach the same tissue)
joins the background, and a structure whose regions are spread along one descriptor (a
dense bead at any distance from the pleura) splits into several.  A Gaussian mixture
models the background as components of its own, so a tight mode stays apart; and the
components that only shape one non-Gaussian group are merged back (Hennig 2010,
"Methods for merging Gaussian mixture components", Adv. Data Anal. Classif. 4:3-34:
DEMP, the directly estimated misclassification probability).

* :func:`gaussian_mixture_bic` fits full-covariance mixtures of 1..``max_components``
  components (seeded) and keeps the one of lowest BIC;
* :func:`merge_overlapping` merges, pair by pair, the components a point of one is most
  often assigned to the other, while that probability is at least ``cutoff``;
* with ``runs`` > 1, :func:`gaussian_mixture_bic` does all this from several seeds and keeps
  the *medoid* partition (:func:`medoid_partition`): the one that agrees best with the
  others.  EM from another k-means start can reach another local optimum, and BIC then picks
  another number of components: on the benchmark's sign models a single fit put the planted
  tail in one cluster or split it in two depending on the seed
  (docs/benchmarks/discovery.md#medoid-mixture);
* :func:`mixture_selections` returns every selection, and :func:`clusterwise_jaccard` says
  how well each cluster of the one kept reappears in the others (Hennig 2007, "Cluster-wise
  assessment of cluster stability", Comput. Stat. Data Anal. 52:258-271): a cluster that
  dissolves when EM starts elsewhere is not a pattern of the data.

Measured against HDBSCAN in docs/benchmarks/discovery.md#mixture.
"""

from __future__ import annotations

import numpy as np

from data_tools.checks import check_int
from discovery.patterns.stats import labels_by_size

__all__ = ["DEMP_CUTOFF", "clusterwise_jaccard", "gaussian_mixture_bic", "keep_medoid",
           "medoid_partition", "merge_overlapping", "mixture_selections"]

#: Components merged while the larger of their two misclassification probabilities is at
#: least this (:func:`merge_overlapping`).
DEMP_CUTOFF = 0.05
#: Added to each component's covariance diagonal (squared standardised units): keeps a
#: component of repeated values (a descriptor capped for many regions) non-singular.
REG_COVAR = 1e-4


def _check_z(z) -> np.ndarray:
    x = np.asarray(z, dtype=float)
    if x.ndim != 2:
        raise ValueError(f"z must be 2-D (N, D); received shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError("z must be finite; received NaN or infinite values")
    return x


def merge_overlapping(posteriors, *, cutoff: float = DEMP_CUTOFF) -> np.ndarray:
    """Merge mixture components that overlap; the merged component of every point.

    Parameters
    ----------
    posteriors : array_like of float, shape (N, K)
        Each point's posterior probability of each component (rows sum to 1).
    cutoff : float, optional
        In (0, 1]: the pair with the largest misclassification probability is merged while
        it is at least this.

    Returns
    -------
    numpy.ndarray of int64, shape (N,)
        Merged component ids ``0..M-1``, numbered by decreasing size (ties: first
        appearance); each point goes to the merged component of largest posterior.

    Notes
    -----
    For components *i* and *j*, ``p(j | i) = sum_x tau_i(x) [x assigned to j] / sum_x
    tau_i(x)``: the share of component *i*'s mass that the maximum-posterior rule gives to
    *j* (DEMP).  A merged component's posterior is the sum of its parts'.
    """
    tau = np.array(posteriors, dtype=float)
    if tau.ndim != 2 or tau.shape[1] < 1 or not np.all(np.isfinite(tau)) or (tau < 0).any():
        raise ValueError("posteriors must be a finite, non-negative (N, K) array with K >= 1; "
                         f"received shape {tau.shape}")
    if not (isinstance(cutoff, (int, float)) and 0 < cutoff <= 1):
        raise ValueError(f"cutoff must be a number in (0, 1]; received {cutoff!r}")
    while tau.shape[1] > 1:
        assigned = np.eye(tau.shape[1])[tau.argmax(axis=1)]            # (N, K) one-hot
        mass = np.maximum(tau.sum(axis=0), 1e-300)
        p = (tau.T @ assigned) / mass[:, None]                          # p[i, j] = p(j | i)
        np.fill_diagonal(p, -1.0)
        pair = np.maximum(p, p.T)
        i, j = np.unravel_index(int(np.argmax(pair)), pair.shape)
        if pair[i, j] < cutoff:
            break
        i, j = min(i, j), max(i, j)
        tau[:, i] += tau[:, j]
        tau = np.delete(tau, j, axis=1)
    return labels_by_size(tau.argmax(axis=1))


def medoid_partition(partitions) -> tuple[int, float]:
    """The partition that agrees best with the others, and how well.

    Parameters
    ----------
    partitions : sequence of array_like of int, each shape (N,)
        Two or more labelings of the same N items (label values need not match between
        them).

    Returns
    -------
    index : int
        The partition of largest mean adjusted Rand index (ARI) with the others; ties go to
        the first.
    agreement : float
        That mean ARI: 1.0 when every partition is the same up to relabelling.
    """
    parts = [np.asarray(p) for p in partitions]
    if len(parts) < 2 or any(p.ndim != 1 or p.shape != parts[0].shape for p in parts):
        raise ValueError("partitions must be two or more 1-D label arrays of one length; "
                         f"received shapes {[p.shape for p in parts]}")
    from sklearn.metrics import adjusted_rand_score   # scikit-learn where used (stats.py)

    n = len(parts)
    ari = np.eye(n)
    for i in range(n):
        for j in range(i + 1, n):
            ari[i, j] = ari[j, i] = adjusted_rand_score(parts[i], parts[j])
    mean = (ari.sum(axis=1) - 1.0) / (n - 1)
    best = int(np.argmax(mean))
    return best, float(mean[best])


def clusterwise_jaccard(labels, partitions) -> np.ndarray:
    """How well each cluster of *labels* reappears in other partitions of the same items.

    Parameters
    ----------
    labels : array_like of int, shape (N,)
        Cluster ids ``0..C-1``; negative ids (unclustered) belong to no cluster.
    partitions : sequence of array_like of int, each shape (N,)
        Other labelings of the same N items (negative ids: no cluster; label values need
        not match *labels*).

    Returns
    -------
    numpy.ndarray of float64, shape (C,)
        For cluster *c*, the mean over *partitions* of the largest Jaccard index
        ``|c & j| / |c | j|`` with any cluster *j* of that partition: 1.0 when *c* is found
        whole and alone in every one.  Hennig's reading: below 0.5 the cluster dissolves,
        0.6-0.75 it is a pattern with doubts, above 0.75 it is stable, above 0.85 highly so.
        NaN for every cluster when *partitions* is empty.
    """
    a = np.asarray(labels)
    parts = [np.asarray(p) for p in partitions]
    if a.ndim != 1 or any(p.shape != a.shape for p in parts):
        raise ValueError("labels and partitions must be 1-D label arrays of one length; "
                         f"received {a.shape} and {[p.shape for p in parts]}")
    n_clusters = int(a.max()) + 1 if a.size and a.max() >= 0 else 0
    if not parts:
        return np.full(n_clusters, np.nan)
    sizes = np.bincount(a[a >= 0], minlength=n_clusters).astype(float)
    best = np.zeros((len(parts), n_clusters))
    for r, p in enumerate(parts):
        both = (a >= 0) & (p >= 0)
        _, pj = np.unique(p[p >= 0], return_inverse=True)
        other = np.full(p.shape, -1)
        other[p >= 0] = pj
        m = int(other.max()) + 1
        if m == 0:
            continue
        shared = np.zeros((n_clusters, m))
        np.add.at(shared, (a[both], other[both]), 1.0)
        union = sizes[:, None] + np.bincount(other[other >= 0], minlength=m)[None, :] - shared
        best[r] = (shared / np.maximum(union, 1.0)).max(axis=1)
    return best.mean(axis=0)


def mixture_selections(z, *, max_components: int = 10, seed: int = 0, n_init: int = 2,
                       cutoff: float | None = DEMP_CUTOFF, runs: int = 1,
                       ) -> list[tuple[np.ndarray, int]]:
    """Independent selections of the mixture of lowest BIC, one per seed.

    Parameters are those of :func:`gaussian_mixture_bic`.  Returns one ``(labels, k)`` per
    run, in seed order (``seed``, ``seed + 1``, ...): each labeling's cluster ids ``0..M-1``
    by decreasing size and the number of components BIC chose.  With fewer than 2 rows a
    single ``(zeros, 1)``.
    """
    x = _check_z(z)
    max_components = check_int("max_components", max_components, 1)
    n_init = check_int("n_init", n_init, 1)
    seed = check_int("seed", seed, 0)
    runs = check_int("runs", runs, 1)
    if x.shape[0] < 2:
        return [(np.zeros(x.shape[0], dtype=np.int64), 1)]
    return [_select(x, max_components, seed + r, n_init, cutoff) for r in range(runs)]


def keep_medoid(fits) -> tuple[tuple[np.ndarray, int], list[np.ndarray]]:
    """The selection to keep among *fits* (:func:`mixture_selections`' ``(labels, k)`` list)
    and the labels of the others: the medoid partition (:func:`medoid_partition`), or the
    only fit, with no others, when there is one."""
    fits = list(fits)
    if len(fits) == 1:
        return fits[0], []
    best, _ = medoid_partition([labels for labels, _ in fits])
    return fits[best], [labels for i, (labels, _) in enumerate(fits) if i != best]


def gaussian_mixture_bic(z, *, max_components: int = 10, seed: int = 0, n_init: int = 2,
                         cutoff: float | None = DEMP_CUTOFF, runs: int = 1,
                         ) -> tuple[np.ndarray, int]:
    """Cluster rows by the Gaussian mixture of lowest BIC, its overlapping components merged.

    Parameters
    ----------
    z : array_like of float, shape (N, D)
        Standardised features, one row per item; finite.
    max_components : int, optional
        Largest number of components tried (>= 1); each of ``1..min(max_components, N)``
        is fitted.
    seed : int, optional
        ``random_state`` of every fit (k-means initialisation); run *r* uses ``seed + r``.
    n_init : int, optional
        Initialisations per number of components; the best likelihood is kept.
    cutoff : float or None, optional
        :func:`merge_overlapping`'s cutoff; None keeps every component.
    runs : int, optional
        Independent selections (each over every number of components, from its own seed,
        :func:`mixture_selections`); the medoid of their partitions is kept
        (:func:`medoid_partition`).  1 (the default here) is a single selection from ``seed``.

    Returns
    -------
    labels : numpy.ndarray of int64, shape (N,)
        Cluster ids ``0..M-1`` by decreasing size.
    k : int
        The number of components BIC chose (before merging), in the run kept.

    Notes
    -----
    Full covariances, :data:`REG_COVAR` on their diagonals.  With fewer than 2 rows every
    label is 0.  Cost: ``runs * max_components * n_init`` EM fits, 0.6-0.7 s per run on
    600-1,500 rows of 5 descriptors (2 cores of an AMD EPYC).  A higher ``n_init`` is no
    substitute for ``runs``: the better likelihood it finds is more often the one with the
    planted group split (docs/benchmarks/discovery.md#medoid-mixture).
    """
    kept, _ = keep_medoid(mixture_selections(z, max_components=max_components, seed=seed,
                                             n_init=n_init, cutoff=cutoff, runs=runs))
    return kept


def _select(x: np.ndarray, max_components: int, seed: int, n_init: int,
            cutoff: float | None) -> tuple[np.ndarray, int]:
    """One selection: the mixture of lowest BIC, merged; its labels and component count."""
    from sklearn.mixture import GaussianMixture   # scikit-learn where used (stats.py)

    best, best_bic = None, np.inf
    for k in range(1, min(max_components, len(x)) + 1):
        fit = GaussianMixture(k, covariance_type="full", reg_covar=REG_COVAR, n_init=n_init,
                              random_state=seed).fit(x)
        bic = fit.bic(x)
        if bic < best_bic:
            best, best_bic = fit, bic
    tau = best.predict_proba(x)
    labels = labels_by_size(tau.argmax(axis=1)) if cutoff is None else merge_overlapping(
        tau, cutoff=cutoff)
    return labels, int(best.n_components)
