"""Crash-safe, resumable, deterministic ``discovery score`` (discovery.batch.score, issue 7).

A tiny NIfTI cohort (five scored cases in two kinds of background, so that the default
HDBSCAN finds pattern clusters and the causal check runs; one case without a mask; one
unreadable case) scored with an untrained model.  The reference is one uninterrupted run;
every other way of producing the results must give byte-identical ``findings.csv`` and
``patterns.csv``.
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch

from data_tools.deid import pseudonymous_id
from data_tools.layouts import CaseSpec
from data_tools.nifti import save_nifti
from data_tools.volume import Mask, Volume, affine_from_spacing
from discovery.batch.score import (WORKER_DIED, case_config_hash, case_input_hash,
                             remove_stale_temp_files, score_folder)
from discovery.parallel import START_METHODS, start_method
from discovery.model.card import ModelCard, build_network, save_model
from discovery.pipeline import ScoreSettings
from discovery.store.tables import ResultsStore
from tests.test_patterns import REGION

REPO = Path(__file__).resolve().parents[1]
TABLES = ("findings.csv", "patterns.csv")
CENTRES = ((20, 16, 18), (20, 18, 46), (20, 46, 32))
N_CASES = 7


def _save_model(out: Path, seed: int) -> Path:
    torch.manual_seed(seed)
    save_model(build_network(ModelCard()), ModelCard(), out)
    return out


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return _save_model(tmp_path_factory.mktemp("model"), 3)


def _mask(n: int, shift: int = 0) -> np.ndarray:
    m = np.zeros((40, 64, 64), np.int16)
    zz, yy, xx = np.ogrid[:40, :64, :64]
    for i, (z, y, x) in enumerate(CENTRES[:n]):
        m[((zz - z) * 1.5) ** 2 + ((yy - y - shift) * 1.2) ** 2 + ((xx - x) * 1.2) ** 2 <= 25] = i + 1
    return m


def _case(folder: Path, seed: int, *, mask: bool = True) -> None:
    """40 x 64 x 64 voxels, three 5 mm balls; odd seeds lung-like, even seeds soft tissue."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    hu = rng.normal(-850 if seed % 2 else -150, 20, (40, 64, 64)).astype(np.float32)
    m = _mask(3)
    hu[m > 0] = 40
    aff = affine_from_spacing((1.5, 1.2, 1.2))
    save_nifti(Volume(hu, aff), folder / "ct.nii.gz")
    if mask:
        save_nifti(Mask(m, aff), folder / "mask.nii.gz")


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cohort")
    for i in range(5):
        _case(root / f"CASE_{i}", i)
    _case(root / "CASE_NOMASK", 5, mask=False)
    (root / "CASE_BAD").mkdir()
    (root / "CASE_BAD" / "ct.nii.gz").write_bytes(b"\x1f\x8b\x08garbage")
    return root


@pytest.fixture(scope="module")
def reference(tmp_path_factory, cohort, model_dir):
    """One uninterrupted run: (results folder, summary)."""
    out = tmp_path_factory.mktemp("reference")
    return out, score_folder(cohort, out, model_dir=model_dir)


#: A clustering under which these noise balls form clusters (HDBSCAN on the region
#: descriptors, as tests/test_patterns.py tests it), for the tests that need the causal
#: check to run
REGION_PATTERNS = REGION


def _clusters(folder: Path):
    store = ResultsStore(folder, create=False)
    try:
        return store.clusters()
    finally:
        store.close()


@pytest.fixture(scope="module")
def reference_clustered(tmp_path_factory, cohort, model_dir):
    """The reference run clustered with :data:`REGION_PATTERNS`: (results folder, summary)."""
    out = tmp_path_factory.mktemp("reference_clustered")
    return out, score_folder(cohort, out, model_dir=model_dir, pattern_settings=REGION_PATTERNS)


def _tables(folder: Path) -> dict[str, bytes]:
    return {name: (folder / name).read_bytes() for name in TABLES}


def _manifest(folder: Path) -> dict[str, tuple]:
    store = ResultsStore(folder, create=False)
    try:
        return {r.case_id: (r.input_hash, r.model_hash, r.config_hash, r.status, r.finished_at)
                for r in store.manifest().itertuples()}
    finally:
        store.close()


def _temp_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if ".tmp" in p.name)


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_reference_run_counts_and_clusters(reference):
    out, summary = reference
    assert (summary.n_cases, summary.n_ok, summary.n_no_mask, summary.n_failed) == (N_CASES, 5, 1, 1)
    assert summary.n_skipped == 0 and summary.n_nodules == 15
    # the product's clustering finds no pattern in these noise balls; HDBSCAN on the region
    # descriptors does (the worker test below needs clusters for the causal check)
    assert summary.n_clusters == len(_clusters(out)) == 0 and summary.n_regions >= 10
    manifest = _manifest(out)
    assert len(manifest) == N_CASES
    assert sorted(r[3] for r in manifest.values()) == ["failed", "no-mask"] + ["ok"] * 5
    assert b"scored_at" not in (out / "findings.csv").read_bytes()


def test_two_uninterrupted_runs_write_identical_tables(reference, cohort, model_dir, tmp_path,
                                                       monkeypatch):
    """A first run hashes no case in the calling process: each case's worker hashes the bytes
    it reads the case from, and the manifest holds case_input_hash's value."""
    from discovery.batch import score as batch

    hashed_here = []
    monkeypatch.setattr(batch, "case_input_hash",
                        lambda spec, **kw: hashed_here.append(spec) or case_input_hash(spec, **kw))
    score_folder(cohort, tmp_path / "again", model_dir=model_dir)
    assert _tables(tmp_path / "again") == _tables(reference[0])
    assert hashed_here == []
    manifest = _manifest(tmp_path / "again")
    assert {c: r[:4] for c, r in manifest.items()} == {c: r[:4] for c, r in
                                                       _manifest(reference[0]).items()}
    expected = {s.case_id: case_input_hash(s) for s in batch.discover_cases(cohort)}
    assert {c: r[0] for c, r in manifest.items()} == expected


def test_rerun_skips_unchanged_cases_and_retries_failed_ones(reference, cohort, model_dir, tmp_path):
    out = _copy(reference[0], tmp_path / "out")
    before = _manifest(out)
    seen = []
    summary = score_folder(cohort, out, model_dir=model_dir, progress=lambda d, t, c: seen.append(d))
    after = _manifest(out)
    assert summary.n_skipped == N_CASES - 1 and seen == list(range(1, N_CASES + 1))
    assert (summary.n_ok, summary.n_no_mask, summary.n_failed, summary.n_nodules) == (5, 1, 1, 15)
    redone = [c for c in after if after[c][4] != before[c][4]]
    assert len(redone) == 1 and after[redone[0]][3] == "failed"  # only the failed case
    assert _tables(out) == _tables(reference[0])


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_killed_run_resumes_to_identical_tables(backend, reference, cohort, model_dir, tmp_path,
                                                request):
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "discovery.cli", "score", str(cohort), "--out", str(out),
           "--model", str(model_dir)]
    if backend == "postgresql":  # tables on a real server on loopback (tests/_postgres.py)
        cmd += ["--store", request.getfixturevalue("pg_url")]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    try:
        for line in proc.stdout:  # progress lines come after each case is stored
            if line.startswith(f"scoring: 2/{N_CASES}"):
                os.kill(proc.pid, signal.SIGKILL)
                break
    finally:
        proc.kill()
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    done = _manifest(out)
    assert 2 <= len(done) < N_CASES
    assert not (out / "findings.csv").exists()
    # what a kill inside a write would leave: temporary files of a dead process
    (out / "cases" / ".case-x.999999999.tmp.npz").write_bytes(b"partial")
    (out / ".findings.csv.999999999.tmp").write_text("partial")
    (out / ".patterns.csv.tmp").write_text("partial")

    rerun = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300,
                           check=False)
    printed = " ".join(rerun.stdout.split())
    assert rerun.returncode == 1, printed  # the unreadable case
    n_done_ok = sum(r[3] != "failed" for r in done.values())  # a failed case is retried
    assert f"{n_done_ok} skipped" in printed, printed
    assert f"{N_CASES} cases: 5 scored, 1 without mask, 1 failed; 15 nodules" in printed
    assert _tables(out) == _tables(reference[0])
    assert _temp_files(out) == []
    after = _manifest(out)
    assert sorted(after) == sorted(_manifest(reference[0]))
    assert all(after[c] == done[c] for c in done if done[c][3] != "failed")  # not recomputed
    store = ResultsStore(out, create=False)
    try:
        counts = store.query("SELECT COUNT(*) AS n, COUNT(DISTINCT case_id) AS d FROM cases")
        n_nodules = int(store.query("SELECT COUNT(*) AS n FROM nodules")["n"].iloc[0])
        assert store.backend.kind == backend
    finally:
        store.close()
    assert (int(counts["n"].iloc[0]), int(counts["d"].iloc[0]), n_nodules) == (N_CASES, N_CASES, 15)
    assert (out / "discovery.sqlite").exists() == (backend == "sqlite")
    assert sorted(p.name for p in (out / "cases").iterdir()) == sorted(
        p.name for p in (reference[0] / "cases").iterdir())


def test_changed_mask_recomputes_only_that_case(reference, cohort, model_dir, tmp_path):
    inp = _copy(cohort, tmp_path / "in")  # moved input: same hashes, nothing recomputed
    out = _copy(reference[0], tmp_path / "out")
    before = _manifest(out)
    target = "CASE_2"
    aff = affine_from_spacing((1.5, 1.2, 1.2))
    save_nifti(Mask(_mask(2, shift=2), aff), inp / target / "mask.nii.gz")
    summary = score_folder(inp, out, model_dir=model_dir)
    after = _manifest(out)
    redone = sorted(c for c in after if after[c][4] != before[c][4])
    changed = [c for c in after if after[c][0] != before[c][0]]
    assert summary.n_skipped == N_CASES - 2  # the changed case and the failed one
    assert len(changed) == 1 and changed[0] in redone and len(redone) == 2
    assert summary.n_nodules == 14
    store = ResultsStore(out, create=False)
    assert sorted(store.query("SELECT nodule_id FROM nodules WHERE case_id = ?",
                              [changed[0]])["nodule_id"]) == ["n1", "n2"]
    store.close()


def test_another_model_recomputes_every_case(reference, cohort, model_dir, tmp_path):
    out = _copy(reference[0], tmp_path / "out")
    other = _save_model(tmp_path / "model2", 4)
    before = _manifest(out)
    summary = score_folder(cohort, out, model_dir=other)
    after = _manifest(out)
    assert summary.n_skipped == 0
    assert all(after[c][1] != before[c][1] and after[c][0] == before[c][0] for c in after)
    assert all(after[c][4] != before[c][4] for c in after)


def test_settings_change_the_config_hash_and_cases_not_in_input_are_kept(
        reference, cohort, model_dir, tmp_path):
    out = _copy(reference[0], tmp_path / "out")
    inp = _copy(cohort, tmp_path / "in")
    shutil.rmtree(inp / "CASE_4")
    summary = score_folder(inp, out, model_dir=model_dir, settings=ScoreSettings(batch_size=3))
    assert summary.n_skipped == 0 and summary.n_not_in_input == 1
    assert len(_manifest(out)) == N_CASES  # the missing case's results are kept


def test_input_hash_covers_every_file_of_a_dicom_folder_but_not_the_folders_above(tmp_path):
    case = tmp_path / "a" / "PATIENT"
    (case / "series").mkdir(parents=True)
    (case / "series" / "IM1").write_bytes(b"x" * 3000)
    (case / "series" / "IM2").write_bytes(b"y" * 10)
    spec = CaseSpec("c1", case, "dicom", None, mask_kind="dicom")
    h0 = case_input_hash(spec)
    moved = tmp_path / "b" / "OTHER"
    shutil.copytree(case, moved)
    assert case_input_hash(CaseSpec("c1", moved, "dicom", None)) == h0
    (case / "series" / "IM2").write_bytes(b"z" * 10)  # same size, new content
    h1 = case_input_hash(spec)
    (case / "series" / "IM2").rename(case / "series" / "IM3")  # same content, new name
    h2 = case_input_hash(spec)
    (case / "series" / ".hidden").write_bytes(b"")
    h3 = case_input_hash(spec)
    assert len({h0, h1, h2, h3}) == 4
    (case / "results").mkdir()
    (case / "results" / "discovery.sqlite").write_bytes(b"db")
    assert case_input_hash(spec, exclude=case / "results") == h3


def test_input_hash_of_a_metaimage_includes_its_data_file_and_the_annotations(tmp_path):
    (tmp_path / "1.2.3.mhd").write_text("ObjectType = Image\nNDims = 3\nElementDataFile = 1.2.3.raw\n")
    (tmp_path / "1.2.3.raw").write_bytes(bytes(range(256)) * 5000)  # > one 1 MiB chunk
    (tmp_path / "annotations.csv").write_text("seriesuid,coordX,coordY,coordZ,diameter_mm\n")
    spec = CaseSpec("c", tmp_path / "1.2.3.mhd", "metaimage", tmp_path / "annotations.csv",
                    mask_kind="luna16", layout="luna16")
    memo = {}
    h0 = case_input_hash(spec, memo=memo)
    assert len(memo) == 3 and case_input_hash(spec, memo=memo) == h0
    raw = bytearray((tmp_path / "1.2.3.raw").read_bytes())
    raw[-1] ^= 1  # the last byte, in the second chunk
    (tmp_path / "1.2.3.raw").write_bytes(bytes(raw))
    h1 = case_input_hash(spec)
    with open(tmp_path / "annotations.csv", "a") as fh:
        fh.write("1.2.3,0,0,0,5\n")
    h2 = case_input_hash(spec)
    (tmp_path / "1.2.3.raw").unlink()
    h3 = case_input_hash(spec)
    assert len({h0, h1, h2, h3}) == 4


def test_a_case_read_once_hashes_as_case_input_hash(tmp_path, monkeypatch):
    """HashingReader: the reader of a case reads each input file once (the NIfTI mask inside
    a DICOM folder is handed out twice from memory), and the hash of those bytes is
    case_input_hash's; files the readers do not ask for, or past the byte budget, are hashed
    from disk; a file that cannot be read counts as missing in both."""
    import pathlib

    from _dicom_factory import write_ct_series
    from data_tools.cases import read_case
    from data_tools.dicom import load_dicom_series
    from discovery.batch import manifest

    case = tmp_path / "PATIENT"
    write_ct_series(case / "series")
    (case / "notes.txt").write_text("not DICOM")
    ct = load_dicom_series(case / "series")
    save_nifti(Mask(np.zeros(ct.shape, np.int16), ct.affine), case / "mask.nii.gz")
    (case / "results").mkdir()
    (case / "results" / "discovery.sqlite").write_bytes(b"db")
    spec = CaseSpec("c1", case, "dicom", case / "mask.nii.gz", mask_kind="nifti")
    expected = case_input_hash(spec, exclude=case / "results")
    reads = []
    real = pathlib.Path.read_bytes
    monkeypatch.setattr(pathlib.Path, "read_bytes", lambda p: reads.append(p) or real(p))
    reader = manifest.HashingReader(spec, case / "results", None)
    monkeypatch.setattr(manifest, "_file_sha256", lambda *a: pytest.fail("read again to hash"))
    loaded = read_case(spec, read=reader)
    assert loaded.mask is not None and loaded.volume.shape == (8, 16, 16)
    assert reader.input_hash() == expected
    inputs = [p for _, p in manifest._case_files(spec, case / "results")]
    assert sorted(reads) == sorted(inputs)  # each input file read once, nothing else
    monkeypatch.undo()
    budget = manifest.HashingReader(spec, case / "results", 3 * 1024)  # a few files only
    read_case(spec, read=budget)
    assert 0 < len(budget.digests) < len(inputs) and budget.input_hash() == expected
    (case / "notes.txt").chmod(0)
    if os.access(case / "notes.txt", os.R_OK):  # root reads anything
        (case / "notes.txt").unlink()
    missing = manifest.HashingReader(spec, case / "results", None)
    read_case(spec, read=missing)
    assert missing.input_hash() == case_input_hash(spec, exclude=case / "results") != expected


def test_config_hash_follows_settings_limits_and_layout():
    card = ModelCard()
    spec = CaseSpec("c", Path("ct.nii.gz"), "nifti", None)
    base = case_config_hash(spec, settings=ScoreSettings(), max_bytes=None, card=card)
    assert base == case_config_hash(spec, settings=ScoreSettings(), max_bytes=None, card=card)
    others = [
        case_config_hash(spec, settings=ScoreSettings(method="layercam"), max_bytes=None, card=card),
        case_config_hash(spec, settings=ScoreSettings(), max_bytes=1 << 30, card=card),
        case_config_hash(CaseSpec("c", Path("ct.nii.gz"), "nifti", None, layout="msd"),
                         settings=ScoreSettings(), max_bytes=None, card=card),
        case_config_hash(spec, settings=ScoreSettings(), max_bytes=None,
                         card=ModelCard(metrics={"threshold": 0.3})),
    ]
    assert len({base, *others}) == 5
    weights_only = ModelCard(weights_sha256="ab" * 32, training={"epochs": 3})
    assert case_config_hash(spec, settings=ScoreSettings(), max_bytes=None, card=weights_only) == base


def test_stale_temp_files_are_removed_live_ones_kept(tmp_path):
    """The names data_tools.files.atomic_path writes (``.NAME.PID.tmp``) and those of earlier
    versions (``cases/.<case_id>.npz.<pid>.tmp``, ``cases/.<case_id>.<pid>.tmp.npz``,
    ``.patterns.csv.tmp``)."""
    from data_tools.files import temp_name

    (tmp_path / "cases").mkdir()
    dead = tmp_path / "cases" / ".case-a.zarr.zip.999999999.tmp"
    dead_npz = tmp_path / "cases" / ".case-f.npz.999999999.tmp"
    dead_old = tmp_path / "cases" / ".case-e.999999999.tmp.npz"
    live = tmp_path / "cases" / f".case-b.npz.{os.getppid()}.tmp"
    old_live = tmp_path / "cases" / f".case-c.npz.{os.getppid()}.tmp"
    mine = temp_name(tmp_path / "findings.csv")
    assert mine.name == f".findings.csv.{os.getpid()}.tmp"
    legacy = tmp_path / ".patterns.csv.tmp"
    pointer = tmp_path / ".store.json.999999999.tmp"
    other = tmp_path / "cases" / "case-d.npz"
    for p in (dead, dead_npz, dead_old, live, old_live, mine, legacy, pointer, other):
        p.write_bytes(b"x")
    os.utime(old_live, (time.time() - 3600, time.time() - 3600))
    assert remove_stale_temp_files(tmp_path) == 7
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == [live.name, other.name]


def test_put_case_without_hashes_drops_the_manifest_row(tmp_path):
    store = ResultsStore(tmp_path)
    row = {"case_id": "c", "status": "ok", "error": ""}
    store.put_case(row, [], [], manifest={"input_hash": "i", "model_hash": "m", "config_hash": "c"})
    assert list(store.manifest()["status"]) == ["ok"]
    store.put_case(row, [], [])
    assert store.manifest().empty
    store.close()


class _Recording(ProcessPoolExecutor):
    """A process pool that records the names of the functions submitted to it."""

    submitted: list[str] = []

    def submit(self, fn, /, *args, **kwargs):
        self.submitted.append(fn.__name__)
        return super().submit(fn, *args, **kwargs)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_two_workers_write_identical_tables(reference_clustered, cohort, model_dir, tmp_path,
                                            method):
    """The cases and then the causal check's re-scoring run on the pool's workers, and the
    tables are byte-identical to one worker's, with workers forked (the default on Linux:
    they inherit the parent's torch, which has already run the reference batch with two
    threads) or spawned."""
    _Recording.submitted = []
    reference = reference_clustered
    summary = score_folder(cohort, tmp_path / "w2", model_dir=model_dir, workers=2,
                           pattern_settings=REGION_PATTERNS,
                           executor_factory=lambda n: _Recording(
                               max_workers=n, mp_context=multiprocessing.get_context(method)))
    got = _Recording.submitted
    # a first run: both workers load the model while the inputs are hashed, then the cases,
    # then the causal check
    assert got[:2] == ["_warm_worker"] * 2 and got.count("_work") == N_CASES
    assert got.index("_causal_work") > max(i for i, name in enumerate(got) if name == "_work")
    assert summary.n_clusters >= 1
    assert (summary.n_ok, summary.n_no_mask, summary.n_failed) == (5, 1, 1)
    assert summary.failed == reference[1].failed
    assert _tables(tmp_path / "w2") == _tables(reference[0])
    assert _temp_files(tmp_path / "w2") == []


def test_start_method_forks_on_linux_spawns_elsewhere_and_obeys_the_environment(monkeypatch):
    monkeypatch.delenv("DISCOVERY_START_METHOD", raising=False)
    monkeypatch.setattr(sys, "platform", "linux")
    assert start_method() == "fork"
    for platform in ("darwin", "win32"):
        monkeypatch.setattr(sys, "platform", platform)
        assert start_method() == "spawn"
    for method in START_METHODS:
        monkeypatch.setenv("DISCOVERY_START_METHOD", f" {method.upper()} ")
        assert start_method() == method
    monkeypatch.setenv("DISCOVERY_START_METHOD", "threads")
    with pytest.raises(ValueError, match=r"DISCOVERY_START_METHOD must be one of fork, spawn, "
                                         r"forkserver; received 'threads'"):
        start_method()


# -- a worker that dies --------------------------------------------------------------------------
def _die_on(case_id: str) -> None:
    """Pool initializer (runs in each spawned worker): reading case *case_id* kills the
    worker process outright, as the kernel's out-of-memory killer would."""
    from discovery.batch import score as batch

    real = batch.read_case

    def read_case(spec, **kwargs):
        if spec.case_id == case_id:
            os._exit(9)
        return real(spec, **kwargs)

    batch.read_case = read_case


@pytest.mark.slow
def test_a_dying_worker_is_retried_once_then_recorded_failed(cohort, model_dir, tmp_path):
    inp = tmp_path / "in"
    for name in ("CASE_0", "CASE_1"):
        shutil.copytree(cohort / name, inp / name)
    victim = pseudonymous_id("CASE_1")
    pools = []

    def factory(n):
        pools.append(n)
        return ProcessPoolExecutor(n, mp_context=multiprocessing.get_context(start_method()),
                                   initializer=_die_on, initargs=(victim,))

    summary = score_folder(inp, tmp_path / "out", model_dir=model_dir, workers=2,
                           executor_factory=factory)
    assert (summary.n_cases, summary.n_ok, summary.n_failed) == (2, 1, 1)
    assert summary.failed == [(victim, WORKER_DIED)]
    # the pool of two broke; each case it was running (the victim, perhaps the other case
    # too) was retried alone, once
    assert pools in ([2, 1], [2, 1, 1])
    manifest = _manifest(tmp_path / "out")
    assert {c: r[3] for c, r in manifest.items()} == {victim: "failed",
                                                       pseudonymous_id("CASE_0"): "ok"}
    assert _temp_files(tmp_path / "out") == []
