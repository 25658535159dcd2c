"""Training domain and applicability flags (discovery.model.domain): hand-computed cases."""

import math

import numpy as np
import pytest

from discovery.model.card import ModelCard
from discovery.model.domain import (
    FLAGS,
    TrainingDomain,
    applicability,
    equivalent_diameter_mm,
    roi_statistics,
    training_domain,
)

DOMAIN = TrainingDomain(slice_thickness_mm=(1.0, 2.5), pixel_spacing_mm=(0.6, 0.8),
                        nodule_diameter_mm=(5.0, 30.0),
                        roi_statistics={"mean_c0": (0.10, 0.20), "std_c0": (0.05, 0.09)},
                        n_rois=10, source="test")
FOV = (48.0, 48.0, 48.0)


def _roi(mean: float, std: float) -> np.ndarray:
    """A one-channel ROI with exactly this mean and population std (half +, half -)."""
    x = np.full((1, 4, 4, 4), mean)
    x.reshape(-1)[::2] += std
    x.reshape(-1)[1::2] -= std
    return x


def _check(**overrides):
    kw = dict(domain=DOMAIN, field_of_view_mm=FOV, spacing_mm=(2.0, 0.7, 0.7),
              extent_mm=(20.0, 20.0, 20.0), volume_mm3=4 / 3 * math.pi * 10 ** 3,
              roi_input=_roi(0.15, 0.07))
    kw.update(overrides)
    return applicability(**kw)


def test_roi_statistics_by_hand():
    stats = roi_statistics(_roi(0.15, 0.07))
    assert stats == pytest.approx({"mean_c0": 0.15, "std_c0": 0.07})
    two = np.stack([_roi(0.1, 0.0)[0], _roi(0.5, 0.2)[0]])
    assert roi_statistics(two) == pytest.approx({"mean_c0": 0.1, "std_c0": 0.0,
                                                 "mean_c1": 0.5, "std_c1": 0.2})
    with pytest.raises(ValueError, match=r"\(C, z, y, x\)"):
        roi_statistics(np.zeros((4, 4, 4)))


def test_inside_everything_is_ok():
    fit = _check()
    assert fit.flags == () and fit.code == "ok" and fit.detail == ""
    assert equivalent_diameter_mm(4 / 3 * math.pi * 10 ** 3) == pytest.approx(20.0)


def test_each_flag_fires_alone_with_its_numbers():
    fit = _check(extent_mm=(20.0, 61.0, 20.0))
    assert fit.flags == ("larger-than-roi",) and "61 mm along y" in fit.detail and "48 mm" in fit.detail
    fit = _check(spacing_mm=(5.0, 0.7, 0.7))
    assert fit.flags == ("slice-thickness",) and "5.00 mm, training 1.00-2.50" in fit.detail
    assert _check(spacing_mm=(2.7, 0.7, 0.7)).flags == ()          # within the 10 % tolerance
    assert _check(spacing_mm=(2.0, 0.7, 0.95)).flags == ("pixel-spacing",)   # larger of y, x
    fit = _check(volume_mm3=4 / 3 * math.pi * 30 ** 3)                       # 60 mm across
    assert fit.flags == ("nodule-size",) and "60 mm across" in fit.detail
    # intensity: range 0.10-0.20 widened by 0.025 each side
    assert _check(roi_input=_roi(0.224, 0.07)).flags == ()
    fit = _check(roi_input=_roi(0.226, 0.07))
    assert fit.flags == ("intensity",) and "mean_c0 0.226" in fit.detail
    assert _check(roi_input=None).flags == ()                       # not checked without the ROI


def test_several_flags_keep_the_documented_order_and_unknown_domain_says_so():
    fit = _check(extent_mm=(60.0, 60.0, 60.0), spacing_mm=(5.0, 0.7, 0.7),
                 volume_mm3=4 / 3 * math.pi * 30 ** 3, roi_input=_roi(0.5, 0.3))
    assert fit.flags == ("larger-than-roi", "slice-thickness", "nodule-size", "intensity")
    assert fit.code == "larger-than-roi; slice-thickness; nodule-size; intensity"
    assert list(FLAGS)[:6] == ["larger-than-roi", "slice-thickness", "pixel-spacing",
                               "nodule-size", "intensity", "domain-unknown"]
    fit = _check(domain=None, spacing_mm=(5.0, 0.7, 0.7))
    assert fit.flags == ("domain-unknown",)                         # spacing not checkable
    assert _check(domain=None, extent_mm=(50.0, 1, 1)).flags == ("larger-than-roi",
                                                                  "domain-unknown")


def test_training_domain_from_data_and_through_the_card():
    rois = [_roi(m, 0.05) for m in np.linspace(0.1, 0.3, 101)]
    dom = training_domain(spacings_mm=[(1.0, 0.7, 0.7), (2.5, 0.6, 0.8)],
                          diameters_mm=[6.0, 25.0], roi_inputs=rois, source="test")
    assert dom.slice_thickness_mm == (1.0, 2.5) and dom.pixel_spacing_mm == (0.7, 0.8)
    assert dom.nodule_diameter_mm == (6.0, 25.0) and dom.n_rois == 101
    assert dom.roi_statistics["mean_c0"] == pytest.approx((0.102, 0.298))   # 1st / 99th pct
    card = ModelCard(training_domain=dom.to_dict())
    again = ModelCard.from_dict(__import__("json").loads(card.to_json()))
    assert again.domain == dom and ModelCard().domain is None
    assert card.field_of_view_mm == (48.0, 48.0, 48.0)
    with pytest.raises(ValueError, match="missing 'pixel_spacing_mm'"):
        ModelCard(training_domain={"slice_thickness_mm": [1, 2], "nodule_diameter_mm": [1, 2]})
    with pytest.raises(ValueError, match=r"slice_thickness_mm must be finite with low <= high"):
        ModelCard(training_domain={**dom.to_dict(), "slice_thickness_mm": [3, 2]})
    with pytest.raises(ValueError, match="at least one"):
        training_domain(spacings_mm=[], diameters_mm=[1.0], roi_inputs=rois, source="x")


# -- through the pipeline and the app ---------------------------------------------------------
def _tiny_model(card):
    import torch

    from discovery.model.card import build_network
    torch.manual_seed(0)
    return build_network(card).eval()


def test_analyze_scan_flags_what_the_card_says_and_the_field_of_view():
    from data_tools.synthetic import SyntheticConfig, generate_case
    from data_tools.volume import Mask, Volume
    from discovery.model.card import default_architecture
    from discovery.pipeline import analyze_scan

    cfg = SyntheticConfig(shape_yx=96, n_slices=(40, 40), pixel_spacing_mm=(2.0, 2.0),
                          slice_spacing_mm=(2.5, 2.5), nodules_per_case=(1, 1))
    case = generate_case(5, config=cfg)
    arch = default_architecture()
    arch["kwargs"]["block_inplanes"] = [2, 4, 4, 4]
    arch["stages"] = 3
    small_fov = ModelCard(architecture=arch, roi_size_vox=(8, 8, 8), roi_spacing_mm=(1.0, 1.0, 1.0))
    volume, mask = Volume(case.hu, case.affine), Mask(case.mask, case.affine)
    result = analyze_scan(volume, mask, _tiny_model(small_fov), small_fov, case_id="c")
    fit = result.nodules[0].applicability
    assert fit.flags == ("larger-than-roi", "domain-unknown")     # 8 mm view, no domain
    # a domain that knows 1 mm slices and phantom intensities far from these
    dom = TrainingDomain(slice_thickness_mm=(0.8, 1.2), pixel_spacing_mm=(1.8, 2.2),
                         nodule_diameter_mm=(1.0, 100.0),
                         roi_statistics={"mean_c0": (0.9, 0.95), "std_c0": (0.0, 1.0)})
    wide = ModelCard(architecture=arch, roi_size_vox=(16, 16, 16),
                     roi_spacing_mm=(5.0, 5.0, 5.0), training_domain=dom.to_dict())
    fit = analyze_scan(volume, mask, _tiny_model(wide), wide, case_id="c").nodules[0].applicability
    assert fit.flags == ("slice-thickness", "intensity")
    assert "slice spacing 2.50 mm, training 0.80-1.20 mm" in fit.detail


def test_case_page_warns_beside_the_verdict(tiny_results_fresh):
    from streamlit.testing.v1 import AppTest

    from discovery.store.tables import ResultsStore
    from pathlib import Path

    store = ResultsStore(tiny_results_fresh)
    with store.write() as con:
        con.execute("UPDATE nodules SET applicability = 'larger-than-roi; intensity', "
                    "applicability_detail = 'the nodule spans 61 mm along y, the model sees "
                    "48 mm' WHERE case_id = 'case-A'")
        con.execute("UPDATE nodules SET applicability = 'ok' WHERE case_id = 'case-B'")
    store.close()
    view = Path(__file__).resolve().parents[1] / "app" / "views" / "case.py"
    at = AppTest.from_file(str(view), default_timeout=60)
    at.session_state["results_dir"] = str(tiny_results_fresh)
    at.session_state["case_id"] = "case-A"
    at.run(timeout=60)
    assert not at.exception
    texts = [w.value for w in at.warning]
    assert any("outside what it knows: larger-than-roi; intensity" in t and "The nodule spans 61 mm" in t
               for t in texts), texts
    # the Overview says how many outcomes rest on such inputs, and lists the flags per nodule
    overview = AppTest.from_file(str(view.parent / "overview.py"), default_timeout=60)
    overview.session_state["results_dir"] = str(tiny_results_fresh)
    overview.run(timeout=60)
    assert not overview.exception
    assert any("1 of 2 scored nodules lie outside what the model knows (larger-than-roi 1, "
               "intensity 1)" in w.value
               for w in overview.warning)
    table = overview.dataframe[0].value
    assert "applicability" in table.columns
    assert "larger-than-roi; intensity" in set(table["applicability"])


def test_applicability_summary_counts_flags_and_unknown_domains_apart():
    from discovery.model.domain import applicability_summary

    assert applicability_summary(["ok", "ok", None]) is None
    text = applicability_summary(["ok", "larger-than-roi; intensity", "intensity",
                                  "larger-than-roi; domain-unknown", None])
    assert text.startswith("3 of 4 scored nodules lie outside what the model knows "
                           "(larger-than-roi 2, intensity 2)")
    assert text.endswith("for 1 of 4 nodules only the field of view could be checked.")
    assert applicability_summary(["domain-unknown"]) == (
        "The model card records no training domain: for 1 of 1 nodules only the field of view "
        "could be checked.")
