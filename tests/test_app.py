"""The review app, page by page, with Streamlit's AppTest on a tiny results folder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from app import common
from discovery.store.tables import CLUSTER_REVIEW_CHOICES, NODULE_REVIEW_CHOICES, ResultsStore

APP = Path(__file__).resolve().parents[1] / "app"
TIMEOUT = 30


@pytest.fixture(autouse=True)
def _no_results_env(monkeypatch):
    """Tests say where the results are; a DISCOVERY_RESULTS of the shell must not leak in."""
    monkeypatch.delenv("DISCOVERY_RESULTS", raising=False)


def page(name: str, results: Path, **state) -> AppTest:
    at = AppTest.from_file(str(APP / "views" / f"{name}.py"), default_timeout=TIMEOUT)
    at.session_state["results_dir"] = str(results)
    for key, value in state.items():
        at.session_state[key] = value
    return at.run(timeout=TIMEOUT)


def texts(at: AppTest) -> list[str]:
    """Every piece of text the page shows (markdown, captions, messages, headings)."""
    out = []
    for kind in ("title", "header", "subheader", "markdown", "caption", "error", "warning",
                 "info", "success", "exception"):
        out += [str(getattr(el, "value", "") or getattr(el, "message", "")) for el in getattr(at, kind)]
    return out


def save_button(at: AppTest):
    return next(b for b in at.button if b.label == "Save review")


def set_reviewer(at: AppTest, name: str) -> AppTest:
    return at.sidebar.text_input(key="reviewer").input(name).run(timeout=TIMEOUT)


# -- cases page ---------------------------------------------------------------------------
def test_cases_page_lists_every_nodule_and_the_failed_case(tiny_results):
    at = page("cases", tiny_results)
    assert not at.exception
    table = at.dataframe[0].value
    assert sorted(zip(table["case_id"], table["nodule_id"])) == [("case-A", "n1"), ("case-B", "n1")]
    assert set(table["review_status"]) == {"to review"}
    assert dict(zip(table["case_id"], table["rests_on_surroundings"])) == {"case-A": "yes",
                                                                           "case-B": "no"}
    assert {m.label: m.value for m in at.metric}["Left to review"] == "2"
    failed = at.expander[0].dataframe[0].value
    assert list(failed["Case"]) == ["case-C"]
    assert "slice spacing is not uniform" in failed["Error"].iloc[0]
    assert all(str(tiny_results) not in t for t in texts(at))


def test_cases_page_probability_filter(tiny_results):
    at = page("cases", tiny_results)
    at.slider(key="cases_prob").set_range(0.5, 1.0).run(timeout=TIMEOUT)
    assert not at.exception
    assert list(at.dataframe[0].value["case_id"]) == ["case-A"]
    at.multiselect(key="cases_verdicts").set_value([]).run(timeout=TIMEOUT)
    assert at.dataframe[0].value.empty
    assert any("No nodule matches" in c.value for c in at.caption)


def test_cases_page_cluster_and_flag_filters(tiny_results):
    at = page("cases", tiny_results)
    everything = len(at.dataframe[0].value)
    clustered = at.dataframe[0].value
    ids = sorted({int(c) for txt in clustered["clusters"] for c in txt.split(", ") if c})
    assert ids, "the tiny results have clustered regions"
    at.multiselect(key="cases_clusters").set_value([ids[0]]).run(timeout=TIMEOUT)
    shown = at.dataframe[0].value
    assert 0 < len(shown) <= everything
    assert all(str(ids[0]) in txt.split(", ") for txt in shown["clusters"])
    at.checkbox(key="cases_flagged").check().run(timeout=TIMEOUT)
    assert not at.exception
    assert set(at.dataframe[0].value["flagged"]) <= {"off-mask"}


def test_open_case_button_goes_to_the_case_page(tiny_results, monkeypatch):
    monkeypatch.setenv("DISCOVERY_RESULTS", str(tiny_results))
    at = AppTest.from_file(str(APP / "streamlit_app.py"), default_timeout=TIMEOUT).run()
    assert not at.exception
    at.switch_page("views/cases.py").run(timeout=TIMEOUT)
    at.selectbox(key="cases_pick").set_value(("case-B", "n1"))
    at.button(key="cases_open").click().run(timeout=TIMEOUT)
    assert not at.exception
    assert at.selectbox(key="case_sel").value == "case-B"
    assert len(at.image) >= 1


def test_pages_say_why_there_is_no_nodule(tmp_path):
    """Cases scored without a mask and a failed one: the Overview, Case and Cases pages count
    them and say what a nodule needs, instead of only 'no scored nodules'."""
    store = ResultsStore(tmp_path / "results")
    for cid in ("case-X", "case-Y"):
        store.put_case({"case_id": cid, "status": "no-mask", "error": "no mask file",
                        "n_nodules": 0, "source_kind": "dicom"}, [], [])
    store.put_case({"case_id": "case-Z", "status": "failed", "source_kind": "dicom",
                    "error": "could not read the CT series"}, [], [])
    store.close()
    for name in ("overview", "case", "cases"):
        at = page(name, tmp_path / "results")
        assert not at.exception
        (info,) = [el.value for el in at.info]
        assert info.startswith("No scored nodules in this results folder: 3 case(s), 2 scored "
                               "without a nodule mask"), info
        assert "1 failed (the Cases page says why)" in info
    assert common.no_nodule_message(pd.DataFrame(columns=["case_id", "status"])).startswith(
        "No case in this results folder yet")


# -- case page ----------------------------------------------------------------------------
def test_case_page_shows_image_metrics_and_regions(tiny_results):
    at = page("case", tiny_results, case_id="case-B", nodule_id="n1")
    assert not at.exception
    assert at.selectbox(key="case_sel").value == "case-B"
    assert at.slider(key="slice_case-B_n1_axial").value == 7  # key slice of the nodule (from 1)
    assert len(at.image) == 2  # the slice and its colour bar
    metrics = at.table[0].value
    assert {"P(malignant)", "Verdict", "RMA", "RRA", "Pointing hit", "Peak distance (mm)",
            "Near mass", "Off-mask share"} <= set(metrics["Metric"])
    assert "0.21" in set(metrics["Value"])
    row = metrics.set_index("Metric").loc["Rests on its surroundings"]
    assert row["Value"] == "no (0.210; median -850 HU)" and "within 5 mm" in row["Meaning"]
    assert metrics["Metric"].iloc[0] == "Outcome"
    assert metrics.set_index("Metric").loc["Outcome", "Value"] == "other"
    regions = at.dataframe[0].value
    assert list(regions["region_index"]) == [1]
    # the results do not record their method: the colour bar says only "attribution"
    assert any("raw attribution units" in c.value for c in at.caption)
    assert all(str(tiny_results) not in t for t in texts(at))


def test_each_nodule_shows_its_outcome_and_why(tiny_results_fresh):
    """The Cases table has the Overview's outcome of each nodule; the Case page says why."""
    import sqlite3

    # case-B n1 becomes a shortcut through metal beside it (not flagged, no cluster)
    with sqlite3.connect(tiny_results_fresh / "discovery.sqlite") as con:
        con.execute("UPDATE nodules SET probability = 0.72, predicted_label = 1, "
                    "rests_on_surroundings = 1, p_without_surroundings = 0.12, "
                    "surroundings_max_hu = 2600, flag_clusters = '' WHERE case_id = 'case-B'")
    table = page("cases", tiny_results_fresh).dataframe[0].value.set_index("case_id")
    assert table.loc["case-A", "outcome"] == "shortcut"     # flagged, artifact cluster 0
    assert table.loc["case-B", "outcome"] == "shortcut"
    for case, expect in (
            ("case-B", "shortcut: metal beside the nodule (2600 HU within 5 mm of the mask); "
                       "P(malignant) 0.72 → 0.12 without its surroundings"),
            ("case-A", "shortcut: artifact cluster 0; P(malignant) 0.83 → 0.31 without its "
                       "off-mask regions")):
        at = page("case", tiny_results_fresh, case_id=case, nodule_id="n1")
        assert not at.exception
        metrics = at.table[0].value.set_index("Metric")
        assert metrics.loc["Outcome", "Value"] == expect
        assert "three outcomes" in metrics.loc["Outcome", "Meaning"]


def test_case_page_display_controls(tiny_results):
    at = page("case", tiny_results)
    at.radio(key="case_window").set_value("bone")
    at.slider(key="case_opacity").set_value(0.0)
    at.slider(key="case_threshold").set_value(0.5)
    at.checkbox(key="case_show_mask").uncheck()
    at.checkbox(key="case_show_regions").uncheck().run(timeout=TIMEOUT)
    assert not at.exception
    at.slider(key="slice_case-A_n1_axial").set_value(1).run(timeout=TIMEOUT)
    at.button(key="case_key_slice").click().run(timeout=TIMEOUT)
    assert at.slider(key="slice_case-A_n1_axial").value == 7
    at.selectbox(key="nodule_sel_case-A").set_value("n1").run(timeout=TIMEOUT)
    assert not at.exception


def test_case_page_planes_custom_window_and_region_jump(tiny_results):
    at = page("case", tiny_results, case_id="case-B", nodule_id="n1")
    ny = at.session_state["slice_case-B_n1_coronal"]
    at.radio(key="case_plane").set_value("coronal").run(timeout=TIMEOUT)
    assert not at.exception
    cor = at.slider(key="slice_case-B_n1_coronal")
    assert cor.label == "Coronal slice" and cor.value == ny
    assert len(at.image) == 2  # the reformatted slice and its colour bar
    at.radio(key="case_zoom").set_value(4).run(timeout=TIMEOUT)
    assert not at.exception
    at.radio(key="case_plane").set_value("sagittal").run(timeout=TIMEOUT)
    at.radio(key="case_window").set_value("custom").run(timeout=TIMEOUT)
    at.number_input(key="case_ww").set_value(400)
    at.number_input(key="case_wl").set_value(40).run(timeout=TIMEOUT)
    assert not at.exception
    assert at.slider(key="slice_case-B_n1_sagittal").label == "Sagittal slice"
    at.radio(key="case_plane").set_value("axial").run(timeout=TIMEOUT)
    at.slider(key="slice_case-B_n1_axial").set_value(1).run(timeout=TIMEOUT)
    at.button(key="case_region_go").click().run(timeout=TIMEOUT)  # the nodule's one region
    regions = at.dataframe[0].value
    assert (at.slider(key="slice_case-B_n1_axial").value
            == round(float(regions["centroid_z"].iloc[0])) + 1)  # slices numbered from 1


def test_nodule_review_is_saved_once_and_audited(tiny_results_fresh):
    at = page("case", tiny_results_fresh)
    at = set_reviewer(at, "Dr. Ada")
    at.radio(key="review_case-A/n1_verdict").set_value(NODULE_REVIEW_CHOICES[1])
    at.text_area(key="review_case-A/n1_note").input("halo at the rim")
    save_button(at).click().run(timeout=TIMEOUT)
    assert not at.exception
    assert at.success
    store = ResultsStore(tiny_results_fresh, create=False)
    reviews = store.reviews("nodule")
    assert len(reviews) == 1
    assert reviews.iloc[0][["item_id", "reviewer", "verdict", "note"]].tolist() == [
        "case-A/n1", "Dr. Ada", NODULE_REVIEW_CHOICES[1], "halo at the rim"]

    at.radio(key="review_case-A/n1_verdict").set_value(NODULE_REVIEW_CHOICES[2])
    save_button(at).click().run(timeout=TIMEOUT)
    assert not at.exception
    reviews = store.reviews("nodule")
    assert len(reviews) == 1 and reviews.iloc[0]["verdict"] == NODULE_REVIEW_CHOICES[2]
    audit = store.audit()
    assert len(audit) == 2
    assert audit["old_verdict"].iloc[1] == NODULE_REVIEW_CHOICES[1]
    # the page lists the review
    assert "Dr. Ada" in set(at.dataframe[0].value["reviewer"])


def test_review_needs_a_reviewer_name(tiny_results_fresh):
    at = page("case", tiny_results_fresh)
    at.radio(key="review_case-A/n1_verdict").set_value(NODULE_REVIEW_CHOICES[0])
    save_button(at).click().run(timeout=TIMEOUT)
    assert not at.exception
    assert any("name" in w.value for w in at.warning)
    assert ResultsStore(tiny_results_fresh, create=False).reviews("nodule").empty


# -- patterns page --------------------------------------------------------------------------
def test_patterns_page_shows_clusters_and_exemplars(tiny_results):
    at = page("patterns", tiny_results)
    assert not at.exception
    description = ResultsStore(tiny_results, create=False).clusters()["description"].iloc[0]
    assert any(description in m.value for m in at.markdown)
    assert list(at.dataframe[0].value["description"]) == [description]
    assert len(at.image) == 2  # one exemplar crop per case
    assert all(str(tiny_results) not in t for t in texts(at))
    assert list(at.dataframe[0].value["stability"]) == [0.92]
    assert any("Stability 0.92 (highly stable)" in m.value for m in at.markdown)
    assert not at.warning


def test_patterns_page_warns_about_a_cluster_that_dissolves(tiny_results_fresh):
    store = ResultsStore(tiny_results_fresh)
    regions = store.regions()[["region_key", "cluster", "embedding_x", "embedding_y"]]
    store.set_patterns(regions, store.clusters().assign(stability=0.31))
    store.close()
    at = page("patterns", tiny_results_fresh)
    assert not at.exception
    assert any("dissolves" in w.value and "0.31" in w.value for w in at.warning)


def test_cluster_review_is_saved_once_and_audited(tiny_results_fresh):
    at = page("patterns", tiny_results_fresh)
    at = set_reviewer(at, "Dr. Bo")
    at.radio(key="cluster_review_0_verdict").set_value(CLUSTER_REVIEW_CHOICES[2])
    save_button(at).click().run(timeout=TIMEOUT)
    assert not at.exception and at.success
    store = ResultsStore(tiny_results_fresh, create=False)
    reviews = store.reviews("cluster")
    assert reviews[["item_id", "reviewer", "verdict"]].values.tolist() == [
        ["0", "Dr. Bo", CLUSTER_REVIEW_CHOICES[2]]]
    at.radio(key="cluster_review_0_verdict").set_value(CLUSTER_REVIEW_CHOICES[0])
    save_button(at).click().run(timeout=TIMEOUT)
    reviews = store.reviews("cluster")
    assert len(reviews) == 1 and reviews.iloc[0]["verdict"] == CLUSTER_REVIEW_CHOICES[0]
    assert len(store.audit()) == 2


def test_patterns_page_empty_state(tiny_results_no_regions):
    at = page("patterns", tiny_results_no_regions)
    assert not at.exception
    assert any("No off-mask regions" in i.value for i in at.info)


# -- overview page ----------------------------------------------------------------------------
def test_overview_shows_the_three_outcomes_side_by_side(tiny_results):
    at = page("overview", tiny_results)
    assert not at.exception
    heads = [h.value for h in at.subheader]
    assert any("On the tumour" in h for h in heads)
    assert any("shortcut" in h for h in heads)
    assert any("candidate pattern" in h for h in heads)
    # case-A is flagged on the metal-dense cluster 0: one shortcut nodule with its picture
    assert [m.value for m in at.metric] == ["0", "1", "0"]
    assert any("cluster 0" in m.value and "2600 HU" in m.value for m in at.markdown)
    assert len(at.image) == 1
    table = at.dataframe[0].value.set_index("case_id")
    assert table.loc["case-A", "outcome"] == "shortcut"
    assert table.loc["case-B", "outcome"] == "other"
    assert table.loc["case-A", "without"] == pytest.approx(0.31)
    # the rules, in the words the reports use too
    from discovery.patterns.outcomes import rules_summary

    assert any(c.value.startswith(rules_summary()) for c in at.caption)
    # the verdicts checked against the reliance on the nodule, as a warning when weak
    from discovery.patterns.outcomes import agreement_reading
    from discovery.store.tables import ResultsStore

    text, weak = agreement_reading(ResultsStore(tiny_results, create=False).findings())
    shown = [w.value for w in at.warning] if weak else [c.value for c in at.caption]
    assert text in shown and "verdicts agree with what the model does" in text
    # the reliance on the nodules' surroundings, highlighted when it is a pattern
    from discovery.patterns.outcomes import surroundings_reading

    store = ResultsStore(tiny_results, create=False)
    text, notable = surroundings_reading(store.findings(), store.labels())
    shown = ([i.value for i in at.info] if notable else [c.value for c in at.caption])
    assert any(text in v for v in shown) and "within 5 mm of the mask" in text


def test_overview_without_regions_has_no_shortcut_or_pattern(tiny_results_no_regions):
    at = page("overview", tiny_results_no_regions)
    assert not at.exception
    assert [m.value for m in at.metric] == ["0", "0", "0"]
    assert any("No malignant prediction uses" in m.value for m in at.markdown)


# -- router and results folder ------------------------------------------------------------------
def test_router_runs_every_page(tiny_results, monkeypatch):
    monkeypatch.setenv("DISCOVERY_RESULTS", str(tiny_results))
    at = AppTest.from_file(str(APP / "streamlit_app.py"), default_timeout=TIMEOUT).run()
    assert not at.exception
    assert at.title[0].value == "Overview"
    for path, heading in [("views/cases.py", "Cases"), ("views/case.py", "Case review"),
                          ("views/patterns.py", "Patterns"), ("views/reviews.py", "Reviews")]:
        at.switch_page(path).run(timeout=TIMEOUT)
        assert not at.exception
        assert heading in [h.value for h in list(at.title) + list(at.header)]


def test_missing_results_folder_is_a_clear_error(tmp_path):
    at = AppTest.from_file(str(APP / "views" / "cases.py"), default_timeout=TIMEOUT).run()
    assert not at.exception
    assert any("No results folder" in e.value for e in at.error)
    at = page("cases", tmp_path)  # a folder without a store
    assert not at.exception
    assert any("discovery.sqlite" in e.value for e in at.error)
    assert not (tmp_path / "discovery.sqlite").exists()  # the app never creates a store


def test_results_argument_parsing():
    assert common._results_from_argv(["--results", "/r"]) == "/r"
    assert common._results_from_argv(["--results=/r"]) == "/r"
    assert common._results_from_argv(["--other"]) is None


def test_pages_import_the_one_common_module():
    """The pages import ``app.common`` as a package: no ``sys.path`` edits, no second copy."""
    import sys

    for path in [APP / "common.py", APP / "streamlit_app.py", *sorted((APP / "views").glob("*.py"))]:
        text = path.read_text()
        assert "sys.path" not in text and "E402" not in text, path.name
    assert "common" not in sys.modules or sys.modules["common"] is common


def test_cached_key_slice_matches_render_key_slice(tiny_results):
    from discovery.report import render
    from discovery.store.tables import load_case_arrays

    arrays = common._load_arrays(str(tiny_results), "case-A", 0)
    stored = load_case_arrays(tiny_results, "case-A")
    mask = stored["mask"]
    assert common.key_slice(arrays, 1) == render.key_slice(
        mask, 1, attribution=stored["attribution"]) == render.key_slice(mask, 1) == 6
    assert common.key_slice(arrays, 2) is None and common.key_slice(arrays, None) is None
    # the display spacing: the norms of the affine's columns, (dz, dy, dx)
    np.testing.assert_array_equal(arrays["spacing_mm"],
                                  np.linalg.norm(stored["affine"][:3, :3], axis=0))


# -- cached tables ------------------------------------------------------------------------------
def test_cached_tables_follow_the_store(tiny_results_fresh):
    store = ResultsStore(tiny_results_fresh, create=False)
    assert common.reviews(store, "nodule").empty
    assert common.reviews(store, "nodule").empty  # a cache hit: the same (empty) table
    store.save_review("nodule", "case-A/n1", "Dr. Ada", NODULE_REVIEW_CHOICES[0])
    assert common.reviews(store, "nodule")["reviewer"].tolist() == ["Dr. Ada"]  # at once
    everything = store.regions()
    mine = everything[(everything["case_id"] == "case-B") & (everything["nodule_id"] == "n1")]
    pd.testing.assert_frame_equal(common.nodule_regions(store, "case-B", "n1"),
                                  mine.reset_index(drop=True))
    pd.testing.assert_frame_equal(common.findings(store), store.findings())
    store.close()


def test_slider_moves_do_not_query_the_tables(tiny_results_fresh, monkeypatch):
    calls: dict[str, int] = {}
    for name in ("findings", "regions", "reviews"):
        original = getattr(ResultsStore, name)

        def counted(self, *args, _name=name, _original=original, **kwargs):
            calls[_name] = calls.get(_name, 0) + 1
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(ResultsStore, name, counted)
    at = page("case", tiny_results_fresh, case_id="case-B", nodule_id="n1")
    assert not at.exception
    first = dict(calls)
    # once each: the findings; the nodule's regions, and the cohort's for its outcome
    assert first.get("findings") == 1 and first.get("regions") == 2
    at.slider(key="slice_case-B_n1_axial").set_value(1).run(timeout=TIMEOUT)
    at.slider(key="case_opacity").set_value(0.2).run(timeout=TIMEOUT)
    assert not at.exception
    assert calls == first
    # a review saved elsewhere (another reviewer) shows at once: the tables are read again
    store = ResultsStore(tiny_results_fresh, create=False)
    store.save_review("nodule", "case-B/n1", "Dr. Bo", NODULE_REVIEW_CHOICES[0])
    store.close()
    at.slider(key="slice_case-B_n1_axial").set_value(2).run(timeout=TIMEOUT)
    assert calls["reviews"] > first["reviews"]
    assert "Dr. Bo" in set(at.dataframe[0].value["reviewer"])


def test_cases_page_shows_a_new_review_at_once(tiny_results_fresh):
    at = page("cases", tiny_results_fresh)
    assert set(at.dataframe[0].value["review_status"]) == {"to review"}
    store = ResultsStore(tiny_results_fresh, create=False)
    store.save_review("nodule", "case-A/n1", "Dr. Ada", NODULE_REVIEW_CHOICES[0])
    store.close()
    at.run(timeout=TIMEOUT)
    table = at.dataframe[0].value.set_index("case_id")
    assert table.loc["case-A", "review_status"] == "reviewed"
    assert table.loc["case-B", "review_status"] == "to review"


# -- reviews page -------------------------------------------------------------------------------
def frame_with(at: AppTest, column: str):
    """The first table the page shows that has *column*."""
    return next(d.value for d in at.dataframe if column in d.value.columns)


def test_reviews_page_empty_state(tiny_results):
    at = page("reviews", tiny_results, reviewer="Dr. Ada")
    assert not at.exception
    assert any("No reviews yet" in i.value for i in at.info)
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Nodules left for you"] == "2"        # case-A/n1, case-B/n1
    assert metrics["Clusters left for you"] == "1"       # cluster 0
    assert metrics["Nodules reviewed by nobody"] == "2"
    assert not at.dataframe and not at.download_button
    assert all(str(tiny_results) not in t for t in texts(at))


def test_reviews_page_shows_kappa_progress_and_exports(tiny_results_fresh, monkeypatch):
    import io

    import pandas as pd
    from streamlit.delta_generator import DeltaGenerator

    downloads = {}
    original = DeltaGenerator.download_button

    def recording(self, label, data, *args, **kwargs):  # keep what the page offers
        downloads[kwargs.get("file_name")] = data
        return original(self, label, data, *args, **kwargs)

    monkeypatch.setattr(DeltaGenerator, "download_button", recording)
    store = ResultsStore(tiny_results_fresh, create=False)
    on, partly, elsewhere = NODULE_REVIEW_CHOICES[:3]
    # both reviewed both nodules: agree on case-A, differ on case-B
    store.save_review("nodule", "case-A/n1", "Dr. Ada", on)
    store.save_review("nodule", "case-B/n1", "Dr. Ada", partly, "rim")
    store.save_review("nodule", "case-B/n1", "Dr. Ada", elsewhere, "second look")  # resubmitted
    store.save_review("nodule", "case-A/n1", "Dr. Bo", on)
    store.save_review("nodule", "case-B/n1", "Dr. Bo", partly)
    store.save_review("cluster", "0", "Dr. Bo", CLUSTER_REVIEW_CHOICES[0])
    store.close()
    at = page("reviews", tiny_results_fresh, reviewer="Dr. Ada")
    assert not at.exception
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Nodules left for you"] == "0"
    assert metrics["Clusters left for you"] == "1"
    assert metrics["Nodules reviewed by nobody"] == "0"
    assert metrics["Clusters reviewed by nobody"] == "0"
    assert any("2 of 3 items reviewed" in c.value for c in at.caption)
    # Ada: on, elsewhere; Bo: on, partly: p_o = 0.5, p_e = 0.5 * 0.5 = 0.25 -> kappa 1/3
    pairs = frame_with(at, "kappa")
    assert pairs[["reviewer_a", "reviewer_b", "n_items"]].values.tolist() == [["Dr. Ada", "Dr. Bo", 2]]
    assert pairs["observed_agreement"].iloc[0] == pytest.approx(0.5)
    assert pairs["kappa"].iloc[0] == pytest.approx(1 / 3)
    assert any("same cluster" in c.value for c in at.caption)  # one cluster reviewer only
    verdicts = frame_with(at, "consensus").set_index("item_id")
    assert verdicts.loc["case-A/n1", "consensus"] == on
    assert verdicts.loc["case-B/n1", "consensus"] == "split"
    assert verdicts.loc["case-B/n1", "Dr. Ada"] == elsewhere
    audit = frame_with(at, "new_verdict")
    assert len(audit) == 6 and audit["id"].tolist() == sorted(audit["id"], reverse=True)
    # newest first: Ada's resubmission of case-B (3rd write) is 4th from the top
    assert audit[["item_id", "old_verdict", "new_verdict", "note"]].iloc[3].tolist() == [
        "case-B/n1", partly, elsewhere, "second look"]
    assert sum(len(d.value) and "kappa" in d.value.columns for d in at.dataframe) == 1
    labels = {b.label for b in at.download_button}
    assert labels == {"Download verdicts (CSV)", "Download audit trail (CSV)"}
    assert all(b.proto.url.endswith(".csv") for b in at.download_button)
    exported = pd.read_csv(io.BytesIO(downloads["reviews.csv"]), keep_default_na=False)
    assert list(exported.columns) == ["item_type", "item_id", "reviewer", "verdict", "note",
                                      "updated_at"]
    assert len(exported) == 5  # one row per (item, reviewer): the resubmission updated
    ada_b = exported[(exported["item_id"] == "case-B/n1") & (exported["reviewer"] == "Dr. Ada")]
    assert ada_b[["verdict", "note"]].values.tolist() == [[elsewhere, "second look"]]
    trail = pd.read_csv(io.BytesIO(downloads["review_audit.csv"]), keep_default_na=False)
    assert len(trail) == 6 and {"old_verdict", "new_verdict", "at"} <= set(trail.columns)
    assert all(str(tiny_results_fresh) not in t for t in texts(at))


def test_reviews_page_without_reviewer_name_shows_totals(tiny_results_fresh):
    store = ResultsStore(tiny_results_fresh, create=False)
    store.save_review("nodule", "case-A/n1", "Dr. Ada", NODULE_REVIEW_CHOICES[0])
    store.close()
    at = page("reviews", tiny_results_fresh)
    assert not at.exception
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Nodules"] == "2" and metrics["Nodules reviewed by nobody"] == "1"
    assert any("Enter your name" in c.value for c in at.caption)
    assert any("No two reviewers" in c.value for c in at.caption)


def test_reload_resumes_reviewer_case_and_nodule(tiny_results):
    """A reload starts a new session; the page address carries the reviewer and the item."""
    at = page("case", tiny_results, case_id="case-B", nodule_id="n1")
    set_reviewer(at, "Dr Who")
    params = {k: (v[0] if isinstance(v, list) else v) for k, v in at.query_params.items()}
    assert params["case"] == "case-B" and params["nodule"] == "n1"
    assert params["reviewer"] == "Dr Who"
    fresh = AppTest.from_file(str(APP / "views" / "case.py"), default_timeout=TIMEOUT)
    fresh.query_params.update(params)
    fresh.session_state["results_dir"] = str(tiny_results)  # as page() does
    fresh.run()
    assert not fresh.exception
    assert fresh.selectbox(key="case_sel").value == "case-B"
    assert fresh.text_input(key="reviewer").value == "Dr Who"


def test_app_command_keeps_xsrf_on_and_binds_localhost(tmp_path, monkeypatch):
    import subprocess

    from discovery.cli import main

    (tmp_path / "discovery.sqlite").write_bytes(b"")
    seen = {}
    monkeypatch.setattr(subprocess, "call", lambda cmd: seen.setdefault("cmd", cmd) and 0)
    assert main(["app", str(tmp_path)]) == 0
    cmd = seen["cmd"]
    flag = {cmd[i]: cmd[i + 1] for i in range(len(cmd) - 1) if cmd[i].startswith("--server.")}
    assert flag["--server.address"] == "127.0.0.1"
    assert flag["--server.enableXsrfProtection"] == "true"
    assert flag["--server.maxUploadSize"] == "1"
