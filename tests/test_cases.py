"""Case discovery rules and case loading (mask on the image grid)."""

import numpy as np
import pytest

from data_tools.cases import discover_cases, load_case
from data_tools.errors import DataError, GeometryMismatchError
from data_tools.nifti import save_nifti
from data_tools.volume import Mask, Volume, affine_from_spacing


def _nifti_case(folder, *, mask_shape=(6, 8, 8), image_name="ct.nii.gz", mask_name="mask.nii.gz"):
    folder.mkdir(parents=True)
    aff = affine_from_spacing((2.0, 1.0, 1.0))
    save_nifti(Volume(np.full((6, 8, 8), -800, np.float32), aff), folder / image_name)
    m = np.zeros(mask_shape, np.int16)
    m[2:4, 3:5, 3:5] = 1
    if mask_name:
        save_nifti(Mask(m, aff), folder / mask_name)


def test_folder_of_cases_with_pseudonymous_ids(tmp_path):
    _nifti_case(tmp_path / "SMITH_JOHN")
    _nifti_case(tmp_path / "DOE_JANE", mask_name=None)
    (tmp_path / "_truth").mkdir()
    specs = discover_cases(tmp_path)
    assert len(specs) == 2
    assert all(s.case_id.startswith("case-") and "SMITH" not in s.case_id for s in specs)
    assert sorted(s.mask is None for s in specs) == [False, True]
    volume, mask = load_case(next(s for s in specs if s.mask is not None))
    assert volume.shape == (6, 8, 8) and mask.labels == [1]


def test_ids_are_stable_and_keyed(tmp_path, monkeypatch):
    _nifti_case(tmp_path / "A")
    first = discover_cases(tmp_path)[0].case_id
    assert discover_cases(tmp_path)[0].case_id == first
    monkeypatch.setenv("DISCOVERY_ID_KEY", "another secret")
    assert discover_cases(tmp_path)[0].case_id != first


def test_mask_on_another_grid_names_both_geometries(tmp_path):
    _nifti_case(tmp_path / "A", mask_shape=(6, 8, 9))
    with pytest.raises(GeometryMismatchError, match=r"image has shape .*\(6, 8, 8\).*mask.*\(6, 8, 9\)") as err:
        load_case(discover_cases(tmp_path)[0])
    assert str(tmp_path) not in str(err.value)


def test_manifest_csv(tmp_path):
    _nifti_case(tmp_path / "data" / "x")
    (tmp_path / "m.csv").write_text("case_id,image,mask\nMRN-12345,data/x/ct.nii.gz,data/x/mask.nii.gz\n")
    [spec] = discover_cases(tmp_path / "m.csv")
    assert "12345" not in spec.case_id
    assert load_case(spec)[1].labels == [1]
    (tmp_path / "bad.csv").write_text("id,path\n1,2\n")
    with pytest.raises(DataError, match="case_id"):
        discover_cases(tmp_path / "bad.csv")


def test_unusable_case_folder_is_reported_not_raised(tmp_path):
    (tmp_path / "empty_case").mkdir()
    _nifti_case(tmp_path / "ok")
    specs = discover_cases(tmp_path)
    bad = [s for s in specs if s.problem]
    assert len(bad) == 1 and "no DICOM files and no NIfTI or MetaImage volume" in bad[0].problem
    with pytest.raises(DataError):
        load_case(bad[0])


def test_manifest_series_uid_picks_the_second_ct_series(tmp_path):
    """Two CT series in one folder: the manifest's series_uid column decides which is read."""
    from _dicom_factory import write_ct_series

    first = write_ct_series(tmp_path / "study" / "a", n=6, prefix="A")
    second = write_ct_series(tmp_path / "study" / "b", n=4, prefix="B", seed=5)
    (tmp_path / "m.csv").write_text(
        f"case_id,image,mask,series_uid\nP1,study,,{second.series_uid}\nP2,study,,\n")
    by_rule, chosen = sorted(discover_cases(tmp_path / "m.csv"), key=lambda s: s.source_key)
    assert load_case(chosen)[0].shape == second.hu.shape       # asked for
    assert load_case(by_rule)[0].shape == first.hu.shape       # the rule: the most slices
    assert second.series_uid not in repr(chosen)


def test_file_label_never_shows_a_uid():
    from data_tools.errors import file_label

    uid = "1.3.6.1.4.1.14519.5.2.1.6279.6001.105756658031515062000744821260"
    assert file_label(f"/data/LUNA16/subset0/{uid}.mhd") == "'<uid>.mhd'"
    assert file_label("/x/IM0001.dcm") == "'IM0001.dcm'" and file_label("/x/1.2.3.dcm") == "'1.2.3.dcm'"
