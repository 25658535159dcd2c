"""The CAM layer option: ``ScoreSettings.layer``, ``discovery score --layer``, ``discovery sanity
--layer`` (issue 18: maps at ``layer2``, 16^3 cells of 3 mm, instead of the card's ``layer3``)."""

import numpy as np
import pytest
import torch

from data_tools.nifti import save_nifti
from data_tools.volume import Mask, Volume, affine_from_spacing
from discovery.batch.sanity import run_sanity
from discovery.batch.score import score_folder
from discovery.cli import main
from discovery.model.card import ModelCard, build_network
from discovery.pipeline import ScoreSettings, analyze_scan
from discovery.regions.offmask import OffMaskSettings
from discovery.store.tables import ResultsStore


def _scan(seed=0):
    rng = np.random.default_rng(seed)
    shape, spacing = (40, 64, 64), (1.5, 1.2, 1.2)
    hu = rng.normal(-850, 20, shape).astype(np.float32)
    m = np.zeros(shape, np.int16)
    zz, yy, xx = np.ogrid[:40, :64, :64]
    ball = ((zz - 20) * 1.5) ** 2 + ((yy - 30) * 1.2) ** 2 + ((xx - 32) * 1.2) ** 2 <= 25
    hu[ball], m[ball] = 40, 1
    tail = (np.abs(zz - 20) <= 1) & (np.abs(yy - 30) <= 1) & (xx > 38) & (xx < 52)
    hu[tail] = 20
    aff = affine_from_spacing(spacing)
    return Volume(hu, aff), Mask(m, aff)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    root = tmp_path_factory.mktemp("cohort")
    volume, mask = _scan()
    (root / "PATIENT_A").mkdir()
    save_nifti(volume, root / "PATIENT_A" / "ct.nii.gz")
    save_nifti(mask, root / "PATIENT_A" / "mask.nii.gz")
    return root


def test_layer2_gives_16_cubed_maps_and_layer2_deep_features():
    torch.manual_seed(3)
    card = ModelCard()
    model = build_network(card).eval()
    volume, mask = _scan()
    low = OffMaskSettings(rel_threshold=0.2)  # this untrained net's layer2 map needs it for regions
    default = analyze_scan(volume, mask, model, card, case_id="c",
                           settings=ScoreSettings(offmask=low))
    fine = analyze_scan(volume, mask, model, card, case_id="c",
                        settings=ScoreSettings(layer="layer2", offmask=low))
    (d,), (f,) = default.nodules, fine.nodules
    assert d.info.layer == "layer3" and d.info.native_shape == (8, 8, 8)
    assert f.info.layer == "layer2" and f.info.native_shape == (16, 16, 16)
    assert d.probability == pytest.approx(f.probability, abs=1e-6)  # same model, same input
    # the regions' deep features are the activations of the layer used (16 / 32 channels)
    assert f.contexts and all(ctx.deep.shape == (16,) for ctx in f.contexts)
    assert d.contexts and all(ctx.deep.shape == (32,) for ctx in d.contexts)


def test_score_records_the_layer_used(tmp_path, cohort, model_dir):
    score_folder(cohort, tmp_path / "fine", model_dir=model_dir,
                 settings=ScoreSettings(layer="layer2"))
    score_folder(cohort, tmp_path / "card", model_dir=model_dir)
    score_folder(cohort, tmp_path / "fused", model_dir=model_dir,
                 settings=ScoreSettings(method="layercam-fused"))
    meta = {}
    for name in ("fine", "card", "fused"):
        store = ResultsStore(tmp_path / name, create=False)
        try:
            meta[name] = store.meta()
        finally:
            store.close()
    assert (meta["fine"]["gradcam_layer"], meta["fine"]["feature_layer"]) == ("layer2", "layer2")
    assert (meta["card"]["gradcam_layer"], meta["card"]["feature_layer"]) == ("layer3", "layer3")
    assert meta["fused"]["gradcam_layer"] == "layer2+layer3"
    assert meta["fused"]["feature_layer"] == "layer3"
    assert meta["fused"]["method"] == "layercam-fused"


def test_unknown_layer_is_refused_before_scoring(tmp_path, cohort, model_dir, capsys):
    with pytest.raises(ValueError, match="no module 'layer9'; top-level modules are: .*layer2"):
        score_folder(cohort, tmp_path / "out", model_dir=model_dir,
                     settings=ScoreSettings(layer="layer9"))
    assert not list((tmp_path / "out").glob("cases/*"))         # nothing was scored
    rc = main(["score", str(cohort), "--out", str(tmp_path / "cli"), "--model", str(model_dir),
               "--layer", "layer9"])
    assert rc == 2 and "no module 'layer9'" in capsys.readouterr().err
    with pytest.raises(ValueError, match=r"layer='fine\+coarse'.*received 'layer2'"):
        score_folder(cohort, tmp_path / "fused", model_dir=model_dir,
                     settings=ScoreSettings(method="gradcam-refined", layer="layer2"))


def test_sanity_at_another_layer(tmp_path, cohort, model_dir):
    summary = run_sanity(cohort, results_dir=tmp_path / "s", model_dir=model_dir,
                         methods=["gradcam"], randomise=["gradcam"], layer="layer2",
                         steps=2, n_random=1, n_random_road=1, n_draws=1)
    assert set(summary.randomization["layer"]) == {"layer2"}
    assert len(summary.perturbation) == 1
    with pytest.raises(ValueError, match="no module 'layer9'"):
        run_sanity(cohort, results_dir=tmp_path / "t", model_dir=model_dir, methods=["gradcam"],
                   layer="layer9")
    rc = main(["sanity", str(cohort), "--out", str(tmp_path / "u"), "--model", str(model_dir),
               "--methods", "gradcam", "--layer", "layer9"])
    assert rc == 2


def test_the_layer_is_part_of_a_case_config_hash():
    from pathlib import Path

    from data_tools.layouts import CaseSpec
    from discovery.batch.manifest import case_config_hash

    spec, card = CaseSpec("c", Path("ct.nii.gz"), "nifti", None), ModelCard()
    hashes = {case_config_hash(spec, settings=ScoreSettings(layer=layer), max_bytes=None,
                               card=card) for layer in (None, "layer2", "layer3")}
    assert len(hashes) == 3   # a rerun at another layer re-scores the cases


def test_a_model_with_several_input_windows_is_scored_end_to_end():
    """``discovery train``'s default input has three HU windows: the pipeline must score and
    explain such a model (it once refused every ROI with more than one channel)."""
    from discovery.model.rois import HU_WINDOWS

    torch.manual_seed(3)
    card = ModelCard().with_windows([HU_WINDOWS[k] for k in ("lung", "soft", "dense")])
    volume, mask = _scan()
    for method in ("gradcam", "integrated_gradients"):
        res = analyze_scan(volume, mask, build_network(card).eval(), card, case_id="c",
                           settings=ScoreSettings(method=method))
        (nodule,) = res.nodules
        assert np.isfinite(nodule.probability)
        assert nodule.attribution.shape == mask.array[nodule.box].shape


def test_a_layer_inside_a_stage_is_scored_with_the_monai_network(tmp_path, cohort, model_dir):
    """The compiled copy has only its stages: a deeper CAM layer makes ``discovery score``
    build the MONAI network, and its findings are those of analysing with it directly."""
    from discovery.model.card import load_model

    deep = "layer2.0.conv1"
    score_folder(cohort, tmp_path / "deep", model_dir=model_dir,
                 settings=ScoreSettings(layer=deep))
    store = ResultsStore(tmp_path / "deep", create=False)
    try:
        assert store.meta()["gradcam_layer"] == deep
        stored = store.findings()["probability"].to_numpy()
    finally:
        store.close()
    model, card = load_model(model_dir)
    volume, mask = _scan()
    direct = analyze_scan(volume, mask, model, card, case_id="c",
                          settings=ScoreSettings(layer=deep))
    np.testing.assert_allclose(stored, [n.probability for n in direct.nodules], atol=1e-6)
