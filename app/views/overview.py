"""Overview: the three outcomes an explanation can have, side by side, for the whole cohort."""

import time

import pandas as pd
import streamlit as st

from app import common
from discovery.background import read_progress
from discovery.explain.catalog import map_label, map_title
from discovery.explain.faithfulness_rule import RULE, faithfulness_warning
from discovery.model.domain import applicability_summary
from discovery.patterns.outcomes import (SCORED_STATUSES, agreement_reading, read_outcomes,
                                         rules_summary, surroundings_reading)
from discovery.report import render
from discovery.report.style import DISPLAY_THRESHOLD
from discovery.store.tables import sanity_summary

ICONS = {"on the tumour": ":material/check_circle:", "shortcut": ":material/warning:",
         "candidate sign": ":material/lightbulb:"}
COLOURS = {"on the tumour": "green", "shortcut": "red", "candidate sign": "blue"}

common.setup_page()
store = common.get_store()
findings, clusters, regions = common.findings(store), common.clusters(store), common.regions(store)
threshold = common.threshold(store)

st.title("Overview")
st.caption("What the explanations say about this model on this cohort. An explanation can "
           "validate the model (attention on the tumour), diagnose it (a prediction resting on "
           "an artifact) or point at something new (consistent attention on unannotated "
           "anatomy). Each nodule is read by the rules in discovery/patterns/outcomes.py.")
scored = findings[findings["status"].isin(SCORED_STATUSES)]
if scored.empty:
    st.info(common.no_nodule_message(findings))
    st.stop()

CHECKS_STATE = "overview_checks_state"


def show_checks(progress: dict | None) -> None:
    """The background faithfulness checks (``discovery app --sanity``): progress while they
    run, the error when they failed."""
    state = (progress or {}).get("state")
    if state == "running":
        done, total = int(progress.get("done", 0)), int(progress.get("total", 0))
        minutes = (time.time() - float(progress.get("started", time.time()))) / 60
        step = f" {done} of {total}" if total else ""
        st.progress(done / total if total else 0.0,
                    text=f"Faithfulness checks running in the background ({minutes:.0f} min): "
                         f"{progress.get('stage', '')}{step}. Their verdicts appear here when "
                         "they are done; everything else is ready.")
    elif state == "failed":
        st.error(f"The background faithfulness checks failed: {progress.get('message', '')}. "
                 "`discovery sanity RESULTS` runs them in the terminal.", icon=":material/error:")
    elif state == "interrupted":
        st.warning("The background faithfulness checks stopped before they were done (the "
                   "process is gone); `discovery app RESULTS --sanity METHODS` starts them "
                   "again, `discovery sanity RESULTS` runs them in the terminal.")


@st.fragment(run_every=2)
def watch_checks(root: str) -> None:
    """Re-reads the progress file every 2 s while the checks run; reruns the whole page once
    their state changes, so the verdicts and the warning above the outcomes appear."""
    progress = read_progress(root)
    if (progress or {}).get("state") != st.session_state.get(CHECKS_STATE):
        st.rerun()
    show_checks(progress)


progress = read_progress(common.results_dir())
st.session_state[CHECKS_STATE] = (progress or {}).get("state")
faithfulness = sanity_summary(*store.sanity())
meta = store.meta()
method = meta.get("method")
warning = faithfulness_warning(faithfulness, method, meta.get("gradcam_layer"))
running = (progress or {}).get("state") == "running"
if warning and running and method not in set(faithfulness.get("method", ())):
    warning = (f"These results were scored with {method}; whether its maps are faithful to "
               "the model on this cohort is being checked now (progress below). Until then, "
               "read the outcomes below as unconfirmed.")
if warning:
    st.warning(warning, icon=":material/report:")
if running:
    watch_checks(str(common.results_dir()))
else:
    show_checks(progress)
if len(faithfulness):
    st.caption("Are the maps faithful to the model (discovery sanity)? "
               + "; ".join(f"{map_label(r.method, r.layer)}: {r.status}"
                          for r in faithfulness.itertuples())
               + ". Details below the outcomes and in the report's sanity section.")
elif not running:
    st.caption("Whether the maps are faithful to the model was not checked: "
               "`discovery sanity RESULTS` measures it.")

agreement, weak = agreement_reading(findings)
if weak:
    st.warning(agreement, icon=":material/rule:")
else:
    st.caption(agreement)

around, notable = surroundings_reading(findings, common.labels(store))
if notable:
    st.info("**The nodules' surroundings.** " + around, icon=":material/blur_circular:")
else:
    st.caption(around)

outside = applicability_summary(scored["applicability"] if "applicability" in scored else ())
if outside:
    st.warning(outside + " The Applicability column below lists them; the Case page says why.",
               icon=":material/warning:")
readings = read_outcomes(findings, clusters, regions, threshold=threshold)  # computed once
for col, panel in zip(st.columns(3, border=True), readings.panels):
    with col:
        st.subheader(f"{ICONS.get(panel.outcome, '')} {panel.title}", divider=COLOURS.get(panel.outcome))
        st.metric("Nodules", panel.n_nodules)
        st.write(panel.lead)
        for ex in panel.exemplars:
            arrays = common.case_arrays(ex.case_id)
            if arrays is None:
                st.caption(f"{ex.case_id}: no image arrays")
                continue
            rgb = render.exemplar_image(arrays, ex, threshold=DISPLAY_THRESHOLD,
                                        attr_max=float(arrays["attr_max"]))
            st.image(render.upscale(rgb, 200), caption=ex.caption, width="stretch")
        if panel.cluster >= 0:
            st.caption(f"Cluster {panel.cluster} on the Patterns page has the statistics, "
                       "all exemplars and the review form.")

st.caption(rules_summary() + " Pictures: axial crops in lung window, plain and with the "
           f"{map_title(method, meta.get('gradcam_layer'))} overlay (from "
           f"{100 * DISPLAY_THRESHOLD:.0f} % of the case maximum); "
           "green: nodule mask; cyan: "
           "off-mask region. Shortcut pictures are on the slice of the densest voxel next to "
           "the region (or, for metal beside the nodule, within its surroundings), between "
           "the nodule and the artifact. The heat map exists only inside "
           "each nodule's 48 mm analysis box, so it can end in a straight edge.")

if len(faithfulness):
    with st.expander("Faithfulness of each method's maps"):
        st.write(f"The rule: {RULE}.")
        for r in faithfulness.itertuples():
            st.markdown(f"- **{map_label(r.method, r.layer)}** {r.verdict}.")

st.subheader("Every nodule")
table = readings.outcomes
table = table.assign(without=table["probability"] - pd.to_numeric(table["flag_score"],
                                                                    errors="coerce").fillna(0))
if "applicability" not in table.columns:
    table = table.assign(applicability="")
st.dataframe(
    table[["case_id", "nodule_id", "outcome", "verdict", "applicability", "probability",
           "without", "rma", "outcome_cluster"]].sort_values(["outcome", "probability"],
                                                             ascending=[True, False]),
    hide_index=True, width="stretch",
    column_config={
        "case_id": "Case", "nodule_id": "Nodule", "outcome": "Outcome", "verdict": "Verdict",
        "applicability": st.column_config.TextColumn(
            "Applicability", help="ok, or why the model is used outside what it knows"),
        "probability": st.column_config.NumberColumn("P(malignant)", format="%.2f"),
        "without": st.column_config.NumberColumn(
            "P without its off-mask regions", format="%.2f",
            help="Equal to P(malignant) when no region of the nodule is in a cluster the model "
                 "relies on."),
        "rma": st.column_config.NumberColumn("RMA", format="%.2f",
                                             help=common.METRIC_HELP["rma"]),
        "outcome_cluster": st.column_config.NumberColumn(
            "Cluster", help="The cluster behind a shortcut or candidate outcome (-1: none; a "
                            "shortcut without one is metal beside the nodule, within the "
                            "surroundings no off-mask region reaches)"),
    })
