"""score_folder on tiny NIfTI cases with an untrained model: every path through the batch."""

import math

import numpy as np
import pandas as pd
import pytest

from data_tools.nifti import save_nifti
from data_tools.volume import Mask, Volume, affine_from_spacing
from discovery.batch.score import safe_error, score_folder
from discovery.store.tables import FINDINGS_COLUMNS, ResultsStore, load_case_arrays


def _case(folder, *, labels=(1, 2), mask=True):
    folder.mkdir(parents=True)
    rng = np.random.default_rng(len(folder.name))
    shape, spacing = (40, 64, 64), (1.5, 1.2, 1.2)
    hu = rng.normal(-850, 20, shape).astype(np.float32)
    m = np.zeros(shape, np.int16)
    for i, lab in enumerate(labels):
        z, y, x = 20, 20 + 24 * i, 32
        zz, yy, xx = np.ogrid[:40, :64, :64]
        ball = ((zz - z) * 1.5) ** 2 + ((yy - y) * 1.2) ** 2 + ((xx - x) * 1.2) ** 2 <= 25
        hu[ball] = 40
        m[ball] = lab
    aff = affine_from_spacing(spacing)
    save_nifti(Volume(hu, aff), folder / "ct.nii.gz")
    if mask:
        save_nifti(Mask(m, aff), folder / "mask.nii.gz")


@pytest.fixture(scope="module")
def scored(tmp_path_factory, model_dir):
    root = tmp_path_factory.mktemp("batch")
    _case(root / "in" / "PATIENT_A")
    _case(root / "in" / "PATIENT_B", labels=(3,))
    _case(root / "in" / "PATIENT_NOMASK", mask=False)
    bad = root / "in" / "PATIENT_BAD"
    bad.mkdir()
    (bad / "ct.nii.gz").write_bytes(b"\x1f\x8b\x08garbage")
    seen = []
    summary = score_folder(root / "in", root / "out", model_dir=model_dir,
                           progress=lambda d, t, c: seen.append((d, t)))
    return root, summary, seen


def test_summary_counts_and_progress(scored):
    _, summary, seen = scored
    assert (summary.n_cases, summary.n_ok, summary.n_no_mask, summary.n_failed) == (4, 2, 1, 1)
    assert summary.n_nodules == 3
    assert seen[-1] == (4, 4) and len(seen) == 4


def test_findings_rows_per_status(scored):
    root, _, _ = scored
    f = pd.read_csv(root / "out" / "findings.csv", keep_default_na=False, na_values=[""])
    assert list(f.columns) == FINDINGS_COLUMNS
    assert sorted(f["status"]) == ["failed", "no-mask", "ok", "ok", "ok"]
    ok = f[f["status"] == "ok"]
    assert set(ok["nodule_id"]) == {"n1", "n2", "n3"}
    assert ok["probability"].between(0, 1).all()
    nomask = f[f["status"] == "no-mask"].iloc[0]
    assert nomask["verdict"] == "no-mask" and math.isnan(nomask["rma"]) and "mask" in nomask["error"]
    failed = f[f["status"] == "failed"].iloc[0]
    assert "'ct.nii.gz'" in failed["error"] and "PATIENT" not in failed["error"]


def test_arrays_for_the_viewer(scored):
    root, _, _ = scored
    store = ResultsStore(root / "out", create=False)
    case = store.cases().query("status == 'ok' and n_nodules == 2").iloc[0]
    arrays = load_case_arrays(root / "out", case["case_id"])
    assert arrays["ct"].dtype == np.int16 and arrays["ct"].shape == (40, 64, 64)
    assert set(np.unique(arrays["mask"])) == {0, 1, 2}
    assert arrays["attribution"].dtype == np.float32 and arrays["attribution"].min() >= 0
    regions = store.regions()
    mine = regions[regions["case_id"] == case["case_id"]]
    assert sorted(np.unique(arrays["region_map"]))[1:] == sorted(mine["case_region"])


def test_rescoring_replaces_rather_than_duplicates(scored, model_dir):
    root, _, _ = scored
    score_folder(root / "in", root / "out", model_dir=model_dir)
    f = pd.read_csv(root / "out" / "findings.csv")
    assert len(f) == 5
    store = ResultsStore(root / "out", create=False)
    assert store.query("SELECT COUNT(*) AS n FROM nodules")["n"].iloc[0] == 3


def test_safe_error_scrubs_paths():
    msg = safe_error(OSError("cannot open /srv/imports/SMITH^JOHN/IM1.dcm"), "/srv/imports")
    assert "SMITH" not in msg and "/srv" not in msg and "IM1.dcm" in msg


# -- known labels -------------------------------------------------------------------------------
def test_read_labels_accepts_the_truth_manifest_and_hashes_case_names(tmp_path):
    from data_tools.deid import pseudonymous_id
    from data_tools.cases import read_labels

    (tmp_path / "truth.csv").write_text(
        "case_dir,nodule_label,malignant,diameter_mm\nPATIENT_A,1,1,12.0\nPATIENT_A,2,0,8.0\n")
    got = read_labels(tmp_path / "truth.csv")
    assert list(got.columns) == ["case_id", "nodule_id", "malignant"]
    assert list(got["case_id"]) == [pseudonymous_id("PATIENT_A")] * 2
    assert list(got["nodule_id"]) == ["n1", "n2"] and list(got["malignant"]) == [1, 0]
    (tmp_path / "ids.csv").write_text("case_id,nodule_id,malignant\nX,n3,1\n")
    assert read_labels(tmp_path / "ids.csv").iloc[0].to_dict() == {
        "case_id": pseudonymous_id("X"), "nodule_id": "n3", "malignant": 1}


@pytest.mark.parametrize("text, needle", [
    ("case,nodule,malignant\nA,1,1\n", "needs columns"),
    ("case_dir,nodule_label,malignant\nA,1,yes\nA,2,1\n", "line(s) [2]"),
])
def test_read_labels_errors_name_the_file_not_its_folder(tmp_path, text, needle):
    from data_tools.errors import DataError
    from data_tools.cases import read_labels

    folder = tmp_path / "PATIENT_SECRET"
    folder.mkdir()
    (folder / "labels.csv").write_text(text)
    with pytest.raises(DataError) as err:
        read_labels(folder / "labels.csv")
    assert needle in str(err.value) and "'labels.csv'" in str(err.value)
    assert "PATIENT_SECRET" not in str(err.value)


def test_labels_are_stored_and_reach_the_clustering(scored, tmp_path, monkeypatch):
    import discovery.batch.score as batch
    from data_tools.deid import pseudonymous_id

    root, _, _ = scored
    (tmp_path / "truth.csv").write_text(
        "case_dir,nodule_label,malignant\nPATIENT_A,1,1\nPATIENT_A,2,0\nPATIENT_B,3,1\n")
    store = ResultsStore(root / "out", create=False)
    store.set_labels(batch.read_labels(tmp_path / "truth.csv"))
    assert len(store.labels()) == 3
    seen = {}
    real = batch.cluster_regions

    def spy(regions, settings):
        seen["regions"] = regions
        return real(regions, settings=settings)

    monkeypatch.setattr(batch, "cluster_regions", spy)
    batch.recluster(store)
    regs = seen["regions"]
    a = regs[regs["case_id"] == pseudonymous_id("PATIENT_A")]
    assert len(a) and a["malignant"].notna().all()
    want = {"n1": 1, "n2": 0}
    assert all(int(m) == want[n] for n, m in zip(a["nodule_id"], a["malignant"]))
    store.set_labels(pd.DataFrame(columns=["case_id", "nodule_id", "malignant"]))
    assert store.labels().empty


@pytest.mark.parametrize("lossless", [False, True])
def test_case_file_ct_is_exact_in_the_body_and_flat_in_the_air_around_it(tmp_path, model_dir,
                                                                          lossless):
    from discovery.pipeline import ScoreSettings

    folder = tmp_path / "in" / "CHEST"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(5)
    shape = (24, 64, 64)
    hu = rng.normal(-1000, 20, shape).astype(np.float32)          # air around the patient
    yy, xx = np.ogrid[:64, :64]
    body = (yy - 32) ** 2 + (xx - 32) ** 2 <= 26 ** 2
    lung = (yy - 32) ** 2 + (xx - 32) ** 2 <= 20 ** 2
    hu[:, body] = rng.normal(40, 10, (shape[0], int(body.sum())))
    hu[:, lung] = rng.normal(-900, 40, (shape[0], int(lung.sum())))   # some below -900
    ball = ((np.arange(24)[:, None, None] - 12) ** 2 + (yy - 32)[None] ** 2
            + (xx - 40)[None] ** 2) <= 16
    hu[ball] = 40
    aff = affine_from_spacing((1.5, 1.2, 1.2))
    save_nifti(Volume(hu, aff), folder / "ct.nii.gz")
    save_nifti(Mask(ball.astype(np.int16), aff), folder / "mask.nii.gz")
    out = tmp_path / "out"
    score_folder(tmp_path / "in", out, model_dir=model_dir,
                 settings=ScoreSettings(lossless_ct=lossless))
    case_id = ResultsStore(out, create=False).cases()["case_id"].iloc[0]
    ct = load_case_arrays(out, case_id)["ct"]
    source = np.rint(hu).astype(np.int16)
    if lossless:
        np.testing.assert_array_equal(ct, source)
        return
    changed = ct != source
    assert changed.any() and (ct[changed] == -1000).all()
    assert not changed[:, body].any()               # the body and the lungs inside it: exact
    outside_low = ~body[None] & (source < -900) & (source != -1000)
    assert not (changed & ~outside_low).any()        # nothing else changes
    # the analysed ROI (48 mm around the nodule: columns 20..60 here) is kept exactly; beyond
    # it every outside-air voxel below -900 HU is flattened
    far = np.zeros(shape, bool)
    far[:, :, :15] = True
    np.testing.assert_array_equal(changed[far], outside_low[far])
    assert not changed[:, 14:50, 22:58].any()
    # what the sanity checks and the causal check re-score, the ROI, is the same from the file
    from discovery.model.card import load_model
    from discovery.model.rois import extract_roi

    _, card = load_model(model_dir)
    rois = [extract_roi(Volume(v.astype(np.float32), aff), (12.0, 32.0, 40.0),
                        size_vox=card.roi_size_vox, spacing_mm=card.roi_spacing_mm).hu
            for v in (source, ct)]
    np.testing.assert_array_equal(rois[0], rois[1])
