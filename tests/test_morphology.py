"""Ball dilation and closing by shifted ORs (discovery.regions.morphology) against SciPy's
exact Euclidean distance transforms, and a hand-computed ball."""

import numpy as np
import pytest
from scipy import ndimage

from discovery.regions.morphology import ball_half_widths, close_ball, dilate_ball

SPACINGS = [(1.0, 0.7, 0.7), (2.5, 0.6, 0.8), (1.0, 1.0, 1.0), (0.5, 3.0, 1.2)]


def test_ball_half_widths_by_hand():
    # radius 1 on a unit grid: the 6-neighbourhood and the centre
    assert ball_half_widths((1, 1, 1), 1.0) == {(-1, 0): 0, (0, -1): 0, (0, 0): 1, (0, 1): 0,
                                               (1, 0): 0}
    # radius 2 at (2, 1, 1) mm: one slice up or down holds only the centre line's voxel
    w = ball_half_widths((2.0, 1.0, 1.0), 2.0)
    assert w[(1, 0)] == 0 and (1, 1) not in w and w[(0, 0)] == 2 and w[(0, 1)] == 1
    assert ball_half_widths((1, 1, 1), 0.0) == {(0, 0): 0}


def test_single_voxel_dilates_to_the_ball():
    img = np.zeros((9, 11, 11), dtype=bool)
    img[4, 5, 5] = True
    out = dilate_ball(img, spacing_mm=(1.0, 0.7, 0.7), radius_mm=2.0)
    z, y, x = np.indices(img.shape)
    ball = np.sqrt(((z - 4) * 1.0) ** 2 + ((y - 5) * 0.7) ** 2 + ((x - 5) * 0.7) ** 2) <= 2.0
    np.testing.assert_array_equal(out, ball)


@pytest.mark.parametrize("spacing", SPACINGS)
@pytest.mark.parametrize("radius", [0.3, 1.0, 4.000001, 5.5])
def test_equals_distance_transforms(spacing, radius):
    rng = np.random.default_rng(3)
    img = rng.random((24, 30, 28)) < 0.01
    img[8:12, 4:16, 3:9] = True
    ref = ndimage.distance_transform_edt(~img, sampling=spacing) <= radius
    np.testing.assert_array_equal(dilate_ball(img, spacing_mm=spacing, radius_mm=radius), ref)
    # the closing as lung_mask computed it before: padded, so the dilation has a False voxel
    pad = [int(np.ceil(radius / s)) + 1 for s in spacing]
    padded = np.pad(img, [(p, p) for p in pad])
    dil = ndimage.distance_transform_edt(~padded, sampling=spacing) <= radius
    ref_close = ndimage.distance_transform_edt(dil, sampling=spacing) > radius
    np.testing.assert_array_equal(close_ball(padded, spacing_mm=spacing, radius_mm=radius),
                                  ref_close)


def test_closing_invariants():
    rng = np.random.default_rng(5)
    img = ndimage.binary_opening(rng.random((20, 26, 26)) < 0.55)
    closed = close_ball(img, spacing_mm=(1.0, 0.8, 0.8), radius_mm=2.0)
    assert (closed >= img).all()                       # extensive
    np.testing.assert_array_equal(close_ball(closed, spacing_mm=(1.0, 0.8, 0.8),
                                             radius_mm=2.0), closed)   # idempotent
    assert not dilate_ball(np.zeros((4, 4, 4), bool), spacing_mm=(1, 1, 1), radius_mm=3).any()
    assert close_ball(np.ones((4, 4, 4), bool), spacing_mm=(1, 1, 1), radius_mm=3).all()


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="3-D"):
        dilate_ball(np.zeros((4, 4), bool), spacing_mm=(1, 1, 1), radius_mm=1)
    with pytest.raises(ValueError, match="radius_mm"):
        dilate_ball(np.zeros((4, 4, 4), bool), spacing_mm=(1, 1, 1), radius_mm=-1)
