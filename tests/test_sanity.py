"""`discovery sanity`: randomisation + deletion/insertion on a scored cohort, stored and reported."""

import numpy as np
import pytest
import torch

from data_tools.synthetic import SyntheticConfig, generate_cohort
from discovery.batch.score import score_folder
from discovery.cli import main
from discovery.model.card import (
    ModelCard,
    build_network,
    default_architecture,
    load_model,
    save_model,
)
from discovery.report.html import build_html
from discovery.batch.sanity import run_sanity
from discovery.store.tables import sanity_summary
from discovery.store.tables import ResultsStore

SMALL = SyntheticConfig(shape_yx=128, n_slices=(50, 58), pixel_spacing_mm=(2.2, 2.6),
                        slice_spacing_mm=(2.0, 2.5), nodules_per_case=(2, 2))


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    root = tmp_path_factory.mktemp("sanity")
    generate_cohort(root / "cohort", n_cases=2, seed=11, config=SMALL)
    arch = default_architecture()
    arch["kwargs"]["block_inplanes"] = [2, 4, 4, 4]
    arch["stages"] = 3
    torch.manual_seed(0)
    card = ModelCard(architecture=arch, roi_size_vox=(16, 16, 16), roi_spacing_mm=(3.0, 3.0, 3.0))
    save_model(build_network(card).eval(), card, root / "model")
    score_folder(root / "cohort", root / "results", model_dir=root / "model")
    return root


def test_sanity_on_results_is_stored_and_reported(scored):
    summary = run_sanity(scored / "results", model_dir=scored / "model",
                         methods=("gradcam", "integrated_gradients"), randomise=("gradcam",), steps=4,
                         n_draws=2)
    assert summary.n_nodules == 4
    store = ResultsStore(scored / "results", create=False)
    ran, per = store.sanity()
    store.close()
    assert list(ran["module"]) == ["fc", "layer3", "layer2", "layer1", "bn1", "conv1"]
    assert set(ran["method"]) == {"gradcam"} and (ran["n_rois"] == 4).all() and (ran["n_draws"] == 2).all()
    assert len(per) == 8 and set(per["method"]) == {"gradcam", "integrated_gradients"}
    for col in ("deletion_auc", "deletion_auc_random", "insertion_auc", "insertion_auc_random"):
        assert per[col].between(0, 1).all()
    for col in ("road_morf_auc", "road_lerf_auc", "road_random_auc"):
        assert per[col].between(0, 1).all()
    np.testing.assert_allclose(per["road_gap"], per["road_lerf_auc"] - per["road_morf_auc"])
    # the random controls do not depend on the map: measured once, the same for each method
    by = per.set_index(["method", "case_id", "nodule_id"]).sort_index()
    for col in ("deletion_auc_random", "road_random_auc", "road_gap_random"):
        np.testing.assert_array_equal(by.loc["gradcam", col], by.loc["integrated_gradients", col])
    table = sanity_summary(ran, per)
    assert list(table["method"]) == ["gradcam", "integrated_gradients"]
    assert np.isnan(table.set_index("method").loc["integrated_gradients", "spearman_fully_randomised"])
    assert table["status"].isin(["passes", "fails", "undetermined"]).all()
    assert all(v.startswith(s) for s, v in zip(table["status"], table["verdict"]))
    html = build_html(scored / "results")
    assert "sanity checks" in html and "integrated_gradients" in html and "Not run" not in html
    assert "MoRF / LeRF AUC" in html and "The rule: a method passes" in html
    # 4 nodules: fewer than the rule needs, so the method the results were scored with
    # (gradcam) is not shown to be faithful, and a warning stands above the three outcomes
    assert table.set_index("method").loc["gradcam", "status"] == "undetermined"
    warn = html.index('<p class="warn">')
    assert html.index("three outcomes</h2>") < warn < html.index('<div class="outcomes">')
    assert "scored with gradcam" in html[warn:warn + 400]


def test_rerun_replaces_rows_of_the_same_method(scored):
    for _ in range(2):
        run_sanity(scored / "results", model_dir=scored / "model", methods=("gradcam",),
                   randomise=(), steps=4)
    store = ResultsStore(scored / "results", create=False)
    _, per = store.sanity()
    store.close()
    assert (per["method"] == "gradcam").sum() == 4


def test_the_method_in_use_is_checked_at_the_layer_it_was_scored_with(scored, tmp_path):
    from discovery.explain.faithfulness_rule import faithfulness_warning
    from discovery.pipeline import ScoreSettings

    res = tmp_path / "results"
    score_folder(scored / "cohort", res, model_dir=scored / "model",
                 settings=ScoreSettings(method="layercam", layer="layer2"))
    store = ResultsStore(res, create=False)
    meta = store.meta()
    store.close()
    assert (meta["method"], meta["gradcam_layer"]) == ("layercam", "layer2")
    run_sanity(res, model_dir=scored / "model", methods=("gradcam", "layercam"), steps=2,
               n_draws=1)
    store = ResultsStore(res, create=False)
    ran, per = store.sanity()
    store.close()
    # the maps the results show (LayerCAM at layer2); the others at the card's layer
    assert set(per.loc[per["method"] == "layercam", "layer"]) == {"layer2"}
    assert set(per.loc[per["method"] == "gradcam", "layer"]) == {"layer3"}
    # randomised by default: Grad-CAM and the method in use, each at its layer
    assert dict(ran.groupby("method")["layer"].first()) == {"gradcam": "layer3",
                                                             "layercam": "layer2"}
    table = sanity_summary(ran, per).set_index("method")
    assert table.loc["layercam", "layer"] == "layer2" and table.loc["gradcam", "layer"] == "layer3"
    # 4 nodules: undetermined, a warning either way, but about the right maps
    warning = faithfulness_warning(table.reset_index(), "layercam", "layer2")
    assert "undetermined" in warning and "checked at" not in warning
    # checked at another layer than the results': those were other maps
    run_sanity(res, model_dir=scored / "model", methods=("layercam",), randomise=(), steps=2,
               layer="layer3")
    store = ResultsStore(res, create=False)
    table = sanity_summary(*store.sanity())
    store.close()
    warning = faithfulness_warning(table, "layercam", "layer2")
    assert "at layer2" in warning and "checked at layer3" in warning
    # a check recorded before rows kept their layer is read as before
    old = table.assign(layer=None)
    assert "checked at" not in faithfulness_warning(old, "layercam", "layer2")


def test_max_nodules_checks_a_seeded_sample(scored, tmp_path):
    def checked(seed):
        out = tmp_path / f"res{seed}"
        run_sanity(scored / "cohort", results_dir=out, model_dir=scored / "model",
                   methods=("gradcam",), randomise=(), steps=4, max_nodules=2, seed=seed)
        store = ResultsStore(out, create=False)
        per = store.sanity()[1]
        store.close()
        return list(zip(per["case_id"], per["nodule_id"]))

    first = checked(0)
    assert len(first) == 2 and len(set(first)) == 2
    assert checked(0) == first  # seeded
    with pytest.raises(ValueError, match="max_nodules"):
        run_sanity(scored / "results", model_dir=scored / "model", max_nodules=0)


def test_sanity_on_a_cohort_needs_out_and_checks_the_model(scored, tmp_path, capsys):
    with pytest.raises(ValueError, match="not a results folder"):
        run_sanity(scored / "cohort", model_dir=scored / "model")
    with pytest.raises(ValueError, match="unknown attribution method 'magic'"):
        run_sanity(scored / "results", model_dir=scored / "model", methods=("magic",))
    other = ModelCard(architecture=default_architecture(), roi_size_vox=(16, 16, 16))
    save_model(build_network(other).eval(), other, tmp_path / "other")
    with pytest.raises(ValueError, match="scored with another model"):
        run_sanity(scored / "results", model_dir=tmp_path / "other", methods=("gradcam",))
    rc = main(["sanity", str(scored / "cohort"), "--out", str(tmp_path / "res"), "--model",
               str(scored / "model"), "--methods", "gradcam", "--randomise", "", "--steps", "4"])
    assert rc == 0
    out = " ".join(capsys.readouterr().out.split())
    # the deciding measure and its verdict come first, the old measure after, labelled as such
    assert "Faithfulness (decides): MoRF-LeRF gap" in out
    status = out.split("(should be near 0). gradcam@layer3", 1)[1].split()[0]
    assert status in ("PASSES", "FAILS", "UNDETERMINED")
    assert out.index(status) < out.index("Old measure, for comparison") < out.index("deletion AUC")
    if status != "PASSES":
        assert "gradcam@layer3 " + status.lower() in out
    store = ResultsStore(tmp_path / "res", create=False)
    assert len(store.sanity()[1]) == 4
    store.close()


def test_store_refuses_another_schema_version(tmp_path):
    import sqlite3

    ResultsStore(tmp_path).close()
    con = sqlite3.connect(tmp_path / "discovery.sqlite")
    con.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
    con.commit()
    con.close()
    with pytest.raises(ValueError, match="schema version 1.*Score into a new results folder"):
        ResultsStore(tmp_path)


def test_an_older_sanity_table_is_read_and_extended_not_refused(scored, tmp_path):
    import shutil
    import sqlite3

    res = tmp_path / "results"
    shutil.copytree(scored / "results", res)
    con = sqlite3.connect(res / "discovery.sqlite")
    con.execute("DROP TABLE sanity_perturbation")
    con.execute("CREATE TABLE sanity_perturbation (case_id TEXT, nodule_id TEXT, method TEXT, "
                "probability REAL, predicted_label INTEGER, deletion_auc REAL, "
                "deletion_auc_random REAL, insertion_auc REAL, insertion_auc_random REAL, "
                "PRIMARY KEY (case_id, nodule_id, method))")
    con.execute("INSERT INTO sanity_perturbation VALUES ('c', 'n1', 'gradcam', 0.9, 1, 0.2, 0.1, "
                "0.5, 0.1)")
    con.commit()
    con.close()
    store = ResultsStore(res, create=False)
    per = store.sanity()[1]
    assert per["road_gap"].isna().all() and per["deletion_auc"].tolist() == [0.2]
    assert per["layer"].isna().all()                  # not recorded then
    row = sanity_summary(store.sanity()[0].iloc[:0], per).iloc[0]
    assert row["status"] == "not checked" and "re-run" in row["verdict"]
    store.close()
    run_sanity(res, model_dir=scored / "model", methods=("hirescam",), randomise=(), steps=2,
               max_nodules=1)
    store = ResultsStore(res, create=False)
    per = store.sanity()[1]
    store.close()
    assert per.loc[per["method"] == "hirescam", "road_gap"].notna().all()
    assert per.loc[per["method"] == "gradcam", "road_gap"].isna().all()


def _unchecked_copy(scored, tmp_path):
    """A copy of the scored results without sanity rows (other tests of this module store some)."""
    import shutil

    res = tmp_path / "results"
    shutil.copytree(scored / "results", res)
    store = ResultsStore(res)
    try:
        with store.write() as con:
            con.execute("DELETE FROM sanity_randomization")
            con.execute("DELETE FROM sanity_perturbation")
    finally:
        store.close()
    return res
def test_overview_and_pdf_warn_above_the_outcomes_and_list_each_method(scored, tmp_path,
                                                                       monkeypatch):
    import shutil
    from pathlib import Path

    from streamlit.testing.v1 import AppTest

    monkeypatch.delenv("DISCOVERY_RESULTS", raising=False)
    res = _unchecked_copy(scored, tmp_path)  # other tests of this module store sanity tables
    view = str(Path(__file__).resolve().parents[1] / "app" / "views" / "overview.py")

    def overview():
        at = AppTest.from_file(view, default_timeout=60)
        at.session_state["results_dir"] = str(res)
        return at.run(timeout=60)

    at = overview()                                   # sanity never run: not checked
    assert not at.exception
    # the faithfulness warning (the second one says the tiny model's card has no domain)
    warn = [w.value for w in at.warning if "scored with gradcam" in w.value]
    assert len(warn) == 1 and "not checked" in warn[0]
    assert any("records no training domain" in w.value for w in at.warning)
    run_sanity(res, model_dir=scored / "model", methods=("gradcam", "hirescam"), randomise=(),
               steps=2)
    at = overview()
    warn = [w.value for w in at.warning if "scored with gradcam" in w.value]
    assert not at.exception and len(warn) == 1  # 4 nodules: undetermined, still a warning
    assert "undetermined" in warn[0]
    line = next(c.value for c in at.caption if c.value.startswith("Are the maps faithful"))
    assert "gradcam@layer3: undetermined" in line and "hirescam@layer3: undetermined" in line
    pdftotext = shutil.which("pdftotext")
    if pdftotext:
        import subprocess

        from discovery.report.pdf import write_pdf

        text = subprocess.run([pdftotext, "-layout", str(write_pdf(res, tmp_path / "r.pdf")), "-"],
                              capture_output=True, text=True).stdout
        text = " ".join(text.split())
        assert "Are the maps faithful?" in text and "MoRF / LeRF" in text
        assert "new: imputed (ROAD)" in text and "old: constant eraser" in text
        assert "gradcam@layer3 undetermined" in text and "hirescam@layer3 undetermined" in text
        warn = text.index("Warning. These results were scored with gradcam")
        assert text.index("three outcomes") < warn < text.index("Metric distributions")


# -- the checks behind the app (discovery app --sanity; discovery.background) ------------------
def test_background_checks_write_progress_store_and_report(scored, tmp_path):
    import json

    from discovery import background

    res = _unchecked_copy(scored, tmp_path)
    assert background.read_progress(res) is None
    assert background.needs_sanity(res, ["gradcam"])
    report = tmp_path / "report.html"
    code = background.main([str(res), "--methods", "gradcam", "--max-nodules", "3",
                            "--model", str(scored / "model"), "--report", str(report)])
    assert code == 0
    progress = json.loads((res / background.PROGRESS_FILE).read_text())
    assert progress["state"] == "done" and progress["done"] == progress["total"] == 3
    assert progress["methods"] == ["gradcam"] and progress["updated"] >= progress["started"]
    assert not background.needs_sanity(res, ["gradcam"])      # stored: nothing to start
    assert background.needs_sanity(res, ["gradcam", "hirescam"])
    assert background.start(res, methods=["gradcam"], model_dir=scored / "model") is None
    assert "sanity checks" in report.read_text() and "Not run" not in report.read_text()
    # --if-needed: nothing runs, the progress file is left as it was
    before = (res / background.PROGRESS_FILE).read_text()
    assert background.main([str(res), "--methods", "gradcam", "--if-needed"]) == 0
    assert (res / background.PROGRESS_FILE).read_text() == before
    # ... unless the report is missing: it is written (the checks are not run again)
    stored = ResultsStore(res, create=False)
    rows_before = stored.sanity()[1]
    second = tmp_path / "second.html"
    assert background.main([str(res), "--methods", "gradcam", "--if-needed",
                            "--report", str(second)]) == 0
    assert second.is_file() and "sanity checks" in second.read_text()
    assert background.read_progress(res)["state"] == "done"
    assert stored.sanity()[1].equals(rows_before)
    stored.close()


def test_background_failure_and_dead_process_are_reported(scored, tmp_path):
    import shutil

    from discovery import background

    res = _unchecked_copy(scored, tmp_path)
    # another model than the one the results were scored with: refused, and recorded
    other = tmp_path / "other"
    shutil.copytree(scored / "model", other)
    torch.manual_seed(1)
    _, card = load_model(scored / "model")
    save_model(build_network(card).eval(), card, other)
    assert background.main([str(res), "--methods", "gradcam", "--model", str(other)]) == 1
    progress = background.read_progress(res)
    assert progress["state"] == "failed" and "another model" in progress["message"]
    assert str(tmp_path) not in progress["message"]
    # a 'running' file whose process is gone reads as interrupted; it does not block a restart
    background.write_progress(res, state="running", stage="x", done=1, total=2, pid=2 ** 22 + 7)
    assert background.read_progress(res)["state"] == "interrupted"
    assert background.needs_sanity(res, ["gradcam"])
    # another live process runs them: nothing new is started (this process's own file is
    # the one a background process finds when it starts: that one does not count)
    import os
    background.write_progress(res, state="running", stage="x", done=1, total=2, pid=os.getppid())
    assert not background.needs_sanity(res, ["gradcam"])
    background.write_progress(res, state="running", stage="x", done=1, total=2, pid=os.getpid())
    assert background.needs_sanity(res, ["gradcam"])
    (res / background.PROGRESS_FILE).write_text("{not json")
    assert background.read_progress(res)["state"] == "failed"


@pytest.mark.parametrize("state, kind, words", [
    ("running", "progress", "running in the background"),
    ("failed", "error", "failed: RuntimeError: boom"),
    ("interrupted", "warning", "stopped before they were done"),
])
def test_overview_shows_the_background_checks(scored, tmp_path, monkeypatch, state, kind, words):
    import os
    import time
    from pathlib import Path

    from streamlit.testing.v1 import AppTest

    from discovery import background

    monkeypatch.delenv("DISCOVERY_RESULTS", raising=False)
    res = _unchecked_copy(scored, tmp_path)
    pid = os.getpid() if state == "running" else 2 ** 22 + 7
    background.write_progress(res, state="running" if state == "interrupted" else state,
                              stage="MoRF/LeRF, imputed (gradcam)", done=3, total=4, pid=pid,
                              started=0.0 if state != "running" else time.time(),
                              message="RuntimeError: boom")
    view = str(Path(__file__).resolve().parents[1] / "app" / "views" / "overview.py")
    at = AppTest.from_file(view, default_timeout=60)
    at.session_state["results_dir"] = str(res)
    at.run(timeout=60)
    assert not at.exception
    if kind == "progress":
        bars = at.get("progress")
        assert len(bars) == 1 and bars[0].proto.value == 75
        assert words in bars[0].proto.text and "3 of 4" in bars[0].proto.text
        assert not any("not checked" in c.value for c in at.caption)
        warn = [w.value for w in at.warning if "gradcam" in w.value]
        assert len(warn) == 1 and "being checked now" in warn[0]
    else:
        assert any(words in el.value for el in getattr(at, kind))
