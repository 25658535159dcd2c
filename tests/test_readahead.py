"""The first case read ahead in a forked child (discovery.batch.readahead): what the batch
receives is what it would have read itself, and every way the child can fail falls back to
reading in the batch's own process.

Each scenario runs in a fresh interpreter, as ``discovery score`` does: a process that
runs other threads (this one, once a batch has written a Zarr file here) does not fork."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest

from data_tools.synthetic import SyntheticConfig, generate_case, write_case
from discovery.batch.readahead import read_ahead_available

pytestmark = pytest.mark.skipif(not read_ahead_available(),
                                reason="read-ahead needs Linux (fork, memfd_create)")

ROOT = Path(__file__).resolve().parents[1]
#: 40 x 128 x 128 int16: 1.25 MiB, above the size that travels inside the pickle, so the
#: scan and the mask go as memory files
_CONFIG = SyntheticConfig(fixed_geometry=((40, 128, 128), (2.0, 2.5, 2.5)),
                          nodules_per_case=(1, 1))

_PRELUDE = """
import json, os, signal, sys
import numpy as np
from data_tools.cases import discover_cases, read_case
from discovery.batch.manifest import HashingReader
from discovery.batch.readahead import start_read_ahead
from pathlib import Path
src, out = sys.argv[1], Path(sys.argv[2])
def reaped(pid):
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return True
    return False
"""


def _run(body: str, *args) -> dict:
    """Run *body* after the prelude in a fresh interpreter; the JSON it prints last."""
    code = _PRELUDE + textwrap.dedent(body)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("DISCOVERY_READ_AHEAD", None)
    done = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True,
                          text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    root = tmp_path_factory.mktemp("readahead")
    for i in range(2):
        write_case(generate_case(5, config=_CONFIG, index=i), root / "in" / f"PID-{i}")
    return root


def test_take_gives_what_read_case_gives(cohort, tmp_path):
    got = _run("""
        ahead = start_read_ahead(src, out, max_bytes=None)
        spec, pid = ahead.spec, ahead.pid
        reader = HashingReader(spec, out, None)
        case = ahead.take(spec, reader)
        here_reader = HashingReader(spec, out, None)
        here = read_case(spec, max_bytes=None, read=here_reader, integer_hu=True)
        v, m = case.volume.array, case.mask.array
        v[0, 0, 0] += 1                    # writable: the case file's CT is flattened in place
        v[0, 0, 0] -= 1
        print(json.dumps({
            "specs": [s.case_id for s in ahead.specs],
            "found": [s.case_id for s in discover_cases(src)], "first": spec.case_id,
            "delivered": ahead.delivered, "reaped": reaped(pid), "dtype": str(v.dtype),
            "volume": bool(np.array_equal(v, here.volume.array)),
            "mask": bool(np.array_equal(m, here.mask.array)), "mask_dtype": str(m.dtype),
            "affine": bool(np.array_equal(case.volume.affine, here.volume.affine)),
            "metadata": dict(case.volume.metadata) == dict(here.volume.metadata),
            "nodules": case.nodules == here.nodules,
            "source": [case.mask_source, here.mask_source],
            "hash": reader.input_hash() == here_reader.input_hash(),
            "again": ahead.take(spec, reader) is None}))
        """, cohort / "in", tmp_path / "out")
    assert got["specs"] == got["found"] and got["first"] == got["found"][0]
    assert got["delivered"] and got["reaped"] and got["again"]
    assert got["dtype"] == "int16" and got["mask_dtype"] == "int16"
    assert all(got[k] for k in ("volume", "mask", "affine", "metadata", "nodules", "hash"))
    assert got["source"][0] == got["source"][1]


def test_other_case_closed_or_killed_child_falls_back(cohort, tmp_path):
    got = _run("""
        ahead = start_read_ahead(src, out, max_bytes=None)
        other, pid = ahead.specs[1], ahead.pid
        wrong = ahead.take(other, HashingReader(other, None, None))
        ahead.close()
        closed = ahead.take(ahead.spec, HashingReader(ahead.spec, None, None))
        killed = start_read_ahead(src, out, max_bytes=None)
        os.kill(killed.pid, signal.SIGKILL)          # dies before sending anything
        reader = HashingReader(killed.spec, None, None)
        print(json.dumps({"wrong": wrong is None, "reaped": reaped(pid) and ahead.pid == 0,
                          "closed": closed is None and not ahead.delivered,
                          "killed": killed.take(killed.spec, reader) is None,
                          "killed_delivered": killed.delivered, "digests": reader.digests}))
        """, cohort / "in", tmp_path / "out")
    assert got == {"wrong": True, "reaped": True, "closed": True, "killed": True,
                   "killed_delivered": False, "digests": {}}


def test_a_case_the_child_cannot_read_is_read_here(tmp_path):
    """The child does not report: the batch reads the case itself, so the error is its own."""
    bad = tmp_path / "in" / "PID-0"
    write_case(generate_case(5, config=_CONFIG), bad)
    (bad / "CT000003.dcm").write_bytes(b"not a DICOM file")
    got = _run("""
        ahead = start_read_ahead(src, out, max_bytes=None)
        reader = HashingReader(ahead.spec, out, None)
        print(json.dumps({"none": ahead.take(ahead.spec, reader) is None,
                          "delivered": ahead.delivered, "digests": reader.digests}))
        """, tmp_path / "in", tmp_path / "out")
    assert got == {"none": True, "delivered": False, "digests": {}}


def test_off_threads_and_inputs_without_cases(cohort, tmp_path):
    got = _run("""
        import threading
        missing = start_read_ahead(src + "-missing", out, max_bytes=None)
        t = threading.Thread(target=threading.Event().wait, args=(5,), daemon=True)
        t.start()
        threads = start_read_ahead(src, out, max_bytes=None)
        print(json.dumps({"missing": missing is None, "threads": threads is None}))
        """, cohort / "in", tmp_path / "out")
    assert got == {"missing": True, "threads": True}
    env = {**os.environ, "PYTHONPATH": str(ROOT), "DISCOVERY_READ_AHEAD": "0"}
    code = ("from discovery.batch.readahead import read_ahead_available as a; "
            "print(a())")
    assert subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True).stdout.strip() == "False"


def test_score_with_read_ahead_equals_score_without(cohort, tmp_path, model_dir):
    """``discovery score`` as a user runs it, with and without the read-ahead; and run again
    into the same folder, where the first case is skipped and its read-ahead not used."""
    def score(out, *, ahead: bool):
        env = {**os.environ, "PYTHONPATH": str(ROOT), "DISCOVERY_READ_AHEAD": "1" if ahead else "0"}
        done = subprocess.run([sys.executable, "-m", "discovery.cli", "-v", "score",
                               str(cohort / "in"), "--out", str(out), "--model", str(model_dir)],
                              capture_output=True, text=True, env=env, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        return done.stdout + done.stderr

    plain, ahead = tmp_path / "plain", tmp_path / "ahead"
    score(plain, ahead=False)
    log = score(ahead, ahead=True)
    assert "read ahead in a child process" in log and "not delivered" not in log
    for name in ("findings.csv", "patterns.csv"):
        pd.testing.assert_frame_equal(pd.read_csv(ahead / name), pd.read_csv(plain / name))
    again = score(ahead, ahead=True)
    assert "2 skipped" in again and "read ahead in a child process" not in again


def test_the_parent_path_never_imports_pydicom(tmp_path):
    """What runs before the fork (finding the cases of a DICOM folder) and what the parent
    imports after it (the batch) leave pydicom out, so its import (0.2-0.3 s) happens only in
    the child that reads the series (raw datasets without the Part 10 preamble are still
    found, through pydicom: tests/test_layouts.py)."""
    from tests._dicom_factory import write_ct_series

    write_ct_series(tmp_path / "in" / "PID-1", n=4)
    code = textwrap.dedent("""
        import json, sys
        from data_tools.cases import discover_cases
        found = discover_cases(sys.argv[1])
        before = "pydicom" in sys.modules
        import discovery.batch.readahead, discovery.batch.score
        print(json.dumps([len(found), found[0].image_kind, before, "pydicom" in sys.modules]))
    """)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path / "in")],
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == [1, "dicom", False, False]
