"""Case: CT slices with the attribution, mask and off-mask regions; metrics; nodule review."""

import sys
from pathlib import Path

_APP_DIR = str(Path(__file__).resolve().parents[1])  # app/, for `import common`
if _APP_DIR not in sys.path:
    sys.path.insert(0, _APP_DIR)

import common  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import streamlit as st  # noqa: E402

from discovery.report import planes, render  # noqa: E402
from discovery.store.tables import NODULE_REVIEW_CHOICES  # noqa: E402

common.setup_page()
store = common.get_store()
ss = st.session_state

st.header("Case review")
findings = store.findings()
nodules = findings[findings["nodule_id"].fillna("") != ""]
if nodules.empty:
    st.info("No scored nodules in this results folder.")
    st.stop()

# -- which case and nodule (the page address keeps them, so a reload resumes here) ----------
qp = st.query_params
if ss.get("case_id") is None and qp.get("case"):
    ss["case_id"], ss["nodule_id"] = qp.get("case"), qp.get("nodule")
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
window_name = d1.radio("Window", [*render.WINDOWS, "custom"], horizontal=True,
                       key="case_window", help="Lung W1500/L-600, mediastinum W400/L40, "
                       "bone W2500/L480 (HU), or your own width and level.")
if window_name == "custom":
    w1, w2 = d1.columns(2)
    window = (w1.number_input("Width (HU)", 1, 5000, 1500, 50, key="case_ww"),
              w2.number_input("Level (HU)", -1200, 3000, -600, 10, key="case_wl"))
else:
    window = window_name
opacity = d2.slider("Overlay opacity", 0.0, 1.0, 0.45, 0.05, key="case_opacity")
threshold = d3.slider("Attribution threshold", 0.0, 1.0, 0.2, 0.05, key="case_threshold",
                      help="Hide attribution below this share of the case maximum.")
show_mask = d4.checkbox("Mask contour", value=True, key="case_show_mask")
show_regions = d4.checkbox("Off-mask regions", value=True, key="case_show_regions")
ss["nodule_id"] = nodule_id
if qp.get("case") != case_id or qp.get("nodule") != nodule_id:
    qp["case"], qp["nodule"] = case_id, nodule_id
row = in_case[in_case["nodule_id"] == nodule_id].iloc[0]
item_id = f"{case_id}/{nodule_id}"

arrays = common.case_arrays(case_id)
if arrays is None:
    st.warning(f"No image arrays stored for case {case_id}.")
    st.stop()
ct, mask, attr, region_map = arrays["ct"], arrays["mask"], arrays["attribution"], arrays["region_map"]
attr_max = float(arrays["attr_max"])
nz = ct.shape[0]


def _nodule_centre() -> tuple[float, float, float]:
    """The nodule's key axial slice (most mask voxels) and its centre row and column."""
    cz, cy, cx = (row[c] if pd.notna(row[c]) else n / 2
                  for c, n in (("center_z", ct.shape[0]), ("center_y", ct.shape[1]),
                               ("center_x", ct.shape[2])))
    z = common.key_slice(arrays, common.nodule_label(nodule_id))
    return (z if z is not None else cz), cy, cx


centre = _nodule_centre()
slice_keys = {p: f"slice_{case_id}_{nodule_id}_{p}" for p in planes.PLANES}
for p, k in slice_keys.items():
    ss.setdefault(k, int(np.clip(planes.plane_index(centre, p), 0,
                                 planes.n_slices(ct.shape, p) - 1)))


def _go_to(zyx) -> None:
    """Show the point ``(z, y, x)`` in every plane."""
    for p, k in slice_keys.items():
        ss[k] = int(np.clip(planes.plane_index(zyx, p), 0, planes.n_slices(ct.shape, p) - 1))


affine = arrays.get("affine")
spacing = (tuple(float(v) for v in np.linalg.norm(np.asarray(affine)[:3, :3], axis=0))
           if affine is not None else (1.0, 1.0, 1.0))
left, right = st.columns([5, 4], gap="large")

# -- image -------------------------------------------------------------------------------
with left:
    p1, p2 = st.columns([3, 2])
    plane = p1.radio("Plane", list(planes.PLANES), horizontal=True, key="case_plane",
                     format_func=str.capitalize)
    zoom = p2.radio("Zoom on the nodule", [1, 2, 4], horizontal=True, key="case_zoom",
                    format_func=lambda z: "whole slice" if z == 1 else f"{z}×")
    n = planes.n_slices(ct.shape, plane)
    if n > 1:
        k = st.slider(f"{plane.capitalize()} slice", 0, n - 1, key=slice_keys[plane],
                      help="Drag, or click the slider and step with the arrow keys "
                           "(← →, one slice; Page Up/Down, ten).")
    else:
        k = 0

    def cut(a):
        return planes.plane_slice(a, plane, k)

    rgb = render.overlay_slice(
        cut(ct), attribution2d=cut(attr), mask2d=cut(mask) if show_mask else None,
        regions2d=cut(region_map) if show_regions else None, window=window, opacity=opacity,
        attr_max=attr_max if attr_max > 0 else None, threshold=threshold)
    rows, cols = planes.zoom_box(rgb.shape, planes.plane_point(centre, plane, ct.shape), zoom)
    rgb = rgb[rows, cols]
    shown = planes.resize_to(rgb, planes.display_size(rgb.shape, plane, spacing))
    w_txt = window_name if window_name != "custom" else f"W{window[0]:.0f}/L{window[1]:.0f}"
    st.image(shown, width="stretch",
             caption=f"{case_id} · {plane} slice {k} of {n - 1} · {w_txt} window"
                     + (f" · {zoom}× on the nodule" if zoom > 1 else "")
                     + (" · superior at the top" if plane != "axial" else ""))
    if attr_max > 0:
        st.image(render.labelled_colorbar(attr_max=attr_max, length=360))
        st.caption(f"Attribution in raw Grad-CAM units, scale 0 – {common.fmt(attr_max)} "
                   "(the maximum of this case, the same on every slice). "
                   "Green: mask contour; cyan: off-mask regions.")
    else:
        st.caption("This case has no attribution (all zero). Green: mask contour.")
    b1, b2 = st.columns(2)
    b1.button("Go to the nodule", on_click=_go_to, args=(centre,), key="case_key_slice",
              help="The axial slice with most of this nodule's mask, through its centre.")
    peak = arrays["attr_peak"] if attr_max > 0 else centre  # cached (z, y, x) of the maximum
    b2.button("Go to the case's attribution peak", key="case_peak", on_click=_go_to,
              args=(tuple(int(v) for v in peak),), disabled=attr_max <= 0)

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
    reg = regions.loc[regions["region_index"] == pick].iloc[0]
    r2.button("Show it", key="case_region_go", on_click=_go_to,
              args=((reg["centroid_z"], reg["centroid_y"], reg["centroid_x"]),),
              help="Every plane through the region's centroid.")
