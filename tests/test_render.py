"""Slice rendering shared by the review app and the HTML report."""

from __future__ import annotations


import numpy as np
import pytest
from scipy import ndimage

from discovery.report import render


# -- windowing ------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(render.WINDOWS))
def test_window_image_golden_values(name):
    width, level = render.WINDOWS[name]
    lo, hi = level - width / 2, level + width / 2
    hu = np.array([[level, lo - 1, lo, hi, hi + 1, -3024, 3071]], dtype=np.int16)
    out = render.window_image(hu, width=width, level=level)
    assert out.dtype == np.uint8 and out.shape == hu.shape
    assert out[0, 0] in (127, 128)
    assert out[0, 1:].tolist() == [0, 0, 255, 255, 0, 255]


def test_window_image_is_monotonic_and_rejects_bad_width():
    hu = np.linspace(-1400, 200, 50)[None, :]
    out = render.window_image(hu, width=1500, level=-600).astype(int)
    assert (np.diff(out) >= 0).all()
    with pytest.raises(ValueError):
        render.window_image(hu, width=0, level=0)


# -- overlay ----------------------------------------------------------------------------------
def _ct(shape=(32, 32)):
    rng = np.random.default_rng(0)
    return rng.integers(-1000, 300, size=shape).astype(np.int16)


def test_overlay_with_opacity_zero_is_the_gray_image():
    ct = _ct()
    attr = np.random.default_rng(1).random(ct.shape).astype(np.float32)
    out = render.overlay_slice(ct, attribution2d=attr, window="lung", opacity=0.0, attr_max=1.0)
    gray = render.window_image(ct, width=1500, level=-600)
    assert out.shape == ct.shape + (3,) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, np.repeat(gray[:, :, None], 3, axis=2))


def test_overlay_leaves_zero_attribution_transparent():
    ct = _ct()
    attr = np.zeros(ct.shape, np.float32)
    attr[10:12, 10:12] = 1.0
    out = render.overlay_slice(ct, attribution2d=attr, opacity=0.8, attr_max=1.0)
    gray = render.overlay_slice(ct)
    changed = (out != gray).any(axis=2)
    assert changed[10:12, 10:12].all() and changed.sum() == 4


def test_mask_contour_is_exactly_the_boundary_of_a_square():
    ct = np.full((20, 20), -800, np.int16)
    mask = np.zeros((20, 20), np.int16)
    mask[5:15, 6:16] = 1
    out = render.overlay_slice(ct, mask2d=mask, opacity=0.0)
    green = (out == render.MASK_COLOR).all(axis=2)
    expected = np.zeros_like(green)
    expected[5:15, 6:16] = True
    expected[6:14, 7:15] = False
    np.testing.assert_array_equal(green, expected)
    m = mask > 0
    np.testing.assert_array_equal(green, m & ~ndimage.binary_erosion(m))


def test_region_contours_are_cyan_and_the_mask_is_drawn_on_top():
    ct = np.full((20, 20), -800, np.int16)
    mask = np.zeros((20, 20), np.int16)
    mask[2:8, 2:8] = 1
    regions = np.zeros((20, 20), np.int16)
    regions[2:8, 2:8] = 1        # same square: the mask colour wins
    regions[12:16, 12:16] = 2
    out = render.overlay_slice(ct, mask2d=mask, regions2d=regions)
    assert (out[2, 2] == render.MASK_COLOR).all()
    assert (out[12, 12] == render.REGION_COLOR).all()
    assert (out[13, 13] == out[0, 0]).all()  # the inside stays gray


def test_attr_max_fixes_the_colour_scale_across_slices():
    ct = np.full((8, 8), -800, np.int16)
    a1 = np.zeros((8, 8), np.float32)
    a2 = np.zeros((8, 8), np.float32)
    a1[3, 3] = a2[3, 3] = 0.5
    a1[0, 0] = 1.0   # slice 1 peaks at 1.0 ...
    a2[0, 0] = 4.0   # ... slice 2 at 4.0
    kw = dict(opacity=1.0, attr_max=4.0)
    c1 = render.overlay_slice(ct, attribution2d=a1, **kw)[3, 3]
    c2 = render.overlay_slice(ct, attribution2d=a2, **kw)[3, 3]
    np.testing.assert_array_equal(c1, c2)
    np.testing.assert_array_equal(c1, render._lut()[round(0.5 / 4.0 * 255)])
    # without attr_max each slice is scaled to its own maximum (documented), so they differ
    s1 = render.overlay_slice(ct, attribution2d=a1, opacity=1.0)[3, 3]
    s2 = render.overlay_slice(ct, attribution2d=a2, opacity=1.0)[3, 3]
    assert not np.array_equal(s1, s2)


def test_threshold_hides_low_attribution_and_values_saturate():
    ct = np.full((4, 4), -800, np.int16)
    attr = np.array([[0.1, 0.3, 0.6, 2.0]] * 4, np.float32)
    gray = render.overlay_slice(ct)
    out = render.overlay_slice(ct, attribution2d=attr, opacity=1.0, attr_max=1.0, threshold=0.5)
    assert (out[:, :2] == gray[:, :2]).all()
    np.testing.assert_array_equal(out[0, 3], render._lut()[255])


# -- colour bar, PNG, slices and crops ------------------------------------------------------------
def test_colorbar_runs_from_zero_at_the_bottom_to_max_at_the_top():
    bar = render.colorbar_image(attr_max=2.0, height=100, width=10)
    assert bar.shape == (100, 10, 3) and bar.dtype == np.uint8
    np.testing.assert_array_equal(bar[0, 0], render._lut()[255])
    np.testing.assert_array_equal(bar[-1, 0], render._lut()[0])
    flat = render.colorbar_image(attr_max=2.0, height=100, width=10, horizontal=True)
    assert flat.shape == (10, 100, 3)
    ticks = render.colorbar_ticks(2.0, 5)
    assert [t[0] for t in ticks] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert [t[1] for t in ticks] == ["0", "0.5", "1", "1.5", "2"]
    with pytest.raises(ValueError):
        render.colorbar_image(attr_max=0.0)
    labelled = render.labelled_colorbar(attr_max=2.0, length=200)
    assert labelled.ndim == 3 and labelled.shape[1] >= 200


def test_to_png_bytes_round_trips():
    from io import BytesIO

    from PIL import Image

    rgb = render.overlay_slice(_ct())
    data = render.to_png_bytes(rgb)
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    np.testing.assert_array_equal(np.asarray(Image.open(BytesIO(data))), rgb)


def test_key_slice_picks_the_slice_with_most_voxels():
    mask = np.zeros((6, 10, 10), np.int16)
    mask[1, :2, :2] = 1      # 4 voxels
    mask[3, :3, :3] = 1      # 9 voxels
    mask[4, :5, :5] = 2      # another label
    assert render.key_slice(mask, 1) == 3
    assert render.key_slice(mask, 2) == 4
    with pytest.raises(ValueError):
        render.key_slice(mask, 7)



def test_key_slice_with_attribution_picks_the_slice_the_map_looks_at():
    """On thick slices the map can cover only part of a large nodule: the reports then show
    the slice with the most attribution inside the nodule's in-plane box; attribution
    elsewhere on the slice (another nodule's) and on slices without the label does not
    count; no attribution over the nodule: the largest cross-section."""
    mask = np.zeros((6, 10, 10), np.int16)
    mask[1, 2:4, 2:4] = 1    # 4 voxels
    mask[3, 1:5, 1:5] = 1    # 16 voxels: the largest cross-section
    mask[2, 2:3, 2:3] = 1    # 1 voxel
    attr = np.zeros(mask.shape, np.float32)
    attr[1, 1, 1] = 0.5      # inside the label's in-plane box (rows/cols 1-4), off its voxels
    attr[2, 3, 3] = 0.3
    attr[3, 8, 8] = 5.0      # beside another structure on the largest slice: outside the box
    attr[5, 2, 2] = 9.0      # a slice without the label
    assert render.key_slice(mask, 1) == 3
    assert render.key_slice(mask, 1, attribution=attr) == 1
    attr[1, 1, 1] = 0.0
    assert render.key_slice(mask, 1, attribution=attr) == 2
    assert render.key_slice(mask, 1, attribution=np.zeros_like(attr)) == 3
    with pytest.raises(ValueError, match="shape"):
        render.key_slice(mask, 1, attribution=attr[1:])
    # the slices that hold the label, when known, give the same answer reading only them
    attr[1, 1, 1] = 0.5
    for a in (None, attr, np.zeros_like(attr)):
        assert (render.key_slice(mask, 1, attribution=a, slices=[1, 2, 3])
                == render.key_slice(mask, 1, attribution=a))

def test_crop_around_pads_with_the_minimum_at_borders():
    arr = np.arange(100, dtype=np.int16).reshape(10, 10) + 5
    crop = render.crop_around(arr, (5, 5), 2)
    np.testing.assert_array_equal(crop, arr[3:8, 3:8])
    corner = render.crop_around(arr, (0.4, 9.6), 3)  # centre rounds to (0, 10)
    assert corner.shape == (7, 7)
    # rows -3..3 and columns 7..13: rows < 0 and columns > 9 are padding
    assert (corner[:3] == arr.min()).all() and (corner[:, 3:] == arr.min()).all()
    np.testing.assert_array_equal(corner[3:, :3], arr[0:4, 7:10])
    outside = render.crop_around(arr, (50, 50), 1)
    assert (outside == arr.min()).all()
    rgb = np.zeros((10, 10, 3), np.uint8)
    assert render.crop_around(rgb, (5, 5), 4).shape == (9, 9, 3)


def test_upscale_uses_an_integer_factor():
    img = np.arange(12, dtype=np.uint8).reshape(3, 4)
    big = render.upscale(img, 10)
    assert big.shape == (12, 16)
    np.testing.assert_array_equal(big[::4, ::4], img)
    assert render.upscale(img, 2) is img


# -- thumbnails -----------------------------------------------------------------------------
def _thumb_arrays():
    shape = (5, 40, 40)
    ct = np.full(shape, -850, np.int16)
    mask = np.zeros(shape, np.int16)
    mask[2, 18:23, 18:23] = 1
    mask[2, 30:34, 30:34] = 2
    region_map = np.zeros(shape, np.int16)
    region_map[2, 5:9, 5:9] = 1
    region_map[2, 5:9, 30:34] = 2
    attr = np.zeros(shape, np.float32)
    attr[2, 19:22, 19:22] = 4.0
    return {"ct": ct, "mask": mask, "region_map": region_map, "attribution": attr}


def _has(rgb, colour):
    return bool((rgb == np.asarray(colour, np.uint8)).all(axis=-1).any())


def test_thumbnail_outlines_only_the_chosen_region_and_nodule():
    a = _thumb_arrays()
    full = render.thumbnail(a, z=2, center_yx=(20, 20), half_size=19)
    assert full.shape == (39, 39, 3) and full.dtype == np.uint8
    one = render.thumbnail(a, z=2, center_yx=(20, 20), half_size=19, region=1, nodule=1)
    # region 2 (top right) and nodule 2 (bottom right) are outlined only in the full picture
    right = (slice(None), slice(25, None))
    assert _has(full[right], render.REGION_COLOR) and not _has(one[right], render.REGION_COLOR)
    assert _has(full[25:, 25:], render.MASK_COLOR) and not _has(one[25:, 25:], render.MASK_COLOR)
    assert _has(one[:15, :15], render.REGION_COLOR)  # region 1 is kept
    # the heat map sits on the nodule: its centre differs from the plain window there
    plain = render.thumbnail(a, z=2, center_yx=(20, 20), half_size=19, opacity=0.0)
    assert (one[19, 19] != plain[19, 19]).any() and (one[2, 36] == plain[2, 36]).all()


def test_thumbnail_clips_the_slice_and_pads_outside_the_scan():
    a = _thumb_arrays()
    low = render.thumbnail(a, z=-3, center_yx=(0, 0), half_size=10)
    high = render.thumbnail(a, z=99, center_yx=(0, 0), half_size=10)
    assert low.shape == high.shape == (21, 21, 3)
    np.testing.assert_array_equal(low, render.thumbnail(a, z=0, center_yx=(0, 0), half_size=10))


def test_densest_near_region_finds_a_bead_beside_the_region():
    a = _thumb_arrays()
    a["ct"][3, 4, 9] = 2600   # a bead one voxel off region 1 (z 2, y 5-8, x 5-8), next slice
    a["ct"][2, 20, 20] = 3000  # denser, but far from region 1
    assert render.densest_near_region(a, 1, reach_vox=2) == (3, 4, 9)
    assert render.densest_near_region(a, 1, reach_vox=0)[0] == 2  # inside the region only
    # nothing dense near it: still a voxel next to the region (an int16 scan once made the
    # fill value for the voxels beyond the reach wrap to 0 HU, which then won)
    a["ct"][3, 4, 9] = -850
    z, y, x = render.densest_near_region(a, 1, reach_vox=1)
    assert 1 <= z <= 3 and 4 <= y <= 9 and 4 <= x <= 9
    with pytest.raises(ValueError, match="region 7"):
        render.densest_near_region(a, 7)


def test_densest_near_nodule_looks_within_the_reach_in_millimetres():
    from discovery.patterns.outcomes import Exemplar

    a = _thumb_arrays()                 # nodule 1: z 2, y 18-22, x 18-22
    a["affine"] = np.diag([2.0, 1.0, 1.0, 1.0])        # 2 mm slices, 1 mm pixels
    a["ct"][2, 20, 26] = 2500          # 4 mm beyond the nodule's edge (x 22 -> 26), in plane
    a["ct"][2, 20, 28] = 3000          # 6 mm: beyond a 5 mm reach
    a["ct"][0, 20, 20] = 2900          # two slices off: 4 mm away along z
    assert render.densest_near_nodule(a, 1, reach_mm=5.0) == (0, 20, 20)
    # only lung within 3 mm: the first voxel in order, on the slice 2 mm above, at sqrt(4+4+1) mm
    assert render.densest_near_nodule(a, 1, reach_mm=3.0) == (1, 16, 17)
    assert render.densest_near_nodule(a, 1, reach_mm=6.0) == (2, 20, 28)
    with pytest.raises(ValueError, match="nodule 5"):
        render.densest_near_nodule(a, 5, reach_mm=5.0)
    # an exemplar of metal beside a nodule (no region) is drawn on the metal's slice
    img = render.exemplar_image(a, Exemplar("c", "n1", 2.0, (20.0, 20.0), None, 1, "x",
                                            focus="densest"), half_size=10)
    want = render.thumbnail(a, z=0, center_yx=(20.0, 20.0), half_size=10, nodule=1, opacity=0.0)
    np.testing.assert_array_equal(img[:, :21], want)


def test_side_by_side_and_exemplar_image():
    from discovery.patterns.outcomes import Exemplar

    red = np.zeros((3, 2, 3), np.uint8)
    red[..., 0] = 255
    out = render.side_by_side(red, red, gap=1)
    assert out.shape == (3, 5, 3) and (out[:, 2] == 255).all() and (out[:, :2, 1] == 0).all()
    with pytest.raises(ValueError, match="height"):
        render.side_by_side(red, red[:2])
    a = _thumb_arrays()
    a["ct"][3, 4, 9] = 2600
    ex = Exemplar("c", "n1", 2.0, (20.0, 20.0), 1, 1, "caption", focus="densest")
    img = render.exemplar_image(a, ex, half_size=10)
    assert img.shape == (21, 21 * 2 + 4, 3)
    # densest focus: slice 3, centred halfway between the nodule (20, 20) and the bead (4, 9)
    want = render.thumbnail(a, z=3, center_yx=(12.0, 14.5), half_size=10, region=1, nodule=1,
                            opacity=0.0)
    np.testing.assert_array_equal(img[:, :21], want)
    plain = render.exemplar_image(a, Exemplar("c", "n1", 2.0, (20.0, 20.0), None, 1, "x"),
                                  half_size=10)
    np.testing.assert_array_equal(
        plain[:, :21], render.thumbnail(a, z=2, center_yx=(20, 20), half_size=10, nodule=1,
                                        opacity=0.0))


def test_key_slice_choice_says_when_the_map_did_not_choose_the_slice():
    mask = np.zeros((5, 6, 6), np.int16)
    mask[1:4, 2:4, 2:4] = 1
    mask[3, 1:5, 1:5] = 1                                    # largest cross-section: slice 3
    attr = np.zeros(mask.shape, np.float32)
    attr[1, 2, 2] = 1.0                                      # the map looks at slice 1
    assert render.key_slice_choice(mask, 1, attribution=attr) == (1, render.KEY_SLICE_RULE)
    assert render.key_slice_choice(mask, 1, attribution=np.zeros_like(attr)) == (
        3, render.KEY_SLICE_FALLBACK)
    assert render.key_slice_choice(mask, 1) == (3, render.KEY_SLICE_FALLBACK)  # no map given
    attr[1] = 0.0
    attr[2, 1, 1] = 0.5     # in the nodule's box over all its slices, outside slice 2's own
    assert render.key_slice_choice(mask, 1, attribution=attr) == (2, render.KEY_SLICE_RULE)
    attr[4, 2, 2] = 5.0                                      # off the nodule's slices: ignored
    assert render.key_slice(mask, 1, attribution=attr) == 2
