"""Fit a model's verdict rule on a cohort of its own: ``discovery model calibrate``.

A verdict should say whether the prediction rests on the nodule; whether it does is measured
per nodule by replacing the nodule with parenchyma and scoring again
(:mod:`discovery.model.reliance`).  The verdict rule (:mod:`discovery.align.rule`) reads a
map and the prediction and is fitted, per model, to that measure on calibration scans.
Calibrating needs scans with nodule masks, not labels: the measure is the model's own
behaviour.  The scans should be of the kind the model will score (the same scanners and
nodules) and not the scans it will be judged on.

:func:`verdict_examples` gives, for one analysed scan, the rule's features and the measured
answer of each predicted-malignant nodule; :func:`fit_calibrated_rule` fits the rule to such
examples (:func:`discovery.align.rule.fit_verdict_rule`) and measures it on them;
:func:`calibrate_verdicts` reads folders of cases and does both; :func:`save_verdict_rule`
writes the rule where the model keeps it: the tool's model folders in their card, models from
elsewhere (MONAI bundles, TorchScript, module folders) in their ``discovery.json`` sidecar,
bound to their weights.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from contextlib import closing
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from data_tools.cases import discover_cases, read_case
from data_tools.memory import DEFAULT_MAX_BYTES
from data_tools.errors import DataError, safe_error
from data_tools.volume import Mask, Volume
from discovery.align.metrics import verdict_agreement
from discovery.align.rule import VerdictRule, fit_verdict_rule, verdict_features
from discovery.model.card import ModelCard, save_card
from discovery.model.external import sidecar_path, write_sidecar_rule
from discovery.parallel import ordered_map
from discovery.pipeline import ScoreSettings, analyze_scan
from discovery.schema import parse_map

__all__ = ["DEFAULT_RULE_FEATURES", "STOP_NONE_RESTING", "Calibration", "verdict_examples",
           "none_resting", "fit_calibrated_rule", "calibrate_verdicts", "save_verdict_rule"]

log = logging.getLogger(__name__)

#: The features of the demo model's rule, chosen before any search that saw the demo cohort
#: (docs/method/metrics-and-verdicts.md#richer-rules): the map's mass on the nodule, the
#: prediction's logit, the map's contrast against its surroundings and its share within 5 mm.
DEFAULT_RULE_FEATURES = ("log_mass_on_nodule", "logit", "log_contrast", "near_share_5mm")
#: :func:`calibrate_verdicts` stops reading cases once this many predicted-malignant nodules
#: were measured and none of them rests on its nodule (:func:`none_resting`).
STOP_NONE_RESTING = 30


def none_resting(rests: Sequence[bool], *, after: int = STOP_NONE_RESTING) -> bool:
    """Whether a calibration can stop: at least *after* predicted-malignant nodules measured
    and none resting on its nodule.

    With 30 such nodules and none resting, the share of the model's malignant calls that
    rest on the nodule is below 10 % with 95 % confidence (the rule of three, 3 / 30): the
    model decides on something else (a shortcut, in the discovery benchmark's shortcut
    models: 0 of 128-169 calibration nodules), and reading the other cases would at most
    give a rule a handful of nodules of one of its two kinds.
    """
    if after < 1:
        raise ValueError(f"after must be at least 1; received {after!r}")
    return len(rests) >= after and not any(rests)


def verdict_examples(volume: Volume, mask: Mask, model, card, *, case_id: str,
                     method: str = "layercam", layer: str | None = None
                     ) -> list[tuple[dict[str, float], bool]]:
    """The calibration examples of one scan: ``(features, rests)`` per predicted-malignant
    nodule whose reliance was measured and whose map is not empty.

    Parameters
    ----------
    volume, mask : Volume, Mask
        The scan (HU) and its nodule labels, on one grid.
    model, card :
        As :func:`discovery.pipeline.analyze_scan` takes them; the card's own verdict rule is
        not applied (the examples are what a rule is fitted to).
    case_id : str
        Pseudonymous id (used in logs only).
    method, layer : str, str or None
        The map the features are read from (default LayerCAM at the card's CAM layer).

    Returns
    -------
    list of (dict, bool)
        :func:`discovery.align.rule.verdict_features` of the nodule's map on its ROI box,
        and whether the prediction rests on the nodule (``rests_on_nodule >= 0.5``).
    """
    settings = ScoreSettings(method=method, layer=layer, verdict_rule=False)
    result = analyze_scan(volume, mask, model, card, case_id=case_id, settings=settings)
    out = []
    for nod in result.nodules:
        rests = nod.reliance.rests_on_nodule
        if nod.predicted_label != 1 or not np.isfinite(rests):
            continue
        own = mask.array[nod.box] == nod.site.label
        if not own.any() or not float(nod.attribution.sum()) > 0:
            continue
        out.append((verdict_features(nod.attribution, own, spacing_mm=volume.spacing_mm,
                                     probability=nod.probability), bool(rests >= 0.5)))
    return out


@dataclass(frozen=True)
class Calibration:
    """What :func:`calibrate_verdicts` fitted and on what.

    Attributes
    ----------
    rule : VerdictRule
        With its provenance (cases, nodules, how many rest on the nodule, the balanced
        accuracy on the calibration nodules themselves).
    n_cases, n_nodules, n_resting : int
        Cases used; predicted-malignant nodules with a measured reliance; those resting on
        the nodule.
    agreement : float
        Balanced accuracy of the rule on the calibration nodules (in-sample: a cohort it
        never saw gives the honest figure).
    skipped : list of (str, str)
        Cases not used and why (no mask, unreadable), by pseudonymous id.
    """

    rule: VerdictRule
    n_cases: int
    n_nodules: int
    n_resting: int
    agreement: float
    skipped: list[tuple[str, str]] = field(default_factory=list)


def fit_calibrated_rule(values: Sequence[dict[str, float]], rests: Sequence[bool], *,
                        n_cases: int, features: Sequence[str], method: str,
                        layer: str | None, how: str) -> tuple[VerdictRule, float]:
    """Fit the rule to calibration examples (:func:`verdict_examples` of *n_cases* cases) and
    measure it on them: ``(rule, balanced accuracy in-sample)``, the rule's provenance
    saying where it was fitted (*how*: by what).

    Raises
    ------
    ValueError
        Examples of one kind only, with what that means (none resting on the nodule: the
        model's calls rest on something else, e.g. a shortcut).
    """
    y = np.asarray(rests, dtype=bool)
    if len(y) and not y.any():
        raise ValueError(
            f"none of the {len(y)} predicted-malignant nodules of these {n_cases} cases rests "
            "on its nodule (replacing the nodule never takes away half of P(malignant)): the "
            "model decides on something else, a shortcut for instance (see the shortcut panel "
            "and the flag). A rule needs nodules of both kinds; the model's card or sidecar is "
            "left as it was")
    if len(y) and y.all():
        raise ValueError(
            f"all {len(y)} predicted-malignant nodules of these {n_cases} cases rest on their "
            "nodule: there is nothing for a rule to tell apart; the model's card or sidecar is "
            "left as it was")
    rule = fit_verdict_rule(values, y, features=features, method=method, layer=layer)
    calls = np.array(["aligned" if rule.aligned(v) else "not" for v in values], dtype=object)
    agreement = float(verdict_agreement(calls, y.astype(float), np.ones(len(y))).balanced_accuracy)
    rule = replace(rule, provenance={
        "fitted_on": f"{n_cases} cases", "cases": n_cases, "nodules": len(y),
        "resting_on_nodule": int(y.sum()), "balanced_accuracy": round(agreement, 4),
        "how": how})
    return rule, agreement


def calibrate_verdicts(input_path, model, card, *, method: str = "layercam",
                       layer: str | None = None,
                       features: Sequence[str] = DEFAULT_RULE_FEATURES, layout: str = "auto",
                       max_cases: int | None = None, max_bytes: int | None = DEFAULT_MAX_BYTES,
                       stop_none_resting: int | None = STOP_NONE_RESTING, workers: int = 1,
                       progress: Callable[[int, int, str], None] | None = None) -> Calibration:
    """Fit *card*'s model a verdict rule on the cases under *input_path* (module docstring).

    Parameters
    ----------
    input_path : path or sequence of paths
        Folders of cases in any layout :func:`data_tools.cases.discover_cases` finds, with
        nodule masks (several cohorts are pooled, in the order given).
    model, card :
        The model and its card (:func:`discovery.model.external.load_any_model`).
    method, layer :
        The map the rule reads (default LayerCAM at the layer of the card's ``default_map``
        when that map is LayerCAM, else at the card's CAM layer: the demo model's rule reads
        LayerCAM at ``layer2``, its 3 mm cells, the map it is explained with, so scoring
        computes it once).
    features : sequence of str
        Names from :data:`discovery.align.rule.RULE_FEATURES`.
    layout, max_bytes :
        As for ``discovery score``.
    max_cases : int, optional
        Use at most the first *max_cases* cases found.
    stop_none_resting : int or None
        Stop reading cases once this many predicted-malignant nodules were measured and none
        rests on its nodule (:func:`none_resting`); the ``ValueError`` then says after how
        many cases.  None reads every case.
    workers : int
        Cases analysed at once, each on a forked process with one torch thread (Linux; one
        at a time elsewhere).  The rule is the same with any number: the examples are taken
        in case order.
    progress : callable(done, total, case_id), optional

    Raises
    ------
    ValueError
        No nodule of one of the two kinds (resting on the nodule and not) among the cases:
        the message says how many were found and what it means (none resting: the model's
        calls rest on something else, e.g. a shortcut).
    """
    paths = [input_path] if isinstance(input_path, (str, Path)) else list(input_path)
    found = [(path, spec) for path in paths for spec in discover_cases(path, layout=layout)]
    specs = found[:max_cases]
    default_method, default_layer = parse_map(card.default_map or method)
    layer = layer or (default_layer if default_method == method and default_layer
                      else card.gradcam_layer)
    values, rests, skipped, used = [], [], [], 0
    context = {"model": model, "card": card, "method": method, "layer": layer,
               "max_bytes": max_bytes}
    with closing(_examples_in_order(specs, context, workers)) as examples:
        for i, ((_path, spec), (found_examples, why)) in enumerate(zip(specs, examples)):
            if found_examples is None:
                skipped.append((spec.case_id, why))
                log.warning("case %s not used for the calibration: %s", spec.case_id, why)
            else:
                used += 1
                values += [v for v, _ in found_examples]
                rests += [r for _, r in found_examples]
            if progress is not None:
                progress(i + 1, len(specs), spec.case_id)
            if stop_none_resting is not None and none_resting(rests, after=stop_none_resting):
                if i + 1 < len(specs):
                    raise ValueError(_stopped_message(i + 1, len(specs), len(rests)))
                break
    rule, agreement = fit_calibrated_rule(values, rests, n_cases=used, features=features,
                                          method=method, layer=layer,
                                          how="discovery model calibrate")
    y = np.asarray(rests, dtype=bool)
    return Calibration(rule, used, len(y), int(y.sum()), agreement, skipped)


#: What forked calibration workers read (:func:`_examples_in_order` sets it before the pool
#: forks and clears it after; the model is not pickled).  One calibration at a time.
_WORKER: dict = {}


def _case_examples(item) -> tuple[list | None, str]:
    """``(examples, "")`` of one ``(path, spec)``, or ``(None, why)`` (a safe message) when the
    case cannot be used; the settings from :data:`_WORKER`."""
    path, spec = item
    c = _WORKER
    try:
        if spec.problem:
            raise DataError(spec.problem)
        case = read_case(spec, max_bytes=c["max_bytes"], integer_hu=True)
        if case.mask is None:
            raise DataError("no nodule mask")
        return verdict_examples(case.volume, case.mask, c["model"], c["card"],
                                case_id=spec.case_id, method=c["method"],
                                layer=c["layer"]), ""
    except DataError as exc:
        return None, safe_error(exc, path, spec.image, spec.mask)


def _examples_in_order(specs: list, context: dict, workers: int):
    """:func:`_case_examples` of each of *specs*, in their order, on up to *workers* forked
    processes of one torch thread each (:func:`discovery.parallel.ordered_map`).  Closing
    the generator early cancels the cases not started."""
    from torch import set_num_threads  # loaded with the model

    _WORKER.clear()
    _WORKER.update(context)
    try:
        yield from ordered_map(_case_examples, specs, workers=workers,
                               initializer=set_num_threads, initargs=(1,))
    finally:
        _WORKER.clear()


def _stopped_message(read: int, total: int, nodules: int) -> str:
    return (f"stopped after {read} of {total} cases: none of their {nodules} "
            "predicted-malignant nodules rests on its nodule (replacing the nodule never takes "
            "away half of P(malignant)), so at most a few of the other cases' would: the model "
            "decides on something else, a shortcut for instance (see the shortcut panel and "
            "the flag). A rule needs nodules of both kinds; the model's card or sidecar is left "
            "as it was (to read every case anyway: stop_none_resting=None, `discovery model "
            "calibrate --read-all`)")


def save_verdict_rule(model: str | Path, card: ModelCard, rule: VerdictRule, *,
                      sidecar: str | Path | None = None) -> str:
    """Write *rule* where *model* keeps it, for *card*'s weights; return where, in words.

    Parameters
    ----------
    model : str or Path
        What :func:`discovery.model.external.load_any_model` loaded *card* from: the tool's
        model folder (the rule goes into its ``model.json``), or a bundle folder, module
        folder or TorchScript file (into its ``discovery.json``, or *sidecar*).
    card : ModelCard
        The loaded model's card (its weights' SHA-256 binds the rule).
    rule : VerdictRule

    Raises
    ------
    ModelError
        The model folder's card is for other weights than *card*, or the folder or sidecar
        cannot be read.
    """
    if card.architecture.get("name") == "external":
        path = sidecar_path(model, sidecar=sidecar)
        write_sidecar_rule(path, rule.to_dict(), weights_sha256=card.weights_sha256)
        return f"the sidecar {path.name}"
    save_card(replace(card, verdict_rule=rule.to_dict()), model)
    return "the model folder's model.json"
