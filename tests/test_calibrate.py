"""``discovery model calibrate``: a verdict rule fitted to the model's measured reliance on a
cohort of its own, written into the model folder's card (discovery.batch.calibrate)."""

import dataclasses
import json
import shutil

import numpy as np
import pytest

from data_tools.errors import ModelError
from data_tools.synthetic import SyntheticConfig, generate_case, write_case
from data_tools.volume import Mask, Volume
from discovery.align.rule import VerdictRule, verdict_features
from discovery.batch.calibrate import DEFAULT_RULE_FEATURES, calibrate_verdicts, verdict_examples
from discovery.cli import main
from discovery.model.card import default_model_dir, load_card, load_model, save_card

DEMO = SyntheticConfig.read(default_model_dir() / "cohort.json")


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """Eight demo-like cases (the demo model's cohort settings, a seed no figure uses)."""
    root = tmp_path_factory.mktemp("calibration")
    for i in range(8):
        write_case(generate_case(311, config=DEMO, index=i), root / "cases" / f"PID-{i}")
    return root / "cases"


@pytest.fixture(scope="module")
def demo():
    model, card = load_model(default_model_dir())
    return model, dataclasses.replace(card, verdict_rule={})


def test_examples_are_the_features_of_predicted_malignant_nodules(demo):
    model, card = demo
    c = generate_case(311, config=DEMO, index=0)
    vol, mask = Volume(c.hu, c.affine), Mask(c.mask, c.affine)
    examples = verdict_examples(vol, mask, model, card, case_id="c0", method="layercam",
                                layer="layer2")
    from discovery.pipeline import ScoreSettings, analyze_scan

    res = analyze_scan(vol, mask, model, card, case_id="c0",
                       settings=ScoreSettings(method="layercam", layer="layer2",
                                              verdict_rule=False))
    expected = [n for n in res.nodules
                if n.predicted_label == 1 and np.isfinite(n.reliance.rests_on_nodule)]
    assert len(examples) == len(expected)
    for (values, rests), nod in zip(examples, expected):
        own = mask.array[nod.box] == nod.site.label
        assert values == verdict_features(nod.attribution, own, spacing_mm=vol.spacing_mm,
                                          probability=nod.probability)
        assert rests == (nod.reliance.rests_on_nodule >= 0.5)


def test_calibrate_fits_a_rule_that_reproduces_its_own_figures(cohort, demo):
    model, card = demo
    assert card.default_map == "layercam@layer2"
    done = calibrate_verdicts(cohort, model, card)    # LayerCAM at the default map's layer
    rule = done.rule
    assert isinstance(rule, VerdictRule) and rule.features == DEFAULT_RULE_FEATURES
    assert (rule.method, rule.layer) == ("layercam", "layer2")
    assert done.n_cases == 8 and not done.skipped
    assert 0 < done.n_resting < done.n_nodules
    prov = rule.provenance
    assert (prov["cases"], prov["nodules"], prov["resting_on_nodule"]) == (
        8, done.n_nodules, done.n_resting)
    assert 0.5 <= done.agreement <= 1.0 and prov["balanced_accuracy"] == round(done.agreement, 4)
    assert VerdictRule.from_dict(rule.to_dict()) == rule
    # on two worker processes: the same examples in the same order, so the same rule
    twice = calibrate_verdicts(cohort, model, card, layer="layer2", workers=2)
    assert twice.rule == rule and twice.n_resting == done.n_resting


def test_cli_writes_the_card_of_a_copy_and_dry_run_does_not(cohort, tmp_path, capsys):
    folder = tmp_path / "model"
    shutil.copytree(default_model_dir(), folder)
    card = json.loads((folder / "model.json").read_text())
    card.pop("verdict_rule", None)
    (folder / "model.json").write_text(json.dumps(card))
    assert main(["model", "calibrate", str(folder), str(cohort), "--layer", "layer2",
                 "--max-cases", "6", "--dry-run"]) == 0
    assert not load_card(folder).verdict_rule
    out = capsys.readouterr().out
    assert "6 cases" in out and "in-sample" in out
    assert main(["model", "calibrate", str(folder), str(cohort), "--layer", "layer2",
                 "--max-cases", "6"]) == 0
    written = load_card(folder)
    assert written.verdict_rule["layer"] == "layer2"
    assert written.verdict_rule["provenance"]["cases"] == 6
    assert written.weights_sha256 == card["weights_sha256"]
    assert main(["model", "calibrate", str(folder), str(cohort), "--features",
                 "logit,colour"]) == 2
    assert "unknown colour" in capsys.readouterr().err


def test_one_kind_of_nodule_only_is_refused(cohort, tmp_path, capsys):
    one = tmp_path / "one"
    shutil.copytree(cohort / "PID-0", one / "PID-0")
    folder = tmp_path / "model"
    shutil.copytree(default_model_dir(), folder)
    code = main(["model", "calibrate", str(folder), str(one), "--layer", "layer2"])
    err = capsys.readouterr().err
    # one case holds too few nodules for both kinds: refused, with the counts
    assert code == 2 and "both kinds" in err


def test_save_card_refuses_a_card_of_other_weights(tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(default_model_dir(), folder)
    card = load_card(folder)
    with pytest.raises(ModelError, match="other weights"):
        save_card(dataclasses.replace(card, weights_sha256="0" * 64), folder)
    save_card(dataclasses.replace(card, verdict_rule={}), folder)
    assert load_card(folder).verdict_rule == {}


@pytest.mark.parametrize("rests, words", [(False, "shortcut"), (True, "nothing for a rule")])
def test_a_cohort_of_one_kind_says_what_it_means(cohort, demo, monkeypatch, rests, words):
    """A model none of whose calls rests on its nodule (a shortcut model, as in the
    benchmark's shortcut condition) cannot be calibrated, and is told why."""
    import discovery.batch.calibrate as calibrate

    model, card = demo
    monkeypatch.setattr(calibrate, "verdict_examples",
                        lambda *a, **k: [({"logit": 1.0}, rests), ({"logit": 2.0}, rests)])
    with pytest.raises(ValueError, match=words):
        calibrate.calibrate_verdicts(cohort, model, card, max_cases=2)


def test_a_shortcut_model_is_refused_once_enough_nodules_say_so(cohort, demo, monkeypatch):
    """None of 30 measured calls resting on the nodule stops the calibration there (and the
    message says after how many cases); a resting one among them, or ``stop_none_resting``
    None, reads on; ``none_resting`` counts as documented."""
    import discovery.batch.calibrate as calibrate

    assert calibrate.none_resting([False] * 30) and not calibrate.none_resting([False] * 29)
    assert not calibrate.none_resting([False] * 40 + [True])
    assert calibrate.none_resting([False] * 3, after=3)
    with pytest.raises(ValueError, match="at least 1"):
        calibrate.none_resting([], after=0)
    seen = []

    def fake(volume, mask, model, card, *, case_id, **kwargs):
        seen.append(case_id)
        return [({f: float(len(seen) + i) for f in DEFAULT_RULE_FEATURES}, False)
                for i in range(4)]

    model, card = demo
    monkeypatch.setattr(calibrate, "verdict_examples", fake)
    with pytest.raises(ValueError, match=r"stopped after 3 of 8 cases: none of their 12 "):
        calibrate.calibrate_verdicts(cohort, model, card, stop_none_resting=10)
    assert len(seen) == 3
    seen.clear()
    with pytest.raises(ValueError, match="none of the 32 predicted-malignant nodules of these 8"):
        calibrate.calibrate_verdicts(cohort, model, card, stop_none_resting=None)
    assert len(seen) == 8
    seen.clear()
    with pytest.raises(ValueError, match="none of the 32 .* of these 8"):   # the last case
        calibrate.calibrate_verdicts(cohort, model, card, stop_none_resting=32)
    assert len(seen) == 8
    shown = []                          # on worker processes: stopped alike, the rest cancelled
    with pytest.raises(ValueError, match=r"stopped after 3 of 8 cases"):
        calibrate.calibrate_verdicts(cohort, model, card, stop_none_resting=10, workers=2,
                                     progress=lambda d, t, c: shown.append(d))
    assert shown == [1, 2, 3]


def test_several_cohorts_are_pooled_in_order(cohort, demo, monkeypatch, tmp_path):
    import discovery.batch.calibrate as calibrate

    second = tmp_path / "second"
    for name in ("PID-0", "PID-1"):
        shutil.copytree(cohort / name, second / name)
    seen = []

    def fake(volume, mask, model, card, *, case_id, **kwargs):
        seen.append(case_id)
        return [({f: float(len(seen) + i) for f in DEFAULT_RULE_FEATURES}, bool(i))
                for i in range(2)]

    model, card = demo
    monkeypatch.setattr(calibrate, "verdict_examples", fake)
    done = calibrate.calibrate_verdicts([second, cohort], model, card, max_cases=5)
    assert done.n_cases == 5 and done.n_nodules == 10 and done.n_resting == 5
    from data_tools.cases import discover_cases

    expected = [s.case_id for s in discover_cases(second)] + [
        s.case_id for s in discover_cases(cohort)][:3]
    assert seen == expected           # the cohorts in the order given, cut at max_cases


def test_a_model_from_elsewhere_keeps_its_rule_in_its_sidecar(cohort, monkeypatch, tmp_path,
                                                              capsys, caplog):
    """A module folder (``discovery.json`` naming a MONAI factory): the rule goes into its
    sidecar, bound to its weights, the other fields kept; loading it gives the card the rule,
    other weights drop it with a warning, and a rule that is not an object is refused."""
    import logging

    import torch
    from monai.networks.nets import resnet10

    import discovery.batch.calibrate as calibrate
    from discovery.model.card import sha256_file
    from discovery.model.external import load_any_model
    from discovery.pipeline import ScoreSettings, verdict_rule_meta

    kwargs = dict(spatial_dims=3, n_input_channels=1, num_classes=1, widen_factor=0.125,
                  conv1_t_stride=1, no_max_pool=True, shortcut_type="B")
    folder = tmp_path / "external"
    folder.mkdir()

    def save_weights(seed):
        torch.manual_seed(seed)
        torch.save(resnet10(**kwargs).state_dict(), folder / "model.pt")

    save_weights(1)
    side = {"roi_size_vox": [32, 32, 32], "roi_spacing_mm": [1.5, 1.5, 1.5],
            "hu_window": [-1000, 400], "target_class": 0,
            "factory": "monai.networks.nets:resnet10", "factory_kwargs": kwargs}
    (folder / "discovery.json").write_text(json.dumps(side))

    def fake(volume, mask, model, card, *, case_id, **kw):   # both kinds, whatever the net
        assert card.architecture["name"] == "external"
        return [({f: float(i) + len(case_id) % 3 for f in DEFAULT_RULE_FEATURES}, bool(i))
                for i in range(2)]

    monkeypatch.setattr(calibrate, "verdict_examples", fake)
    assert main(["model", "calibrate", str(folder), str(cohort), "--max-cases", "3"]) == 0
    assert "wrote the rule into the sidecar discovery.json" in capsys.readouterr().out
    data = json.loads((folder / "discovery.json").read_text())
    assert {k: data[k] for k in side} == side
    rule = data["verdict_rule"]
    assert rule["provenance"]["weights_sha256"] == sha256_file(folder / "model.pt")
    assert rule["provenance"]["cases"] == 3 and rule["layer"].startswith("net.")

    _model, card = load_any_model(folder)
    assert card.verdict_rule == rule
    assert main(["model", "check", str(folder)]) == 0
    assert ("verdicts    predicted-malignant ones by the verdict rule on layercam at net."
            in capsys.readouterr().out)
    meta = verdict_rule_meta(card, ScoreSettings())
    assert meta["verdict_rule_sha256"] == card.verdict_rule_sha256 != ""

    save_weights(2)
    with caplog.at_level(logging.WARNING, logger="discovery.model.external"):
        _model, card = load_any_model(folder)
    assert card.verdict_rule == {} and "fitted for other weights" in caplog.text
    assert main(["model", "check", str(folder)]) == 0
    assert "verdicts    by the thresholds" in capsys.readouterr().out

    data["verdict_rule"] = [1, 2]
    (folder / "discovery.json").write_text(json.dumps(data))
    with pytest.raises(ModelError, match="verdict_rule must be the object"):
        load_any_model(folder)


def test_the_demo_network_brought_as_a_module_folder_gets_the_demo_folders_rule(
        cohort, demo, tmp_path):
    """The demo network packaged as a model from elsewhere (a module folder whose factory is
    the network class, the same weights, the card's window and ROI in the sidecar) is fitted
    the rule the demo's own folder is fitted on the same cohort: the external path reads the
    same maps and measures the same reliance."""
    from discovery.model.external import load_any_model

    model, card = demo
    folder = tmp_path / "demo_as_module"
    folder.mkdir()
    shutil.copy(default_model_dir() / "model.safetensors", folder / "model.safetensors")
    arch = card.architecture
    (folder / "discovery.json").write_text(json.dumps({
        "roi_size_vox": list(card.roi_size_vox), "roi_spacing_mm": list(card.roi_spacing_mm),
        "hu_window": list(card.hu_window), "target_class": 1, "gradcam_layer": "layer3",
        "factory": "discovery.model.network:NoduleResNet",
        "factory_kwargs": {**arch["kwargs"], "stages": arch["stages"]}}))
    ext_model, ext_card = load_any_model(folder)
    assert ext_card.architecture["name"] == "external" and ext_card.verdict_rule == {}
    own = calibrate_verdicts(cohort, model, card, layer="layer2", max_cases=5)
    ext = calibrate_verdicts(cohort, ext_model, ext_card, layer="net.layer2", max_cases=5)
    assert (ext.n_nodules, ext.n_resting) == (own.n_nodules, own.n_resting)
    assert ext.agreement == pytest.approx(own.agreement)
    for name in ("mean", "scale", "coef"):
        np.testing.assert_allclose(getattr(ext.rule, name), getattr(own.rule, name),
                                   rtol=1e-5, atol=1e-6)
    assert ext.rule.intercept == pytest.approx(own.rule.intercept, rel=1e-5, abs=1e-6)
