"""The reliance on the nodule: the nodule and volume-matched controls replaced by parenchyma
and re-scored, with hand-set 'box mean' models whose answers are known."""

import math

import numpy as np
import pytest
import torch
from scipy import ndimage

from data_tools.volume import Mask, Volume, affine_from_spacing
from discovery.model.card import ModelCard
from discovery.model.edit import PARENCHYMA_BAND_HU, score_inputs
from discovery.model.reliance import (
    RELIANCE_OK,
    RelianceSettings,
    control_blobs,
    nodule_reliance,
    reliance_from_probabilities,
)
from discovery.model.rois import NoduleSite, nodule_sites, roi_input

SPACING = (1.5, 1.5, 1.5)
CARD = ModelCard()  # 32³ ROI at 1.5 mm, one [-1000, 3000] HU channel


class BoxMean(torch.nn.Module):
    """Malignancy logit = 200 * (mean input inside a box of the ROI - 0.055): dense tissue in
    the box means 'malignant' (parenchyma alone is about 0.0375 in the HU window)."""

    def __init__(self, box=(slice(12, 20),) * 3):
        super().__init__()
        self.box = box

    def forward(self, x):
        m = x[(slice(None), 0, *self.box)].mean(dim=(1, 2, 3))
        return torch.stack([torch.zeros_like(m), 200.0 * (m - 0.055)], dim=1)


def _scene(shape=(48, 56, 56), seed=0, radius_vox=3.0):
    """Parenchyma with noise, one soft-tissue nodule (label 1) in the middle."""
    rng = np.random.default_rng(seed)
    hu = (-850.0 + rng.normal(0, 20, shape)).astype(np.float32)
    zz, yy, xx = np.indices(shape)
    c = (np.asarray(shape) - 1) / 2.0
    ball = (zz - c[0]) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2 <= radius_vox ** 2
    hu[ball] = 30.0
    affine = affine_from_spacing(SPACING)
    return Volume(hu, affine), Mask(ball.astype(np.int16), affine)


def test_removing_a_nodule_inside_the_box_drops_p_and_a_control_does_not():
    vol, mask = _scene()
    (rel,) = nodule_reliance(BoxMean(), CARD, vol, mask)
    (site,) = nodule_sites(mask)
    p = float(score_inputs(BoxMean(), [roi_input(vol, site.center_zyx, CARD)])[0])
    assert rel.status == RELIANCE_OK and rel.n_controls == 2
    # the nodule fills ~1/6 of the box: with it p ~ 0.96, without it p ~ 0.03
    assert p > 0.9 and rel.p_without_nodule < 0.1
    assert abs(rel.p_without_control - p) < 0.02  # parenchyma for parenchyma: no change
    assert rel.rests_on_nodule == 1.0


def test_a_prediction_resting_on_something_else_does_not_rest_on_the_nodule():
    vol, mask = _scene()
    hu = vol.array.copy()
    hu[5:9, 25:31, 25:31] = 2600.0  # a dense bead about 25 mm above the nodule
    vol = Volume(hu, vol.affine)
    model = BoxMean(box=(slice(0, 8), slice(12, 20), slice(12, 20)))  # looks at the bead
    (rel,) = nodule_reliance(model, CARD, vol, mask)
    assert rel.p_without_nodule > 0.99 and rel.rests_on_nodule == 0.0


def test_the_measure_is_deterministic_and_seeded():
    vol, mask = _scene()
    a = nodule_reliance(BoxMean(), CARD, vol, mask)
    b = nodule_reliance(BoxMean(), CARD, vol, mask)
    assert a == b
    blobs = control_blobs(vol.array, mask.array > 0, mask.array > 0, spacing_mm=SPACING)
    again = control_blobs(vol.array, mask.array > 0, mask.array > 0, spacing_mm=SPACING)
    other = control_blobs(vol.array, mask.array > 0, mask.array > 0, spacing_mm=SPACING,
                          settings=RelianceSettings(seed=1))
    assert all((x == y).all() for x, y in zip(blobs, again))
    assert not all((x == y).all() for x, y in zip(blobs, other))


def test_control_blobs_are_volume_matched_in_parenchyma_and_away_from_nodules():
    vol, mask = _scene()
    own = mask.array > 0
    other = np.zeros_like(own)
    other[30:34, 10:14, 10:14] = True  # a second annotated nodule
    annotated = own | other
    settings = RelianceSettings(n_controls=5, gap_mm=3.0)
    blobs = control_blobs(vol.array, own, annotated, spacing_mm=SPACING, settings=settings)
    assert len(blobs) == 5
    dist = ndimage.distance_transform_edt(~annotated, sampling=SPACING)
    lo, hi = PARENCHYMA_BAND_HU
    box = ndimage.find_objects(own.astype(np.uint8))[0]
    for blob in blobs:
        assert blob.sum() == own.sum()
        (bbox,) = ndimage.find_objects(blob.astype(np.uint8))
        assert (blob[bbox] == own[box]).all()  # the same shape, moved
        assert dist[blob].min() > 3.0
        hu = vol.array[blob]
        assert ((hu >= lo) & (hu <= hi)).mean() >= 0.9


def test_empty_mask_gives_nan_with_a_status():
    vol, mask = _scene()
    ghost = NoduleSite(label=7, center_zyx=(23.5, 27.5, 27.5), n_voxels=0, volume_mm3=0.0)
    (rel,) = nodule_reliance(BoxMean(), CARD, vol, mask, sites=[ghost], probabilities=[0.9])
    assert math.isnan(rel.p_without_nodule) and math.isnan(rel.p_without_control)
    assert math.isnan(rel.rests_on_nodule) and "empty mask" in rel.status


def test_no_room_for_a_control_is_said_and_read_against_no_change():
    vol, mask = _scene(shape=(32, 36, 36), radius_vox=15.0)  # the nodule fills the ROI
    (rel,) = nodule_reliance(BoxMean(), CARD, vol, mask)
    assert math.isnan(rel.p_without_control) and rel.n_controls == 0
    assert "no control place" in rel.status
    assert rel.rests_on_nodule == 1.0  # the box held only nodule: removing it drops p to ~0
    (off,) = nodule_reliance(BoxMean(), CARD, vol, mask,
                             settings=RelianceSettings(n_controls=0))
    assert off.status == RELIANCE_OK and math.isnan(off.p_without_control)


@pytest.mark.parametrize("p, without, controls, rests", [
    (0.9, 0.3, [0.9], 1.0),        # removing the nodule takes 2/3 of p
    (0.9, 0.6, [0.9], 0.0),        # a third only: the prediction survives without it
    (0.9, 0.3, [0.3, 0.3], 0.0),   # the same edit elsewhere does as much
    (0.04, 0.0, [0.04], 0.0),      # below min_drop: nothing to rest
    (0.9, 0.3, [], 1.0),           # no control: read against no change
])
def test_the_rule(p, without, controls, rests):
    assert reliance_from_probabilities(p, without, controls).rests_on_nodule == rests


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="finite"):
        reliance_from_probabilities(0.9, float("nan"), [0.9])
    with pytest.raises(ValueError, match="relative_drop"):
        RelianceSettings(relative_drop=1.5)
    with pytest.raises(ValueError, match="n_controls"):
        RelianceSettings(n_controls=-1)
    vol, mask = _scene()
    with pytest.raises(ValueError, match="one probability per site"):
        nodule_reliance(BoxMean(), CARD, vol, mask, probabilities=[0.5, 0.5])


def test_the_pipeline_stores_the_reliance_beside_the_verdict():
    from discovery.batch.rows import result_rows
    from discovery.model.card import build_network
    from discovery.pipeline import analyze_scan

    torch.manual_seed(0)
    model = build_network(CARD).eval()
    vol, mask = _scene()
    res = analyze_scan(vol, mask, model, CARD, case_id="c0")
    (nod,) = res.nodules
    (alone,) = nodule_reliance(model, CARD, vol, mask, probabilities=[nod.probability])
    # the pipeline limits the surroundings to the lung field: the nodule's own figures agree
    for name in ("p_without_nodule", "p_without_control", "n_controls", "rests_on_nodule",
                 "status"):
        assert getattr(nod.reliance, name) == getattr(alone, name)
    assert nod.reliance.status == RELIANCE_OK
    (row,), _ = result_rows(res)
    assert row["p_without_nodule"] == alone.p_without_nodule
    assert row["p_without_control"] == alone.p_without_control
    assert row["rests_on_nodule"] == alone.rests_on_nodule in (0.0, 1.0)
    assert row["reliance_status"] == RELIANCE_OK
    for name in ("p_without_surroundings", "rests_on_surroundings", "surroundings_median_hu"):
        np.testing.assert_equal(row[name], getattr(nod.reliance, name))


def test_reliance_in_words():
    from discovery.model.reliance import reliance_text

    assert reliance_text(1.0, 0.1875, 0.984, "ok") == "yes (0.188 / 0.984)"
    assert reliance_text(0.0, 0.9, float("nan"), "no control") == "no (0.900 / –)"
    assert reliance_text(float("nan"), None, None, "empty mask") == "– (empty mask)"
    assert reliance_text(None, None, None, float("nan")) == "– (not measured)"  # an old row


def test_sum_under_is_scipys_valid_correlation():
    from scipy import signal

    from discovery.model.reliance import _sum_under

    rng = np.random.default_rng(2)
    for sa, sk in [((20, 24, 28), (5, 7, 3)), ((9, 9, 9), (9, 9, 9)), ((6, 7, 8), (1, 1, 1))]:
        a = (rng.random(sa) > 0.5).astype(np.float32)
        k = (rng.random(sk) > 0.3).astype(np.float32)
        expected = signal.fftconvolve(a, k[::-1, ::-1, ::-1], mode="valid")
        np.testing.assert_allclose(_sum_under(a, k), expected, atol=1e-3)
    a = np.zeros((4, 4, 4), np.float32)
    a[1, 2, 3] = 1.0
    k = np.ones((2, 2, 2), np.float32)
    got = np.rint(_sum_under(a, k))                      # by hand: the 2x2x2 boxes holding it
    assert got.shape == (3, 3, 3) and got.sum() == 4 and got[0:2, 1:3, 2].sum() == 4


def _rimmed(rim_hu=-550.0, outer_vox=6.0):
    """:func:`_scene` with a rim of raised density (a ground-glass halo) from the nodule's
    surface (3 voxels, 4.5 mm) out to *outer_vox* voxels from its centre."""
    vol, mask = _scene()
    zz, yy, xx = np.indices(vol.shape)
    c = (np.asarray(vol.shape) - 1) / 2.0
    r2 = (zz - c[0]) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2
    hu = vol.array.copy()
    hu[(r2 > 9.0) & (r2 <= outer_vox ** 2)] = rim_hu
    return Volume(hu, vol.affine), mask


#: Looks at a small box 3.5-5.5 voxels beside the ROI's centre: inside the rim of
#: :func:`_rimmed`, outside the nodule (a rim at -550 HU reads about 0.11 there, parenchyma
#: about 0.04: p ~ 1 with the rim, ~ 0.03 without).
RIM_WATCHER = (slice(15, 17), slice(15, 17), slice(19, 21))


def test_a_prediction_resting_on_the_rim_rests_on_the_surroundings_not_the_nodule():
    vol, mask = _rimmed()
    (rel,) = nodule_reliance(BoxMean(box=RIM_WATCHER), CARD, vol, mask)
    assert rel.p_without_nodule > 0.95 and rel.rests_on_nodule == 0.0
    assert rel.p_without_surroundings < 0.1 and rel.rests_on_surroundings == 1.0
    assert rel.surroundings_median_hu == pytest.approx(-550.0)
    assert rel.surroundings_max_hu == pytest.approx(-550.0)
    hu = vol.array.copy()
    hu[24, 24, 27] = 2600.0               # a clip in the rim, beside the nodule's surface
    (clipped,) = nodule_reliance(BoxMean(box=RIM_WATCHER), CARD, Volume(hu, vol.affine), mask)
    assert clipped.surroundings_max_hu == pytest.approx(2600.0)
    assert clipped.surroundings_median_hu == pytest.approx(-550.0)
    # a model that looks inside the nodule only, with the same rim: the other way round
    (rel,) = nodule_reliance(BoxMean(box=(slice(14, 18),) * 3), CARD, vol, mask)
    assert rel.rests_on_nodule == 1.0 and rel.rests_on_surroundings == 0.0


def test_surroundings_of_plain_parenchyma_change_nothing():
    vol, mask = _scene()
    (rel,) = nodule_reliance(BoxMean(), CARD, vol, mask)
    p = float(score_inputs(BoxMean(), [roi_input(vol, rel_site(mask), CARD)])[0])
    assert abs(rel.p_without_surroundings - p) < 0.02 and rel.rests_on_surroundings == 0.0
    assert -950 < rel.surroundings_median_hu < -750


def rel_site(mask):
    (site,) = nodule_sites(mask)
    return site.center_zyx


def test_the_surroundings_reach_stay_in_the_lung_and_off_every_nodule():
    from discovery.model.reliance import surroundings

    own = np.zeros((20, 20, 20), dtype=bool)
    own[8:12, 8:12, 8:12] = True
    other = np.zeros_like(own)
    other[8:12, 8:12, 14:16] = True       # another nodule 2 voxels away
    around = surroundings(own, own | other, spacing_mm=(1.0, 1.0, 1.0), reach_mm=2.0)
    dist = ndimage.distance_transform_edt(~own)
    np.testing.assert_array_equal(around, (dist <= 2.0) & ~own & ~other)
    lung = np.ones_like(own)
    lung[:, :, :10] = False               # the chest wall on one side
    limited = surroundings(own, own | other, spacing_mm=(1.0, 1.0, 1.0), reach_mm=2.0, lung=lung)
    np.testing.assert_array_equal(limited, around & lung)
    assert not surroundings(own, own, spacing_mm=(1.0, 1.0, 1.0), reach_mm=0.0).any()
    # physical reach: 2 mm is one voxel of 2 mm along z
    thick = surroundings(own, own, spacing_mm=(2.0, 1.0, 1.0), reach_mm=2.0)
    assert thick[7, 10, 10] and not thick[6, 10, 10] and thick[10, 10, 6]


def test_disabled_surroundings_are_not_measured():
    vol, mask = _rimmed()
    (rel,) = nodule_reliance(BoxMean(box=RIM_WATCHER), CARD, vol, mask,
                             settings=RelianceSettings(surroundings_mm=0.0))
    assert math.isnan(rel.p_without_surroundings) and math.isnan(rel.rests_on_surroundings)
    assert rel.rests_on_nodule == 0.0 and rel.n_controls == 2


def test_surroundings_in_words():
    from discovery.model.reliance import surroundings_text

    assert surroundings_text(1.0, 0.2123, -612.4) == "yes (0.212; median -612 HU)"
    assert surroundings_text(0.0, 0.9, float("nan")) == "no (0.900)"
    assert surroundings_text(float("nan"), float("nan")) == "– (not measured)"
    assert surroundings_text(None, None) == "– (not measured)"
