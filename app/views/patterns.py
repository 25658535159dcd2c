"""Patterns: cohort-level clusters of off-mask attention, their exemplars, and cluster review."""

import pandas as pd
import streamlit as st

from app import common
from discovery.report import render
from discovery.report.style import (
    DISPLAY_THRESHOLD,
    fmt,
    sentence,
    stability_in_words,
)
from discovery.schema import DISSOLVED_CLUSTER
from discovery.store.tables import CLUSTER_REVIEW_CHOICES

CROP_HALF = 32  # exemplar crops are 65 x 65 pixels around the region centroid

common.setup_page()
store = common.get_store()
ss = st.session_state

st.title("Patterns")
st.caption("Off-mask attention regions of the whole cohort, grouped by what each points at "
           "(the structure it attends: its density, size, distance and direction, and the "
           "pleura). A cluster is a hypothesis about what the model attends to, not a finding.")
regions = common.regions(store)
clusters = common.clusters(store)
if regions.empty:
    st.info("No off-mask regions were found in this cohort, so there are no patterns to review.")
    st.stop()
if clusters.empty:
    st.info(f"{len(regions)} off-mask region(s), but no clusters formed (too few or too "
            "dissimilar regions), so there are no patterns to review.")

# -- cluster table ---------------------------------------------------------------------------
if not clusters.empty:
    summary = common.review_summary(common.reviews(store, "cluster"))
    table = clusters.assign(item_id=clusters["cluster"].astype(str)).merge(
        summary, on="item_id", how="left")
    table["reviews"] = table["reviews"].fillna("")
    st.dataframe(
        table[["cluster", "n_regions", "n_cases", "n_nodules", "stability",
               "share_predicted_malignant", "enrichment_predicted", "q_predicted",
               "effect_mean", "relied_upon", "reviews", "description"]],
        hide_index=True, width="stretch",
        column_config={
            "cluster": "Cluster",
            "description": st.column_config.TextColumn(
                "Description", width="large",
                help="Built from the descriptors; the full text is above the cluster's exemplars"),
            "n_regions": "Regions", "n_cases": "Patients", "n_nodules": "Nodules",
            "stability": st.column_config.NumberColumn(
                "Stability", format="%.2f",
                help="How well the cluster is found again when the clustering starts from "
                     "other seeds (mean best Jaccard index; 1 = whole and alone every time, "
                     "under 0.5 it dissolves)"),
            "share_predicted_malignant": st.column_config.NumberColumn(
                "Predicted malignant", format="%.2f"),
            "enrichment_predicted": st.column_config.NumberColumn(
                "Enrichment (× cohort)", format="%.2f"),
            "q_predicted": st.column_config.NumberColumn("q (BH)", format="%.3f"),
            "effect_mean": st.column_config.NumberColumn(
                "Δp when removed", format="%+.3f",
                help="Mean change in P(malignant) when the cluster's regions are replaced "
                     "with local lung parenchyma and the nodule is re-scored"),
            "relied_upon": st.column_config.CheckboxColumn("Model relies on it"),
            "reviews": "Reviews (name: verdict)",
        })

    # -- one cluster ---------------------------------------------------------------------------
    ids = [int(c) for c in clusters["cluster"]]
    descr = dict(zip(ids, clusters["description"]))
    cluster = st.selectbox("Cluster", ids, key="patterns_cluster",
                           format_func=lambda c: f"Cluster {c}: {descr[c][:70]}"
                                                 + ("…" if len(descr[c]) > 70 else ""))
    crow = clusters[clusters["cluster"] == cluster].iloc[0]
    st.subheader(f"Cluster {cluster}")
    st.markdown(f"**{crow['description']}**")
    m = st.columns(6)
    m[0].metric("Regions", int(crow["n_regions"]))
    m[1].metric("Patients", int(crow["n_cases"]))
    m[2].metric("Nodules", int(crow["n_nodules"]))
    m[3].metric("Predicted malignant",
                f"{100 * crow['share_predicted_malignant']:.0f} %"
                if pd.notna(crow["share_predicted_malignant"]) else "–",
                delta=(f"{100 * (crow['share_predicted_malignant'] - crow['pool_predicted_malignant']):+.0f} pts vs cohort"
                       if pd.notna(crow["pool_predicted_malignant"]) else None), delta_color="off")
    m[4].metric("Permutation p", fmt(crow["p_predicted"], 3),
                help=f"two-sided, nodules as units; Benjamini-Hochberg q = {fmt(crow['q_predicted'], 3)}")
    m[5].metric("Δp when removed", f"{crow['effect_mean']:+.3f}" if pd.notna(crow.get("effect_mean")) else "–",
                help="causal check: regions replaced with local parenchyma, nodule re-scored")
    effect = ""
    if pd.notna(crow.get("effect_mean")):
        verdict = ("**the model relies on this pattern**" if bool(crow["relied_upon"])
                   else "the model does not measurably rely on this pattern")
        effect = (f"Removing these regions changes P(malignant) by {crow['effect_mean']:+.3f} on "
                  f"average over {int(crow['effect_n'])} nodules (95 % bootstrap interval "
                  f"{crow['effect_ci_low']:+.3f} to {crow['effect_ci_high']:+.3f}): {verdict}. ")
    truth = ""
    if pd.notna(crow.get("p_truth")):
        truth = (f"Truly malignant: {100 * crow['share_truth_malignant']:.0f} % vs "
                 f"{100 * crow['pool_truth_malignant']:.0f} % in the cohort (p = {fmt(crow['p_truth'], 3)}). ")
    stability = stability_in_words(crow.get("stability"))
    st.markdown(effect + truth + sentence(stability))
    if pd.notna(crow.get("stability")) and crow["stability"] < DISSOLVED_CLUSTER:
        st.warning(f"Cluster {cluster} dissolves when the clustering starts from other seeds "
                   f"(mean Jaccard {crow['stability']:.2f}): its regions are grouped "
                   "differently each time. Read it as a chance grouping, not a pattern.")
    st.caption(f"Predicted malignant: {100 * crow['share_predicted_malignant']:.0f} % of this cluster's "
               f"nodules vs {100 * crow['pool_predicted_malignant']:.0f} % of all nodules with off-mask "
               f"regions. Mean distance from the nodule centre "
               f"{fmt(crow['mean_offset_distance_mm'])} mm; "
               f"mean volume {fmt(crow['mean_volume_mm3'])} mm³.")

    # -- exemplars -----------------------------------------------------------------------------
    st.markdown("**Exemplars** from different patients, each as the plain image and the "
                "overlay side by side (axial slice through the region's centroid; green: mask, "
                "cyan: this region; lung window; colour scale = that case's attribution max, "
                f"shown from {100 * DISPLAY_THRESHOLD:.0f} % of it; the map exists only inside "
                "each nodule's 48 mm analysis "
                "box, so it can end in a straight edge)")
    by_key = regions.set_index("region_key")
    keys = [k for k in crow["exemplars"] if k in by_key.index]
    if not keys:
        st.caption("No exemplars stored for this cluster.")
    per_row = 4
    cols = [c for _ in range(-(-len(keys) // per_row)) for c in st.columns(per_row)]
    for col, key in zip(cols, keys):  # a fixed grid: pictures keep the same size
        reg = by_key.loc[key]
        arrays = common.case_arrays(reg["case_id"])
        if arrays is None:
            col.caption(f"{reg['case_id']}: no image arrays")
            continue
        z = int(round(float(reg["centroid_z"])))
        kw = dict(z=z, center_yx=(reg["centroid_y"], reg["centroid_x"]), half_size=CROP_HALF,
                  region=int(reg["case_region"]), threshold=DISPLAY_THRESHOLD,
                  attr_max=float(arrays["attr_max"]))
        pair = render.side_by_side(render.thumbnail(arrays, opacity=0.0, **kw),
                                   render.thumbnail(arrays, **kw))
        col.image(render.upscale(pair, 200), width="stretch",
                  caption=f"{reg['case_id']} · {reg['nodule_id']} · slice {z + 1}")

    # -- review ----------------------------------------------------------------------------------
    st.subheader("Your review of this cluster")
    common.save_review_form(store, item_type="cluster", item_id=str(cluster),
                            choices=CLUSTER_REVIEW_CHOICES, form_key=f"cluster_review_{cluster}",
                            label="What is this pattern?")

# -- map of all regions ----------------------------------------------------------------------------
st.subheader("Map of all off-mask regions")
points = regions.dropna(subset=["embedding_x", "embedding_y"])
if points.empty:
    st.caption("No region has map coordinates (none was offered to the clustering).")
else:
    import plotly.express as px

    points = points.assign(pattern=points["cluster"].map(
        lambda c: "unclustered" if pd.isna(c) or int(c) < 0 else f"cluster {int(c)}"))
    names = sorted(points["pattern"].unique(), key=lambda t: (t == "unclustered", t))
    palette = px.colors.qualitative.Set2 + px.colors.qualitative.Dark2
    colours = {n: ("#b0b0b0" if n == "unclustered" else palette[i % len(palette)])
               for i, n in enumerate(names)}
    fig = px.scatter(points, x="embedding_x", y="embedding_y", color="pattern",
                     color_discrete_map=colours, category_orders={"pattern": names},
                     custom_data=["region_key"],
                     hover_data={"case_id": True, "nodule_id": True, "description": True,
                                 "embedding_x": False, "embedding_y": False},
                     labels={"embedding_x": "t-SNE 1", "embedding_y": "t-SNE 2"}, height=460)
    fig.update_traces(marker={"size": 9, "line": {"width": 0.5, "color": "white"}})
    fig.update_layout(margin={"l": 10, "r": 10, "t": 10, "b": 10}, legend_title_text="")
    event = st.plotly_chart(fig, key="patterns_map", on_select="rerun",
                            selection_mode="points", width="stretch")
    picked = [pt.get("customdata", [None])[0]
              for pt in (event.selection.points if event and event.selection else [])]
    picked = [k for k in picked if k]
    if picked and ss.get("patterns_map_opened") != picked[0]:
        ss["patterns_map_opened"] = picked[0]  # open once per new click, not on every rerun
        reg = points.set_index("region_key").loc[picked[0]]
        ss["case_id"], ss["nodule_id"] = reg["case_id"], reg["nodule_id"]
        st.switch_page("views/case.py")
    st.caption("Click a point to open its case. "
               "t-SNE map of the standardised descriptors (PCA below 10 regions), for display "
               "only: nearby points have similar descriptors (by default those of the "
               "structure each region points at: its densest voxel, its size, its gap to the "
               "nodule, how straight it runs out from the nodule, and the distance from the "
               "pleura); "
               "distances between far-apart groups and group sizes on the map mean nothing. "
               "The clusters are computed on the descriptors themselves, not on this map.")
