"""``discovery sanity``: are the maps faithful to the model that made them?

Runs, on the annotated nodules of a scored results folder (or of a cohort folder):

* the cascading model-parameter randomisation test (Adebayo et al. 2018) for each method in
  ``randomise``: Spearman correlation between the original and the randomised maps after
  each module is re-drawn, from the output end back to the input, averaged over
  ``n_draws`` independent re-draws;
* two faithfulness measures for each method in ``methods``, per nodule:

  - the old one, kept for comparison: deletion and insertion curves (Petsiuk et al. 2018)
    with removed voxels set to lung parenchyma (:data:`BASELINE_HU`; not 0, which is air
    under the HU window), against random voxel orders;
  - the new one, which decides: ROAD (Rong et al. 2022), removed voxels imputed from their
    neighbours plus :data:`NOISE_HU` of noise, most relevant first against least relevant
    first, summarised by the MoRF-LeRF gap (:func:`discovery.explain.faithfulness.road_curves`)
    and judged by the rule of :mod:`discovery.explain.faithfulness_rule`.

  Why the old one misleads: setting scattered voxels to a constant leaves speckle, and on the
  demo model speckle alone removes the malignant prediction, so a random voxel order "deletes"
  faster than any map and "inserts" slower; the gap compares a map with its own reverse under
  the same eraser.

The summaries are written to the results store (``sanity_randomization``,
``sanity_perturbation``) and shown in the report.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from data_tools.cases import discover_cases, load_case
from data_tools.volume import Mask, Volume
from discovery.explain.faithfulness import (
    perturbation_curves,
    randomization_test,
    road_curves,
)
from discovery.explain.methods import (
    METHODS,
    method_layer,
    predict_and_explain,
)
from discovery.model.card import ModelCard
from discovery.model.external import load_any_model
from discovery.model.rois import extract_roi, network_input, nodule_sites
from discovery.store.tables import (
    DB_NAME,
    PERTURBATION_COLUMNS,
    RANDOMIZATION_COLUMNS,
    ResultsStore,
    load_case_arrays,
)

__all__ = ["BASELINE_HU", "NOISE_HU", "SanitySummary", "run_sanity"]

log = logging.getLogger(__name__)

#: HU given to deleted (or not yet inserted) voxels by the constant eraser, and to a wholly
#: removed ROI by the imputing one: aerated lung parenchyma.
BASELINE_HU = -850.0
#: Standard deviation of the noise added to imputed voxels, in HU: about the voxel noise of
#: the demo scans' lung parenchyma (19 HU measured on the demo cohort's ROIs).
NOISE_HU = 20.0


@dataclass(frozen=True)
class SanitySummary:
    """What ``discovery sanity`` measured.  ``randomization`` and ``perturbation`` hold the
    rows written to the store; :func:`discovery.store.tables.sanity_summary` turns them into
    one line per method."""

    n_nodules: int
    randomization: pd.DataFrame
    perturbation: pd.DataFrame


def _nodule_rois(volume: Volume, mask: Mask, card: ModelCard, case_id: str):
    for site in nodule_sites(mask):
        roi = extract_roi(volume, site.center_zyx, size_vox=card.roi_size_vox,
                          spacing_mm=card.roi_spacing_mm)
        yield (case_id, site.nodule_id), network_input(roi.hu, card)


def _scored_with(results_dir: Path, card: ModelCard) -> dict[str, str]:
    """``{method: layer}`` of the maps a results folder was scored with (empty when its meta
    does not say); ValueError when it was scored with another model than *card*'s."""
    store = ResultsStore(results_dir, create=False)
    try:
        meta = store.meta()
    finally:
        store.close()
    if meta.get("model_sha256") not in (None, card.weights_sha256):
        raise ValueError(
            "the results were scored with another model (weights SHA-256 "
            f"{str(meta.get('model_sha256'))[:12]}...); pass that model with --model")
    method, layer = meta.get("method"), meta.get("gradcam_layer")
    return {str(method): str(layer)} if method and layer else {}


def _rois_from_results(results_dir: Path, card: ModelCard):
    store = ResultsStore(results_dir, create=False)
    try:
        case_ids = store.query("SELECT case_id FROM cases WHERE status = 'ok' ORDER BY case_id")["case_id"]
    finally:
        store.close()
    for case_id in case_ids:
        arrays = load_case_arrays(results_dir, case_id)
        volume = Volume(arrays["ct"].astype(np.float32), arrays["affine"])
        yield from _nodule_rois(volume, Mask(arrays["mask"], arrays["affine"]), card, case_id)


def _rois_from_cohort(cohort: Path, card: ModelCard):
    for spec in discover_cases(cohort):
        volume, mask = load_case(spec)
        if mask is not None:
            yield from _nodule_rois(volume, mask, card, spec.case_id)


def run_sanity(
    source: str | Path,
    *,
    results_dir: str | Path | None = None,
    model_dir: str | Path | None = None,
    methods: Sequence[str] = METHODS,
    randomise: Sequence[str] | None = None,
    steps: int = 20,
    n_random: int = 3,
    n_random_road: int = 2,
    n_draws: int = 5,
    seed: int = 0,
    max_nodules: int | None = None,
    layer: str | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> SanitySummary:
    """Randomisation test and both faithfulness measures for every annotated nodule.

    Parameters
    ----------
    source : path
        A results folder written by ``discovery score`` (ROIs are re-extracted from the CT and
        mask stored there) or a cohort folder the loaders read.
    results_dir : path, optional
        Store to write to; default *source* when it is a results folder (required otherwise).
    model_dir : path or str, optional
        The model the results were scored with: anything
        :func:`discovery.model.external.load_any_model` loads (the tool's model folder, a
        MONAI bundle, a TorchScript file, a module folder); default the demo model.  A model
        other than the results' (weights SHA-256) is refused.
    methods, randomise : sequences of str
        Methods for the faithfulness measures and for the randomisation test (*randomise*
        None: Grad-CAM and, on a results folder, the method it was scored with).
    steps, n_random, seed
        Passed to :func:`discovery.explain.faithfulness.perturbation_curves` (``steps`` and
        ``seed`` also to :func:`~discovery.explain.faithfulness.road_curves`).
    n_random_road : int
        Random maps (each a random order and its reverse) for the ROAD control.  Both random
        controls are measured once and shared by every method: they do not depend on the map.
    n_draws : int
        Independent random re-draws of the weights (seeds ``seed .. seed + n_draws - 1``).
        One draw is a noisy estimate: on the demo cohort the fully randomised Grad-CAM's mean
        Spearman ranged from -0.11 to 0.32 over eight draws.  The stored ``mean_spearman`` is
        the mean over every (draw, ROI) pair with a defined correlation; ``n_constant``
        counts the pairs where a map was constant (e.g. all zero), for which it is undefined.
    max_nodules : int, optional
        Check at most this many nodules, drawn at random (seeded by ``seed``) and kept in
        their stored order; all of them when omitted.  The checks grow linearly with the
        nodules.
    layer : str, optional
        The CAM layer for every method (``"fine+coarse"`` for the fused ones; see
        :func:`discovery.explain.methods.predict_and_explain`).  Default: the model card's,
        except for the method a results folder was scored with, which is checked at the
        layer it was scored with (its meta ``method`` and ``gradcam_layer``): the maps the
        results show.  Recorded in every row's ``layer``.  A layer the model does not have,
        or a single layer with a fused method, raises ValueError before anything is computed.
    progress : callable(stage, done, total), optional
    """
    source = Path(source)
    is_results, results_dir = _check_options(source, results_dir, methods, randomise or (),
                                             max_nodules)
    model, card = load_any_model(model_dir)
    scored = _scored_with(source, card) if is_results else {}   # another model: refused
    layers, randomise = _maps_checked(scored, model, methods, randomise, layer)
    keys, rois = _sample_rois(source, is_results, card, max_nodules, seed)
    ran_rows = [row for method in randomise
                for row in _randomisation_rows(model, rois, method, n_draws, seed, progress,
                                               layer=layers[method])]
    per_rows = _perturbation_rows(model, card, keys, rois, methods, layers=layers, steps=steps,
                                  n_random=n_random, n_random_road=n_random_road, seed=seed,
                                  progress=progress)
    store = ResultsStore(results_dir)
    try:
        store.set_sanity(ran_rows, per_rows)
    finally:
        store.close()
    return SanitySummary(len(keys), pd.DataFrame(ran_rows, columns=RANDOMIZATION_COLUMNS),
                         pd.DataFrame(per_rows, columns=PERTURBATION_COLUMNS))


def _maps_checked(scored: dict[str, str], model, methods: Sequence[str],
                  randomise: Sequence[str] | None, layer: str | None):
    """``({method: layer}, randomise)``: the layer of each method checked (the method the
    results were scored with, *scored* (:func:`_scored_with`), at its layer, unless *layer*
    is given) and the methods randomised (None: Grad-CAM and that method); ValueError for a
    layer a method cannot use."""
    in_use = scored if layer is None else {}
    if randomise is None:
        randomise = tuple(dict.fromkeys(["gradcam", *scored]))
    layers = {m: in_use.get(m, layer) for m in dict.fromkeys(list(methods) + list(randomise))}
    for m, m_layer in layers.items():
        method_layer(model, m, m_layer)                # ValueError for a layer it cannot use
    return layers, randomise


def _check_options(source: Path, results_dir, methods, randomise, max_nodules
                   ) -> tuple[bool, Path]:
    """``(source is a results folder, the results folder to write to)``; ValueError for a
    bad option."""
    if max_nodules is not None and (isinstance(max_nodules, bool) or not isinstance(
            max_nodules, (int, np.integer)) or max_nodules < 1):
        raise ValueError(f"max_nodules must be a positive integer or None; received {max_nodules!r}")
    is_results = (source / DB_NAME).is_file()
    if results_dir is None:
        if not is_results:
            raise ValueError(f"{source.name!r} is not a results folder (no {DB_NAME}); "
                             "pass --out RESULTS to say where the sanity tables go")
        results_dir = source
    for m in list(methods) + list(randomise):
        if m not in METHODS:
            raise ValueError(f"unknown attribution method {m!r}; available: {', '.join(METHODS)}")
    return is_results, Path(results_dir)


def _sample_rois(source: Path, is_results: bool, card: ModelCard, max_nodules: int | None,
                 seed: int) -> tuple[list[tuple[str, str]], torch.Tensor]:
    """The ``(case_id, nodule_id)`` keys and the network inputs ``(n, C, z, y, x)`` of the
    nodules checked (at most *max_nodules*, drawn with *seed*, in their stored order)."""
    pairs = list(_rois_from_results(source, card) if is_results else _rois_from_cohort(source, card))
    if not pairs:
        raise ValueError("no annotated nodules found: the sanity checks need nodules with masks")
    if max_nodules is not None and len(pairs) > max_nodules:
        keep = np.sort(np.random.default_rng(seed).choice(len(pairs), max_nodules, replace=False))
        pairs = [pairs[i] for i in keep]
    keys = [k for k, _ in pairs]
    rois = torch.from_numpy(np.stack([r for _, r in pairs]).astype(np.float32))
    return keys, rois


def _randomisation_rows(model, rois: torch.Tensor, method: str, n_draws: int, seed: int,
                        progress, *, layer: str | None = None) -> list[dict]:
    """The cascading randomisation test of *method*, one row per step, averaged over
    *n_draws* re-draws (seeds ``seed ..``)."""
    if progress:
        progress(f"randomisation ({method})", 0, n_draws)
    draws = []
    for d in range(n_draws):
        draws.append(randomization_test(model, rois, method=method, layer=layer, target=1,
                                        seed=seed + d))
        if progress:
            progress(f"randomisation ({method})", d + 1, n_draws)
    used = method_layer(model, method, layer)
    rho = np.stack([r.spearman for r in draws])              # (draws, steps, rois)
    n_constant = np.sum([r.n_constant for r in draws], axis=0)
    rows = []
    for k, row in enumerate(draws[0].as_rows()):
        finite = rho[:, k][np.isfinite(rho[:, k])]
        rows.append({**row, "method": method, "layer": used, "n_draws": n_draws,
                     "n_constant": int(n_constant[k]),
                     "mean_spearman": float(finite.mean()) if finite.size else float("nan")})
    return rows


def _stage(progress, stage: str):
    """``progress(stage, done, total)`` as the ``progress(done, total)`` of one stage."""
    return None if progress is None else (lambda done, total: progress(stage, done, total))


def _perturbation_rows(model, card: ModelCard, keys: list[tuple[str, str]], rois: torch.Tensor,
                       methods: Sequence[str], *, steps: int, n_random: int, n_random_road: int,
                       seed: int, progress, layers: dict[str, str | None] | None = None
                       ) -> list[dict]:
    """Both faithfulness measures of each method (at its layer in *layers*; the model
    card's when absent or None), one row per nodule and method.

    The random controls depend only on the ROIs and the seed (the random orders are drawn per
    ROI from ``(seed, ROI index)``, never from the map), so they are measured with the first
    method and copied to the others: the same numbers, at a fraction of the cost."""
    base = network_input(np.array(BASELINE_HU), card)  # (C,): -850 HU in each channel
    baseline = float(base[0]) if base.size == 1 else base.reshape(-1, 1, 1, 1)
    noise = [NOISE_HU / (hi - lo) for lo, hi in card.windows]   # 20 HU in each channel's units
    rows: list[dict] = []
    old_random = road_random = None
    for i, method in enumerate(methods):
        if progress:
            progress(f"faithfulness ({method})", i, len(methods))
        layer_m = (layers or {}).get(method)
        used = method_layer(model, method, layer_m)
        maps, probs = [], []
        for start in range(0, len(rois), 16):
            p, a, _ = predict_and_explain(model, rois[start:start + 16], method=method,
                                          layer=layer_m, target=1)
            maps.append(a)
            probs.append(p[:, 1])
        maps = np.concatenate(maps)
        old = perturbation_curves(model, rois, maps, baseline=baseline, target=1, steps=steps,
                                  n_random=0 if old_random else n_random, seed=seed,
                                  progress=_stage(progress, f"deletion/insertion ({method})"))
        road = road_curves(model, rois, maps, fill=base.ravel().tolist(), noise=noise, target=1,
                           steps=steps, n_random=0 if road_random else n_random_road, seed=seed,
                           progress=_stage(progress, f"MoRF/LeRF, imputed ({method})"))
        old_random = old_random or (old.deletion_auc_random, old.insertion_auc_random)
        road_random = road_random or (road.random_auc, road.gap_random)
        for j, ((case_id, nodule_id), p1) in enumerate(zip(keys, np.concatenate(probs))):
            rows.append({
                "case_id": case_id, "nodule_id": nodule_id, "method": method, "layer": used,
                "probability": float(p1), "predicted_label": int(p1 >= card.threshold),
                "deletion_auc": float(old.deletion_auc[j]),
                "deletion_auc_random": float(old_random[0][j]),
                "insertion_auc": float(old.insertion_auc[j]),
                "insertion_auc_random": float(old_random[1][j]),
                "road_morf_auc": float(road.morf_auc[j]), "road_lerf_auc": float(road.lerf_auc[j]),
                "road_gap": float(road.gap[j]), "road_random_auc": float(road_random[0][j]),
                "road_gap_random": float(road_random[1][j]),
            })
    return rows
