"""Case: CT slices with the attribution, mask and off-mask regions; metrics; nodule review."""

import sys
from pathlib import Path

_APP_DIR = str(Path(__file__).resolve().parents[1])  # app/, for `import common`
if _APP_DIR not in sys.path:
    sys.path.insert(0, _APP_DIR)

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import streamlit as st  # noqa: E402

import common  # noqa: E402
from discovery import render  # noqa: E402
from discovery.store import NODULE_REVIEW_CHOICES  # noqa: E402

common.setup_page()
store = common.get_store()
ss = st.session_state

st.header("Case review")
findings = store.findings()
nodules = findings[findings["nodule_id"].fillna("") != ""]
if nodules.empty:
    st.info("No scored nodules in this results folder.")
    st.stop()

# -- which case and nodule ---------------------------------------------------------------
case_ids = sorted(nodules["case_id"].unique())
c1, c2, d1, d2, d3, d4 = st.columns([2, 1.2, 2.6, 1.6, 1.6, 1.6])
case_id = c1.selectbox("Case", case_ids, key="case_sel",
                       index=case_ids.index(ss["case_id"]) if ss.get("case_id") in case_ids else 0)
if ss.get("case_id") != case_id:
    ss["case_id"], ss["nodule_id"] = case_id, None
in_case = nodules[nodules["case_id"] == case_id]
nodule_ids = list(in_case["nodule_id"])
nodule_id = c2.selectbox("Nodule", nodule_ids, key=f"nodule_sel_{case_id}",
                         index=nodule_ids.index(ss["nodule_id"]) if ss.get("nodule_id") in nodule_ids else 0)
window = d1.radio("Window", list(render.WINDOWS), horizontal=True, key="case_window")
opacity = d2.slider("Overlay opacity", 0.0, 1.0, 0.45, 0.05, key="case_opacity")
threshold = d3.slider("Attribution threshold", 0.0, 1.0, 0.2, 0.05, key="case_threshold",
                      help="Hide attribution below this share of the case maximum.")
show_mask = d4.checkbox("Mask contour", value=True, key="case_show_mask")
show_regions = d4.checkbox("Off-mask regions", value=True, key="case_show_regions")
ss["nodule_id"] = nodule_id
row = in_case[in_case["nodule_id"] == nodule_id].iloc[0]
item_id = f"{case_id}/{nodule_id}"

arrays = common.case_arrays(case_id)
if arrays is None:
    st.warning(f"No image arrays stored for case {case_id}.")
    st.stop()
ct, mask, attr, region_map = arrays["ct"], arrays["mask"], arrays["attribution"], arrays["region_map"]
attr_max = float(arrays["attr_max"])
nz = ct.shape[0]


def _key_slice() -> int:
    """The nodule's key slice; its centre slice if its label is not in the mask."""
    z = common.key_slice(arrays, common.nodule_label(nodule_id))
    if z is not None:
        return z
    cz = row["center_z"]
    return int(np.clip(round(cz), 0, nz - 1)) if pd.notna(cz) else nz // 2


key_z = _key_slice()
slice_key = f"slice_{case_id}_{nodule_id}"
ss.setdefault(slice_key, key_z)


def _go_to(z: int) -> None:
    ss[slice_key] = int(np.clip(z, 0, nz - 1))


left, right = st.columns([5, 4], gap="large")

# -- image -------------------------------------------------------------------------------
with left:
    if nz > 1:
        z = st.slider("Axial slice", 0, nz - 1, key=slice_key)
    else:
        z = 0
    rgb = render.overlay_slice(
        ct[z], attribution2d=attr[z], mask2d=mask[z] if show_mask else None,
        regions2d=region_map[z] if show_regions else None, window=window, opacity=opacity,
        attr_max=attr_max if attr_max > 0 else None, threshold=threshold)
    st.image(render.upscale(rgb, 512), width="stretch",
             caption=f"{case_id} · axial slice {z} of {nz - 1} · {window} window")
    if attr_max > 0:
        st.image(render.labelled_colorbar(attr_max=attr_max, length=360))
        st.caption(f"Attribution in raw Grad-CAM units, scale 0 – {common.fmt(attr_max)} "
                   "(the maximum of this case, the same on every slice). "
                   "Green: mask contour; cyan: off-mask regions.")
    else:
        st.caption("This case has no attribution (all zero). Green: mask contour.")
    b1, b2 = st.columns(2)
    b1.button("Go to key slice", on_click=_go_to, args=(key_z,), key="case_key_slice",
              help="The slice with most of this nodule's mask.")
    b2.button("Go to the case's attribution peak", key="case_peak", on_click=_go_to,
              args=(int(arrays["attr_peak_z"]),), disabled=attr_max <= 0)

# -- metrics and review ----------------------------------------------------------------------
with right:
    st.subheader(f"Nodule {nodule_id}")
    hit = row["pointing_hit"]
    values = {
        "probability": common.fmt(row["probability"]),
        "verdict": row["verdict"] or "–",
        "rma": common.fmt(row["rma"]),
        "rra": common.fmt(row["rra"]),
        "pointing_hit": "–" if pd.isna(hit) else ("yes" if hit >= 0.5 else "no"),
        "peak_distance_mm": common.fmt(row["peak_distance_mm"]),
        "near_mass": common.fmt(row["near_mass"]),
        "offmask_mass_share": common.fmt(row["offmask_mass_share"]),
        "detection_auc": common.fmt(row["detection_auc"]),
        "otsu_dice": common.fmt(row["otsu_dice"]),
        "rings": " / ".join(common.fmt(row[c], 2) for c in ("ring_0_5", "ring_5_10", "ring_10_20")),
    }
    names = {"probability": "P(malignant)", "verdict": "Verdict", "rma": "RMA", "rra": "RRA",
             "pointing_hit": "Pointing hit", "peak_distance_mm": "Peak distance (mm)",
             "near_mass": "Near mass", "offmask_mass_share": "Off-mask share",
             "detection_auc": "Detection AUC", "otsu_dice": "Otsu Dice", "rings": "Rings (mm)"}
    st.table(pd.DataFrame({"Metric": [names[k] for k in values], "Value": list(values.values()),
                           "Meaning": [common.METRIC_HELP[k] for k in values]}), hide_index=True)
    extra = f"Volume {common.fmt(row['volume_mm3'])} mm³"
    if row["status"] != "ok":
        extra += f" · status: {row['status']} ({row['error']})"
    st.caption(extra)

    st.subheader("Your review")
    common.save_review_form(store, item_type="nodule", item_id=item_id,
                            choices=NODULE_REVIEW_CHOICES, form_key=f"review_{item_id}",
                            label="Is the model's attention on the tumour?")

# -- off-mask regions --------------------------------------------------------------------------
st.subheader("Off-mask regions of this nodule")
regions = store.regions()
regions = regions[(regions["case_id"] == case_id) & (regions["nodule_id"] == nodule_id)]
if regions.empty:
    st.caption("No off-mask attention regions for this nodule.")
else:
    cols = ["region_index", "case_region", "volume_mm3", "mass_share", "distance_to_mask_mm",
            "offset_distance_mm", "mean_hu", "centroid_z", "cluster"]
    st.dataframe(regions[cols].assign(cluster=regions["cluster"].map(
        lambda c: "unclustered" if pd.isna(c) or int(c) < 0 else str(int(c)))),
        hide_index=True, width="stretch",
        column_config={"region_index": "Region", "case_region": "Label in map",
                       "volume_mm3": st.column_config.NumberColumn("Volume (mm³)", format="%.0f"),
                       "mass_share": st.column_config.NumberColumn("Share of attribution", format="%.3f"),
                       "distance_to_mask_mm": st.column_config.NumberColumn("To mask (mm)", format="%.1f"),
                       "offset_distance_mm": st.column_config.NumberColumn("To centre (mm)", format="%.1f"),
                       "mean_hu": st.column_config.NumberColumn("Mean HU", format="%.0f"),
                       "centroid_z": st.column_config.NumberColumn("Slice", format="%.0f"),
                       "cluster": "Pattern cluster"})
    r1, r2 = st.columns([3, 1], vertical_alignment="bottom")
    pick = r1.selectbox("Region", list(regions["region_index"]), key=f"region_pick_{item_id}",
                        format_func=lambda i: f"region {i}")
    cz = regions.loc[regions["region_index"] == pick, "centroid_z"].iloc[0]
    r2.button("Show its slice", key="case_region_go", on_click=_go_to, args=(int(round(cz)),))
