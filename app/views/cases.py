"""Cases: one row per scored nodule, with filters, review status and a way into a case."""

import pandas as pd
import streamlit as st

from app import common

#: What the Flag column's ``off-mask`` says (the checkbox and the column share it).
FLAG_HELP = ("off-mask: predicted malignant, but benign once all of the nodule's off-mask "
             "regions are replaced by lung parenchyma: the prediction rests off the mask (on an "
             "artifact, or on a candidate sign: its clusters say which).")

common.setup_page()
store = common.get_store()

st.title("Cases")
findings = common.findings(store)
scored = findings[findings["nodule_id"].fillna("") != ""].copy()
unscored = findings[findings["nodule_id"].fillna("") == ""]

if scored.empty:
    st.info(common.no_nodule_message(findings))
else:
    scored["item_id"] = scored["case_id"] + "/" + scored["nodule_id"]
    summary = common.review_summary(common.reviews(store, "nodule"))
    scored = scored.merge(summary, on="item_id", how="left")
    scored["n_reviews"] = scored["n_reviews"].fillna(0).astype(int)
    scored["reviews"] = scored["reviews"].fillna("")
    scored["review_status"] = scored["n_reviews"].map(lambda n: "reviewed" if n else "to review")
    scored["pointing_hit"] = scored["pointing_hit"].map(
        lambda v: "" if pd.isna(v) else ("yes" if v >= 0.5 else "no"))
    if "rests_on_surroundings" not in scored.columns:   # results scored before the measure
        scored["rests_on_surroundings"] = float("nan")
    for col in ("rests_on_nodule", "rests_on_surroundings"):
        scored[col] = scored[col].map(lambda v: "" if pd.isna(v) else ("yes" if v >= 0.5 else "no"))
    scored["predicted_label"] = scored["predicted_label"].map(
        lambda v: "" if pd.isna(v) else ("malignant" if int(v) == 1 else "benign"))

    regions = common.regions(store)
    in_cluster = regions[regions["cluster"].fillna(-1) >= 0]
    per_nodule = (in_cluster.groupby(["case_id", "nodule_id"])["cluster"]
                  .agg(lambda c: ", ".join(str(int(v)) for v in sorted(set(c))))
                  .rename("clusters").reset_index())
    scored = scored.merge(per_nodule, on=["case_id", "nodule_id"], how="left")
    scored["clusters"] = [c if isinstance(c, str) else "" for c in scored["clusters"]]
    # the flag: the prediction rests off the mask (a shortcut or a candidate sign; the
    # Overview's outcomes tell them apart by the clusters' readings)
    scored["flagged"] = scored["flagged"].fillna(0).astype(int).map({1: "off-mask", 0: ""})
    scored = scored.merge(common.outcomes(store)[["case_id", "nodule_id", "outcome"]],
                          on=["case_id", "nodule_id"], how="left")
    scored["outcome"] = scored["outcome"].fillna("")

    # -- filters ---------------------------------------------------------------------------
    f1, f2, f3, f4 = st.columns([2, 2, 1.6, 1.2])
    verdicts = sorted(scored["verdict"].fillna("").unique())
    chosen = f1.multiselect("Attention verdict", verdicts, default=verdicts, key="cases_verdicts")
    lo, hi = f2.slider("Probability of malignancy", 0.0, 1.0, (0.0, 1.0), step=0.01,
                       key="cases_prob")
    cluster_ids = sorted({int(c) for c in in_cluster["cluster"]})
    want = f3.multiselect("Pattern cluster", cluster_ids, key="cases_clusters",
                          placeholder="any", help="Nodules with an off-mask region in any of "
                          "these clusters.")
    only_flagged = f3.checkbox("Flagged only", key="cases_flagged", help=FLAG_HELP)
    status = f4.radio("Review status", ["all", "to review", "reviewed"], key="cases_review")

    prob = scored["probability"]
    keep = scored["verdict"].fillna("").isin(chosen) & (prob.isna() | prob.between(lo, hi))
    if status != "all":
        keep &= scored["review_status"] == status
    if want:
        keep &= scored["clusters"].map(
            lambda txt: bool({int(v) for v in txt.split(", ") if v} & set(want)))
    if only_flagged:
        keep &= scored["flagged"] == "off-mask"
    view = scored[keep]

    left = int((scored["review_status"] == "to review").sum())
    m1, m2, m3 = st.columns(3)
    m1.metric("Nodules", len(scored))
    m2.metric("Left to review", left)
    m3.metric("Shown", len(view))

    if "applicability" not in view.columns:          # results scored before the flags
        view = view.assign(applicability="")
    columns = ["case_id", "nodule_id", "probability", "predicted_label", "verdict", "outcome",
               "applicability", "rests_on_nodule", "rests_on_surroundings", "rma", "rra",
               "pointing_hit", "peak_distance_mm", "n_offmask_regions", "clusters", "flagged",
               "status", "review_status", "reviews"]
    st.caption("Click a column header to sort.")
    st.dataframe(
        view[columns], hide_index=True, width="stretch", key="cases_table",
        column_config={
            "case_id": st.column_config.TextColumn("Case"),
            "nodule_id": st.column_config.TextColumn("Nodule"),
            "probability": st.column_config.ProgressColumn(
                "P(malignant)", min_value=0.0, max_value=1.0, format="%.2f"),
            "predicted_label": "Predicted",
            "verdict": st.column_config.TextColumn("Verdict", help=common.METRIC_HELP["verdict"]),
            "outcome": st.column_config.TextColumn(
                "Outcome", help="The Overview's outcome of this nodule: on the tumour, shortcut, "
                "candidate sign or other (the Case page says why)."),
            "applicability": st.column_config.TextColumn(
                "Applicability", help="ok, or why the model is used outside what it knows: "
                "larger-than-roi (it sees part of the nodule), slice-thickness, pixel-spacing, "
                "nodule-size, intensity (unlike its training images), domain-unknown (its "
                "card records no training domain). The Case page says more."),
            "rests_on_nodule": st.column_config.TextColumn(
                "Rests on nodule", help="Removing the nodule (replaced by parenchyma) lowers "
                "P(malignant) by at least half, beyond a volume-matched control's change."),
            "rests_on_surroundings": st.column_config.TextColumn(
                "Surroundings", help="Rests on its surroundings: replacing what lies within "
                "5 mm of the mask (outside it, in the lung; where the off-mask regions do not "
                "look) with parenchyma lowers P(malignant) by at least half."),
            "rma": st.column_config.NumberColumn("RMA", format="%.2f", help=common.METRIC_HELP["rma"]),
            "rra": st.column_config.NumberColumn("RRA", format="%.2f", help=common.METRIC_HELP["rra"]),
            "pointing_hit": st.column_config.TextColumn("Pointing hit",
                                                        help=common.METRIC_HELP["pointing_hit"]),
            "peak_distance_mm": st.column_config.NumberColumn(
                "Peak dist. (mm)", format="%.1f", help=common.METRIC_HELP["peak_distance_mm"]),
            "n_offmask_regions": st.column_config.NumberColumn("Off-mask regions"),
            "clusters": st.column_config.TextColumn("Clusters"),
            "flagged": st.column_config.TextColumn("Flag", help=FLAG_HELP),
            "status": "Status",
            "review_status": "Review",
            "reviews": "Reviews (name: verdict)",
        },
    )

    # -- open a case -------------------------------------------------------------------------
    options = list(zip(view["case_id"], view["nodule_id"]))
    if options:
        o1, o2 = st.columns([3, 1], vertical_alignment="bottom")
        pick = o1.selectbox("Nodule to open", options, format_func=lambda t: f"{t[0]} / {t[1]}",
                            key="cases_pick")
        if o2.button("Open case", type="primary", key="cases_open"):
            st.session_state["case_id"], st.session_state["nodule_id"] = pick
            st.switch_page("views/case.py")
    else:
        st.caption("No nodule matches the filters.")

if len(unscored):
    with st.expander(f"Cases without scored nodules ({len(unscored)})",
                     expanded=bool((unscored["status"] == "failed").any())):
        st.dataframe(unscored[["case_id", "status", "error"]].rename(
            columns={"case_id": "Case", "status": "Status", "error": "Error"}),
            hide_index=True, width="stretch")
