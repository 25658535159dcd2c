"""The verdict rule fitted per model (discovery.align.rule): hand-computed features, a
hand-set logistic rule, how it overrides the threshold verdict, and the pipeline using the
card's rule."""

import dataclasses
import math

import numpy as np
import pytest
import torch

from discovery.align.metrics import AlignThresholds, align
from discovery.align.rule import (RULE_FEATURES, VerdictRule, fit_verdict_rule, ruled_alignment,
                                  verdict_features)


def _line():
    """A row of 30 voxels of 1 mm: the nodule is x = 10, 11; the map is 2 on it, 4 at x = 14
    (3 mm from it) and 1 at x = 25 (14 mm from it)."""
    attr = np.zeros((1, 1, 30))
    own = np.zeros((1, 1, 30), dtype=bool)
    own[0, 0, 10:12] = True
    attr[0, 0, 10:12] = 2.0
    attr[0, 0, 14] = 4.0
    attr[0, 0, 25] = 1.0
    return attr, own


def test_features_hand_computed():
    attr, own = _line()
    f = verdict_features(attr, own, spacing_mm=(1.0, 1.0, 1.0), probability=0.8)
    assert set(f) == set(RULE_FEATURES)
    assert f["log_mass_on_nodule"] == pytest.approx(math.log(4.0))
    assert f["log_mass_beyond_5mm"] == pytest.approx(math.log(1.0), abs=1e-9)   # x = 25 only
    # within 20 mm around the nodule: x = 0..9 and 12..29, 28 voxels holding 4 + 1
    assert f["log_contrast"] == pytest.approx(math.log(2.0 / (5.0 / 28.0)))
    assert f["near_share_5mm"] == pytest.approx(8.0 / 9.0)
    assert f["peak_within_6mm"] == 1.0                                  # the 4 lies 3 mm out
    assert f["log_nodule_volume"] == pytest.approx(math.log(2.0))
    assert f["logit"] == pytest.approx(math.log(4.0))
    # the voxel size scales the masses, not the shares
    g = verdict_features(attr, own, spacing_mm=(1.0, 1.0, 0.5), probability=0.8)
    assert g["log_mass_on_nodule"] == pytest.approx(math.log(4.0 * 0.5))
    assert g["log_mass_beyond_5mm"] == pytest.approx(math.log(0.5))   # the 1 lies 7 mm out
    assert g["near_share_5mm"] == pytest.approx(8.0 / 9.0)              # the 4 lies 1.5 mm out
    assert g["peak_within_6mm"] == 1.0


def test_features_refuse_what_they_cannot_read():
    attr, own = _line()
    with pytest.raises(ValueError, match="non-empty nodule mask"):
        verdict_features(attr, np.zeros_like(own), spacing_mm=(1, 1, 1), probability=0.5)
    with pytest.raises(ValueError, match="sums to 0"):
        verdict_features(np.zeros_like(attr), own, spacing_mm=(1, 1, 1), probability=0.5)
    with pytest.raises(ValueError, match=r"probability must lie in \[0, 1\]"):
        verdict_features(attr, own, spacing_mm=(1, 1, 1), probability=1.5)
    with pytest.raises(ValueError):
        verdict_features(-attr, own, spacing_mm=(1, 1, 1), probability=0.5)


def _rule(intercept=0.5, **kw):
    return VerdictRule(method="layercam", layer="layer2", features=("logit", "near_share_5mm"),
                       mean=(0.0, 0.5), scale=(2.0, 0.25), coef=(1.0, -2.0),
                       intercept=intercept, **kw)


def test_the_rule_scores_by_hand_and_round_trips():
    rule = _rule(provenance={"nodules": 3})
    # z = ((4 - 0) / 2, (0.75 - 0.5) / 0.25) = (2, 1): 0.5 + 1 * 2 - 2 * 1 = 0.5
    assert rule.score({"logit": 4.0, "near_share_5mm": 0.75}) == pytest.approx(0.5)
    assert rule.aligned({"logit": 4.0, "near_share_5mm": 0.75})
    assert not _rule(intercept=-0.6).aligned({"logit": 4.0, "near_share_5mm": 0.75})
    again = VerdictRule.from_dict(rule.to_dict())
    assert again == rule and again.provenance == {"nodules": 3}


def test_bad_rules_are_refused_with_what_was_received():
    with pytest.raises(ValueError, match="features from"):
        dataclasses.replace(_rule(), features=("logit", "brightness"))
    with pytest.raises(ValueError, match="coef needs 2 finite values"):
        dataclasses.replace(_rule(), coef=(1.0,))
    with pytest.raises(ValueError, match="scales must be positive"):
        dataclasses.replace(_rule(), scale=(0.0, 1.0))
    with pytest.raises(ValueError, match="lacks intercept"):
        VerdictRule.from_dict({k: v for k, v in _rule().to_dict().items() if k != "intercept"})


@pytest.mark.parametrize("before, aligned, after", [
    ("aligned", True, "aligned"), ("aligned", False, "partial"),
    ("partial", True, "aligned"), ("partial", False, "partial"),
    ("off-mask", True, "aligned"), ("off-mask", False, "off-mask"),
])
def test_the_rule_decides_aligned_and_leaves_the_rest(before, aligned, after):
    """A rule's yes is 'aligned', its no demotes the thresholds' 'aligned' to 'partial'."""
    attr, own = _line()
    base = align(attr, own, spacing_mm=(1, 1, 1), thresholds=AlignThresholds())
    out = ruled_alignment(dataclasses.replace(base, verdict=before), aligned)
    assert out.verdict == after
    assert (out.rma, out.near_mass) == (base.rma, base.near_mass)  # the metrics stay the thresholds' map's


def test_a_verdict_without_metrics_is_not_overruled():
    attr, own = _line()
    empty = align(np.zeros_like(attr), own, spacing_mm=(1, 1, 1))
    assert empty.verdict == "no-attribution"
    assert ruled_alignment(empty, True) == empty


def test_fitting_separates_what_can_be_separated_and_needs_both_kinds():
    rng = np.random.default_rng(0)
    rests = rng.random(60) < 0.4
    values = [{"logit": float(rng.normal(3, 1)), "near_share_5mm": float(0.7 if r else 0.2)
               + float(rng.normal(0, 0.05))} for r in rests]
    rule = fit_verdict_rule(values, rests, features=("logit", "near_share_5mm"),
                            method="layercam", layer="layer2", provenance={"n": 60})
    assert [rule.aligned(v) for v in values] == list(rests)
    assert rule.coef[1] > 0 and rule.provenance == {"n": 60}
    with pytest.raises(ValueError, match="both kinds"):
        fit_verdict_rule(values, np.ones(60, bool), features=("logit",), method="layercam",
                         layer="layer2")


def _scene():
    from data_tools.volume import Mask, Volume, affine_from_spacing

    rng = np.random.default_rng(0)
    shape = (48, 56, 56)
    hu = (-850.0 + rng.normal(0, 20, shape)).astype(np.float32)
    zz, yy, xx = np.indices(shape)
    ball = (zz - 23.5) ** 2 + (yy - 27.5) ** 2 + (xx - 27.5) ** 2 <= 9.0
    hu[ball] = 30.0
    affine = affine_from_spacing((1.5, 1.5, 1.5))
    return Volume(hu, affine), Mask(ball.astype(np.int16), affine)


def test_the_pipeline_decides_predicted_malignant_verdicts_by_the_cards_rule():
    from discovery.model.card import default_model_dir, load_model
    from discovery.pipeline import ScoreSettings, analyze_scan

    model, card = load_model(default_model_dir())          # the demo network: maps not all 0
    card = dataclasses.replace(card, verdict_rule={},      # every nodule predicted malignant
                               metrics={**card.metrics, "threshold": 0.0})
    vol, mask = _scene()
    plain = analyze_scan(vol, mask, model, card, case_id="c").nodules[0].alignment
    assert plain.status == "ok"
    always = dataclasses.replace(_rule(intercept=50.0), method="gradcam", layer=None)
    never = dataclasses.replace(always, intercept=-50.0)
    yes = dataclasses.replace(card, verdict_rule=always.to_dict())
    no = dataclasses.replace(card, verdict_rule=never.to_dict())
    assert analyze_scan(vol, mask, model, yes, case_id="c").nodules[0].alignment.verdict == "aligned"
    refused = analyze_scan(vol, mask, model, no, case_id="c").nodules[0].alignment
    assert refused.verdict == ("partial" if plain.verdict == "aligned" else plain.verdict)
    off = analyze_scan(vol, mask, model, yes, case_id="c",
                       settings=ScoreSettings(verdict_rule=False)).nodules[0].alignment
    assert off == plain
    # a predicted-benign nodule keeps the thresholds' verdict
    benign = dataclasses.replace(yes, metrics={"threshold": 1.0})
    assert analyze_scan(vol, mask, model, benign, case_id="c").nodules[0].alignment == plain


def test_a_rule_changes_the_config_hash_and_no_rule_hashes_as_before():
    from discovery.batch.manifest import case_config_hash
    from discovery.model.card import ModelCard
    from discovery.pipeline import ScoreSettings

    spec = type("Spec", (), {"layout": "flat", "image_kind": "dicom", "mask_kind": "nifti",
                             "source_key": "k"})()
    card = ModelCard()
    base = case_config_hash(spec, settings=ScoreSettings(), max_bytes=None, card=card)
    ruled = dataclasses.replace(card, verdict_rule=_rule().to_dict())
    assert case_config_hash(spec, settings=ScoreSettings(), max_bytes=None, card=ruled) != base
    assert case_config_hash(spec, settings=ScoreSettings(), max_bytes=None,
                            card=dataclasses.replace(card, verdict_rule={})) == base
    assert card.verdict_rule_sha256 == "" and len(ruled.verdict_rule_sha256) == 64


def test_the_rule_is_recorded_and_said_where_the_verdicts_are_explained():
    from discovery.align.metrics import describe_verdicts
    from discovery.align.rule import describe_verdict_rule
    from discovery.model.card import default_model_dir, load_card
    from discovery.pipeline import ScoreSettings, verdict_rule_meta
    from discovery.report.style import verdicts_in_words

    card = load_card(default_model_dir())
    meta = verdict_rule_meta(card, ScoreSettings())
    assert meta["verdict_rule_sha256"] == card.verdict_rule_sha256 != ""
    words = describe_verdict_rule(VerdictRule.from_dict(card.verdict_rule))
    assert meta["verdict_rule_text"] == words
    assert "layercam map at layer2" in words and "its contrast against the 20 mm" in words
    assert verdicts_in_words(meta) == describe_verdicts() + "; " + words
    off = verdict_rule_meta(card, ScoreSettings(verdict_rule=False))
    assert off == {"verdict_rule_sha256": "", "verdict_rule_text": ""}
    assert verdicts_in_words(off) == verdicts_in_words({}) == describe_verdicts()


def test_the_command_line_can_ask_for_threshold_verdicts():
    from discovery.cli import build_parser

    args = build_parser().parse_args(["score", "in", "--out", "out", "--threshold-verdicts"])
    assert args.threshold_verdicts
    assert not build_parser().parse_args(["score", "in", "--out", "out"]).threshold_verdicts
