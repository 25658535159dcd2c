"""Is an attribution map faithful to the model?  Quantitative checks.

* :func:`road_curves` -- ROAD (Rong et al. 2022): deletion most relevant first (MoRF) against
  least relevant first (LeRF), removed voxels imputed from their neighbours plus noise
  (:mod:`discovery.explain.imputation`); the area between the two curves (the MoRF-LeRF gap)
  is the summary, judged by :mod:`discovery.explain.faithfulness_rule`.
* :func:`perturbation_curves` -- deletion and insertion curves (Petsiuk et al. 2018, RISE)
  with a constant eraser against random voxel orders, kept for comparison: a map that points
  at the evidence should make the target probability fall faster when voxels are removed in
  its order (and rise faster when revealed) than random orders do -- but scattered voxels set
  to a constant leave speckle, itself a signal to a CNN, so random orders are no neutral
  baseline (``benchmarks/faithfulness.py`` measures it on the demo model).
* :func:`randomization_test` -- the cascading model-parameter randomisation test of Adebayo
  et al. 2018: re-draw the weights module by module from the output end back to the input;
  maps that depend on what the model learned decorrelate (Spearman toward 0), maps that stay
  similar explain the input (edges, intensity), not the model.

Neither modifies the caller's model (perturbation runs it as given, in ``eval()`` mode, under
``torch.no_grad``; randomisation works on a ``copy.deepcopy``).
"""

from __future__ import annotations

import copy
import logging
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy import stats

from data_tools.checks import check_int
from discovery.explain.imputation import linear_imputation
from discovery.explain.methods import explain

__all__ = ["PerturbationResult", "RandomizationResult", "RoadResult", "perturbation_curves",
           "randomization_test", "road_curves"]

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]


# -- shared helpers ---------------------------------------------------------------------------

def _as_rois(rois) -> torch.Tensor:
    if not isinstance(rois, torch.Tensor):
        rois = torch.as_tensor(np.asarray(rois))
    if rois.ndim != 5 or rois.shape[1] == 0 or rois.shape[0] == 0:
        raise ValueError("rois must be a float tensor (N, C, z, y, x) with N, C >= 1; "
                         f"received shape {tuple(rois.shape)}")
    if not torch.is_floating_point(rois):
        raise ValueError(f"rois must be floating point; received dtype {rois.dtype}")
    return rois.detach()


def _to_numpy(value) -> np.ndarray:
    return value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)


def _check_eval(model: torch.nn.Module) -> None:
    training = [name or "<model>" for name, m in model.named_modules() if m.training]
    if training:
        raise ValueError(f"the model is in training mode (modules: {', '.join(training[:5])}"
                         f"{', ...' if len(training) > 5 else ''}); call model.eval() first -- in "
                         "training mode BatchNorm uses batch statistics and updates its averages")


def _frozen(array) -> np.ndarray:
    array = np.array(array)
    array.setflags(write=False)
    return array


def _auc(fractions: np.ndarray, curves: np.ndarray) -> np.ndarray:
    """Trapezoid-rule area under ``curves (..., steps+1)`` over ``fractions``."""
    return ((curves[..., 1:] + curves[..., :-1]) * 0.5 * np.diff(fractions)).sum(axis=-1)


# -- deletion / insertion ---------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class PerturbationResult:
    """Deletion and insertion curves of one set of attribution maps, with a random control.

    All arrays are read-only float64.  Curves hold the softmax probability of ``target``
    (dimensionless, 0..1); fractions are the share of each ROI's voxels removed (deletion)
    or revealed (insertion).

    Attributes
    ----------
    fractions : ndarray, shape (steps+1,)
        ``k_i / V`` where ``k_i = floor(i * V / steps)`` of the ``V`` voxels of a ROI are
        perturbed after step ``i``; equal to ``i / steps`` when ``steps`` divides ``V``.
    deletion, insertion : ndarray, shape (N, steps+1)
        Probability after each step, voxels taken in order of decreasing attribution.
    deletion_random, insertion_random : ndarray, shape (N, steps+1)
        The same, mean over the ``n_random`` random orders (NaN when ``n_random`` is 0).
    deletion_auc, insertion_auc : ndarray, shape (N,)
        Trapezoid-rule area under each curve over ``fractions`` (0..1).
    deletion_auc_random, insertion_auc_random : ndarray, shape (N,)
        Mean area over the random orders (NaN when ``n_random`` is 0).
    target, n_random, seed : int
        The options used.
    """

    fractions: np.ndarray
    deletion: np.ndarray
    insertion: np.ndarray
    deletion_random: np.ndarray
    insertion_random: np.ndarray
    deletion_auc: np.ndarray
    insertion_auc: np.ndarray
    deletion_auc_random: np.ndarray
    insertion_auc_random: np.ndarray
    target: int
    n_random: int
    seed: int

    def beats_random(self) -> np.ndarray:
        """Bool array (N,): ``deletion_auc < deletion_auc_random`` (False where that is NaN)."""
        with np.errstate(invalid="ignore"):
            return np.asarray(self.deletion_auc < self.deletion_auc_random)


def _voxel_order(attribution: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Flat voxel indices by decreasing attribution; ties keep the order of a seeded random
    permutation (stable sort of the permuted values), never the array (C) order."""
    perm = rng.permutation(attribution.size)
    return perm[np.argsort(-attribution[perm], kind="stable")]


def perturbation_curves(model: torch.nn.Module, rois, attributions, *, baseline, target: int = 1,
                        steps: int = 20, n_random: int = 3, seed: int = 0, batch_size: int = 32,
                        progress: Progress | None = None) -> PerturbationResult:
    """Deletion and insertion curves of attribution maps, with random-order controls.

    Deletion: each ROI's voxels are replaced by ``baseline`` in order of decreasing
    attribution, in ``steps`` chunks of (nearly) equal size, and the softmax probability of
    ``target`` is recorded before the first and after every chunk.  Insertion: start from the
    all-baseline ROI and put the original voxels back in the same order.  The same is done for
    ``n_random`` random voxel orders per ROI as the control.

    Parameters
    ----------
    model : torch.nn.Module
        Classifier returning logits ``(N, C)``, already in ``eval()`` mode (ValueError
        otherwise).  Used as it is under ``torch.no_grad``; never modified.
    rois : Tensor or array, shape (N, C, z, y, x)
        Preprocessed ROIs, in the network's input units.
    attributions : Tensor or array, shape (N, z, y, x)
        One map per ROI on the ROI grid; only the order of its values matters.
    baseline : float or array broadcastable to (C, z, y, x)
        The value a removed voxel takes, in the network's input units (per channel: a
        removed voxel is removed from every channel).  Required, with no default, because it
        decides what "removed" means: 0 is not neutral after an HU window (it is the window's
        lower end, e.g. -1000 HU = air), and a removed nodule voxel should look like the
        tissue around it -- usually lung parenchyma (about -850 HU, normalised with the card's
        window) -- or the curves measure the reaction to an artificial hole.
    target : int
        Class whose probability is tracked.
    steps : int
        Number of chunks (>= 1); the curves have ``steps + 1`` points.
    n_random : int
        Random voxel orders per ROI for the control (>= 0; 0 leaves the random fields NaN).
    seed : int
        Seeds one ``numpy.random.Generator`` per ROI, from ``(seed, ROI index)``, which draws
        the tie-breaking permutation and then the random orders: results are reproducible, a
        ROI's orders do not depend on the other ROIs in the call, and the random orders do not
        depend on the map (calls with the same ROIs and seed have the same random control).
    batch_size : int
        Perturbed ROIs per forward pass (>= 1); batches span steps and ROIs.
    progress : callable(done, total), optional
        Called after each forward batch with the number of perturbed ROIs evaluated so far and
        ``total = N * (1 + n_random) * 2 * (steps + 1)``.

    Returns
    -------
    PerturbationResult

    Notes
    -----
    Ties are broken randomly but reproducibly (seeded), never by array (C) order: upsampled
    Grad-CAM maps have plateaus and all-zero regions, and a C-order tie-break would remove
    tied voxels slice by slice from the ROI's first z-slice -- a systematic spatial bias that
    can make a flat map look better or worse than random.
    """
    rois, attr, counts = _check_curve_inputs(model, rois, attributions, steps=steps,
                                             n_random=n_random, batch_size=batch_size)
    n, shape = int(rois.shape[0]), tuple(int(s) for s in rois.shape[1:])
    base = _check_baseline(baseline, shape)
    n_voxels = int(np.prod(shape[1:]))
    fractions = np.array(counts, dtype=np.float64) / n_voxels
    n_orders = 1 + n_random
    flat = rois.to(dtype=torch.float32, device="cpu").reshape(n, shape[0], n_voxels)
    base_t = torch.from_numpy(base.reshape(shape[0], n_voxels))
    device = next((t.device for t in (*model.parameters(), *model.buffers())), torch.device("cpu"))
    probs = np.full((n, n_orders, 2, steps + 1), np.nan)   # roi, order, deletion/insertion, step
    total = n * n_orders * 2 * (steps + 1)
    log.debug("perturbation curves: %d ROIs x %d orders x 2 x %d points", n, n_orders, steps + 1)

    jobs = _perturbation_jobs(attr, flat, base_t, counts, n_random=n_random, seed=seed)
    with torch.no_grad():
        _run_jobs(model, jobs, probs, total=total, batch_size=batch_size, progress=progress,
                  shape=shape, device=device, target=target)
    return _perturbation_result(probs, fractions, target=target, n_random=n_random, seed=seed)


def _check_attributions(attributions, n: int, spatial: tuple, rois_shape) -> np.ndarray:
    """*attributions* as a finite real array of shape ``(n, *spatial)``, or ``ValueError``."""
    attr = _to_numpy(attributions)
    if attr.shape != (n, *spatial):
        raise ValueError(f"attributions must have shape (N, z, y, x) = {(n, *spatial)} to match "
                         f"rois {tuple(rois_shape)}; received {attr.shape}")
    if attr.dtype.kind not in "biuf":
        raise ValueError(f"attributions must be real numbers; received dtype {attr.dtype}")
    if not np.all(np.isfinite(attr)):
        raise ValueError("attributions must be finite; received "
                         f"{int((~np.isfinite(attr)).sum())} NaN or infinite values")
    return attr


def _check_baseline(baseline, shape: tuple) -> np.ndarray:
    """*baseline* broadcast to one ROI ``shape = (C, z, y, x)`` as finite float32, or
    ``ValueError``."""
    try:
        base = np.array(np.broadcast_to(_to_numpy(baseline).astype(np.float32), shape))
    except (TypeError, ValueError):
        shape = tuple(getattr(baseline, "shape", ()))
        raise ValueError("baseline (the value a removed voxel takes) must be a float or an array "
                         f"broadcastable to one ROI {shape}; received "
                         f"{type(baseline).__name__} of shape {shape}") from None
    if not np.all(np.isfinite(base)):
        raise ValueError(f"baseline must be finite (and is required); received {baseline!r:.60}")
    return base


def _perturbation_jobs(attr: np.ndarray, flat: torch.Tensor, base_t: torch.Tensor,
                       counts: list[int], *, n_random: int, seed: int):
    """Yield (index into probs, perturbed flat ROI), one ROI at a time (bounded memory).

    The index is ``(roi, order, 0 deletion / 1 insertion, step)``; order 0 follows the
    attribution, orders 1..n_random are random permutations from the ROI's own generator.
    """
    n_voxels = flat.shape[2]
    for i in range(flat.shape[0]):
        rng = np.random.default_rng(np.random.SeedSequence([int(seed), i]))
        orders = [_voxel_order(attr[i].ravel(), rng)]
        orders += [rng.permutation(n_voxels) for _ in range(n_random)]
        for o, order in enumerate(orders):
            ranks = torch.empty(n_voxels, dtype=torch.int64)
            ranks[torch.from_numpy(order)] = torch.arange(n_voxels)   # position in order
            for s, k in enumerate(counts):
                chosen = ranks < k
                yield (i, o, 0, s), torch.where(chosen, base_t, flat[i])
                yield (i, o, 1, s), torch.where(chosen, flat[i], base_t)


def _run_jobs(model: torch.nn.Module, jobs, probs: np.ndarray, *, total: int, batch_size: int,
              progress: Progress | None, shape: tuple, device: torch.device,
              target: int) -> None:
    """Evaluate the ``total`` perturbed ROIs of *jobs* in batches of *batch_size*, filling
    *probs*; *progress* is called after each batch."""
    done, batch = 0, []
    for job in jobs:
        batch.append(job)
        if len(batch) == batch_size or done + len(batch) == total:
            _evaluate_batch(model, batch, probs, shape=shape, device=device, target=target)
            done, batch = done + len(batch), []
            if progress is not None:
                progress(done, total)


def _evaluate_batch(model: torch.nn.Module, batch, probs: np.ndarray, *, shape: tuple,
                    device: torch.device, target: int) -> None:
    """Run one batch of perturbed ROIs and store the softmax probability of *target* in
    *probs* at each job's index."""
    keys, tensors = zip(*batch)
    logits = model(torch.stack(tensors).reshape(len(tensors), *shape).to(device))
    if logits.ndim != 2 or not 0 <= target < logits.shape[1]:
        raise ValueError(f"target {target} is out of range for model output of shape "
                         f"{tuple(logits.shape)}; expected logits (N, C), 0 <= target < C")
    p = torch.softmax(logits.double(), dim=1)[:, target].cpu().numpy()
    for key, value in zip(keys, p):
        probs[key] = value


def _perturbation_result(probs: np.ndarray, fractions: np.ndarray, *, target: int,
                         n_random: int, seed: int) -> PerturbationResult:
    """Curves and areas from ``probs (N, orders, 2, steps+1)``: order 0 and the random mean."""
    n, steps1 = probs.shape[0], probs.shape[-1]
    curves, aucs = probs[:, 0], _auc(fractions, probs[:, 0])
    rand_curves = probs[:, 1:].mean(axis=1) if n_random else np.full((n, 2, steps1), np.nan)
    rand_aucs = _auc(fractions, probs[:, 1:]).mean(axis=1) if n_random else np.full((n, 2), np.nan)
    return PerturbationResult(
        fractions=_frozen(fractions),
        deletion=_frozen(curves[:, 0]), insertion=_frozen(curves[:, 1]),
        deletion_random=_frozen(rand_curves[:, 0]), insertion_random=_frozen(rand_curves[:, 1]),
        deletion_auc=_frozen(aucs[:, 0]), insertion_auc=_frozen(aucs[:, 1]),
        deletion_auc_random=_frozen(rand_aucs[:, 0]), insertion_auc_random=_frozen(rand_aucs[:, 1]),
        target=int(target), n_random=int(n_random), seed=int(seed),
    )


# -- ROAD: noisy linear imputation, most- against least-relevant first -------------------------

@dataclass(frozen=True, eq=False)
class RoadResult:
    """Deletion curves with noisy linear imputation, most- and least-relevant first (ROAD).

    All arrays are read-only float64; curves hold the softmax probability of ``target``
    (0..1) after removing the share ``fractions`` of each ROI's voxels.

    Attributes
    ----------
    fractions : ndarray, shape (steps+1,)
        As in :class:`PerturbationResult`.
    morf, lerf : ndarray, shape (N, steps+1)
        Most-relevant-first and least-relevant-first deletion (LeRF is MoRF's order reversed).
    morf_auc, lerf_auc : ndarray, shape (N,)
        Trapezoid-rule areas under them over ``fractions`` (0..1).
    gap : ndarray, shape (N,)
        ``lerf_auc - morf_auc``: the area between the two curves (-1..1).  Positive when
        removing what the map ranks highest costs the target class more than removing what it
        ranks lowest; about 0 for a map unrelated to the model.  Insertion adds nothing here:
        with an imputing eraser, revealing the top share ``f`` of the map is the same input as
        deleting the bottom ``1 - f``, so the insertion curve is the LeRF curve read backwards
        and ``gap`` is also insertion area minus deletion area.
    random : ndarray, shape (N, steps+1)
        Mean curve of the ``2 * n_random`` random orders (NaN when ``n_random`` is 0).
    random_auc : ndarray, shape (N,)
        Mean area under the random orders' curves.
    gap_random : ndarray, shape (N,)
        The gap of a random map (a random order against its reverse), mean over ``n_random``
        random maps: what the gap is worth by chance (about 0, with noise).
    fill, noise : tuple of float
        Per input channel, as used.
    target, n_random, seed : int
        The options used.
    """

    fractions: np.ndarray
    morf: np.ndarray
    lerf: np.ndarray
    morf_auc: np.ndarray
    lerf_auc: np.ndarray
    gap: np.ndarray
    random: np.ndarray
    random_auc: np.ndarray
    gap_random: np.ndarray
    fill: tuple[float, ...]
    noise: tuple[float, ...]
    target: int
    n_random: int
    seed: int


def road_curves(model: torch.nn.Module, rois, attributions, *, fill, noise,
                target: int = 1, steps: int = 20, n_random: int = 2, seed: int = 0,
                batch_size: int = 32, progress: Progress | None = None) -> RoadResult:
    """MoRF and LeRF deletion curves with noisy linear imputation (Rong et al. 2022, ROAD).

    Each ROI's voxels are removed in ``steps`` chunks of (nearly) equal size, most relevant
    first (MoRF) and least relevant first (LeRF); after each chunk the removed voxels are
    imputed from the kept ones (:func:`discovery.explain.imputation.linear_imputation`, each
    channel on its own) plus Gaussian noise, and the softmax probability of ``target`` is
    recorded.  The summary is the MoRF-LeRF gap (:attr:`RoadResult.gap`): whatever an eraser
    does to the input moves both curves, and only a map that ranks the model's evidence keeps
    them apart, whereas a deletion area against random voxel orders compares a contiguous
    eraser with a scattered one (:func:`perturbation_curves`).

    Parameters
    ----------
    model : torch.nn.Module
        Classifier returning logits ``(N, K)``, in ``eval()`` mode; never modified.
    rois : Tensor or array, shape (N, C, z, y, x)
        Preprocessed ROIs, in the network's input units.
    attributions : Tensor or array, shape (N, z, y, x)
        One map per ROI; only the order of its values matters (ties broken by a seeded
        permutation, as in :func:`perturbation_curves`).
    fill : float or sequence of C floats
        Input value of a removed region that touches no kept voxel (the wholly removed ROI at
        the last step), per channel, e.g. normalised lung parenchyma.
    noise : float or sequence of C floats
        Standard deviation of the noise added to imputed voxels, in input units (>= 0), per
        channel; every channel gets the same standard-normal field times its own ``noise``.
    target, steps, batch_size, progress
        As for :func:`perturbation_curves`; ``progress`` counts the ``N * (2 + (2 + 2 *
        n_random) * (steps - 1))`` perturbed ROIs (the unperturbed and the wholly removed ROI
        are shared by every order).
    n_random : int
        Random maps per ROI (>= 0); each gives a random order and its reverse.
    seed : int
        Per ROI, three generators from ``(seed, ROI index, k)``: k = 0 breaks ties, k = 1
        draws the random orders, k = 2 the noise.  The noise field of a step is the same for
        every order (a paired comparison), and neither the random orders nor the noise depend
        on the map: calls with the same ROIs and seed have the same random control.

    Returns
    -------
    RoadResult
    """
    rois, attr, counts = _check_curve_inputs(model, rois, attributions, steps=steps,
                                             n_random=n_random, batch_size=batch_size)
    n, shape = int(rois.shape[0]), tuple(int(s) for s in rois.shape[1:])
    fill_c, noise_c = _per_channel("fill", fill, shape[0]), _per_channel("noise", noise, shape[0])
    if np.any(noise_c < 0):
        raise ValueError(f"noise must be a standard deviation >= 0; received {noise!r}")
    n_voxels = int(np.prod(shape[1:]))
    n_orders = 2 + 2 * n_random
    probs = np.full((n, n_orders, steps + 1), np.nan)
    total = n * (2 + n_orders * (steps - 1))
    device = next((t.device for t in (*model.parameters(), *model.buffers())), torch.device("cpu"))
    jobs = _road_jobs(rois.to(dtype=torch.float32, device="cpu").numpy(), attr, counts,
                      fill=fill_c, noise=noise_c, n_random=n_random, seed=seed)
    with torch.no_grad():
        _run_jobs(model, jobs, probs, total=total, batch_size=batch_size, progress=progress,
                  shape=shape, device=device, target=target)
    probs[:, 1:, 0], probs[:, 1:, -1] = probs[:, :1, 0], probs[:, :1, -1]   # shared points
    return _road_result(probs, np.array(counts, dtype=np.float64) / n_voxels,
                        fill=tuple(fill_c.tolist()), noise=tuple(noise_c.tolist()),
                        target=target, n_random=n_random, seed=seed)


def _check_curve_inputs(model, rois, attributions, *, steps, n_random, batch_size):
    """Validated ``(rois, attributions, counts)`` for a deletion-curve run.

    ``counts[i]`` is the number of voxels removed after chunk *i* (``steps + 1`` entries, from
    0 to every voxel of the ROI grid).
    """
    _check_eval(model)
    rois = _as_rois(rois)
    n, shape = int(rois.shape[0]), tuple(int(s) for s in rois.shape[1:])
    attr = _check_attributions(attributions, n, shape[1:], rois.shape)
    check_int("steps", steps, 1)
    check_int("n_random", n_random, 0)
    check_int("batch_size", batch_size, 1)
    n_voxels = int(np.prod(shape[1:]))
    return rois, attr, [(i * n_voxels) // steps for i in range(steps + 1)]


def _per_channel(name: str, value, n_channels: int) -> np.ndarray:
    """*value* (a number or one per channel) as finite float64 ``(n_channels,)``."""
    try:
        out = np.broadcast_to(np.asarray(value, dtype=np.float64).ravel(), (n_channels,))
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number or one per input channel ({n_channels}); "
                         f"received {value!r:.60}") from None
    if not np.all(np.isfinite(out)):
        raise ValueError(f"{name} must be finite; received {value!r:.60}")
    return np.array(out)


def _road_jobs(rois: np.ndarray, attr: np.ndarray, counts: list[int], *, fill: np.ndarray,
               noise: np.ndarray, n_random: int, seed: int):
    """Yield ``((roi, order, step), perturbed ROI (C, z, y, x))``, one ROI and order at a time.

    Orders: 0 MoRF, 1 LeRF, then each random order followed by its reverse.  Step 0 (the
    ROI) and the last step (all removed) are yielded for order 0 only."""
    steps, (n_ch, *spatial) = len(counts) - 1, rois.shape[1:]
    n_voxels, inner = int(np.prod(spatial)), max(steps - 1, 0)
    scale, fill_b = noise.reshape(1, -1, 1, 1, 1), np.tile(fill, inner)
    for i, roi in enumerate(rois):
        gens = [np.random.default_rng(np.random.SeedSequence([int(seed), i, k])) for k in range(3)]
        morf = _voxel_order(attr[i].ravel(), gens[0])
        orders = [morf, morf[::-1]]
        for _ in range(n_random):
            perm = gens[1].permutation(n_voxels)
            orders += [perm, perm[::-1]]
        fields = gens[2].standard_normal((steps + 1, 1, *spatial)) * scale   # (steps+1, C, ...)
        yield (i, 0, 0), torch.from_numpy(roi.copy())
        last = fill.reshape(-1, 1, 1, 1) + fields[steps]
        yield (i, 0, steps), torch.from_numpy(last.astype(np.float32))
        for o, order in enumerate(orders if inner else []):
            ranks = np.empty(n_voxels, dtype=np.int64)
            ranks[order] = np.arange(n_voxels)
            removed = (ranks[None] < np.array(counts[1:-1])[:, None]).reshape(inner, 1, *spatial)
            removed = np.broadcast_to(removed, (inner, n_ch, *spatial))
            imputed = linear_imputation(np.broadcast_to(roi, removed.shape).reshape(-1, *spatial),
                                        removed.reshape(-1, *spatial), fill=fill_b)
            imputed = imputed.reshape(removed.shape) + np.where(removed, fields[1:-1], 0.0)
            for s in range(1, steps):
                yield (i, o, s), torch.from_numpy(imputed[s - 1].astype(np.float32))


def _road_result(probs: np.ndarray, fractions: np.ndarray, *, fill: tuple, noise: tuple,
                 target: int, n_random: int, seed: int) -> RoadResult:
    """A :class:`RoadResult` from ``probs (N, 2 + 2 n_random, steps+1)``."""
    aucs = _auc(fractions, probs)                                  # (N, orders)
    n = probs.shape[0]
    if n_random:
        rand_curve, rand_auc = probs[:, 2:].mean(axis=1), aucs[:, 2:].mean(axis=1)
        gap_random = (aucs[:, 3::2] - aucs[:, 2::2]).mean(axis=1)
    else:
        rand_curve = np.full((n, probs.shape[2]), np.nan)
        rand_auc = gap_random = np.full(n, np.nan)
    return RoadResult(
        fractions=_frozen(fractions), morf=_frozen(probs[:, 0]), lerf=_frozen(probs[:, 1]),
        morf_auc=_frozen(aucs[:, 0]), lerf_auc=_frozen(aucs[:, 1]),
        gap=_frozen(aucs[:, 1] - aucs[:, 0]), random=_frozen(rand_curve),
        random_auc=_frozen(rand_auc), gap_random=_frozen(gap_random), fill=fill, noise=noise,
        target=int(target), n_random=int(n_random), seed=int(seed))


# -- model-parameter randomisation ------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class RandomizationResult:
    """Rank correlation between original and cascading-randomised attribution maps.

    Step ``k`` (0-based) has modules ``steps[0], ..., steps[k]`` randomised: randomisation is
    cumulative, and ``steps`` names the module *added* at each step.

    Attributes
    ----------
    steps : tuple of str, length n_steps
        Module randomised at each step (dotted names), in order.
    spearman : ndarray, shape (n_steps, N), float64, read-only
        Spearman rank correlation (dimensionless, -1..1) between each ROI's original map and
        its map after the step, over all voxels.  NaN where either map is constant (e.g. an
        all-zero Grad-CAM: a rank correlation is undefined there, and NaN keeps it from being
        read as "unchanged" or as "decorrelated") or holds non-finite values.
    mean_spearman : ndarray, shape (n_steps,), float64, read-only
        Mean over ROIs ignoring NaN (NaN where every ROI is NaN).
    n_constant : ndarray, shape (n_steps,), int64, read-only
        ROIs whose original or randomised map is constant at that step.
    method, layer, target, seed
        The options used (``layer`` None: the model's ``cam_layer``).
    """

    steps: tuple[str, ...]
    spearman: np.ndarray
    mean_spearman: np.ndarray
    n_constant: np.ndarray
    method: str
    layer: str | None
    target: int
    seed: int

    def as_rows(self) -> list[dict]:
        """One dict per step for a table: ``step`` (1-based), ``module``, ``randomised``
        (cumulative, joined by "+"), ``mean_spearman``, ``n_rois``, ``n_constant``."""
        return [
            {"step": k + 1, "module": name, "randomised": "+".join(self.steps[: k + 1]),
             "mean_spearman": float(self.mean_spearman[k]), "n_rois": int(self.spearman.shape[1]),
             "n_constant": int(self.n_constant[k])}
            for k, name in enumerate(self.steps)
        ]


def _randomise_module(module: torch.nn.Module, gen: torch.Generator) -> None:
    """Re-draw every parameter of *module* (recursively) in place from *gen*.

    * Weights with >= 2 dims (conv, linear): N(0, s), s = the tensor's original standard
      deviation, so activations keep their scale; Kaiming-normal s = sqrt(2 / fan_in) if s = 0.
    * Vectors (biases, norm-layer weight and bias): N(m, s) with the tensor's original mean
      and std, so a BatchNorm scale stays near its level but its per-channel pattern is gone.
      A constant vector (e.g. an untrained BatchNorm's ones and zeros) stays as it is, which
      is what re-initialising it would give.
    * Norm layers' running mean and variance: reset to 0 and 1 (the learned statistics of the
      layers below are meaningless once those are random).
    """
    with torch.no_grad():
        for sub in module.modules():
            for param in sub.parameters(recurse=False):
                if not torch.is_floating_point(param) or param.numel() == 0:
                    continue
                orig = param.detach().double()
                std = float(orig.std(unbiased=False))
                draw = torch.randn(param.shape, generator=gen, dtype=torch.float64)
                if param.ndim >= 2:                     # Kaiming fallback: sqrt(2 / fan_in)
                    new = draw * (std if std > 0 else (2.0 / max(param[0].numel(), 1)) ** 0.5)
                else:
                    new = draw * std + float(orig.mean())
                param.copy_(new.to(dtype=param.dtype, device=param.device))
            if isinstance(sub, torch.nn.modules.batchnorm._NormBase) and sub.track_running_stats:
                sub.reset_running_stats()


def _spearman(a: np.ndarray, b: np.ndarray) -> tuple[float, bool]:
    """(rho, constant) for two maps; rho is NaN for constant or non-finite maps."""
    a, b = a.ravel(), b.ravel()
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        log.warning("non-finite attribution values; Spearman correlation set to NaN")
        return float("nan"), False
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan"), True
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(stats.spearmanr(a, b).statistic), False


def randomization_test(model: torch.nn.Module, rois, *, method: str = "gradcam",
                       layer: str | None = None, target: int = 1, seed: int = 0,
                       order: Sequence[str] | None = None, batch_size: int = 32,
                       progress: Progress | None = None) -> RandomizationResult:
    """Cascading model-parameter randomisation test (Adebayo et al. 2018).

    The maps of the original model are compared with the maps after randomising the modules
    in ``order`` one after another, cumulatively (step ``k`` has ``order[:k+1]`` random).

    Parameters
    ----------
    model : torch.nn.Module
        Classifier in ``eval()`` mode (ValueError otherwise).  Only a ``copy.deepcopy`` is
        randomised; the caller's model stays bit-identical.
    rois : Tensor or array, shape (N, 1, z, y, x)
        Preprocessed ROIs.
    method, layer, target
        Passed unchanged to :func:`discovery.explain.methods.explain` (any method it offers).
    seed : int
        Seeds the ``torch.Generator`` that draws all new parameters (global RNGs untouched;
        see :func:`_randomise_module` for the distributions): same seed, same result.
    order : sequence of str, optional
        Dotted module names to randomise in turn.  Default: the model's top-level children
        that own parameters, from the output end back to the input (``named_children()``
        reversed; for :class:`~discovery.model.card.NoduleResNet`: fc, layer4, layer3, layer2,
        layer1, bn1, conv1); a wrapper holding the network in one child is looked through
        (``net.fc``, ``net.layer4``, ... for a model people bring).
    batch_size : int
        ROIs per :func:`explain` call (>= 1), to bound memory for large N.
    progress : callable(done, total), optional
        Called after each explained model (the original, then each step);
        ``total = len(order) + 1``.

    Returns
    -------
    RandomizationResult

    Notes
    -----
    The correlation is signed (Grad-CAM maps are non-negative); for signed attribution
    methods a caller may prefer ``abs(spearman)``, as Adebayo et al. show for gradients.
    """
    _check_eval(model)
    rois = _as_rois(rois)
    check_int("batch_size", batch_size, 1)
    names = _randomisation_order(model, order)

    work = copy.deepcopy(model)
    work_modules = dict(work.named_modules())

    def maps() -> np.ndarray:
        return np.concatenate([explain(work, rois[i:i + batch_size], method=method, layer=layer,
                                       target=target) for i in range(0, len(rois), batch_size)])

    total = len(names) + 1
    original = maps()
    if progress is not None:
        progress(1, total)
    gen = torch.Generator().manual_seed(int(seed))
    n = original.shape[0]
    spearman = np.full((len(names), n), np.nan)
    n_constant = np.zeros(len(names), dtype=np.int64)
    for k, name in enumerate(names):
        _randomise_module(work_modules[name], gen)
        randomised = maps()
        for i in range(n):
            spearman[k, i], constant = _spearman(original[i], randomised[i])
            n_constant[k] += constant
        log.debug("randomisation step %d (%s): %d of %d maps constant",
                  k + 1, name, n_constant[k], n)
        if progress is not None:
            progress(k + 2, total)
    with warnings.catch_warnings():                      # all-NaN rows: NaN, no warning
        warnings.simplefilter("ignore", RuntimeWarning)
        mean = np.nanmean(spearman, axis=1)
    return RandomizationResult(steps=tuple(names), spearman=_frozen(spearman),
                               mean_spearman=_frozen(mean), n_constant=_frozen(n_constant),
                               method=method, layer=layer, target=int(target), seed=int(seed))


def _default_order(model: torch.nn.Module) -> list[str]:
    """The children with parameters, output end first; a wrapper whose parameters all sit in
    one child (a model people bring, contained in
    :class:`~discovery.model.probe.ExternalClassifier` as ``net``) is looked through, so the
    cascade randomises the network's own stages (``net.fc``, ``net.layer4``, ...)."""
    prefix, node = "", model
    while True:
        owners = [(n, c) for n, c in node.named_children() if any(True for _ in c.parameters())]
        if len(owners) != 1 or not any(True for _ in owners[0][1].children()):
            break
        prefix, node = f"{prefix}{owners[0][0]}.", owners[0][1]
    return [prefix + name for name, child in reversed(list(node.named_children()))
            if any(True for _ in child.parameters())]


def _randomisation_order(model: torch.nn.Module, order) -> list[str]:
    """The module names to randomise in turn: *order* checked against *model*, or by default
    its top-level children with parameters from the output end back; ``ValueError`` /
    ``TypeError`` otherwise."""
    if isinstance(order, str):
        raise TypeError(f"order must be a sequence of module names, not a string; "
                        f"received {order!r}")
    modules = dict(model.named_modules())
    names = list(order) if order is not None else _default_order(model)
    if not names:
        raise ValueError("order must name at least one module to randomise (by default the "
                         f"top-level modules with parameters); received {order!r}")
    for name in names:
        if name == "" or name not in modules:
            tops = ", ".join(n for n in modules if n and "." not in n)
            raise ValueError(f"order names {name!r}, which is not a module of the model; "
                             f"top-level modules are: {tops}")
        if not any(True for _ in modules[name].parameters()):
            raise ValueError(f"module {name!r} in order has no parameters to randomise")
    if len(set(names)) != len(names):
        raise ValueError(f"order names a module twice; received {names}")
    return names
