"""Input layouts (data_tools.layouts) and read_case per layout, on one mixed tree.

The tree (tests/_layout_factory.py) holds an MSD task, a LUNA16 folder, LIDC-IDRI, NSCLC
(RTSTRUCT), DICOM SEG, NIfTI and RLE-compressed DICOM cases and eight broken cases.  The unit
tests read it case by case with hand-computed masks; the end-to-end test scores all of it
with an untrained model, through the library and the CLI.
"""

from __future__ import annotations

import logging
import re
import shutil

import numpy as np
import pandas as pd
import pytest
from _layout_factory import (
    CENTER,
    LIDC_READERS,
    ball,
    lidc_expected_mask,
    lidc_xml,
    rtstruct_expected_mask,
    write_dicom_series,
    write_mixed_tree,
)

from data_tools.cases import read_case
from data_tools.deid import pseudonymous_id
from data_tools.errors import DataError
from data_tools.layouts import detect_layout, discover_cases

PATIENT_FOLDERS = ("LIDC-IDRI-0001", "LUNG1-001", "SEG-0001")


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    root = tmp_path_factory.mktemp("mixed") / "input"
    return root, write_mixed_tree(root)


def _spec(specs, case_id):
    return next(s for s in specs if s.case_id == case_id)


def _only(root, name):
    """The one spec of the case folder *name* of the mixed tree."""
    return _spec(discover_cases(root), pseudonymous_id(name))


# -- detection ----------------------------------------------------------------------------------

def test_detect_layout_of_each_kind_of_root(mixed, tmp_path):
    root, _ = mixed
    assert detect_layout(root) == "cases"                 # LUNA16/ inside does not make it luna16
    assert detect_layout(root / "Task06_Lung") == "msd"
    assert detect_layout(root / "LUNA16") == "luna16"
    assert detect_layout(root / "LUNA16" / "subset0") == "cases"   # no annotations.csv inside
    for name in ("LIDC-IDRI-0001", "LUNG1-001", "native-nifti", "empty-case"):
        assert detect_layout(root / name) == "cases"
    # a LUNA16 download whose CSV lies in its own folder is still one LUNA16 root
    luna = tmp_path / "luna"
    shutil.copytree(root / "LUNA16" / "subset0", luna / "subset0")
    (luna / "CSVFILES").mkdir()
    shutil.copy(root / "LUNA16" / "annotations.csv", luna / "CSVFILES" / "annotations.csv")
    assert detect_layout(luna) == "luna16"
    (tmp_path / "m.csv").write_text("case_id,image,mask\n")
    assert detect_layout(tmp_path / "m.csv") == "manifest"


def test_text_files_beside_case_folders_do_not_make_the_root_one_case(tmp_path):
    """A TCIA-style download: LICENSE, metadata.csv and README beside the patient folders.
    Each patient folder is a case; a DICOM file at the root (even without a suffix or the
    Part 10 preamble) or a NIfTI volume makes the root one case folder, as before."""
    rng = np.random.default_rng(0)
    root = tmp_path / "download"
    for name in ("P-0001", "P-0002"):
        write_dicom_series(root / name / "CT", rng.normal(-800, 10, (4, 8, 8)), seed=1)
    (root / "LICENSE").write_text("Creative Commons Attribution 4.0\n")
    (root / "metadata.csv").write_text("Series UID,Subject ID\n")
    (root / "README").write_text("downloaded with the NBIA data retriever\n")
    specs = discover_cases(root)
    assert sorted(s.case_id for s in specs) == sorted(pseudonymous_id(n)
                                                      for n in ("P-0001", "P-0002"))
    one = tmp_path / "one"
    shutil.copytree(root, one)
    first = sorted((one / "P-0001" / "CT").iterdir())[0]
    shutil.copy(first, one / "IMG0001")                  # a DICOM slice without suffix
    assert [s.case_id for s in discover_cases(one)] == [pseudonymous_id("one")]
    import pydicom

    raw = tmp_path / "raw"
    shutil.copytree(root, raw)
    ds = pydicom.dcmread(first)
    ds.preamble = None
    ds.save_as(raw / "IMG0001", enforce_file_format=False)   # no preamble, no 'DICM'
    assert (raw / "IMG0001").read_bytes()[128:132] != b"DICM"
    assert [s.case_id for s in discover_cases(raw)] == [pseudonymous_id("raw")]


def test_mixed_root_lists_every_case_once_with_its_layout(mixed):
    root, want = mixed
    specs = discover_cases(root)
    expected = {**{k: v["layout"] for k, v in want["good"].items()},
                **{k: v["layout"] for k, v in want["broken"].items()}}
    assert len(specs) == len(expected) == 16
    assert {s.case_id: s.layout for s in specs} == expected
    assert [s.case_id for s in specs] == sorted(expected)
    empty = _spec(specs, pseudonymous_id("empty-case"))
    assert "no DICOM files" in empty.problem
    assert all(s.problem is None for s in specs if s is not empty)


def test_case_ids_are_pseudonymous(mixed):
    root, want = mixed
    specs = discover_cases(root)
    names = [p.name for p in root.iterdir()] + ["lung_001", "lung_050", want["luna_uid"]]
    for s in specs:
        assert re.fullmatch(r"case-[0-9a-f]{10}", s.case_id)
        assert not any(n in s.case_id for n in names)
    luna = _spec(specs, pseudonymous_id(want["luna_uid"]))
    assert luna.source_key == want["luna_uid"] and luna.case_id == pseudonymous_id(luna.source_key)


def test_restricted_layout_does_not_expand_other_roots(mixed):
    root, _ = mixed
    specs = {s.case_id: s for s in discover_cases(root, layout="lidc")}
    assert len(specs) == 14                                # MSD and LUNA16 roots stay folders
    assert specs[pseudonymous_id("LIDC-IDRI-0001")].problem is None
    assert specs[pseudonymous_id("Task06_Lung")].problem is not None
    assert specs[pseudonymous_id("LUNA16")].problem is not None


# -- read_case per layout -----------------------------------------------------------------------

def test_msd_junk_ignored_and_components_split_by_size(mixed):
    root, want = mixed
    specs = discover_cases(root / "Task06_Lung")
    assert sorted(s.image.name for s in specs) == ["lung_001.nii.gz", "lung_050.nii.gz"]
    case = read_case(_spec(specs, want["msd_case"]))
    big, small = ball((10, 12, 12), 6.0), ball((10, 28, 28), 4.0)
    expected = np.zeros(big.shape, np.int16)
    expected[big], expected[small] = 1, 2                  # label 1 = larger component
    np.testing.assert_array_equal(case.mask.array, expected)
    assert case.mask_source == "msd" and big.sum() > small.sum() > 0
    test_case = read_case(_spec(specs, pseudonymous_id("msd/lung_050")))
    assert test_case.mask is None and test_case.mask_source == "none"


def test_luna16_ball_labelled_on_the_scan(mixed):
    root, want = mixed
    case = read_case(_spec(discover_cases(root / "LUNA16"), pseudonymous_id(want["luna_uid"])))
    assert case.mask_source == "luna16"
    np.testing.assert_array_equal(case.mask.array, ball().astype(np.int16))
    assert np.all(case.volume.array[ball()] == 40)
    np.testing.assert_allclose(case.volume.voxel_to_world([CENTER]), [[0.0, 0.0, 0.0]])


def test_lidc_consensus_mask_and_ratings(mixed):
    root, want = mixed
    case = read_case(_spec(discover_cases(root), want["lidc_case"]))
    assert case.mask_source == "lidc"
    np.testing.assert_array_equal(case.mask.array, lidc_expected_mask())
    (nodule,) = case.nodules
    assert nodule["n_readers"] == 2 and nodule["lidc_malignancy"] == 4.5
    assert nodule["lidc_spiculation"] == 1.5 and nodule["lidc_malignancy_n"] == 2
    assert np.all(case.volume.array[ball()] == 40)         # HU through slope/intercept


def test_lidc_xml_parsed_once_when_chosen_among_several(mixed, tmp_path, caplog):
    root, _ = mixed
    case = tmp_path / "LIDC-IDRI-0001"
    shutil.copytree(root / "LIDC-IDRI-0001", case)
    (xml,) = case.rglob("069.xml")
    # another series' annotations, first by name: the series UID picks 069.xml
    (xml.parent / "001.xml").write_text(lidc_xml("1.2.3.4.5", LIDC_READERS[:1]),
                                        encoding="utf-8")
    (spec,) = discover_cases(tmp_path)
    assert spec.mask.name == "001.xml" and len(spec.mask_candidates) == 2
    with caplog.at_level(logging.INFO, logger="data_tools.lidc"):
        loaded = read_case(spec)
    np.testing.assert_array_equal(loaded.mask.array, lidc_expected_mask())
    assert loaded.nodules[0]["n_readers"] == 2
    # read_lidc_xml logs one summary line per parse
    parsed = [r.getMessage() for r in caplog.records if "nodule readings" in r.getMessage()]
    assert sorted(m.split(":")[0] for m in parsed) == ["LIDC XML file '001.xml'",
                                                       "LIDC XML file '069.xml'"]


def test_rtstruct_found_in_sibling_series_folder(mixed):
    root, _ = mixed
    spec = _only(root, "LUNG1-001")
    assert spec.mask is None and spec.mask_kind == "dicom"
    case = read_case(spec)
    assert case.mask_source == "rtstruct"
    np.testing.assert_array_equal(case.mask.array, rtstruct_expected_mask())
    assert [n["roi_name"] for n in case.nodules] == ["GTV-1"]


def test_seg_and_rle_compressed_series(mixed):
    root, _ = mixed
    seg = read_case(_only(root, "SEG-0001"))
    assert seg.mask_source == "seg"
    np.testing.assert_array_equal(seg.mask.array, ball().astype(np.int16))
    rle = read_case(_only(root, "compressed-rle"))
    assert rle.mask_source == "nifti" and rle.volume.shape == (20, 40, 40)
    np.testing.assert_array_equal(rle.mask.array, ball().astype(np.int16))
    assert np.all(rle.volume.array[ball()] == 40)
    assert abs(float(np.median(rle.volume.array[~ball()])) + 850) < 5


def test_lidc_layout_without_xml_is_a_problem(tmp_path):
    case = tmp_path / "LIDC-IDRI-0002"
    hu = np.full((4, 8, 8), -850.0, np.float32)
    write_dicom_series(case / "study" / "series", hu, seed=9)
    (spec,) = discover_cases(tmp_path, layout="lidc")
    assert spec.layout == "lidc" and "no LIDC XML file" in spec.problem
    with pytest.raises(DataError, match="no LIDC XML file"):
        read_case(spec)
    (plain,) = discover_cases(tmp_path)                    # auto: scored without a mask
    assert plain.problem is None and read_case(plain).mask_source == "none"


@pytest.mark.parametrize("name", ["broken-gap", "broken-truncated", "mr-only", "mr-truncated",
                                  "empty-case", "nifti-4d", "mask-wrong-grid"])
def test_broken_case_raises_a_readable_error(mixed, name):
    root, want = mixed
    case_id = pseudonymous_id(name)
    with pytest.raises(DataError) as err:
        read_case(_spec(discover_cases(root), case_id))
    msg = str(err.value)
    assert want["broken"][case_id]["error"] in msg
    assert str(root) not in msg and name not in msg


def test_luna16_missing_raw_error_does_not_name_the_series_uid(mixed):
    """A LUNA16 file is named after its series UID: the stored message says <uid> instead."""
    from discovery.batch.score import safe_error

    root, want = mixed
    uid = want["secrets"][-1]
    spec = _spec(discover_cases(root / "LUNA16"), pseudonymous_id(uid))
    with pytest.raises(DataError) as err:
        read_case(spec)
    assert "is missing" in str(err.value)
    stored = safe_error(err.value, root, spec.image, spec.mask)
    assert uid not in stored and "<uid>.raw" in stored


# -- end to end ---------------------------------------------------------------------------------

def _leaks(text: str, secrets) -> list[str]:
    found = [s for s in secrets if s in text]
    return found + (["Doe"] if re.search(r"\bDoe\b", text) else [])


@pytest.mark.e2e
@pytest.mark.slow
def test_mixed_tree_scores_end_to_end(mixed, model_dir, tmp_path, caplog, capsys):
    from discovery.batch.score import score_folder
    from discovery.cli import main
    from discovery.store.tables import ResultsStore

    root, want = mixed
    good, broken = want["good"], want["broken"]
    caplog.set_level(logging.DEBUG, logger="data_tools")
    caplog.set_level(logging.DEBUG, logger="discovery")
    out = tmp_path / "results"
    summary = score_folder(root, out, model_dir=model_dir)

    assert summary.n_cases == len(good) + len(broken) == 16
    assert summary.n_failed == len(broken) == 8
    assert summary.n_no_mask == 1 and summary.n_ok == 7
    assert summary.n_nodules == sum(g["n_nodules"] for g in good.values()) == 8
    assert summary.layouts == {"cases": 12, "luna16": 2, "msd": 2}
    failed = dict(summary.failed)
    assert set(failed) == set(broken)
    for case_id, b in broken.items():
        assert b["error"] in failed[case_id], (b["name"], failed[case_id])

    cases = ResultsStore(out, create=False).cases().set_index("case_id")
    for case_id, g in good.items():
        row = cases.loc[case_id]
        assert (row["status"], row["mask_source"], row["n_nodules"], row["layout"]) == (
            g["status"], g["mask_source"], g["n_nodules"], g["layout"]), g["name"]
    assert (cases.loc[list(broken), "status"] == "failed").all()

    findings = pd.read_csv(out / "findings.csv", keep_default_na=False, na_values=[""])
    nodules = findings[findings["nodule_id"].notna()]
    assert nodules.groupby("case_id").size().to_dict() == {
        k: g["n_nodules"] for k, g in good.items() if g["n_nodules"]}
    lidc = nodules[nodules["case_id"] == want["lidc_case"]]
    assert list(lidc["lidc_malignancy"]) == [4.5] and list(lidc["n_readers"]) == [2]
    assert nodules.loc[nodules["case_id"] != want["lidc_case"], "lidc_malignancy"].isna().all()

    # privacy: no tmp path, patient name, patient-like folder or LUNA16 uid of a good scan
    secrets = [str(root), str(tmp_path), "Jane", want["luna_uid"], *PATIENT_FOLDERS]
    texts = {"findings.csv": (out / "findings.csv").read_text(),
             "patterns.csv": (out / "patterns.csv").read_text(),
             "case errors": "\n".join(cases["error"].fillna(""))}
    texts.update({f"log {i}": r.getMessage() for i, r in enumerate(caplog.records)})
    assert any("failed" in r.getMessage() for r in caplog.records)
    for where, text in texts.items():
        assert not _leaks(text, secrets), where

    capsys.readouterr()
    rc = main(["score", str(root), "--out", str(tmp_path / "cli"), "--model", str(model_dir)])
    cap = capsys.readouterr()
    printed = cap.out + cap.err
    assert rc == 1 and "Traceback" not in printed
    assert "16 cases: 7 scored, 1 without mask, 8 failed; 8 nodules" in " ".join(printed.split())
    for case_id in broken:
        assert f"failed {case_id}" in printed
    assert not _leaks(printed, secrets)
