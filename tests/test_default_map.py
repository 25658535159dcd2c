"""The map a model is explained with when none is asked for (ModelCard.default_map,
discovery.pipeline.resolve_map), and the verdict rule's map computed once when it is that map."""

import dataclasses

import pytest
import torch

from data_tools.synthetic import SyntheticConfig, generate_cohort
from discovery import pipeline
from discovery.align.rule import VerdictRule
from discovery.batch.score import score_folder
from discovery.model.card import (TRAINED_DEFAULT_MAP, ModelCard, build_network, default_architecture,
                                  load_model, save_model)
from discovery.pipeline import ScoreSettings, resolve_map
from discovery.schema import parse_map
from discovery.store.tables import ResultsStore

SMALL = SyntheticConfig(shape_yx=128, n_slices=(50, 58), pixel_spacing_mm=(2.2, 2.6),
                        slice_spacing_mm=(2.0, 2.5), nodules_per_case=(2, 2))


def _card(**kw) -> ModelCard:
    arch = default_architecture()
    arch["kwargs"]["block_inplanes"] = [2, 4, 4, 4]
    arch["stages"] = 3
    return ModelCard(architecture=arch, roi_size_vox=(16, 16, 16), roi_spacing_mm=(3.0, 3.0, 3.0),
                     **kw)


def test_resolve_map():
    with_map, without = _card(default_map="layercam@layer2"), _card()
    got = resolve_map(ScoreSettings(), with_map)
    assert (got.method, got.layer) == ("layercam", "layer2")
    got = resolve_map(ScoreSettings(layer="layer3"), with_map)        # the layer asked for
    assert (got.method, got.layer) == ("layercam", "layer3")
    got = resolve_map(ScoreSettings(method="gradcam"), with_map)       # the method asked for
    assert (got.method, got.layer) == ("gradcam", None)
    got = resolve_map(ScoreSettings(), without)                        # no default map
    assert (got.method, got.layer) == ("gradcam", None)
    got = resolve_map(ScoreSettings(), _card(default_map="hirescam"))  # a method alone
    assert (got.method, got.layer) == ("hirescam", None)
    assert resolve_map(got, with_map) is got                           # named: unchanged


@pytest.mark.parametrize("bad", ["a@b@c", "@layer2", "layercam@", 3])
def test_a_bad_default_map_is_refused(bad):
    with pytest.raises(ValueError, match="default_map"):
        _card(default_map=bad)
    with pytest.raises(ValueError, match="METHOD@LAYER"):
        parse_map(bad)


def test_parse_map():
    assert parse_map("layercam@layer2") == ("layercam", "layer2")
    assert parse_map("gradcam") == ("gradcam", None)
    assert parse_map("layercam-fused@layer2+layer3") == ("layercam-fused", "layer2+layer3")


def test_the_demo_model_is_explained_with_layercam_at_layer2():
    _, card = load_model(None)
    assert card.default_map == "layercam@layer2" and card.gradcam_layer == "layer3"
    assert card.default_map == TRAINED_DEFAULT_MAP      # trained models are explained alike
    # the card round-trips with the field, and older cards (without it) still load
    assert ModelCard.from_dict(dataclasses.asdict(card)).default_map == "layercam@layer2"
    old = {k: v for k, v in dataclasses.asdict(card).items() if k != "default_map"}
    assert ModelCard.from_dict(old).default_map == ""


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny model whose card names LayerCAM at layer2 as its default map and whose verdict
    rule reads that map; a two-case cohort."""
    root = tmp_path_factory.mktemp("default_map")
    generate_cohort(root / "cohort", n_cases=2, seed=5, config=SMALL)
    rule = VerdictRule(method="layercam", layer="layer2", features=("logit",), mean=(0.0,),
                       scale=(1.0,), coef=(1.0,), intercept=0.0)
    card = _card(default_map="layercam@layer2", verdict_rule=rule.to_dict())
    torch.manual_seed(0)
    save_model(build_network(card).eval(), card, root / "model")
    return root


def _count_passes(monkeypatch):
    calls = []
    real = pipeline._score_rois

    def counted(inputs, model, *, method, layer, batch_size):
        calls.append((method, layer))
        return real(inputs, model, method=method, layer=layer, batch_size=batch_size)

    monkeypatch.setattr(pipeline, "_score_rois", counted)
    return calls


def test_scoring_uses_the_default_map_and_computes_the_rules_map_once(tiny, tmp_path,
                                                                       monkeypatch):
    calls = _count_passes(monkeypatch)
    score_folder(tiny / "cohort", tmp_path / "a", model_dir=tiny / "model")
    store = ResultsStore(tmp_path / "a", create=False)
    meta, findings = store.meta(), store.findings()
    store.close()
    assert (meta["method"], meta["gradcam_layer"]) == ("layercam", "layer2")
    assert calls and all(c == ("layercam", "layer2") for c in calls)
    assert len(calls) == 2                      # one pass per case: the rule reads that map
    # asked for another map, the rule's is computed beside it, and the verdicts are the same
    calls.clear()
    score_folder(tiny / "cohort", tmp_path / "b", model_dir=tiny / "model",
                 settings=ScoreSettings(method="gradcam"))
    assert calls.count(("gradcam", None)) == 2 and calls.count(("layercam", "layer2")) == 2
    store = ResultsStore(tmp_path / "b", create=False)
    other = store.findings()
    store.close()
    # the rule decides the predicted-malignant nodules' verdicts from its own map: the same
    key = ["case_id", "nodule_id"]
    a, b = (f.sort_values(key).reset_index(drop=True) for f in (findings, other))
    malignant = a["probability"] >= 0.5
    assert a.loc[malignant, "verdict"].tolist() == b.loc[malignant, "verdict"].tolist()


def test_the_report_names_the_map_it_shows(tiny, tmp_path):
    from discovery.report.html import build_html

    score_folder(tiny / "cohort", tmp_path / "r", model_dir=tiny / "model")
    html = build_html(tmp_path / "r")
    assert "LayerCAM at layer2" in html and "LayerCAM overlay" in html
    assert "Grad-CAM" not in html
