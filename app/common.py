"""Helpers shared by the review app's pages: where the results are, the store and its
tables (cached until the store changes), cached case arrays, the reviewer's name, and the
review form.  Numbers are formatted with :func:`discovery.report.style.fmt`.

The results folder comes from (first found): ``st.session_state["results_dir"]``, the
script argument ``--results PATH`` (``streamlit run app/streamlit_app.py -- --results PATH``)
or the environment variable ``DISCOVERY_RESULTS``.  Pages show case ids only, never source
paths.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import streamlit as st

from data_tools.volume import spacing_from_affine
from discovery.report import render
from discovery.store.arrays import case_file, load_case_arrays
from discovery.store.tables import ResultsStore, store_exists

__all__ = [
    "METRIC_HELP", "REVIEWER_KEY", "results_dir", "get_store", "findings",
    "regions", "nodule_regions", "clusters", "reviews", "audit", "threshold",
    "no_nodule_message",
    "load_viewer_arrays", "case_arrays", "key_slice", "reviewer_sidebar",
    "setup_page", "review_summary", "save_review_form",
]

ENV_VAR = "DISCOVERY_RESULTS"
RESULTS_KEY = "results_dir"
REVIEWER_KEY = "reviewer"

#: One-line explanations of the per-nodule metrics (shown next to the values).
METRIC_HELP = {
    "probability": "Model's predicted probability that the nodule is malignant.",
    "verdict": ("Where the attention is: aligned / partial / off-mask (pointing hit + near "
                "mass; predicted malignant: the model's verdict rule, when it has one)."),
    "rma": "Relevance mass: share of all attribution that lies inside the mask.",
    "rra": "Relevance rank: share of the |mask| highest-attribution voxels inside the mask.",
    "pointing_hit": "Is the attribution peak on the mask (within the pointing tolerance)?",
    "peak_distance_mm": "Distance from the attribution peak to the nearest mask voxel (0 = inside).",
    "near_mass": "Share of attribution within the near margin (10 mm) of the mask.",
    "offmask_mass_share": "Share of attribution in off-mask regions (clusters of attention away from the mask).",
    "detection_auc": "ROC AUC of the map as a voxelwise detector of the mask (0.5 = no better than chance).",
    "otsu_dice": "Dice between the mask and the map thresholded by Otsu's method.",
    "rings": "Share of attribution 0-5 / 5-10 / 10-20 mm from the mask surface (peritumoral rings).",
}


# -- results folder and store ------------------------------------------------------------
def _results_from_argv(argv: list[str]) -> str | None:
    for i, arg in enumerate(argv):
        if arg == "--results" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--results="):
            return arg.split("=", 1)[1]
    return None


def results_dir() -> Path:
    """The results folder; stops the page with a clear message when there is none."""
    value = st.session_state.get(RESULTS_KEY) or _results_from_argv(sys.argv[1:]) \
        or os.environ.get(ENV_VAR)
    if not value:
        st.error("No results folder given. Start the app with "
                 "`discovery app RESULTS` (or `streamlit run app/streamlit_app.py -- --results "
                 f"RESULTS`, or set {ENV_VAR}).")
        st.stop()
    path = Path(value).expanduser()
    if not store_exists(path):
        st.error("The results folder has no results store (discovery.sqlite, or store.json "
                 "naming a PostgreSQL database); run `discovery score` first.")
        st.stop()
    st.session_state[RESULTS_KEY] = str(path)
    return path


@st.cache_resource(show_spinner=False)
def _open_store(root: str) -> ResultsStore:
    # ResultsStore keeps one database connection per thread, so one object can be shared.
    return ResultsStore(root, create=False)


def get_store() -> ResultsStore:
    return _open_store(str(results_dir().resolve()))


# -- tables, cached until the store changes ---------------------------------------------
@st.cache_data(show_spinner=False, max_entries=64)
def _read(_store: ResultsStore, root: str, version: int, method: str, args: tuple = ()) -> Any:
    # ``_store`` is not hashed: *root* names the store, *version* its state.
    return getattr(_store, method)(*args)


def _cached(store: ResultsStore, method: str, *args) -> Any:
    """``store.<method>(*args)``, read again only when the store's write counter
    (:meth:`ResultsStore.version`, one small query) has moved: a saved review or a re-scored
    case shows at once, a rerun that changed nothing reads no table."""
    return _read(store, str(store.root), store.version(), method, args)


def findings(store: ResultsStore) -> pd.DataFrame:
    """:meth:`ResultsStore.findings`, read again only when the store changed."""
    return _cached(store, "findings")


def regions(store: ResultsStore) -> pd.DataFrame:
    """:meth:`ResultsStore.regions`, read again only when the store changed."""
    return _cached(store, "regions")


def nodule_regions(store: ResultsStore, case_id: str, nodule_id: str) -> pd.DataFrame:
    """The off-mask regions of one nodule (:meth:`ResultsStore.regions` of that nodule only),
    read again only when the store changed."""
    return _cached(store, "regions", case_id, nodule_id)


def clusters(store: ResultsStore) -> pd.DataFrame:
    """:meth:`ResultsStore.clusters`, read again only when the store changed."""
    return _cached(store, "clusters")


def labels(store: ResultsStore) -> pd.DataFrame:
    """:meth:`ResultsStore.labels` (the known true labels), read again only when the store
    changed."""
    return _cached(store, "labels")


def reviews(store: ResultsStore, item_type: str | None = None) -> pd.DataFrame:
    """:meth:`ResultsStore.reviews`, read again only when the store changed."""
    return _cached(store, "reviews", item_type)


def audit(store: ResultsStore) -> pd.DataFrame:
    """:meth:`ResultsStore.audit`, read again only when the store changed."""
    return _cached(store, "audit")


def no_nodule_message(findings: pd.DataFrame) -> str:
    """What the pages say when the results hold no scored nodule: how many cases there are
    and, from their status, why none has a nodule (rows of ``findings`` without a
    ``nodule_id`` are its cases without one)."""
    cases = findings.drop_duplicates("case_id")
    if cases.empty:
        return ("No case in this results folder yet: score a folder first "
                "(discovery score INPUT --out RESULTS).")
    status = cases["status"].fillna("").astype(str)
    parts = []
    if (status == "no-mask").any():
        parts.append(f"{int((status == 'no-mask').sum())} scored without a nodule mask (none "
                     "found beside the scan: a NIfTI label map, LIDC XML, RTSTRUCT, SEG or "
                     "boxes)")
    if (status == "failed").any():
        parts.append(f"{int((status == 'failed').sum())} failed (the Cases page says why)")
    rest = len(cases) - int(status.isin(["no-mask", "failed"]).sum())
    if rest:
        parts.append(f"{rest} with no nodule in the mask")
    return (f"No scored nodules in this results folder: {len(cases)} case(s), "
            + "; ".join(parts) + ". Findings need a nodule mask per case.")


def threshold(store: ResultsStore) -> float:
    """:meth:`ResultsStore.threshold` (the decision threshold the results were scored with)."""
    return _cached(store, "threshold")


@st.cache_data(show_spinner=False, max_entries=8)
def _outcomes(_store: ResultsStore, root: str, version: int, cut: float) -> pd.DataFrame:
    # ``_store`` is not hashed: *root* names the store, *version* its state.
    from discovery.patterns.outcomes import read_outcomes

    return read_outcomes(findings(_store), clusters(_store), regions(_store),
                         threshold=cut).outcomes   # the tables as cached: no second query


def outcomes(store: ResultsStore) -> pd.DataFrame:
    """Each scored nodule's outcome (:func:`discovery.patterns.outcomes.read_outcomes`:
    the findings with ``outcome`` and ``outcome_cluster``), computed again only when the
    store changed."""
    return _outcomes(store, str(store.root), store.version(), threshold(store))


# -- case arrays ---------------------------------------------------------------------------
def load_viewer_arrays(root: str | Path, case_id: str) -> dict[str, np.ndarray]:
    """The arrays of one case as the case page uses them, without any Streamlit cache (what
    :func:`case_arrays` caches): :func:`discovery.store.tables.load_case_arrays`, made read only,
    plus ``attr_max`` (float64), ``attr_peak_z`` (int64), ``attr_peak`` (int64 ``(z, y, x)``
    of the first maximum in C order, i.e. ``np.unravel_index(np.argmax(attribution))``),
    ``label_counts`` (see :func:`key_slice`) and ``spacing_mm`` (float64 ``(dz, dy, dx)``,
    :func:`data_tools.volume.spacing_from_affine` of ``affine``; 1 mm each without one).

    Each volume is scanned once, slice-wise maxima first: only the slices holding the
    attribution peak or mask labels are looked at again.
    """
    arrays = load_case_arrays(root, case_id)
    for arr in arrays.values():
        arr.setflags(write=False)  # shared between sessions: read only
    attr = arrays.get("attribution")
    if attr is not None and attr.size > 0 and attr.ndim >= 1:
        per_slice = attr.reshape(attr.shape[0], -1).max(axis=1)  # NaN propagates, as max()
        z = int(np.argmax(per_slice))                             # first slice with the maximum
        rest = np.unravel_index(int(np.argmax(attr[z])), attr.shape[1:])
        arrays["attr_max"] = np.float64(per_slice[z])
        arrays["attr_peak"] = np.array([z, *rest], dtype=np.int64)
    else:
        arrays["attr_max"] = np.float64(0.0)
        arrays["attr_peak"] = np.zeros(attr.ndim if attr is not None else 3, np.int64)
    arrays["attr_peak_z"] = np.int64(arrays["attr_peak"][0] if arrays["attr_peak"].size else 0)
    arrays["label_counts"] = _label_counts(arrays.get("mask"))
    arrays["spacing_mm"] = _viewer_spacing(arrays)
    return arrays


def _viewer_spacing(arrays: dict[str, np.ndarray]) -> np.ndarray:
    affine = arrays.get("affine")
    return np.ones(3) if affine is None else np.array(spacing_from_affine(affine), np.float64)


def _label_counts(mask) -> np.ndarray:
    """Voxels of every label (negative values count as 0) on every axial slice,
    ``(z, n_labels + 1)`` int64; ``(0, 1)`` when the mask has no positive label."""
    if mask is None or mask.size == 0 or mask.ndim < 2:
        return np.zeros((0, 1), np.int64)
    flat = mask.reshape(mask.shape[0], -1)
    top = flat.max(axis=1)
    n_labels = int(top.max())
    if n_labels <= 0:
        return np.zeros((0, 1), np.int64)
    counts = np.zeros((mask.shape[0], n_labels + 1), np.int64)
    counts[:, 0] = flat.shape[1]
    for z in np.flatnonzero(top > 0):
        counts[z] = np.bincount(np.clip(flat[z], 0, None), minlength=n_labels + 1)
    return counts


@st.cache_resource(show_spinner="Loading case…", max_entries=4)
def _load_arrays(root: str, case_id: str, mtime_ns: int) -> dict[str, np.ndarray]:
    return load_viewer_arrays(root, case_id)


def key_slice(arrays: dict[str, np.ndarray], label: int | None) -> int | None:
    """The nodule *label*'s key axial slice, the one the reports show
    (:func:`discovery.report.render.key_slice` with the attribution), reading only the
    slices that hold the label (from the cached ``label_counts``); None when the label is
    not in the mask."""
    counts = arrays["label_counts"]
    if label is None or not 0 < label < counts.shape[1] or not counts[:, label].any():
        return None
    return render.key_slice(arrays["mask"], label, attribution=arrays.get("attribution"),
                            slices=np.flatnonzero(counts[:, label]))


def case_arrays(case_id: str) -> dict[str, np.ndarray] | None:
    """The arrays of one case (loaded once, reloaded if the file changes), plus
    ``attr_max`` (the case's attribution maximum), ``attr_peak`` (its voxel ``(z, y, x)``),
    ``attr_peak_z`` (its axial slice) and ``label_counts`` (see :func:`key_slice`); see
    :func:`load_viewer_arrays`.  None if the case has no arrays."""
    root = results_dir().resolve()
    path = case_file(root, case_id)
    try:
        mtime = path.stat().st_mtime_ns if path is not None else None
    except OSError:
        mtime = None
    if mtime is None:
        return None
    return _load_arrays(str(root), case_id, mtime)


# -- reviewer ------------------------------------------------------------------------------
def reviewer_sidebar() -> str:
    """The reviewer name box in the sidebar; the name survives page switches and, through
    the page address (``?reviewer=...``), a reload of the page."""
    if REVIEWER_KEY not in st.session_state and st.query_params.get("reviewer"):
        st.session_state[REVIEWER_KEY] = st.query_params["reviewer"]
    st.sidebar.text_input("Reviewer name", key=REVIEWER_KEY, persist_state="session",
                          help="Your reviews are saved under this name.")
    name = (st.session_state.get(REVIEWER_KEY) or "").strip()
    if not name:
        st.sidebar.caption("Enter your name to save reviews.")
    elif st.query_params.get("reviewer") != name:
        st.query_params["reviewer"] = name
    return name


def setup_page() -> None:
    """Common start of every page: results folder check and reviewer box."""
    results_dir()
    reviewer_sidebar()


# -- reviews ----------------------------------------------------------------------------------
def review_summary(table: pd.DataFrame) -> pd.DataFrame:
    """Per item_id: number of reviews and ``"name: verdict"`` list of the reviews *table*."""
    if table.empty:
        return pd.DataFrame({"item_id": pd.Series(dtype=str), "n_reviews": pd.Series(dtype=int),
                             "reviews": pd.Series(dtype=str)})
    entries = (table["reviewer"] + ": " + table["verdict"]).groupby(table["item_id"])
    return pd.DataFrame({"n_reviews": entries.size(), "reviews": entries.agg("; ".join)}).reset_index()


def save_review_form(store: ResultsStore, *, item_type: str, item_id: str, choices,
                     form_key: str, label: str) -> None:
    """Verdict + note form for one item; saves under the sidebar's reviewer name."""
    reviewer = (st.session_state.get(REVIEWER_KEY) or "").strip()
    mine = reviews(store, item_type)
    mine = mine[(mine["item_id"] == item_id) & (mine["reviewer"] == reviewer)]
    current = mine["verdict"].iloc[0] if len(mine) else None
    with st.form(form_key):
        verdict = st.radio(label, choices, index=list(choices).index(current) if current in choices else None,
                           key=f"{form_key}_verdict")
        note = st.text_area("Note (optional)", value=mine["note"].iloc[0] if len(mine) else "",
                            key=f"{form_key}_note")
        submitted = st.form_submit_button("Save review", type="primary")
    if submitted:
        if not reviewer:
            st.warning("Enter your name in the sidebar first.")
        elif verdict is None:
            st.warning("Choose a verdict first.")
        else:
            store.save_review(item_type, item_id, reviewer, verdict, note or "")
            st.success(f"Saved: {verdict!r} by {reviewer}.")
    existing = reviews(store, item_type)  # read again after a save: the store changed
    existing = existing[existing["item_id"] == item_id]
    if len(existing):
        st.caption("Reviews of this item")
        st.dataframe(existing[["reviewer", "verdict", "note", "updated_at"]], hide_index=True,
                     width="stretch")
    else:
        st.caption("Not reviewed yet.")
