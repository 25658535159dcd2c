"""Case: CT slices with the attribution, mask and off-mask regions; metrics; nodule review.

The viewer (display controls, plane, zoom, slice slider, the image and its jump buttons) is a
fragment: moving the slider or changing a display control reruns the viewer only, not the
tables, the metrics and the review form around it.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from app import common
from discovery.explain.catalog import map_title
from discovery.model.reliance import reliance_text, surroundings_text
from discovery.model.rois import nodule_label
from discovery.patterns.outcomes import outcome_reason
from discovery.report import planes, render
from discovery.report.style import applicability_warning, fmt
from discovery.store.tables import NODULE_REVIEW_CHOICES

#: Metric label per column (the rows of the metrics table, in order).
METRIC_NAMES = {"outcome": "Outcome", "probability": "P(malignant)", "verdict": "Verdict",
                "rests_on_nodule": "Rests on the nodule",
                "rests_on_surroundings": "Rests on its surroundings", "rma": "RMA", "rra": "RRA",
                "pointing_hit": "Pointing hit", "peak_distance_mm": "Peak distance (mm)",
                "near_mass": "Near mass", "offmask_mass_share": "Off-mask share",
                "detection_auc": "Detection AUC", "otsu_dice": "Otsu Dice", "rings": "Rings (mm)"}
#: Meaning of the reliance row (the other rows' meanings are common.METRIC_HELP).
RELIANCE_HELP = ("Removing the nodule (replaced by lung parenchyma) lowers P(malignant) by at "
                 "least half of P, beyond the change of the same edit elsewhere in the ROI "
                 "(P without the nodule / without a volume-matched control in brackets).")
#: Meaning of the surroundings row.
SURROUNDINGS_HELP = ("Replacing what lies within 5 mm of the mask (outside it, in the lung: "
                     "where the off-mask regions do not look) with lung parenchyma lowers "
                     "P(malignant) by at least half of P (P without them, and their median "
                     "density before, in brackets). A halo, spicules or a strand's root "
                     "show here.")
#: Meaning of the outcome row.
OUTCOME_HELP = ("Which of the Overview's three outcomes this nodule is in (on the tumour, "
                "shortcut, candidate sign; else other), and why. The rules are under the "
                "Overview's panels.")
#: Meaning of each row of the metrics table (the reliance row's: RELIANCE_HELP).
HELP = {**common.METRIC_HELP, "rests_on_surroundings": SURROUNDINGS_HELP,
        "outcome": OUTCOME_HELP}
#: Columns of the off-mask region table.
REGION_TABLE_COLUMNS = ["region_index", "case_region", "volume_mm3", "mass_share",
                        "distance_to_mask_mm", "offset_distance_mm", "mean_hu", "centroid_z",
                        "cluster"]


# -- which case and nodule -------------------------------------------------------------------
def choose_nodule(nodules: pd.DataFrame) -> tuple[str, str, pd.Series]:
    """The Case and Nodule boxes; the page address keeps the choice, so a reload resumes it.
    Returns the case id, the nodule id and the nodule's findings row."""
    ss, qp = st.session_state, st.query_params
    if ss.get("case_id") is None and qp.get("case"):
        ss["case_id"], ss["nodule_id"] = qp.get("case"), qp.get("nodule")
    case_ids = sorted(nodules["case_id"].unique())
    c1, c2, _ = st.columns([2, 1.2, 5.8])
    case_id = c1.selectbox("Case", case_ids, key="case_sel",
                           index=case_ids.index(ss["case_id"]) if ss.get("case_id") in case_ids else 0)
    if ss.get("case_id") != case_id:
        ss["case_id"], ss["nodule_id"] = case_id, None
    in_case = nodules[nodules["case_id"] == case_id]
    nodule_ids = list(in_case["nodule_id"])
    nodule_id = c2.selectbox(
        "Nodule", nodule_ids, key=f"nodule_sel_{case_id}",
        index=nodule_ids.index(ss["nodule_id"]) if ss.get("nodule_id") in nodule_ids else 0)
    ss["nodule_id"] = nodule_id
    if qp.get("case") != case_id or qp.get("nodule") != nodule_id:
        qp["case"], qp["nodule"] = case_id, nodule_id
    return case_id, nodule_id, in_case[in_case["nodule_id"] == nodule_id].iloc[0]


def nodule_centre(row: pd.Series, arrays: dict, nodule_id: str) -> tuple[float, float, float]:
    """The nodule's key axial slice (the reports' rule, :func:`common.key_slice`) and its
    centre row and column (the volume's middle where the findings have no centre)."""
    shape = arrays["ct"].shape
    cz, cy, cx = (row[c] if pd.notna(row[c]) else n / 2
                  for c, n in (("center_z", shape[0]), ("center_y", shape[1]),
                               ("center_x", shape[2])))
    z = common.key_slice(arrays, nodule_label(nodule_id))
    return (z if z is not None else cz), cy, cx


def _slice_number(zyx, plane: str, shape) -> int:
    """The slider value that shows the point *zyx* in *plane*: slices are numbered from 1,
    as in the reports and in viewers (index + 1)."""
    return int(np.clip(planes.plane_index(zyx, plane), 0, planes.n_slices(shape, plane) - 1)) + 1


def slice_keys(case_id: str, nodule_id: str, shape, centre) -> dict[str, str]:
    """Session keys of the slice sliders of this nodule, one per plane (values are slice
    numbers, from 1); a new nodule starts on its centre in every plane."""
    keys = {p: f"slice_{case_id}_{nodule_id}_{p}" for p in planes.PLANES}
    for plane, key in keys.items():
        st.session_state.setdefault(key, _slice_number(centre, plane, shape))
    return keys


def go_to(keys: dict[str, str], shape, zyx) -> None:
    """Show the point ``(z, y, x)`` in every plane (a button callback)."""
    for plane, key in keys.items():
        st.session_state[key] = _slice_number(zyx, plane, shape)


# -- the viewer (a fragment) -------------------------------------------------------------------
def display_controls() -> dict:
    """Window, overlay, plane and zoom controls (three rows above the slice); their values
    by name."""
    d1, d2 = st.columns([3, 2])
    window_name = d1.radio("Window", [*render.WINDOWS, "custom"], horizontal=True,
                           key="case_window", help="Lung W1500/L-600, mediastinum W400/L40, "
                           "bone W2500/L480 (HU), or your own width and level.")
    window = window_name
    if window_name == "custom":
        w1, w2 = d1.columns(2)
        window = (w1.number_input("Width (HU)", 1, 5000, 1500, 50, key="case_ww"),
                  w2.number_input("Level (HU)", -1200, 3000, -600, 10, key="case_wl"))
    show_mask = d2.checkbox("Mask contour", value=True, key="case_show_mask")
    show_regions = d2.checkbox("Off-mask regions", value=True, key="case_show_regions")
    o1, o2 = st.columns(2)
    opacity = o1.slider("Overlay opacity", 0.0, 1.0, 0.45, 0.05, key="case_opacity")
    threshold = o2.slider("Attribution threshold", 0.0, 1.0, 0.2, 0.05, key="case_threshold",
                          help="Hide attribution below this share of the case maximum.")
    p1, p2 = st.columns([3, 2])
    plane = p1.radio("Plane", list(planes.PLANES), horizontal=True, key="case_plane",
                     format_func=str.capitalize)
    zoom = p2.radio("Zoom on the nodule", [1, 2, 4], horizontal=True, key="case_zoom",
                    format_func=lambda z: "whole slice" if z == 1 else f"{z}×")
    w_txt = window_name if window_name != "custom" else f"W{window[0]:.0f}/L{window[1]:.0f}"
    return {"window": window, "window_text": w_txt, "opacity": opacity, "threshold": threshold,
            "plane": plane, "zoom": zoom, "show_mask": show_mask, "show_regions": show_regions}


def slice_image(arrays: dict, plane: str, k: int, centre, ctl: dict) -> np.ndarray:
    """Slice *k* of *plane* with the overlays, zoomed on the nodule and enlarged to square
    millimetres."""
    attr_max = float(arrays["attr_max"])

    def cut(name: str):
        return planes.plane_slice(arrays[name], plane, k)

    rgb = render.overlay_slice(
        cut("ct"), attribution2d=cut("attribution"),
        mask2d=cut("mask") if ctl["show_mask"] else None,
        regions2d=cut("region_map") if ctl["show_regions"] else None, window=ctl["window"],
        opacity=ctl["opacity"], attr_max=attr_max if attr_max > 0 else None,
        threshold=ctl["threshold"])
    shape = arrays["ct"].shape
    rows, cols = planes.zoom_box(rgb.shape, planes.plane_point(centre, plane, shape), ctl["zoom"])
    rgb = rgb[rows, cols]
    spacing = tuple(float(v) for v in arrays["spacing_mm"])
    return planes.resize_to(rgb, planes.display_size(rgb.shape, plane, spacing))


def colour_scale(attr_max: float, title: str) -> None:
    """The colour bar and what the colours mean (*title*: the map's method, "LayerCAM")."""
    if attr_max > 0:
        st.image(render.labelled_colorbar(attr_max=attr_max, length=360))
        st.caption(f"Attribution in raw {title} units, scale 0 – {fmt(attr_max)} "
                   "(the maximum of this case, the same on every slice). "
                   "Green: mask contour; cyan: off-mask regions.")
    else:
        st.caption("This case has no attribution (all zero). Green: mask contour.")


@st.fragment
def viewer(case_id: str, arrays: dict, centre, keys: dict[str, str], title: str) -> None:
    """Controls, slice slider, image, colour bar and jump buttons; reruns on its own."""
    ctl = display_controls()
    plane, zoom = ctl["plane"], ctl["zoom"]
    shape = arrays["ct"].shape
    n = planes.n_slices(shape, plane)
    k = 0  # the slice's index; the slider and the caption number slices from 1
    if n > 1:
        k = st.slider(f"{plane.capitalize()} slice", 1, n, key=keys[plane],
                      help="Drag, or click the slider and step with the arrow keys "
                           "(← →, one slice; Page Up/Down, ten).") - 1
    st.image(slice_image(arrays, plane, k, centre, ctl), width="stretch",
             caption=f"{case_id} · {plane} slice {k + 1} of {n} · {ctl['window_text']} window"
                     + (f" · {zoom}× on the nodule" if zoom > 1 else "")
                     + (" · superior at the top" if plane != "axial" else ""))
    attr_max = float(arrays["attr_max"])
    colour_scale(attr_max, title)
    b1, b2 = st.columns(2)
    b1.button("Go to the nodule", on_click=go_to, args=(keys, shape, centre), key="case_key_slice",
              help="The nodule's key axial slice (the one the reports show: most attribution "
                   "over the nodule, else most of its mask), through its centre.")
    peak = arrays["attr_peak"] if attr_max > 0 else centre  # cached (z, y, x) of the maximum
    b2.button("Go to the case's attribution peak", key="case_peak", on_click=go_to,
              args=(keys, shape, tuple(int(v) for v in peak)), disabled=attr_max <= 0)


# -- metrics, review, regions ------------------------------------------------------------------
def metrics_table(row: pd.Series, outcome: str = "–") -> pd.DataFrame:
    """Metric, value and meaning of the nodule's outcome (*outcome*, in words:
    :func:`discovery.patterns.outcomes.outcome_reason`) and alignment metrics."""
    hit = row["pointing_hit"]
    values = {
        "outcome": outcome,
        "probability": fmt(row["probability"]),
        "verdict": fmt(row["verdict"]),
        "rests_on_nodule": reliance_text(row["rests_on_nodule"], row["p_without_nodule"],
                                         row["p_without_control"], row["reliance_status"]),
        "rests_on_surroundings": surroundings_text(row.get("rests_on_surroundings"),
                                                   row.get("p_without_surroundings"),
                                                   row.get("surroundings_median_hu")),
        "rma": fmt(row["rma"]),
        "rra": fmt(row["rra"]),
        "pointing_hit": "–" if pd.isna(hit) else ("yes" if hit >= 0.5 else "no"),
        "peak_distance_mm": fmt(row["peak_distance_mm"]),
        "near_mass": fmt(row["near_mass"]),
        "offmask_mass_share": fmt(row["offmask_mass_share"]),
        "detection_auc": fmt(row["detection_auc"]),
        "otsu_dice": fmt(row["otsu_dice"]),
        "rings": " / ".join(fmt(row[c], 2) for c in ("ring_0_5", "ring_5_10", "ring_10_20")),
    }
    return pd.DataFrame({"Metric": [METRIC_NAMES[k] for k in values],
                         "Value": list(values.values()),
                         "Meaning": [HELP.get(k, RELIANCE_HELP) for k in values]})


def nodule_outcome(store, row: pd.Series) -> str:
    """The nodule's outcome in words (:func:`discovery.patterns.outcomes.outcome_reason`);
    "–" for a nodule without one (its case was not scored)."""
    table = common.outcomes(store)
    own = table[(table["case_id"] == row["case_id"]) & (table["nodule_id"] == row["nodule_id"])]
    return outcome_reason(own.iloc[0]) if len(own) else "–"


def metrics_and_review(store, row: pd.Series, item_id: str, nodule_id: str) -> None:
    st.subheader(f"Nodule {nodule_id}")
    warning = applicability_warning(row.get("applicability"),
                                    row.get("applicability_detail"))
    if warning:
        st.warning(warning, icon=":material/warning:")
    st.table(metrics_table(row, nodule_outcome(store, row)), hide_index=True)
    extra = f"Volume {fmt(row['volume_mm3'])} mm³"
    if row["status"] != "ok":
        extra += f" · status: {row['status']} ({row['error']})"
    st.caption(extra)
    st.subheader("Your review")
    common.save_review_form(store, item_type="nodule", item_id=item_id,
                            choices=NODULE_REVIEW_CHOICES, form_key=f"review_{item_id}",
                            label="Is the model's attention on the tumour?")


def _cluster_name(c) -> str:
    return "unclustered" if pd.isna(c) or int(c) < 0 else str(int(c))


def region_section(regions: pd.DataFrame, item_id: str, keys: dict[str, str], shape) -> None:
    """The nodule's off-mask regions and a button that shows one of them in every plane."""
    st.subheader("Off-mask regions of this nodule")
    if regions.empty:
        st.caption("No off-mask attention regions for this nodule.")
        return
    number = st.column_config.NumberColumn
    st.dataframe(
        regions[REGION_TABLE_COLUMNS].assign(cluster=regions["cluster"].map(_cluster_name)),
        hide_index=True, width="stretch",
        column_config={"region_index": "Region", "case_region": "Label in map",
                       "volume_mm3": number("Volume (mm³)", format="%.0f"),
                       "mass_share": number("Share of attribution", format="%.3f"),
                       "distance_to_mask_mm": number("To mask (mm)", format="%.1f"),
                       "offset_distance_mm": number("To centre (mm)", format="%.1f"),
                       "mean_hu": number("Mean HU", format="%.0f"),
                       "centroid_z": number("Slice", format="%.0f"),
                       "cluster": "Pattern cluster"})
    r1, r2 = st.columns([3, 1], vertical_alignment="bottom")
    pick = r1.selectbox("Region", list(regions["region_index"]), key=f"region_pick_{item_id}",
                        format_func=lambda i: f"region {i}")
    reg = regions.loc[regions["region_index"] == pick].iloc[0]
    r2.button("Show it", key="case_region_go", on_click=go_to,
              args=(keys, shape, (reg["centroid_z"], reg["centroid_y"], reg["centroid_x"])),
              help="Every plane through the region's centroid.")


# -- the page -------------------------------------------------------------------------------------
def case_page() -> None:
    common.setup_page()
    store = common.get_store()
    st.header("Case review")
    findings = common.findings(store)
    nodules = findings[findings["nodule_id"].fillna("") != ""]
    if nodules.empty:
        st.info(common.no_nodule_message(findings))
        st.stop()
    case_id, nodule_id, row = choose_nodule(nodules)
    item_id = f"{case_id}/{nodule_id}"
    arrays = common.case_arrays(case_id)
    if arrays is None:
        st.warning(f"No image arrays stored for case {case_id}.")
        st.stop()
    shape = arrays["ct"].shape
    centre = nodule_centre(row, arrays, nodule_id)
    keys = slice_keys(case_id, nodule_id, shape, centre)
    left, right = st.columns([5, 4], gap="large")
    with left:
        meta = store.meta()
        viewer(case_id, arrays, centre, keys, map_title(meta.get("method"), meta.get("gradcam_layer")))
    with right:
        metrics_and_review(store, row, item_id, nodule_id)
    region_section(common.nodule_regions(store, case_id, nodule_id), item_id, keys, shape)


case_page()
