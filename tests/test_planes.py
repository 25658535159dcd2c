"""Planes of a (z, y, x) volume in display orientation, with square-millimetre sizes."""

import numpy as np
import pytest

from discovery.report.planes import (
    display_size, n_slices, plane_index, plane_point, plane_slice, resize_to, zoom_box,
)


@pytest.fixture
def vol():
    return np.arange(3 * 4 * 5).reshape(3, 4, 5)  # value = 20 z + 5 y + x


def test_axial_is_the_slice_itself(vol):
    np.testing.assert_array_equal(plane_slice(vol, "axial", 1), vol[1])


def test_coronal_and_sagittal_put_superior_at_the_top(vol):
    cor = plane_slice(vol, "coronal", 2)
    assert cor.shape == (3, 5) and cor[0, 0] == vol[2, 2, 0] and cor[-1, 0] == vol[0, 2, 0]
    sag = plane_slice(vol, "sagittal", 4)
    assert sag.shape == (3, 4) and sag[0, 1] == vol[2, 1, 4] and sag[-1, 3] == vol[0, 3, 4]


def test_index_is_clipped_and_counted(vol):
    np.testing.assert_array_equal(plane_slice(vol, "sagittal", 99), plane_slice(vol, "sagittal", 4))
    assert [n_slices(vol.shape, p) for p in ("axial", "coronal", "sagittal")] == [3, 4, 5]
    assert plane_index((1.4, 2.6, 0.2), "coronal") == 3
    with pytest.raises(ValueError, match="plane must be one of"):
        plane_slice(vol, "oblique", 0)


def test_display_size_makes_millimetres_square():
    # 60 slices of 2.5 mm, 100 rows of 0.75 mm, 80 columns of 0.75 mm
    assert display_size((100, 80), "axial", (2.5, 0.75, 0.75), min_size=160) == (200, 160)
    h, w = display_size((60, 80), "coronal", (2.5, 0.75, 0.75), min_size=120)
    assert (h, w) == (300, 120)  # 150 mm tall, 60 mm wide: superior-inferior not squashed


def test_resize_nearest_keeps_values():
    img = np.array([[1, 2], [3, 4]])
    out = resize_to(img, (4, 6))
    np.testing.assert_array_equal(out, [[1, 1, 1, 2, 2, 2]] * 2 + [[3, 3, 3, 4, 4, 4]] * 2)
    assert set(np.unique(resize_to(np.eye(3), (7, 5)))) <= {0.0, 1.0}


@pytest.mark.parametrize("plane", ["axial", "coronal", "sagittal"])
def test_plane_point_finds_the_voxel_in_the_displayed_slice(vol, plane):
    zyx = (2, 1, 3)
    img = plane_slice(vol, plane, plane_index(zyx, plane))
    r, c = plane_point(zyx, plane, vol.shape)
    assert img[int(r), int(c)] == vol[zyx]


def test_zoom_box_centres_and_stays_inside():
    rows, cols = zoom_box((100, 80), (50, 40), 4)
    assert (rows.stop - rows.start, cols.stop - cols.start) == (25, 20)
    assert rows.start == 38 and cols.start == 30
    rows, cols = zoom_box((100, 80), (2, 79), 2)  # near a corner: shifted, not cut
    assert (rows.start, rows.stop, cols.start, cols.stop) == (0, 50, 40, 80)
    assert zoom_box((10, 10), (5, 5), 1) == (slice(0, 10), slice(0, 10))
