"""Tests for data_tools.lidc: LIDC-IDRI XML text written in the test, tiny CT grids."""

from __future__ import annotations

import logging
import math
from collections import OrderedDict

import numpy as np
import pytest

import data_tools.lidc_xml as lidc_module
from data_tools.errors import DataError, GeometryMismatchError, UnreadableFileError
from data_tools.lidc import (
    group_readings,
    lidc_mask,
    rasterise_reader_nodule,
    read_lidc_xml,
)
from data_tools.volume import Volume, affine_from_spacing

SECRET = "Doe^Jane_SYN-0001"          # folder names may carry patient names
SERIES_UID = "1.3.6.1.4.1.14519.5.2.1.6279.6001.999999"
Z0 = -50.0                             # slices at z = -50, -48, ..., -40


def _volume(*, reverse: bool = False) -> Volume:
    """6 slices of 16 x 16, 1 mm pixels, 2 mm slices at z = -50..-40 (either slice order)."""
    if reverse:
        aff = affine_from_spacing((2.0, 1.0, 1.0), origin_mm=(-8.0, -8.0, -40.0))
        aff[2, 0] = -2.0
    else:
        aff = affine_from_spacing((2.0, 1.0, 1.0), origin_mm=(-8.0, -8.0, Z0))
    return Volume(np.zeros((6, 16, 16), np.float32), aff)


def _square(x0, y0, x1, y1):
    """Dense closed contour (8-connected, first point repeated) of the rectangle's border."""
    pts = [(x, y0) for x in range(x0, x1)] + [(x1, y) for y in range(y0, y1)]
    pts += [(x, y1) for x in range(x1, x0, -1)] + [(x0, y) for y in range(y1, y0, -1)]
    return pts + [pts[0]]


def _roi(z, points, inclusion=True):
    edges = "".join(f"<edgeMap><xCoord>{x}</xCoord><yCoord>{y}</yCoord></edgeMap>"
                    for x, y in points)
    return (f"<roi><imageZposition>{z:.6f} </imageZposition><imageSOP_UID>1.2.3.{abs(int(z))}"
            f"</imageSOP_UID><inclusion>{'TRUE' if inclusion else 'FALSE'}</inclusion>"
            f"{edges}</roi>")


def _nodule(rois, chars=None, nid="Nodule 001"):
    ch = ""
    if chars is not None:
        ch = "<characteristics>" + "".join(f"<{k}>{v}</{k}>" for k, v in chars.items()) + \
            "</characteristics>"
    return f"<unblindedReadNodule><noduleID>{nid}</noduleID>{ch}{''.join(rois)}" \
           "</unblindedReadNodule>"


def _xml(sessions, *, ns='xmlns="http://www.nih.gov"', non_nodules=0):
    """LIDC XML text: *sessions* is a list (one per reader) of lists of nodule strings."""
    non = ("<nonNodule><nonNoduleID>NN1</nonNoduleID><imageZposition>-44.0</imageZposition>"
           "<imageSOP_UID>1.2.3</imageSOP_UID><locus><xCoord>1</xCoord><yCoord>1</yCoord>"
           "</locus></nonNodule>")
    body = "".join(
        f"<readingSession><annotationVersion>3.12</annotationVersion>"
        f"<servicingRadiologistID>anon{r}</servicingRadiologistID>{''.join(nods)}"
        f"{non * non_nodules}</readingSession>" for r, nods in enumerate(sessions))
    return (f'<?xml version="1.0" encoding="UTF-8"?>\n<LidcReadMessage {ns} '
            'uid="1.3.6.1.4.1.14519.5.2.1.6279.6001.1" tool="Max" toolVersion="1.0">'
            f"<ResponseHeader><Version>1.8.1</Version><SeriesInstanceUid>{SERIES_UID}"
            "</SeriesInstanceUid><TaskDescription>Second unblinded read</TaskDescription>"
            f"</ResponseHeader>{body}</LidcReadMessage>\n")


@pytest.fixture
def folder(tmp_path):
    d = tmp_path / SECRET
    d.mkdir()
    return d


@pytest.fixture(autouse=True)
def _logs_are_private(caplog, tmp_path):
    caplog.set_level(logging.DEBUG, logger="data_tools.lidc")
    yield
    for record in caplog.records:
        text = record.getMessage()
        assert str(tmp_path) not in text and SECRET not in text and SERIES_UID not in text


def _write(folder, text, name="069.xml"):
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


def _expect(cells, k=2):
    """Bool (6, 16, 16) with ``cells`` = iterable of (y, x) set on slice k."""
    out = np.zeros((6, 16, 16), dtype=bool)
    for y, x in cells:
        out[k, y, x] = True
    return out


def test_square_contour_interior_pixels_exactly(folder):
    # contour columns 2..7, rows 3..8 -> nodule columns 3..6, rows 4..7 (16 pixels)
    path = _write(folder, _xml([[_nodule([_roi(-46.0, _square(2, 3, 7, 8))])]]))
    nod = read_lidc_xml(path).readers[0][0]
    assert nod.rois[0].points_xy.shape == (21, 2) and nod.rois[0].inclusion
    got = rasterise_reader_nodule(nod, _volume())
    expected = _expect((y, x) for y in range(4, 8) for x in range(3, 7))
    np.testing.assert_array_equal(got, expected)
    # the same square given by its 4 corners only (sparse contour): same pixels
    corners = [(2, 3), (7, 3), (7, 8), (2, 8)]
    path2 = _write(folder, _xml([[_nodule([_roi(-46.0, corners)])]]), "corners.xml")
    np.testing.assert_array_equal(
        rasterise_reader_nodule(read_lidc_xml(path2).readers[0][0], _volume()), expected)


def test_diagonal_contour_excludes_its_pixels(folder):
    # diamond |x-8| + |y-6| = 4 -> interior |x-8| + |y-6| <= 3: 2*9 + 2*3 + 1 = 25 pixels
    diamond = [(8, 2), (12, 6), (8, 10), (4, 6)]
    path = _write(folder, _xml([[_nodule([_roi(-44.0, diamond)])]]))
    got = rasterise_reader_nodule(read_lidc_xml(path).readers[0][0], _volume())
    expected = _expect(((y, x) for y in range(16) for x in range(16)
                        if abs(x - 8) + abs(y - 6) <= 3), k=3)
    assert expected.sum() == 25
    np.testing.assert_array_equal(got, expected)


def test_exclusion_contour_makes_a_hole(folder):
    # outer contour 2..11 -> 8x8 = 64 pixels (3..10); hole contour 5..8 -> the hole's interior
    # 6..7 and its contour pixels 5..8 (the first voxels outside the nodule): 64 - 16 = 48
    rois = [_roi(-46.0, _square(2, 2, 11, 11)), _roi(-46.0, _square(5, 5, 8, 8), False)]
    path = _write(folder, _xml([[_nodule(rois)]]))
    got = rasterise_reader_nodule(read_lidc_xml(path).readers[0][0], _volume())
    expected = _expect((y, x) for y in range(3, 11) for x in range(3, 11)
                       if not (5 <= y <= 8 and 5 <= x <= 8))
    assert expected.sum() == 48
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("z_off", [-30.0, -45.0])   # off the grid; exactly half-way
def test_roi_without_a_slice_is_skipped_with_warning(folder, caplog, z_off):
    rois = [_roi(-46.0, _square(2, 3, 7, 8)), _roi(z_off, _square(2, 3, 7, 8))]
    path = _write(folder, _xml([[_nodule(rois)]]))
    with caplog.at_level(logging.WARNING, logger="data_tools.lidc"):
        got = rasterise_reader_nodule(read_lidc_xml(path).readers[0][0], _volume())
    assert got.sum() == 16 and got[2].sum() == 16
    assert any("matches no slice" in r.getMessage() for r in caplog.records)


def test_two_readers_grouped_third_far_nodule_separate(folder):
    # the same outline on neighbouring slices (one 2 mm slice step apart): grouped by the
    # default tolerance (the slice step); the third reader's outline is 4.7 mm away
    near_a = _nodule([_roi(-46.0, _square(2, 2, 7, 7))])
    near_b = _nodule([_roi(-44.0, _square(2, 2, 7, 7))])
    far = _nodule([_roi(-42.0, _square(10, 10, 14, 14))])
    scan = read_lidc_xml(_write(folder, _xml([[near_a], [near_b], [far]])))
    groups = group_readings(scan, _volume())
    assert [tuple(r.reader for r in g.readings) for g in groups] == [(1, 2), (3,)]
    # a fixed tolerance below the 2 mm contour distance splits them; above 4.7 mm joins all
    assert len(group_readings(scan, _volume(), distance_mm=1.9)) == 3
    assert len(group_readings(scan, _volume(), distance_mm=4.8)) == 1
    with pytest.raises(ValueError, match="received -1"):
        group_readings(scan, _volume(), distance_mm=-1)


def test_more_than_four_overlapping_readings_shrink_the_tolerance(folder):
    # five readers, two nodules whose outlines are 2 mm apart (one slice): at the 2 mm
    # default they would form one group of five; pylidc's rule shrinks the tolerance
    a = [_nodule([_roi(-46.0, _square(2, 2, 7, 7))]) for _ in range(3)]
    b = [_nodule([_roi(-44.0, _square(2, 2, 7, 7))]) for _ in range(2)]
    scan = read_lidc_xml(_write(folder, _xml([[n] for n in a + b])))
    groups = group_readings(scan, _volume())
    assert [tuple(r.reader for r in g.readings) for g in groups] == [(1, 2, 3), (4, 5)]


def test_reader_with_two_nearby_nodules_keeps_the_nearest_in_a_group(folder):
    r1 = _nodule([_roi(-46.0, _square(4, 4, 9, 9))])                    # centre (6.5, 6.5)
    r2_near = _nodule([_roi(-46.0, _square(5, 4, 10, 9))], nid="a")      # 1 mm away
    r2_far = _nodule([_roi(-46.0, _square(7, 4, 12, 9))], nid="b")       # 3 mm away
    scan = read_lidc_xml(_write(folder, _xml([[r1], [r2_near, r2_far]])))
    groups = group_readings(scan, _volume())
    assert sorted(g.n_readers for g in groups) == [1, 2]
    pair = next(g for g in groups if g.n_readers == 2)
    assert [(r.reader, r.index) for r in pair.readings] == [(1, 1), (2, 1)]


def _three_reader_nodule(chars=(None, None, None)):
    """Three readers, interiors rows 3..6 and columns 3..6 / 4..7 / 5..8 on slice k=2:
    votes per column 1, 2, 3, 3, 2, 1 for columns 3..8."""
    return [[_nodule([_roi(-46.0, _square(2 + i, 2, 7 + i, 7))], chars[i])] for i in range(3)]


def test_consensus_levels_hand_counted(folder):
    path = _write(folder, _xml(_three_reader_nodule()))
    vol = _volume()
    for level, cols in [(0.5, range(4, 8)), (1.0, range(5, 7)), (0.2, range(3, 9))]:
        mask, info = lidc_mask(path, vol, level=level)
        expected = _expect((y, x) for y in range(3, 7) for x in cols).astype(np.int16)
        np.testing.assert_array_equal(mask.array, expected)
        assert mask.labels == [1] and info[0]["n_readers"] == 3
        n = 4 * len(cols)
        assert info[0]["volume_mm3"] == pytest.approx(2.0 * n)
        assert info[0]["diameter_mm"] == pytest.approx((6 * 2.0 * n / math.pi) ** (1 / 3))
    assert np.allclose(mask.affine, vol.affine)
    for bad in (0, 1.5, float("nan"), "0.5", True):
        with pytest.raises(ValueError, match="received"):
            lidc_mask(path, vol, level=bad)
    with pytest.raises(ValueError, match="received 0"):
        lidc_mask(path, vol, min_readers=0)


def test_min_readers_labels_order_and_empty_consensus(folder, caplog):
    three = _three_reader_nodule()
    lone = _nodule([_roi(-42.0, _square(10, 10, 14, 14))])       # reader 1 only, slice 4
    sessions = [three[0] + [lone], three[1], three[2]]
    path = _write(folder, _xml(sessions))
    mask, info = lidc_mask(path, _volume())
    # labels by centroid z: the slice-2 nodule first, the slice-4 nodule second
    assert mask.labels == [1, 2] and [d["n_readers"] for d in info] == [3, 1]
    assert (mask.array[4] == 2).sum() == 9 and (mask.array[2] == 1).sum() == 16
    mask2, info2 = lidc_mask(path, _volume(), min_readers=2)
    assert [d["n_readers"] for d in info2] == [3]
    assert mask2.labels == [1] and (mask2.array == 1).sum() == 16
    # two readers with disjoint interiors 2 mm apart: grouped, empty at level 1.0 -> dropped
    disjoint = [[_nodule([_roi(-46.0, _square(2, 2, 5, 5))])],
                [_nodule([_roi(-46.0, _square(4, 2, 7, 5))])]]
    with caplog.at_level(logging.WARNING, logger="data_tools.lidc"):
        mask3, info3 = lidc_mask(_write(folder, _xml(disjoint), "d.xml"), _volume(), level=1.0)
    assert mask3.labels == [] and info3 == []
    assert any("empty consensus" in r.getMessage() for r in caplog.records)


def test_rating_medians_and_counts(folder):
    chars = ({"malignancy": 2, "spiculation": 1, "calcification": 6, "subtlety": 9},
             {"malignancy": 4, "spiculation": 2, "calcification": 6},
             {"malignancy": 5, "internalStructure": 1})
    _, info = lidc_mask(_write(folder, _xml(_three_reader_nodule(chars))), _volume())
    d = info[0]
    assert d["lidc_malignancy"] == 4.0 and d["lidc_malignancy_n"] == 3
    assert d["lidc_spiculation"] == 1.5 and d["lidc_spiculation_n"] == 2
    assert d["lidc_calcification"] == 6.0 and d["lidc_internal_structure"] == 1.0
    assert math.isnan(d["lidc_subtlety"]) and d["lidc_subtlety_n"] == 0   # 9 is out of range
    assert math.isnan(d["lidc_texture"]) and d["lidc_texture_n"] == 0
    assert not any("nodule_id" in k for k in d)


def test_single_point_small_nodule_marks_one_voxel(folder):
    path = _write(folder, _xml([[_nodule([_roi(-44.0, [(10, 12)])], nid="IL057_1")]]))
    nod = read_lidc_xml(path).readers[0][0]
    assert nod.is_small
    got = rasterise_reader_nodule(nod, _volume())
    assert got.sum() == 1 and got[3, 12, 10]
    mask, info = lidc_mask(path, _volume())
    assert mask.array[3, 12, 10] == 1 and (mask.array > 0).sum() == 1
    assert info[0]["n_readers"] == 1 and math.isnan(info[0]["lidc_malignancy"])


def test_truncated_empty_and_missing_files_name_the_file_only(folder, tmp_path):
    text = _xml(_three_reader_nodule())
    cases = {"trunc.xml": text[: len(text) // 2], "empty.xml": "", "blank.xml": "  \n",
             "notxml.xml": "this is not xml"}
    for name, body in cases.items():
        path = _write(folder, body, name)
        with pytest.raises(UnreadableFileError) as exc:
            read_lidc_xml(path)
        msg = str(exc.value)
        assert f"'{name}'" in msg and SECRET not in msg and str(tmp_path) not in msg
        assert exc.value.path == path
    with pytest.raises(UnreadableFileError, match="'gone.xml' does not exist") as exc:
        lidc_mask(folder / "gone.xml", _volume())
    assert SECRET not in str(exc.value)


def test_xml_without_reading_session_is_a_fixable_error(folder):
    path = _write(folder, '<IdriReadMessage xmlns="http://www.nih.gov"><ResponseHeader/>'
                          "</IdriReadMessage>", "cxr.xml")
    with pytest.raises(DataError, match="readingSession") as exc:
        read_lidc_xml(path)
    assert "'cxr.xml'" in str(exc.value) and SECRET not in str(exc.value)


@pytest.mark.parametrize("ns", ["", 'xmlns="http://www.nih.gov/idri"',
                                'xmlns:x="urn:other"'])
def test_other_or_no_namespace_parses_the_same(folder, ns, caplog):
    ref = read_lidc_xml(_write(folder, _xml(_three_reader_nodule(), non_nodules=2), "a.xml"))
    with caplog.at_level(logging.INFO, logger="data_tools.lidc"):
        other = read_lidc_xml(_write(folder, _xml(_three_reader_nodule(), ns=ns,
                                                  non_nodules=2), "b.xml"))
    assert other.n_readers == ref.n_readers == 3 and other.n_non_nodules == 6
    for a, b in zip(ref.nodules, other.nodules):
        assert a.reader == b.reader and a.rois[0].z_mm == b.rois[0].z_mm == -46.0
        np.testing.assert_array_equal(a.rois[0].points_xy, b.rois[0].points_xy)
    assert other.series_uid == SERIES_UID
    assert SERIES_UID not in repr(other) and "Nodule 001" not in repr(other)
    assert any("6 non-nodule marks" in r.getMessage() for r in caplog.records)
    assert all(SERIES_UID not in r.getMessage() for r in caplog.records)


def test_reversed_slice_order_gives_the_same_mask_in_world_space(folder):
    sessions = _three_reader_nodule()
    sessions[0].append(_nodule([_roi(-42.0, _square(10, 10, 14, 14)),
                                _roi(-40.0, _square(10, 10, 13, 13))]))
    path = _write(folder, _xml(sessions))
    fwd, info_f = lidc_mask(path, _volume())
    rev, info_r = lidc_mask(path, _volume(reverse=True))
    assert fwd.labels == [1, 2] and (fwd.array == 2).sum() == 9 + 4
    np.testing.assert_array_equal(rev.array[::-1], fwd.array)
    # every labelled voxel sits at the same patient position in both
    for lab in (1, 2):
        w_f = fwd.voxel_to_world(np.argwhere(fwd.array == lab))
        w_r = rev.voxel_to_world(np.argwhere(rev.array == lab))
        np.testing.assert_allclose(np.sort(w_f, axis=0), np.sort(w_r, axis=0))
    assert [d["diameter_mm"] for d in info_f] == pytest.approx([d["diameter_mm"] for d in info_r])


def test_malformed_number_and_non_axial_volume_are_fixable_errors(folder):
    bad = _xml([[_nodule([_roi(-46.0, _square(2, 3, 7, 8))])]]).replace("-46.000000 ", "abc")
    with pytest.raises(DataError, match="reader 1, nodule #1, roi #1 has imageZposition 'abc'"):
        read_lidc_xml(_write(folder, bad, "bad.xml"))
    good = _write(folder, _xml([[_nodule([_roi(-46.0, _square(2, 3, 7, 8))])]]))
    sagittal = Volume(np.zeros((6, 16, 16), np.float32),
                      np.array([[2.0, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, -50], [0, 0, 0, 1]]))
    with pytest.raises(GeometryMismatchError, match="not axial"):
        lidc_mask(good, sagittal)


@pytest.fixture
def parses(monkeypatch):
    """Counts of XML parses by file name, with an empty scan cache."""
    counts: dict[str, int] = {}
    real = lidc_module._parse_scan

    def counting(data, path):
        counts[path.name] = counts.get(path.name, 0) + 1
        return real(data, path)

    monkeypatch.setattr(lidc_module, "_SCAN_CACHE", OrderedDict())
    monkeypatch.setattr(lidc_module, "_parse_scan", counting)
    return counts


def test_xml_is_parsed_once_when_chosen_by_series_then_masked(folder, parses):
    # as data_tools.cases does with several XML files: read each for its series UID, then
    # build the mask of the matching one
    chosen = _write(folder, _xml(_three_reader_nodule()), "069.xml")
    other = _write(folder, _xml(_three_reader_nodule()).replace(SERIES_UID, "1.2.3.4"),
                   "070.xml")
    match = [p for p in (chosen, other) if read_lidc_xml(p).series_uid == SERIES_UID]
    assert match == [chosen]
    mask, info = lidc_mask(chosen, _volume())
    assert mask.labels == [1] and info[0]["n_readers"] == 3
    lidc_mask(str(chosen), _volume(), level=1.0)      # another spelling of the same path
    assert parses == {"069.xml": 1, "070.xml": 1}
    assert read_lidc_xml(chosen) is read_lidc_xml(folder / "." / "069.xml")


def test_rewritten_xml_is_parsed_again(folder, parses):
    path = _write(folder, _xml(_three_reader_nodule()))
    assert read_lidc_xml(path).n_readers == 3
    # same name, same size, at once: a cache keyed by the content, not the timestamp
    two = _xml(_three_reader_nodule()[:2])
    _write(folder, two + " " * (len(_xml(_three_reader_nodule())) - len(two)))
    assert read_lidc_xml(path).n_readers == 2
    assert parses == {"069.xml": 2}


def test_cached_scan_contours_are_read_only(folder, parses):
    nod = read_lidc_xml(_write(folder, _xml(_three_reader_nodule()))).readers[0][0]
    with pytest.raises(ValueError, match="read-only"):
        nod.rois[0].points_xy[0, 0] = 99
