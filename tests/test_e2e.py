"""End to end through the CLI: sample -> score -> report -> every app page, and privacy.

One small cohort (2 synthetic DICOM cases from the real generator, plus one broken case) is
scored with the committed demo model.  The privacy test then searches every output byte for the
planted patient identifiers and for the input paths.
"""

import json
import logging
import math
import shutil
from pathlib import Path

import pandas as pd
import pytest

from discovery.cli import main
from discovery.model.card import default_model_dir
from discovery.store.tables import FINDINGS_COLUMNS

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

APP = Path(__file__).resolve().parents[1] / "app"
METRICS = ["rma", "rra", "pointing_hit", "near_mass"]


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    if not (default_model_dir() / "model.json").exists():
        pytest.fail("the demo model (sample_data/demo_model) is missing: it is committed with the project")
    root = tmp_path_factory.mktemp("e2e")
    cohort, results = root / "cohort", root / "results"
    logs = []

    class Grab(logging.Handler):
        def emit(self, record):
            logs.append(self.format(record))

    handler = Grab(level=logging.DEBUG)
    logging.getLogger().addHandler(handler)
    logging.getLogger().setLevel(logging.DEBUG)
    try:
        assert main(["sample", str(cohort), "--cases", "2", "--seed", "7"]) == 0
        # a broken case: a folder named like a patient holding one truncated DICOM file
        good = sorted(p for p in cohort.iterdir() if p.name.startswith("PID-"))[0]
        broken = cohort / "BROKEN^PATIENT_0001"
        broken.mkdir()
        data = sorted(good.glob("*.dcm"))[0].read_bytes()
        (broken / "IM0001.dcm").write_bytes(data[:700])
        codes = {"score": main(["score", str(cohort), "--out", str(results),
                                "--labels", str(cohort / "truth.csv")])}
        codes["report"] = main(["report", str(results), "--format", "html", "--out",
                                str(results / "report.html")])
        codes["csv"] = main(["report", str(results), "--format", "csv", "--out",
                             str(results / "export.csv")])
        codes["parquet"] = main(["report", str(results), "--format", "parquet", "--out",
                                 str(results / "export.parquet")])
        codes["pdf"] = main(["report", str(results), "--format", "pdf", "--out",
                             str(results / "report.pdf")])
        codes["dicom"] = main(["report", str(results), "--format", "dicom", "--input",
                               str(cohort), "--out", str(results / "dicom")])
    finally:
        logging.getLogger().removeHandler(handler)
    truth = json.loads((cohort / "truth.json").read_text())
    return {"cohort": cohort, "results": results, "codes": codes, "truth": truth, "logs": logs}


def test_batch_goes_on_past_a_bad_case(scored):
    assert scored["codes"]["score"] == 1  # non-zero: one case failed
    assert scored["codes"]["report"] == 0 and scored["codes"]["csv"] == 0
    findings = pd.read_csv(scored["results"] / "findings.csv", keep_default_na=False, na_values=[""])
    failed = findings[findings["status"] == "failed"]
    assert len(failed) == 1 and failed["error"].iloc[0]
    assert "IM0001.dcm" in failed["error"].iloc[0] or "DICOM" in failed["error"].iloc[0]
    n_truth = sum(len(c["nodules"]) for c in scored["truth"]["cases"])
    assert (findings["status"] == "ok").sum() == n_truth


def test_findings_columns_and_ranges(scored):
    findings = pd.read_csv(scored["results"] / "findings.csv")
    assert list(findings.columns) == FINDINGS_COLUMNS
    for _, row in findings.iterrows():
        for m in METRICS + ["probability"]:
            v = row[m]
            assert (isinstance(v, float) and math.isnan(v)) or 0.0 <= v <= 1.0, (m, v)
            if isinstance(v, float) and math.isnan(v):
                assert row["status"] != "ok", f"NaN {m} needs a status that says why"
        if row["status"] == "ok":
            assert row["verdict"] in {"aligned", "partial", "off-mask"}
            assert row["peak_distance_mm"] >= 0
            # the reliance on the nodule, beside the verdict: measured for every scored nodule
            assert row["rests_on_nodule"] in (0.0, 1.0) and 0 <= row["p_without_nodule"] <= 1
            control = row["p_without_control"]
            assert (0 <= control <= 1) or "no control place" in row["reliance_status"]
    patterns = pd.read_csv(scored["results"] / "patterns.csv")
    assert {"cluster", "n_regions", "n_cases", "mean_probability", "description", "exemplars"} <= set(patterns.columns)


def test_report_is_self_contained(scored):
    html = (scored["results"] / "report.html").read_text()
    assert "<img" in html and "data:image/png;base64," in html
    for needle in ("http://", "https://", "src=\"/", "src='/", "@import"):
        assert needle not in html
    for case_id in pd.read_csv(scored["results"] / "findings.csv")["case_id"].unique():
        assert case_id in html
    assert "three outcomes" in html and html.count('class="outcome"') == 3
    csv = pd.read_csv(scored["results"] / "export.csv")
    assert list(csv.columns) == FINDINGS_COLUMNS


def test_known_labels_are_stored_with_the_results(scored):
    from discovery.store.tables import ResultsStore

    store = ResultsStore(scored["results"], create=False)
    labels = store.labels()
    n_truth = sum(len(c["nodules"]) for c in scored["truth"]["cases"])
    assert len(labels) == n_truth and set(labels["malignant"]) <= {0, 1}
    scored_ids = set(store.findings().query("status == 'ok'")["case_id"])
    assert set(labels["case_id"]) == scored_ids  # pseudonymised exactly like the results


@pytest.mark.parametrize("page", ["overview", "cases", "case", "patterns"])
def test_every_app_page_runs_on_the_scored_cohort(scored, page, monkeypatch):
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("DISCOVERY_RESULTS", str(scored["results"]))
    at = AppTest.from_file(str(APP / "views" / f"{page}.py"), default_timeout=60).run()
    assert not at.exception
    text = " ".join(str(m.value) for m in at.markdown) + " ".join(str(t.value) for t in at.title)
    assert str(scored["cohort"]) not in text


def _identifiers(truth):
    found = set()
    for case in truth["cases"]:
        for key, value in case["identifiers"].items():
            if key in {"PatientName", "PatientID", "PatientBirthDate", "AccessionNumber",
                       "InstitutionName", "ReferringPhysicianName"} and value:
                found.add(str(value))
                if key == "PatientName":
                    found.update(part for part in str(value).split("^") if len(part) >= 6)
        found.add(case["case_dir"])
    return found


def _source_uids_and_descriptions(cohort):
    """Every original UID and series description of the cohort's DICOM files."""
    import pydicom

    found = set()
    for path in cohort.rglob("*.dcm"):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except Exception:  # noqa: BLE001 - the deliberately truncated file
            continue
        for kw in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID",
                   "FrameOfReferenceUID", "SeriesDescription"):
            if ds.get(kw):
                found.add(str(ds.get(kw)))
    return found


def test_every_export_format_is_written(scored):
    codes = scored["codes"]
    assert codes["parquet"] == 0 and codes["pdf"] == 0 and codes["dicom"] == 0
    results = scored["results"]
    assert (results / "export.patterns.parquet").is_file() and (results / "report.pdf").is_file()
    scored_cases = set(pd.read_csv(results / "findings.csv").query("status == 'ok'")["case_id"])
    exported = {p.name for p in (results / "dicom").iterdir() if p.is_dir()}
    assert exported == scored_cases
    for case in exported:
        assert {"seg.dcm", "pmap.dcm", "sr.dcm"} <= {p.name for p in (results / "dicom" / case).iterdir()}


def test_no_identifier_or_path_leaves_the_tool(scored, capsys):
    """Sentinels: the planted patient identifiers, the case folder names, the input path, every
    original UID and series description; searched in every byte of every output (CSV,
    Parquet, HTML, PDF and its extracted text, the DICOM exports, the store, the viewer arrays),
    in what the CLI printed and in the logs."""
    import shutil as _shutil
    import subprocess

    sentinels = (_identifiers(scored["truth"]) | {str(scored["cohort"]), "BROKEN^PATIENT", "BROKEN"}
                 | _source_uids_and_descriptions(scored["cohort"]))
    assert len(sentinels) >= 20
    outputs = [p for p in scored["results"].rglob("*") if p.is_file()]
    names = {p.name for p in outputs}
    assert {"findings.csv", "patterns.csv", "report.html", "discovery.sqlite", "export.csv",
            "export.parquet", "report.pdf", "seg.dcm", "pmap.dcm", "sr.dcm"} <= names
    if _shutil.which("pdftotext"):
        text = subprocess.run(["pdftotext", str(scored["results"] / "report.pdf"), "-"],
                              capture_output=True, text=True, check=True).stdout
        assert "Nodule discovery findings" in text
        for s in sentinels:
            assert s not in text, f"{s!r} in the PDF's text"
    for path in outputs:
        blob = path.read_bytes()
        for s in sentinels:
            assert s.encode() not in blob, f"{s!r} found in {path.name}"
        assert not any(s in path.name for s in sentinels)
    printed = capsys.readouterr()
    logs = "\n".join(scored["logs"])
    for s in sentinels:
        assert s not in printed.out and s not in printed.err and s not in logs, s


def test_rescoring_is_deterministic(scored, tmp_path):
    again = tmp_path / "again"
    cohort = tmp_path / "cohort"
    shutil.copytree(scored["cohort"], cohort)
    shutil.rmtree(next(p for p in cohort.iterdir() if p.name.startswith("BROKEN")))
    assert main(["score", str(cohort), "--out", str(again)]) == 0
    first = pd.read_csv(scored["results"] / "findings.csv")
    first = first[first["status"] != "failed"].reset_index(drop=True)
    second = pd.read_csv(again / "findings.csv")
    # values identical; dtypes differ only because the first run had a failed (NaN) row
    pd.testing.assert_frame_equal(first, second, check_dtype=False)


def test_the_command_exits_with_the_status_of_main_its_objects_frozen(monkeypatch):
    """``discovery`` (the console script, ``discovery.cli:run``) exits with what ``main``
    returned, after moving the objects out of the collector's reach (a faster exit)."""
    import gc

    import discovery.cli as cli

    exits = []
    monkeypatch.setattr(cli, "main", lambda: 3)
    monkeypatch.setattr(cli, "exit_now", lambda status: exits.append((status,
                                                                       gc.get_freeze_count())))
    try:
        cli.run()
        assert exits and exits[0][0] == 3 and exits[0][1] > 0
    finally:
        gc.unfreeze()


_EXIT_SCRIPT = """
import atexit, sys, threading, time
from discovery.cli import exit_now
atexit.register(lambda: print("handler ran", flush=False))
print("said before exiting", end=" ")
sys.stderr.write("and on stderr")
if sys.argv[1] == "thread":
    threading.Thread(target=lambda: (time.sleep(0.3), print("thread finished", end=" "))).start()
exit_now(int(sys.argv[2]) if sys.argv[2] != "none" else None)
print("never")
"""


@pytest.mark.parametrize("mode, status, expected", [("plain", "3", 3), ("plain", "none", 0),
                                                    ("thread", "2", 2)])
def test_exit_now_runs_the_exit_handlers_flushes_and_keeps_the_status(mode, status, expected):
    """``exit_now`` ends the process without module teardown, but only after the exit
    handlers ran and stdout/stderr were flushed into a pipe; with another non-daemon thread
    alive it exits the usual way, which waits for that thread."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", _EXIT_SCRIPT, mode, status],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == expected, done.stderr
    assert done.stdout.startswith("said before exiting")
    assert "handler ran" in done.stdout and "never" not in done.stdout
    assert done.stderr.endswith("and on stderr")
    assert ("thread finished" in done.stdout) == (mode == "thread")


def test_threshold_verdicts_leave_the_rule_out_and_say_so(scored, tmp_path):
    """`--threshold-verdicts`: the card's verdict rule decides nothing, the store records no
    rule (so `make demo` would score such results again), and only verdicts of
    predicted-malignant nodules can differ."""
    from discovery.align.metrics import AlignThresholds, describe_verdicts
    from discovery.model.card import default_model_dir, load_card
    from discovery.store.tables import ResultsStore

    cohort = tmp_path / "cohort"
    shutil.copytree(scored["cohort"], cohort)
    shutil.rmtree(next(p for p in cohort.iterdir() if p.name.startswith("BROKEN")))
    plain = tmp_path / "plain"
    assert main(["score", str(cohort), "--out", str(plain), "--threshold-verdicts"]) == 0
    ruled = ResultsStore(scored["results"], create=False).meta()
    assert ruled["verdict_rule_sha256"] == load_card(default_model_dir()).verdict_rule_sha256
    meta = ResultsStore(plain, create=False).meta()
    assert meta["verdict_rule_sha256"] == "" and meta["verdict_rule_text"] == ""
    first = pd.read_csv(scored["results"] / "findings.csv")
    first = first[first["status"] != "failed"].reset_index(drop=True)
    second = pd.read_csv(plain / "findings.csv")
    benign = first["predicted_label"] != 1
    assert (first.loc[benign, "verdict"] == second.loc[benign, "verdict"]).all()
    # where they differ: the rule's yes over 'partial' / 'off-mask', or its no over 'aligned'
    pairs = set(zip(first["verdict"], second["verdict"]))
    assert {(a, b) for a, b in pairs if a != b} <= {("aligned", "partial"),
                                                    ("aligned", "off-mask"),
                                                    ("partial", "aligned")}
    html = (scored["results"] / "report.html").read_text()
    assert "verdict rule" in html and describe_verdicts(AlignThresholds())[:40] in html
