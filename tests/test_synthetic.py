"""Tests of the synthetic DICOM cohort generator (small, seeded volumes: a few seconds)."""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pydicom
import pytest
from scipy import ndimage as ndi

from data_tools import synthetic
from data_tools.errors import UnreadableFileError
from data_tools.nifti import load_nifti_mask
from data_tools.synthetic import (
    RESCALE_VARIANTS,
    SyntheticConfig,
    generate_case,
    generate_cohort,
    load_truth,
)

SEED = 20240611
# coarse voxels keep the volumes small; the blur is narrowed so that, in mm, it stays close
# to the default's (0.4-0.9 voxels of ~1 mm)
SMALL = SyntheticConfig(shape_yx=128, n_slices=(50, 58), pixel_spacing_mm=(2.2, 2.6),
                        slice_spacing_mm=(1.6, 2.0), blur_sigma_vox=(0.3, 0.45))
N_CASES = 4  # one per rescale variant
REQUIRED_TAGS = (
    "SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID",
    "FrameOfReferenceUID", "Modality", "ImageType", "ImageOrientationPatient",
    "ImagePositionPatient", "PixelSpacing", "SliceThickness", "InstanceNumber", "SliceLocation",
    "Rows", "Columns", "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation",
    "SamplesPerPixel", "PhotometricInterpretation", "RescaleIntercept", "RescaleSlope",
    "RescaleType", "WindowCenter", "WindowWidth", "KVP", "Manufacturer", "ConvolutionKernel",
    "StudyDescription", "SeriesDescription", "PatientName", "PatientID", "PatientBirthDate",
    "AccessionNumber", "InstitutionName", "ReferringPhysicianName", "StudyDate", "StudyTime",
    "PatientSex", "PatientAge", "PixelData",
)
IDENTIFIER_KEYS = ("PatientName", "PatientID", "PatientBirthDate", "AccessionNumber",
                   "InstitutionName", "ReferringPhysicianName")


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """A 4-case cohort written by generate_cohort, with the in-memory cases it generated."""
    out = tmp_path_factory.mktemp("cohort")
    cases, calls = [], []
    real = synthetic.generate_case

    def spy(*args, **kwargs):
        case = real(*args, **kwargs)
        cases.append(case)
        return case

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(synthetic, "generate_case", spy)
        truth_path = generate_cohort(out, n_cases=N_CASES, seed=SEED, config=SMALL,
                                     progress=lambda done, total: calls.append((done, total)))
    return SimpleNamespace(out=out, truth_path=truth_path, cases=cases, calls=calls,
                           truth=load_truth(out))


def _read_series(case_dir: Path):
    files = sorted(case_dir.glob("*.dcm"))
    dss = [pydicom.dcmread(f) for f in files]
    return files, dss


def _affine_from_dicom(dss) -> np.ndarray:
    """[z, y, x, 1] -> LPS affine computed from IPP / IOP / PixelSpacing (sorted by position)."""
    iop = np.array([float(v) for v in dss[0].ImageOrientationPatient])
    row_dir, col_dir = iop[:3], iop[3:]
    normal = np.cross(row_dir, col_dir)
    dss = sorted(dss, key=lambda d: float(normal @ [float(v) for v in d.ImagePositionPatient]))
    ipp = np.array([[float(v) for v in d.ImagePositionPatient] for d in dss])
    row_sp, col_sp = (float(v) for v in dss[0].PixelSpacing)
    aff = np.eye(4)
    aff[:3, 0] = (ipp[-1] - ipp[0]) / (len(dss) - 1)
    aff[:3, 1] = col_dir * row_sp
    aff[:3, 2] = row_dir * col_sp
    aff[:3, 3] = ipp[0]
    return aff, dss


# ----------------------------------------------------------------------------- config
def test_config_validation_and_round_trip():
    with pytest.raises(ValueError, match="n_slices"):
        SyntheticConfig(n_slices=(100, 90))
    with pytest.raises(ValueError, match="p_bead_benign"):
        SyntheticConfig(p_bead_benign=1.5)
    with pytest.raises(ValueError, match="rescale_variants"):
        SyntheticConfig(rescale_variants=("float32",))
    with pytest.raises(ValueError, match="fixed_geometry"):
        SyntheticConfig(fixed_geometry=((10, 64, 64), (1.0, 0.0, 1.0)))
    cfg = SyntheticConfig(p_bead_malignant=0.3, p_bead_benign=0.3,
                          fixed_geometry=((40, 96, 96), (2.0, 3.0, 3.0)))
    d = json.loads(json.dumps(cfg.to_dict()))
    assert SyntheticConfig.from_dict(d) == cfg
    with pytest.raises(ValueError, match="unknown"):
        SyntheticConfig.from_dict({"nonsense": 1})


def test_bad_seed_and_too_small_geometry():
    with pytest.raises(ValueError, match="seed"):
        generate_case(-1, config=SMALL)
    with pytest.raises(ValueError, match="48 mm ROI"):
        generate_case(0, config=SyntheticConfig(fixed_geometry=((20, 64, 64), (1.0, 1.0, 1.0))))


def test_label_distributions():
    rng = np.random.default_rng(0)
    specs = [s for _ in range(700) for s in synthetic._nodule_specs(rng, SyntheticConfig())]
    mal = [s for s in specs if s["malignant"]]
    ben = [s for s in specs if not s["malignant"]]
    assert 0.45 < len(mal) / len(specs) < 0.55
    assert 0.8 < np.mean([s["margin"] != "round" for s in mal]) < 0.9
    assert 0.8 < np.mean([s["margin"] == "round" for s in ben]) < 0.9
    assert np.mean([s["diameter_mm"] for s in mal]) > np.mean([s["diameter_mm"] for s in ben]) + 3
    assert 0.65 < np.mean([s["tail"] for s in mal]) < 0.75
    assert 0.35 < np.mean([s["bead"] for s in mal]) < 0.45
    assert np.mean([s["bead"] for s in ben]) < 0.08
    assert 0.25 < np.mean([s["granuloma"] for s in specs]) < 0.35
    assert not any(s["satellite"] for s in specs)  # off by default
    rng = np.random.default_rng(1)
    sat = SyntheticConfig(p_satellite_malignant=0.6, p_satellite_benign=0.05)
    specs = [s for _ in range(700) for s in synthetic._nodule_specs(rng, sat)]
    assert 0.55 < np.mean([s["satellite"] for s in specs if s["malignant"]]) < 0.65
    assert np.mean([s["satellite"] for s in specs if not s["malignant"]]) < 0.09


def test_bullae_are_air_beyond_the_nodule_on_a_stream_of_their_own():
    """Off, a cohort is the one generated before bullae existed (the same HU everywhere);
    on, each bulla is darker than the lung it replaced, in the lung, outside the nodules."""
    off = generate_case(5, config=SMALL, index=1)
    on = generate_case(5, config=dataclasses.replace(SMALL, p_bulla_malignant=1.0,
                                                     p_bulla_benign=1.0), index=1)
    bullae = [p for p in on.planted_items if p["kind"] == "bulla"]
    assert bullae and not any(n["has_bulla"] for n in off.nodules)
    assert [n["has_bulla"] for n in on.nodules] == [
        any(p["nodule_label"] == n["label"] for p in bullae) for n in on.nodules]
    others = [p for p in on.planted_items if p["kind"] != "bulla"]
    assert [(p["kind"], p["center_zyx"]) for p in others] == [
        (p["kind"], p["center_zyx"]) for p in off.planted_items]
    inside = np.isin(on.planted, [p["label"] for p in bullae])
    assert np.array_equal(on.mask, off.mask) and not np.any(inside & (on.mask > 0))
    assert np.all(on.lung[inside])
    assert np.median(on.hu[inside]) < np.median(off.hu[inside]) - 80
    assert np.median(on.hu[inside]) < -940
    for p in bullae:
        assert 6.0 <= p["diameter_mm"] <= 10.0


def test_satellites_have_a_stream_of_their_own():
    """With no satellites the other draws are those of a cohort generated before satellites
    existed: the same nodules, structures and noise."""
    none = dataclasses.replace(SMALL, p_satellite_malignant=0.0, p_satellite_benign=0.0)
    every = dataclasses.replace(SMALL, p_satellite_malignant=1.0, p_satellite_benign=1.0)
    a, b = generate_case(5, config=none, index=1), generate_case(5, config=every, index=1)
    assert [n["center_zyx"] for n in a.nodules] == [n["center_zyx"] for n in b.nodules]
    assert not any(n["has_satellite_nodule"] for n in a.nodules)
    sats = [p for p in b.planted_items if p["kind"] == "satellite_nodule"]
    assert sats and all(n["has_satellite_nodule"] == any(p["nodule_label"] == n["label"]
                                                         for p in sats) for n in b.nodules)
    others = [p for p in b.planted_items if p["kind"] != "satellite_nodule"]
    assert [(p["kind"], p["center_zyx"]) for p in others] == [
        (p["kind"], p["center_zyx"]) for p in a.planted_items]
    for p in sats:  # soft tissue, 4-6 mm, 7-11 mm beyond the nodule's nominal edge
        nod = b.nodules[p["nodule_label"] - 1]
        assert 20.0 <= p["hu"] <= 60.0 and 4.0 <= p["diameter_mm"] <= 6.0
        assert nod["diameter_mm"] / 2 + 7.0 - 1e-6 <= p["distance_mm"]
    # an old truth.json (no satellite fields) means a cohort without satellites
    old = {k: v for k, v in none.to_dict().items() if not k.startswith(("p_satellite",))}
    assert SyntheticConfig.from_dict(old) == none


def _arrays_sha256(case) -> str:
    h = hashlib.sha256()
    for a in (case.hu, case.mask, case.planted):
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


@pytest.mark.parametrize("seed, index, digest", [
    (7, 2, "c9b183618510c9ebb1cd6c5e2b0c3c81171e52ba3e2de23b67b26ed24be32592"),
    (3, 0, "dff2513ea8cfb1c2fd7e620f6833c3ce4da70dcce3ae980ea4d4ad1e6c5ff6ca")])
def test_default_cases_are_byte_identical_to_those_before_halos(seed, index, digest):
    """HU, nodule mask and planted map of cases generated before ground-glass halos existed
    (SHA-256 taken on that code): with halos off (the default) nothing changes."""
    case = generate_case(seed, config=SMALL, index=index)
    assert _arrays_sha256(case) == digest
    assert not any(n["has_ground_glass_halo"] for n in case.nodules)


HALOS = dataclasses.replace(SMALL, p_halo_malignant=1.0, p_halo_benign=1.0,
                            halo_width_mm=(4.0, 5.0), halo_hu=(-650.0, -550.0))


def test_halos_have_a_stream_of_their_own_and_change_only_their_surroundings():
    a, b = generate_case(5, config=SMALL, index=1), generate_case(5, config=HALOS, index=1)
    assert np.array_equal(a.mask, b.mask) and a.acquisition == b.acquisition
    halos = [p for p in b.planted_items if p["kind"] == "ground_glass_halo"]
    others = [p for p in b.planted_items if p["kind"] != "ground_glass_halo"]
    assert [(p["kind"], p["center_zyx"], p["n_voxels"]) for p in others] == [
        (p["kind"], p["center_zyx"], p["n_voxels"]) for p in a.planted_items]
    assert halos and all(p["label"] > max([o["label"] for o in others], default=0) for p in halos)
    assert np.array_equal(b.planted[b.planted <= len(others)], a.planted[b.planted <= len(others)])
    # the HU differ only near the halos (their partial-volume fringe, spread by the blur)
    near = ndi.binary_dilation(np.isin(b.planted, [p["label"] for p in halos]), iterations=6)
    assert np.array_equal(a.hu[~near], b.hu[~near]) and not np.array_equal(a.hu, b.hu)
    assert [n["has_ground_glass_halo"] for n in b.nodules] == [
        any(p["nodule_label"] == n["label"] for p in halos) for n in b.nodules]
    # a config written before halos existed means none; bad settings are refused
    old = {k: v for k, v in SMALL.to_dict().items() if "halo" not in k}
    assert SyntheticConfig.from_dict(old) == SMALL and SMALL.p_halo_malignant == 0.0
    with pytest.raises(ValueError, match="p_halo_benign"):
        SyntheticConfig(p_halo_benign=1.5)
    with pytest.raises(ValueError, match="halo_width_mm"):
        SyntheticConfig(halo_width_mm=(0.0, 2.0))


def test_halo_geometry_and_density():
    """A rim of lung voxels 0..~1.6 widths beyond its own nodule, never on a nodule or a
    vessel, at the drawn density where fully occupied (no blur, no noise); only the partial
    volume of the nodule next to it is denser than a vessel's edge."""
    cfg = dataclasses.replace(HALOS, blur_sigma_vox=(0.0, 0.0), noise_sigma_hu=(0.0, 0.0))
    case = generate_case(4, config=cfg, index=0)
    spacing = np.array(case.acquisition["spacing_mm"])
    halos = [p for p in case.planted_items if p["kind"] == "ground_glass_halo"]
    assert len(halos) == len(case.nodules)  # p = 1: every nodule has one
    vox_mm = float(np.prod(spacing) ** (1 / 3))
    for p in halos:
        own = case.planted == p["label"]
        assert own.sum() == p["n_voxels"] >= 3 and 4.0 <= p["width_mm"] <= 5.0
        assert -650.0 <= p["hu"] <= -550.0
        assert np.all(case.lung[own]) and not np.any(case.mask[own])
        d = ndi.distance_transform_edt(case.mask != p["nodule_label"], sampling=spacing)[own]
        assert d.min() <= vox_mm and d.max() <= 1.6 * p["width_mm"] + 1.5 * vox_mm
        vals = case.hu[own]
        # fully occupied parenchyma has the drawn density (recorded to 0.1 HU)
        assert np.mean(np.abs(vals - p["hu"]) <= 0.051) > 0.25
        assert vals.min() >= -900.0 and np.median(vals) > -700.0  # ground glass, not lung
        assert np.all(vals[d > 1.5 * vox_mm] <= -500.0 + 0.01)  # at most a vessel's edge
    assert -870.0 < np.median(case.hu[case.lung & (case.planted == 0)]) < -830.0


def test_removing_a_halo_restores_aerated_lung():
    """The halo's label is the oracle mask: inpainting it brings its voxels back to lung."""
    from discovery.model.edit import inpaint_parenchyma

    case = generate_case(5, config=HALOS, index=1)
    spacing = case.acquisition["spacing_mm"]
    for p in case.planted_items:
        if p["kind"] != "ground_glass_halo":
            continue
        own = case.planted == p["label"]
        edited = inpaint_parenchyma(case.hu, ndi.binary_dilation(own) & case.lung,
                                    spacing_mm=spacing, protect=case.mask > 0)
        assert case.hu[own].mean() > -700.0 and -900.0 < edited[own].mean() < -780.0


# ----------------------------------------------------------------------------- determinism
def test_same_seed_same_case_different_seed_different_case():
    a = generate_case(11, config=SMALL, index=2)
    b = generate_case(11, config=SMALL, index=2)
    assert np.array_equal(a.hu, b.hu)
    assert np.array_equal(a.mask, b.mask) and np.array_equal(a.planted, b.planted)
    assert np.array_equal(a.affine, b.affine)
    assert a.uids == b.uids and a.identifiers == b.identifiers
    assert a.nodules == b.nodules and a.planted_items == b.planted_items
    assert a.file_order == b.file_order
    c = generate_case(12, config=SMALL, index=2)
    assert a.uids["StudyInstanceUID"] != c.uids["StudyInstanceUID"]
    assert set(a.uids["SOPInstanceUIDs"]).isdisjoint(c.uids["SOPInstanceUIDs"])
    assert a.identifiers["PatientID"] != c.identifiers["PatientID"]
    assert a.hu.shape != c.hu.shape or not np.array_equal(a.hu, c.hu)



def test_random_draws_keep_their_order():
    """Pinned truth of one case with every structure kind: the generator's random draws (one
    stream, plus the satellites' own) must stay in the same order across refactors, so that a
    seed keeps giving the same cohort."""
    cfg = dataclasses.replace(SMALL, p_satellite_malignant=1.0, p_satellite_benign=1.0,
                              p_granuloma=1.0, p_bead_benign=1.0, p_tail_benign=1.0)
    c = generate_case(7, config=cfg, index=2)
    assert [(n["malignant"], n["margin"], n["diameter_mm"], n["center_zyx"], n["n_voxels"],
             n["hu"]) for n in c.nodules] == [
        (False, "round", 6.83, [26.03, 74.22, 28.14], 15, 23.8),
        (False, "round", 13.77, [19.87, 44.48, 39.91], 129, 47.1),
        (False, "lobulated", 14.31, [20.24, 81.9, 45.55], 66, 47.8)]
    assert [(p["kind"], p["nodule_label"], p["center_zyx"], p["n_voxels"])
            for p in c.planted_items] == [
        ("pleural_tail", 1, [26.0, 74.43, 24.71], 7), ("granuloma", 1, [29.0, 71.0, 32.0], 7),
        ("marker_bead", 1, [19.0, 74.0, 28.0], 1), ("pleural_tail", 2, [20.0, 40.17, 42.67], 6),
        ("granuloma", 2, [24.0, 47.0, 43.0], 3), ("marker_bead", 2, [20.0, 39.0, 41.0], 1),
        ("pleural_tail", 3, [19.87, 84.62, 49.5], 8), ("granuloma", 3, [17.0, 87.0, 46.0], 7),
        ("marker_bead", 3, [18.0, 76.0, 45.0], 1),
        ("satellite_nodule", 1, [29.0, 76.0, 25.0], 7),
        ("satellite_nodule", 2, [28.0, 45.0, 39.0], 7),
        ("satellite_nodule", 3, [20.0, 78.0, 41.0], 7)]
    a = c.acquisition
    assert (a["shape"], a["spacing_mm"], a["noise_hu"], a["blur_sigma_vox"], a["kernel"],
            a["kvp"], a["slice_thickness_mm"], a["n_vessel_voxels"]) == (
        [52, 128, 128], [1.9735, 2.3781, 2.3781], 23.02, 0.337, "LUNG", 140, 1.5, 3304)
    assert c.file_order[:6] == (32, 16, 48, 38, 35, 36)

def test_fixed_geometry_is_honoured():
    cfg = SyntheticConfig(fixed_geometry=((40, 96, 96), (2.0, 3.0, 3.0)), nodules_per_case=(1, 1))
    case = generate_case(3, config=cfg)
    assert case.hu.shape == (40, 96, 96) and case.hu.dtype == np.float32
    assert np.allclose(np.linalg.norm(case.affine[:3, :3], axis=0), (2.0, 3.0, 3.0))


# ----------------------------------------------------------------------------- layout + truth
def test_layout_and_manifest(cohort):
    truth = cohort.truth
    assert cohort.truth_path == cohort.out / "truth.json"
    assert truth["seed"] == SEED and truth["generator_version"] == "1"
    assert SyntheticConfig.from_dict(truth["config"]) == SMALL
    assert cohort.calls == [(i + 1, N_CASES) for i in range(N_CASES)]
    assert len(truth["cases"]) == N_CASES
    case_dirs = sorted(p.name for p in cohort.out.iterdir()
                       if p.is_dir() and not p.name.startswith("_"))
    assert case_dirs == sorted(c["case_dir"] for c in truth["cases"])
    for rec in truth["cases"]:
        ids = rec["identifiers"]
        assert rec["case_dir"] == ids["PatientID"]
        assert ids["PatientID"].startswith("PID-") and len(ids["PatientID"]) == 10
        assert ids["AccessionNumber"].startswith("ACC") and len(ids["AccessionNumber"]) == 11
        assert ids["InstitutionName"].endswith("General Hospital")
        assert ids["PatientBirthDate"].startswith("19") and len(ids["PatientBirthDate"]) == 8
        assert len(ids["PatientName"].split("^")[0]) >= 6
        assert (cohort.out / "_truth" / f"{rec['case_dir']}_planted.nii.gz").is_file()
        assert (cohort.out / rec["case_dir"] / "mask.nii.gz").is_file()
    for key in IDENTIFIER_KEYS[:2] + ("AccessionNumber",):
        values = [c["identifiers"][key] for c in truth["cases"]]
        assert len(set(values)) == len(values), key
    variants = {c["acquisition"]["rescale"]["variant"] for c in truth["cases"]}
    assert variants == set(RESCALE_VARIANTS)


def test_truth_csv_matches_json(cohort):
    with open(cohort.out / "truth.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["case_dir", "nodule_label", "malignant", "diameter_mm", "margin",
                             "center_z", "center_y", "center_x", "has_pleural_tail",
                             "has_marker_bead", "has_granuloma", "has_satellite_nodule",
                             "has_ground_glass_halo", "has_bulla"]
    nodules = [(c["case_dir"], n) for c in cohort.truth["cases"] for n in c["nodules"]]
    assert len(rows) == len(nodules)
    for row, (case_dir, n) in zip(rows, nodules):
        assert row["case_dir"] == case_dir and int(row["nodule_label"]) == n["label"]
        assert int(row["malignant"]) == int(n["malignant"]) and row["margin"] == n["margin"]
        assert int(row["has_marker_bead"]) == int(n["has_marker_bead"])
        assert int(row["has_satellite_nodule"]) == int(n["has_satellite_nodule"])
        assert int(row["has_ground_glass_halo"]) == int(n["has_ground_glass_halo"]) == 0
        assert int(row["has_bulla"]) == int(n["has_bulla"]) == 0


def test_masks_nodules_and_planted_structures(cohort):
    n_planted = 0
    for rec, case in zip(cohort.truth["cases"], cohort.cases):
        spacing = np.array(rec["acquisition"]["spacing_mm"])
        shape = np.array(rec["acquisition"]["shape"])
        mask = load_nifti_mask(cohort.out / rec["case_dir"] / "mask.nii.gz")
        planted = load_nifti_mask(cohort.out / "_truth" / f"{rec['case_dir']}_planted.nii.gz")
        assert np.array_equal(mask.array, case.mask) and np.array_equal(planted.array, case.planted)
        labels = [n["label"] for n in rec["nodules"]]
        assert labels == list(range(1, len(labels) + 1)) and mask.labels == labels
        dist_to_mask = ndi.distance_transform_edt(mask.array == 0, sampling=spacing)
        for n in rec["nodules"]:
            c = np.array(n["center_zyx"])
            half = 24.0 / spacing
            assert np.all(c - half >= 0) and np.all(c + half <= shape - 1), "48 mm ROI must fit"
            assert 3.0 <= n["diameter_mm"] <= 25.0
            assert n["margin"] in ("round", "lobulated", "spiculated")
            assert np.all(case.lung[case.mask == n["label"]]), "nodules lie in the lung"
            assert n["n_voxels"] == int((mask.array == n["label"]).sum())
            grown = ndi.binary_dilation(mask.array == n["label"], iterations=2)
            assert not np.any(grown & (mask.array > 0) & (mask.array != n["label"])), "touching"
        assert planted.labels == [p["label"] for p in rec["planted"]]
        for p in rec["planted"]:
            n_planted += 1
            assert p["kind"] in ("pleural_tail", "marker_bead", "granuloma", "satellite_nodule")
            nod = rec["nodules"][p["nodule_label"] - 1]
            flag = {"pleural_tail": "has_pleural_tail", "marker_bead": "has_marker_bead",
                    "granuloma": "has_granuloma",
                    "satellite_nodule": "has_satellite_nodule"}[p["kind"]]
            assert nod[flag]
            vox = np.argwhere(planted.array == p["label"])
            assert len(vox) == p["n_voxels"] > 0
            r = np.linalg.norm((vox - np.array(nod["center_zyx"])) * spacing, axis=1)
            assert r.max() <= 20.0 + 1e-6, "planted structures stay within 20 mm"
            assert dist_to_mask[tuple(vox.T)].min() > 2.0, "outside the mask dilated by 2 mm"
        for n in rec["nodules"]:
            kinds = [p["kind"] for p in rec["planted"] if p["nodule_label"] == n["label"]]
            assert len(kinds) == len(set(kinds))
            assert n["has_pleural_tail"] == ("pleural_tail" in kinds)
            assert n["has_satellite_nodule"] == ("satellite_nodule" in kinds)
    assert n_planted > 0


def test_hu_sanity(cohort):
    lung_medians = []
    for case in cohort.cases:
        lung_medians.append(float(np.median(case.hu[case.lung])))
        spacing = np.array(case.acquisition["spacing_mm"])
        grid = np.indices(case.hu.shape, dtype=np.float32).reshape(3, -1).T
        for n in case.nodules:
            if n["diameter_mm"] < 10:
                continue
            r = np.linalg.norm((grid - np.array(n["center_zyx"])) * spacing, axis=1)
            core = case.hu.reshape(-1)[r <= 0.3 * n["diameter_mm"]]
            # partial volume at these coarse voxels softens 10 mm nodules a little
            assert -300.0 < core.mean() < 130.0, n
        for p in case.planted_items:
            vals = case.hu[case.planted == p["label"]]
            if p["kind"] == "marker_bead":
                assert vals.max() > 2000.0
            elif p["kind"] == "granuloma":
                assert vals.max() > 0.0  # calcified, though blurred at coarse voxels
            else:
                assert vals.mean() > -750.0  # a thin soft-tissue band in partial volume
    assert all(-875.0 < m < -825.0 for m in lung_medians), lung_medians


def test_nodule_density_without_blur_or_noise():
    cfg = SyntheticConfig(shape_yx=128, n_slices=(50, 50), pixel_spacing_mm=(2.2, 2.2),
                          slice_spacing_mm=(1.6, 1.6), blur_sigma_vox=(0.0, 0.0),
                          noise_sigma_hu=(0.0, 0.0))
    case = generate_case(4, config=cfg)
    for n in case.nodules:
        core = ndi.binary_erosion(case.mask == n["label"])
        if core.any():
            assert 15.0 <= case.hu[core].mean() <= 65.0
    assert -870.0 < np.median(case.hu[case.lung]) < -830.0


# ----------------------------------------------------------------------------- DICOM
def test_dicom_files_round_trip(cohort):
    shuffled = 0
    for rec, case in zip(cohort.truth["cases"], cohort.cases):
        files, dss = _read_series(cohort.out / rec["case_dir"])
        assert len(files) == case.hu.shape[0]
        with open(files[0], "rb") as fh:
            assert fh.read(132)[128:] == b"DICM"
        ds0 = dss[0]
        assert ds0.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
        assert ds0.file_meta.MediaStorageSOPClassUID == "1.2.840.10008.5.1.4.1.1.2"
        for ds in dss:
            missing = [t for t in REQUIRED_TAGS if t not in ds]
            assert not missing, missing
            assert "SpacingBetweenSlices" not in ds
            assert ds.Modality == "CT" and list(ds.ImageType) == ["ORIGINAL", "PRIMARY", "AXIAL"]
            assert ds.Manufacturer == "SyntheticCT" and ds.RescaleType == "HU"
            for key in IDENTIFIER_KEYS:
                assert str(ds.data_element(key).value) == rec["identifiers"][key]
            assert ds.StudyInstanceUID == rec["uids"]["StudyInstanceUID"]
        assert len({ds.SOPInstanceUID for ds in dss}) == len(dss)
        instance_by_file = [int(ds.InstanceNumber) for ds in dss]
        shuffled += instance_by_file != sorted(instance_by_file)
        resc = rec["acquisition"]["rescale"]
        assert float(ds0.RescaleSlope) == resc["slope"]
        assert float(ds0.RescaleIntercept) == resc["intercept"]
        assert int(ds0.PixelRepresentation) == resc["pixel_representation"]
        aff, ordered = _affine_from_dicom(dss)
        hu = np.stack([d.pixel_array * float(d.RescaleSlope) + float(d.RescaleIntercept)
                       for d in ordered])
        assert hu.shape == case.hu.shape
        assert np.abs(hu - case.hu).max() <= resc["slope"] / 2 + 1e-3
        assert np.allclose(aff, case.affine, atol=1e-3)
        mask = load_nifti_mask(cohort.out / rec["case_dir"] / "mask.nii.gz")
        assert np.allclose(mask.affine, aff, atol=1e-3)
        assert mask.shape == hu.shape
    assert shuffled == N_CASES


# ----------------------------------------------------------------------------- cohort I/O
def test_generate_cohort_refuses_foreign_folder(tmp_path):
    (tmp_path / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="not empty"):
        generate_cohort(tmp_path, n_cases=1, seed=1, config=SMALL)
    with pytest.raises(ValueError, match="truth.json"):
        generate_cohort(tmp_path, n_cases=1, seed=1, config=SMALL, overwrite=True)
    assert (tmp_path / "notes.txt").read_text() == "keep me"
    with pytest.raises(ValueError, match="n_cases"):
        generate_cohort(tmp_path / "new", n_cases=0, seed=1)


def test_overwrite_replaces_previous_cohort(tmp_path):
    cfg = SyntheticConfig(fixed_geometry=((36, 80, 80), (2.0, 3.5, 3.5)), nodules_per_case=(1, 1))
    generate_cohort(tmp_path, n_cases=1, seed=5, config=cfg)
    old = load_truth(tmp_path)["cases"][0]["case_dir"]
    generate_cohort(tmp_path, n_cases=1, seed=6, config=cfg, overwrite=True)
    new = load_truth(tmp_path)["cases"][0]["case_dir"]
    assert old != new and not (tmp_path / old).exists() and (tmp_path / new).is_dir()


def test_load_truth_errors(tmp_path):
    with pytest.raises(UnreadableFileError, match="truth.json"):
        load_truth(tmp_path)
    (tmp_path / "truth.json").write_text("{not json")
    with pytest.raises(UnreadableFileError):
        load_truth(tmp_path)
    (tmp_path / "truth.json").write_text("[]")
    with pytest.raises(UnreadableFileError, match="cases"):
        load_truth(tmp_path)


def test_sample_command_takes_cohort_settings(tmp_path, capsys):
    from discovery.cli import main

    settings = dict(SMALL.to_dict(), nodules_per_case=[2, 2], p_malignant=1.0,
                    p_tail_malignant=1.0, p_bead_malignant=0.0, p_granuloma=0.0)
    path = tmp_path / "cohort.json"
    path.write_text(json.dumps(settings))
    assert main(["sample", str(tmp_path / "c"), "--cases", "1", "--config", str(path)]) == 0
    nodules = load_truth(tmp_path / "c")["cases"][0]["nodules"]
    assert len(nodules) == 2
    assert all(n["malignant"] and n["has_pleural_tail"] and not n["has_marker_bead"]
               for n in nodules)

    path.write_text(json.dumps({"p_tail_benign": 0.5, "bogus": 1}))
    assert main(["sample", str(tmp_path / "d"), "--cases", "1", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "cohort.json" in err and "bogus" in err and str(tmp_path) not in err


def test_read_cohort_settings_file(tmp_path):
    path = tmp_path / "cohort.json"
    path.write_text(json.dumps({"p_tail_benign": 0.03, "tail_width_mm": [4.0, 6.0]}))
    cfg = SyntheticConfig.read(path)
    assert cfg == dataclasses.replace(SyntheticConfig(), p_tail_benign=0.03, tail_width_mm=(4.0, 6.0))
    for text in ("{not json", json.dumps({"bogus": 1}), json.dumps({"p_tail_benign": 2.0})):
        path.write_text(text)
        with pytest.raises(ValueError, match="cohort settings cohort.json") as err:
            SyntheticConfig.read(path)
        assert str(tmp_path) not in str(err.value)
    with pytest.raises(ValueError, match="missing.json"):
        SyntheticConfig.read(tmp_path / "missing.json")
