"""Real scanners' files against independent oracles (issue 20), read in place from
``../shared/realdata`` (tests/_realdata.py; required in CI)."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest

from _realdata import realdata


def _sitk_array(path):
    import SimpleITK as sitk

    image = sitk.ReadImage(str(path))
    return sitk.GetArrayFromImage(image), image


def test_real_lung_field_against_the_chest_imaging_platform_mask():
    """The HU-based lung field of the region descriptors against the real whole-lung mask of
    the same chest CT (64 x 64 x 79 at 4.2 x 4.2 x 4.0 mm), read through the DICOM loader and
    checked voxel for voxel against the NRRD export SimpleITK reads."""
    from data_tools.dicom import load_dicom_series
    from discovery.regions.descriptors import lung_mask

    root = realdata("chest-imaging-platform")
    volume = load_dicom_series(root / "ct-64Dicom")
    nrrd, image = _sitk_array(root / "ct-64.nrrd")
    np.testing.assert_array_equal(volume.array, nrrd.astype(np.float32))   # same HU, same grid
    np.testing.assert_allclose(volume.voxel_to_world((0, 0, 0)),
                               image.TransformIndexToPhysicalPoint((0, 0, 0)), atol=1e-3)
    truth = _sitk_array(root / "wholeLung-64.nrrd")[0] > 0
    field = lung_mask(volume.array, spacing_mm=volume.spacing_mm)
    dice = 2.0 * (field & truth).sum() / (field.sum() + truth.sum())
    assert dice >= 0.975, dice          # measured 0.980 (docs/guide/inputs.md, real files)
    exact = load_dicom_series(root / "ct-64Dicom", integer_hu=True)   # as discovery score
    assert exact.array.dtype == np.int16
    np.testing.assert_array_equal(exact.array, volume.array)
    np.testing.assert_array_equal(lung_mask(exact.array, spacing_mm=exact.spacing_mm), field)


@pytest.mark.parametrize("name", ["CT1", "CT2"])
def test_nema_wg04_every_transfer_syntax_decodes_to_the_reference(name):
    """NEMA WG04 CT1 (GE) and CT2 (Toshiba) in every transfer syntax: the lossless ones equal
    the uncompressed REF bit for bit; the lossy ones stay within their stated tolerance."""
    root = realdata("nema-wg04")
    ref = pydicom.dcmread(next((root / "REF").glob(f"{name}*"))).pixel_array.astype(np.int32)
    seen = {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and p.name != "REF"):
        files = sorted(folder.glob(f"{name}*"))
        if not files:
            continue
        ds = pydicom.dcmread(files[0])
        diff = np.abs(ds.pixel_array.astype(np.int32) - ref)
        seen[folder.name] = int(diff.max())
    lossless = {k: v for k, v in seen.items() if k in ("J2KR", "JLSL", "JPLL", "RLE")}
    assert set(lossless) == {"J2KR", "JLSL", "JPLL", "RLE"} and set(lossless.values()) == {0}, seen
    assert 0 < seen["JLSN"] <= 4, seen              # near-lossless JPEG-LS: NEAR = 4 here
    # lossy JPEG 2000: measured RMSE 38 (CT1) and 30 (CT2) stored units, PSNR 41 dB over the
    # image's range; the documented tolerance is PSNR >= 40 dB
    lossy = pydicom.dcmread(next((root / "J2KI").glob(f"{name}*"))).pixel_array.astype(float)
    rmse = float(np.sqrt(((lossy - ref) ** 2).mean()))
    assert 0 < rmse and 20 * np.log10(float(ref.max() - ref.min()) / rmse) >= 40.0, rmse


def _case_with(tmp_path, *files, series="ct-3slice"):
    """A case folder of dcmqi's three real CT slices plus *files* (copied to a temporary
    folder, never into the repository)."""
    import shutil

    root = realdata("dcmqi")
    case = tmp_path / "case"
    shutil.copytree(root / series, case)
    for f in files:
        shutil.copy(root / f, case)
    return case


def test_dcmqi_liver_seg_equals_dcmqis_own_label_map_voxel_for_voxel(tmp_path):
    from data_tools.cases import read_case
    from data_tools.layouts import discover_cases

    loaded = read_case(discover_cases(_case_with(tmp_path, "liver.dcm"))[0])
    truth, image = _sitk_array(realdata("dcmqi") / "liver_seg.nrrd")
    assert loaded.mask_source == "seg" and loaded.mask.array.shape == truth.shape
    np.testing.assert_allclose(loaded.volume.voxel_to_world((0, 0, 0)),
                               image.TransformIndexToPhysicalPoint((0, 0, 0)), atol=1e-3)
    np.testing.assert_array_equal(loaded.mask.array > 0, truth > 0)       # 107,098 voxels
    assert int((truth > 0).sum()) == 107098


def test_dcmqi_real_ge_slices_export_to_dicom(tmp_path):
    """dcmqi's three real GE slices (empty SpecificCharacterSet, no BodyPartExamined nor
    Laterality) with their liver SEG, scored and exported: the export used to fail on the
    empty character set (highdicom refuses it); now the SEG, Parametric Map and SR pass
    dciodvfy (when installed) and the de-identified slices carry no empty character set."""
    import shutil
    import subprocess

    from discovery.batch.score import score_folder
    from discovery.report.dicom import export_dicom

    inp = tmp_path / "in"
    _case_with(inp, "liver.dcm")
    assert pydicom.dcmread(next((inp / "case").glob("0*.dcm"))).SpecificCharacterSet == ""
    assert score_folder(inp, tmp_path / "results").n_failed == 0
    report = export_dicom(tmp_path / "results", inp, tmp_path / "dicom", key="test-key")
    assert report["failed"] == {} and len(report["exported"]) == 1
    (files,) = report["exported"].values()
    ct = [pydicom.dcmread(p) for p in files if p.parent.name == "ct"]
    assert len(ct) == 3 and all("SpecificCharacterSet" not in d for d in ct)
    dciodvfy = shutil.which("dciodvfy")
    if dciodvfy is None:
        return  # test_export_dicom.py's validator test says whether it is required
    for path in files[-3:]:
        run = subprocess.run([dciodvfy, str(path)], capture_output=True, text=True, timeout=60)
        errors = [line for line in (run.stdout + run.stderr).splitlines()
                  if line.startswith("Error")]
        assert errors == [], (path.name, errors)


def test_dcmqi_overlapping_segments_give_one_label_each_and_a_warning(tmp_path, caplog):
    """partial_overlaps.dcm: five segments, 3,134 voxels in more than one; each segment one
    label, the later segment winning where they overlap, with a warning that says so."""
    import logging

    from data_tools.cases import read_case
    from data_tools.layouts import discover_cases

    with caplog.at_level(logging.WARNING):
        loaded = read_case(discover_cases(_case_with(tmp_path, "partial_overlaps.dcm"))[0])
    assert sorted(np.unique(loaded.mask.array).tolist()) == [0, 1, 2, 3, 4, 5]
    assert [n["segment_label"] for n in loaded.nodules] == ["GREEN", "ORANGE", "PURPLE",
                                                            "LIGHT_BLUE", "DARK_BLUE"]
    assert "3134 voxel(s) belong to more than one selected label" in caplog.text


def _slices_volume(files):
    """A Volume of single CT files (fewer than the series loader's three), built from their
    own geometry: world = affine @ (z, y, x, 1)."""
    from data_tools.volume import Volume

    ds = sorted((pydicom.dcmread(f) for f in files), key=lambda d: float(d.ImagePositionPatient[2]))
    ipp = np.array(ds[0].ImagePositionPatient, float)
    iop = np.array(ds[0].ImageOrientationPatient, float)
    dy, dx = (float(v) for v in ds[0].PixelSpacing)
    dz = (float(ds[1].ImagePositionPatient[2]) - ipp[2]) if len(ds) > 1 else 3.0
    affine = np.eye(4)
    affine[:3, 0] = np.cross(iop[:3], iop[3:]) * dz
    affine[:3, 1], affine[:3, 2], affine[:3, 3] = iop[3:] * dy, iop[:3] * dx, ipp
    hu = np.stack([d.pixel_array * float(d.RescaleSlope) + float(d.RescaleIntercept) for d in ds])
    return Volume(hu.astype(np.float32), affine), {str(d.SOPInstanceUID) for d in ds}, ds


def test_dicompyler_rtstruct_lists_its_rois_and_rasterises_like_an_independent_rasteriser():
    """A real planning system's RTSTRUCT (10 ROIs) over one of its CT slices: the BODY contours
    on that slice rasterised by the tool and, independently, by matplotlib's point-in-polygon
    (pixel centres, even-odd across a ROI's contours): 2 pixels of 40,398 differ (centres on
    the contour line)."""
    from matplotlib.path import Path as PolygonPath

    from data_tools.dicom_masks import rtstruct_mask
    from data_tools.errors import MaskError

    root = realdata("dicompyler")
    volume, uids, (ct,) = _slices_volume([root / "ct.0.dcm"])
    with pytest.raises(MaskError) as listed:
        rtstruct_mask(root / "rtss.dcm", volume, roi_names=["Nope"])
    for name in ("BODY", "Areola", "Borders", "Breast", "Heart", "Lt Lung", "Nodes", "Scar",
                 "Tumor Bed", "Tumor Bed Block"):
        assert repr(name) in str(listed.value)
    # one slice of the series: its other 97 referenced images are not here (image_uids=uids
    # would refuse that, as it must for a series missing slices)
    mask, info = rtstruct_mask(root / "rtss.dcm", volume, roi_names=["BODY"])
    ours = mask.array[0] > 0
    rs = pydicom.dcmread(root / "rtss.dcm")
    number = next(r.ROINumber for r in rs.StructureSetROISequence if r.ROIName == "BODY")
    item = next(c for c in rs.ROIContourSequence if c.ReferencedROINumber == number)
    ipp = np.array(ct.ImagePositionPatient, float)
    dy, dx = (float(v) for v in ct.PixelSpacing)
    rows, cols = np.mgrid[0:ct.Rows, 0:ct.Columns]
    centres = np.c_[cols.ravel(), rows.ravel()]
    oracle = np.zeros(centres.shape[0], bool)
    for contour in item.ContourSequence:
        xyz = np.asarray(contour.ContourData, float).reshape(-1, 3)
        if abs(xyz[0, 2] - ipp[2]) < 0.5:
            polygon = np.c_[(xyz[:, 0] - ipp[0]) / dx, (xyz[:, 1] - ipp[1]) / dy]
            oracle ^= PolygonPath(polygon).contains_points(centres)
    oracle = oracle.reshape(ours.shape)
    assert int(ours.sum()) == 40398 and int((ours ^ oracle).sum()) <= 5
    assert info[0]["roi_name"] == "BODY" and info[0]["n_contours"] == 141


def test_rt_utils_structure_sets_pointing_at_the_wrong_images_are_refused():
    """MIM RTSTRUCTs: a good one over its two CT slices, one whose contours reference images
    that are not these slices, one whose referenced series does not exist."""
    from data_tools.dicom_masks import rtstruct_mask
    from data_tools.errors import MaskError

    root = realdata("rt-utils")
    volume, uids, _ = _slices_volume(sorted(root.glob("ct_*.dcm")))
    mask, info = rtstruct_mask(root / "rt.dcm", volume, roi_pattern=".", image_uids=uids)
    assert [i["roi_name"] for i in info] == ["ROI-1"] and mask.array.any()
    with pytest.raises(MaskError, match=r"'invalid_reference_rt.dcm': its contours reference 3 "
                                        r"image\(s\), 1 of them not a slice of the CT series "
                                        r"\(2 slices\)"):
        rtstruct_mask(root / "invalid_reference_rt.dcm", volume, roi_pattern=".",
                      image_uids=uids)
    with pytest.raises(MaskError, match=r"(?s)'non_existent_reference_rt.dcm': its contours "
                                        r"reference 3 image\(s\), 1 of them not a slice.*It "
                                        r"also names no referenced series"):
        rtstruct_mask(root / "non_existent_reference_rt.dcm", volume, roi_pattern=".",
                      image_uids=uids)


def _dcm2niix(folder, out):
    """Debian's dcm2niix on *folder* into *out* (skipped, or failed when required, without it)."""
    import os
    import shutil
    import subprocess

    exe = shutil.which("dcm2niix")
    if exe is None:
        if os.environ.get("DISCOVERY_REQUIRE_REALDATA") == "1":
            pytest.fail("dcm2niix (Debian package dcm2niix) is required with the real files")
        pytest.skip("dcm2niix is not installed (apt-get install dcm2niix)")
    out.mkdir(parents=True, exist_ok=True)
    subprocess.run([exe, "-z", "y", "-f", "%s", "-o", str(out), str(folder)], check=True,
                   capture_output=True, timeout=120)
    return out


def test_philips_study_folder_picks_the_axial_series_as_dcm2niix_and_the_raw_pixels_say(tmp_path):
    """dcm_qa_ct/Philips/S21570: an axial series beside a localizer, exam summaries and DIRFILE
    index files. The tool picks the 28-slice axial series; sampled at the same patient
    positions its HU equal dcm2niix's NIfTI and the raw DICOM pixels (nearest voxel)."""
    from data_tools.cases import read_case
    from data_tools.layouts import discover_cases
    from data_tools.nifti import load_nifti

    root = realdata("dcm_qa_ct", "Philips")
    volume = read_case(discover_cases(root)[0]).volume
    assert volume.shape == (28, 512, 512)
    assert volume.spacing_mm == pytest.approx((5.0, 0.451, 0.451), abs=1e-3)
    nifti = load_nifti(_dcm2niix(root / "S21570", tmp_path / "nii") / "201.nii.gz")
    rng = np.random.default_rng(0)
    idx = np.stack([rng.integers(0, n, 3000) for n in volume.shape], axis=1)
    world = (volume.affine @ np.c_[idx, np.ones(len(idx))].T)[:3].T
    other = (np.linalg.inv(nifti.affine) @ np.c_[world, np.ones(len(world))].T)[:3].T
    assert np.abs(other - np.rint(other)).max() < 1e-3              # the same grid
    np.testing.assert_array_equal(volume.array[tuple(idx.T)],
                                  nifti.array[tuple(np.rint(other).astype(int).T)])
    # the raw pixels at their own positions (ImagePositionPatient + orientation x spacing)
    for f in sorted((root / "S21570" / "S2010").iterdir()):
        ds = pydicom.dcmread(f)
        if "ImagePositionPatient" not in ds:
            continue
        ipp = np.asarray(ds.ImagePositionPatient, float)
        iop = np.asarray(ds.ImageOrientationPatient, float)
        dy, dx = (float(v) for v in ds.PixelSpacing)
        r, c = rng.integers(0, ds.Rows, 100), rng.integers(0, ds.Columns, 100)
        w = ipp + np.outer(c * dx, iop[:3]) + np.outer(r * dy, iop[3:])
        vox = np.rint((np.linalg.inv(volume.affine) @ np.c_[w, np.ones(100)].T)[:3].T).astype(int)
        raw = ds.pixel_array[r, c] * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        np.testing.assert_array_equal(volume.array[tuple(vox.T)], raw)


def _raw_vs_volume(volume, files, rng, *, margin=100, per_slice=300):
    """|HU difference| between raw pixels (at their own positions) and the volume's nearest
    voxel, for the raw pixels that fall on a voxel centre of the volume along z (within 0.05),
    and how many raw pixels fell outside the volume's grid."""
    inv = np.linalg.inv(volume.affine)
    diffs, outside = [], 0
    for f in files:
        ds = pydicom.dcmread(f)
        ipp, iop = np.asarray(ds.ImagePositionPatient, float), np.asarray(ds.ImageOrientationPatient, float)
        dy, dx = (float(v) for v in ds.PixelSpacing)
        raw = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        r = rng.integers(margin, ds.Rows - margin, per_slice)
        c = rng.integers(margin, ds.Columns - margin, per_slice)
        world = ipp + np.outer(c * dx, iop[:3]) + np.outer(r * dy, iop[3:])
        vox = (inv @ np.c_[world, np.ones(per_slice)].T)[:3].T
        near = np.rint(vox).astype(int)
        inside = np.all((near >= 0) & (near < volume.shape), axis=1)
        outside += int((~inside).sum())
        on = inside & (np.abs(vox[:, 0] - near[:, 0]) < 0.05)
        diffs += list(np.abs(volume.array[tuple(near[on].T)] - raw[r[on], c[on]]))
    return np.asarray(diffs), outside


def test_ge_tilted_series_with_variable_spacing_is_resampled_not_refused(tmp_path):
    """dcm_qa_ct/GE: a head CT with an 18.5 degree gantry tilt, 14 slices 4 mm apart, a 1.08 mm
    step, then 14 slices 7 mm apart. Not a missing slice (the step changes from one regular
    run to another), so it is resampled to equidistant 4 mm slices and the tilt removed, both
    recorded in the metadata; the raw pixels at their own positions agree with the volume
    where a resampled slice passes through them (median |difference| about 1 HU)."""
    from data_tools.cases import read_case
    from data_tools.layouts import discover_cases

    root = realdata("dcm_qa_ct", "GE")
    volume = read_case(discover_cases(root)[0]).volume
    meta = volume.metadata
    assert meta["variable_spacing_mm"] == "1.08-7.00" and meta["gantry_tilt_deg"] == "18.50"
    assert "variable slice spacing resampled to 4.00 mm" in meta["resampled"]
    assert volume.spacing_mm[0] == pytest.approx(4.002, abs=0.01)
    # the tilt correction grows the grid (512 -> 611 rows) instead of dropping what the shift
    # moves out: every raw pixel of every slice lies inside it
    assert volume.shape == (37, 611, 512) and "grid grown by 99 rows" in meta["resampled"]
    diffs, outside = _raw_vs_volume(volume, sorted(root.glob("*.dcm")), np.random.default_rng(0),
                                    margin=0, per_slice=1000)
    assert len(diffs) > 10000 and float(np.median(diffs)) < 2.0 and outside == 0


def test_blanked_uids_still_form_the_series_with_a_warning(tmp_path, caplog):
    """The Philips axial series with SeriesInstanceUID blanked and SOPInstanceUID removed (what
    an over-eager anonymiser leaves): grouped by study, series number, modality, orientation,
    matrix and pixel spacing with a warning, and read to the same volume as the original."""
    import logging

    from data_tools.dicom import load_dicom_series

    src = realdata("dcm_qa_ct", "Philips", "S21570", "S2010")
    blank = tmp_path / "blank"
    blank.mkdir()
    for f in sorted(src.iterdir()):
        ds = pydicom.dcmread(f)
        if "ImagePositionPatient" not in ds:
            continue
        ds.SeriesInstanceUID = ""
        del ds.SOPInstanceUID
        ds.save_as(blank / f.name)
    with caplog.at_level(logging.WARNING):
        volume = load_dicom_series(blank)
    original = load_dicom_series(src)
    np.testing.assert_array_equal(volume.array, original.array)
    np.testing.assert_allclose(volume.affine, original.affine)
    assert "28 file(s) have no SeriesInstanceUID" in caplog.text


def _three_slices(src, folder):
    """Three copies of one real file at 2.5 mm steps (the series reader needs three slices);
    its compressed pixel data untouched."""
    from pydicom.uid import generate_uid

    folder.mkdir()
    for k in range(3):
        ds = pydicom.dcmread(src)
        ipp = np.asarray([float(v) for v in ds.get("ImagePositionPatient", [0.0, 0.0, 0.0])])
        iop = np.asarray([float(v) for v in ds.get("ImageOrientationPatient",
                                                   [1, 0, 0, 0, 1, 0])])
        normal = np.cross(iop[:3], iop[3:])
        ds.ImagePositionPatient = [float(v) for v in ipp + 2.5 * k * normal]
        ds.ImageOrientationPatient = [float(v) for v in iop]
        ds.SOPInstanceUID = generate_uid()
        ds.InstanceNumber = k + 1
        ds.save_as(folder / f"s{k}.dcm")
    return folder


@pytest.mark.parametrize("name", ["TOSHIBA_J2K_SIZ1_PixRep0", "TOSHIBA_J2K_SIZ0_PixRep1",
                                  "J2K_pixelrep_mismatch", "693_J2KR", "ELSCINT1_JP2vsJ2K",
                                  "TOSHIBA_J2K_OpenJPEGv2Regression"])
def test_vendor_jpeg2000_quirks_decode_to_plausible_hu(tmp_path, name, caplog):
    """pylibjpeg-data's CT files that break naive decoders. GDCM (python-gdcm, through
    pydicom's gdcm plugin) and pylibjpeg agree bit for bit on all of them (measured,
    docs/guide/real-files.md); on TOSHIBA_J2K_SIZ1_PixRep0 both follow PixelRepresentation = 0
    and turn the -2048 padding into 63,488: the tool uses the codestream's sign there, with a
    warning. Every file then reads as CT: padding at -3024..-2000, nothing above 4,000 HU."""
    import logging

    from data_tools.dicom import read_ct_files

    from pydicom.pixels import pixel_array

    src = realdata("pylibjpeg-data", f"{name}.dcm")
    ds = pydicom.dcmread(src)
    np.testing.assert_array_equal(pixel_array(ds, decoding_plugin="gdcm"),       # GDCM and
                                  pixel_array(ds, decoding_plugin="pylibjpeg"))  # pylibjpeg agree
    folder = _three_slices(src, tmp_path / "s")
    with caplog.at_level(logging.WARNING):
        volume = read_ct_files(sorted(folder.iterdir()))
    hu = volume.array
    assert -3100 <= float(hu.min()) <= -1000 and float(hu.max()) < 4000, (hu.min(), hu.max())
    exact = read_ct_files(sorted(folder.iterdir()), integer_hu=True).array
    np.testing.assert_array_equal(exact, hu)            # the same HU, int16 where exact
    assert ("codestream is signed" in caplog.text) == (name == "TOSHIBA_J2K_SIZ1_PixRep0")


def test_enhanced_ct_reads_with_per_frame_geometry(tmp_path):
    """pydicom-data's eCT_Supplemental.dcm (Enhanced CT, 2 frames, shared orientation, pixel
    measures and rescale, per-frame positions): read as a volume whose every frame sits where
    its own PlanePositionSequence says, HU equal to the raw frame values rescaled."""
    import shutil

    from pydicom.data import get_testdata_file

    from data_tools.dicom import load_dicom_series

    src = get_testdata_file("eCT_Supplemental.dcm", download=False)   # from the installed
    if src is None:                                                     # pydicom-data, offline
        pytest.fail("pydicom-data (a test dependency) does not hold eCT_Supplemental.dcm")
    folder = tmp_path / "ect"
    folder.mkdir()
    shutil.copy(src, folder)
    volume = load_dicom_series(folder)
    ds = pydicom.dcmread(src)
    assert volume.shape == (2, 512, 512) and volume.metadata["format"] == "dicom-enhanced"
    shared = ds.SharedFunctionalGroupsSequence[0]
    iop = np.asarray(shared.PlaneOrientationSequence[0].ImageOrientationPatient, float)
    dy, dx = (float(v) for v in shared.PixelMeasuresSequence[0].PixelSpacing)
    slope = float(shared.PixelValueTransformationSequence[0].RescaleSlope)
    intercept = float(shared.PixelValueTransformationSequence[0].RescaleIntercept)
    inv = np.linalg.inv(volume.affine)
    rng = np.random.default_rng(0)
    for k, frame in enumerate(ds.PerFrameFunctionalGroupsSequence):
        ipp = np.asarray(frame.PlanePositionSequence[0].ImagePositionPatient, float)
        r, c = rng.integers(0, ds.Rows, 500), rng.integers(0, ds.Columns, 500)
        world = ipp + np.outer(c * dx, iop[:3]) + np.outer(r * dy, iop[3:])
        vox = (inv @ np.c_[world, np.ones(500)].T)[:3].T
        assert np.abs(vox - np.rint(vox)).max() < 1e-6
        raw = ds.pixel_array[k][r, c] * slope + intercept
        np.testing.assert_array_equal(volume.array[tuple(np.rint(vox).astype(int).T)], raw)


def _patch_value(raw: bytes, tag: bytes, value: str) -> bytes:
    """*raw* with the explicit-VR little-endian element *tag* (4 bytes, group then element) given
    *value*, padded to its old length; nothing else of the file changes.  Reads the element's
    header as its stored VR says (UN and the other long VRs have a 4-byte length)."""
    i = raw.find(tag)
    assert i >= 0, "element not found"
    if raw[i + 4:i + 6] in (b"OB", b"OW", b"OF", b"SQ", b"UN", b"UT", b"UC", b"UR"):
        start, n = i + 12, int.from_bytes(raw[i + 8:i + 12], "little")
    else:
        start, n = i + 8, int.from_bytes(raw[i + 6:i + 8], "little")
    new = value.encode().ljust(n)
    assert len(new) == n, f"{value!r} is longer than the {n} bytes it replaces"
    return raw[:start] + new + raw[start + n:]


@pytest.mark.parametrize("name, fault", [
    # (0018,9346) CTDI Phantom Type Code Sequence encoded as UN with explicit-VR items (an
    # invalid CP-246 encoding) in a JPEG-lossless CT; also 64-hex-digit "UIDs" and an over-long
    # SH from its anonymiser
    ("bad_sequence.dcm", b"\x18\x00\x46\x93UN"),
    # explicit VR with almost every element (35 standard ones, ImagePositionPatient among them,
    # and two private ones) stored as UN, in a JPEG 2000 lossless CT
    ("explicit_VR-UN.dcm", b"\x20\x00\x32\x00UN"),
])
def test_pydicom_data_ct_with_malformed_sequence_or_un_elements_reads(tmp_path, name, fault):
    """pydicom-data's two CT files with UN value representations, each made a three-slice
    series by changing only the bytes of ImagePositionPatient and SOPInstanceUID in copies (so
    the faults stay byte for byte): read, HU equal to the file's own decoded pixels."""
    from pydicom.data import get_testdata_file

    from data_tools.dicom import load_dicom_series

    src = get_testdata_file(name, download=False)
    if src is None:
        pytest.fail(f"pydicom-data (a test dependency) does not hold {name}")
    raw = open(src, "rb").read()
    assert fault in raw
    ds = pydicom.dcmread(src)
    hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    x, y, z = (float(v) for v in ds.ImagePositionPatient)
    uid = str(ds.SOPInstanceUID).encode()
    for k in range(3):
        ipp = "\\".join(f"{v:g}" for v in (x, y, z + k))
        data = _patch_value(raw, b"\x20\x00\x32\x00", ipp)
        data = data.replace(uid, uid[:-1] + str(k).encode())
        assert fault in data
        (tmp_path / f"{k}.dcm").write_bytes(data)
    vol = load_dicom_series(tmp_path)
    assert vol.shape == (3, ds.Rows, ds.Columns)
    assert abs(vol.affine[2, 0]) == pytest.approx(1.0)
    for k in range(3):
        np.testing.assert_array_equal(vol.array[k], hu)
