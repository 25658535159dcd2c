"""The results store: tables (SQLite file ``RESULTS/discovery.sqlite``, or PostgreSQL) plus
per-case arrays in the results folder.

Tables
------
``meta``      key/value: schema version, model hash, settings; ``write_count``, bumped by
              every write transaction (:meth:`ResultsStore.version`).
``cases``     one row per case: status (``ok`` / ``no-mask`` / ``failed``), error, geometry.
``nodules``   one row per nodule: probability, alignment metrics, verdict, off-mask summary.
``regions``   one row per off-mask region with its descriptors and cluster.
``clusters``  one row per cohort-level pattern cluster.
``reviews``   the current reviewer verdict per (item_type, item_id, reviewer): UNIQUE, so a
              resubmitted verdict updates rather than duplicates.
``review_audit``  every change of a review, never updated or deleted.
``manifest``  one row per case scored by ``discovery score``: ``case_id``, ``input_hash``,
              ``model_hash``, ``config_hash`` (SHA-256 hex digests, see
              :mod:`discovery.batch.score`), ``status`` (``ok`` / ``no-mask`` / ``failed``),
              ``error``, ``finished_at`` (UTC, ISO 8601, milliseconds).  Written by
              :meth:`ResultsStore.put_case` in the transaction that stores the case's results,
              so a row exists exactly when those results are complete; a ``put_case`` without
              hashes deletes the case's row (its results then no longer match any hashes).

The tables live in ``RESULTS/discovery.sqlite`` by default, or on a PostgreSQL server given
by URL (``ResultsStore(RESULTS, url="postgresql://...")``, ``discovery score --store``); see
:mod:`discovery.store.backends`.  Both give the same tables and the same DataFrames.

Concurrency: writes wait for each other (SQLite: WAL journal, a busy timeout and ``BEGIN
IMMEDIATE``; PostgreSQL: a transaction-scoped advisory lock), so that several reviewers (app
sessions, on one machine or several with PostgreSQL) can write at once.  Per-case arrays live in
``RESULTS/cases/<case_id>.zarr.zip`` (compressed Zarr; :mod:`discovery.store.arrays`, whose
:func:`save_case_arrays` and :func:`load_case_arrays` are re-exported here).
"""

from __future__ import annotations

import json
import math
import threading
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
import pandas as pd

from discovery.explain.faithfulness_rule import method_summary
from discovery.regions.offmask import REGION_COLUMNS as _OFFMASK_COLUMNS
from discovery.schema import CLUSTER_COLUMNS as _PATTERN_COLUMNS
from discovery.schema import EFFECT_COLUMNS, SURROUNDINGS_FIELDS, decision_threshold
from discovery.store.arrays import load_case_arrays, save_case_arrays
from discovery.store.backends import (
    SQLITE_NAME,
    Backend,
    Connection,
    SchemaMismatch,
    StoreError,
    new_results_id,
    resolve_backend,
    store_exists,
    write_pointer,
)

#: Region columns added by the pipeline's anatomy pass (see ``discovery.batch.score.result_rows``).
ANATOMY_COLUMNS = [
    "offset_l_mm", "offset_p_mm", "offset_s_mm", "direction", "relation", "lung_fraction",
    "pleura_distance_mm", "dense_fraction", "dense_elongation", "elongation", "median_hu",
    "p90_hu", "halo_max_hu", "structure_volume_mm3", "structure_median_hu", "structure_max_hu",
    "structure_gap_mm", "structure_radial", "structure_elongation", "structure_attribution_share",
    "description",
]

__all__ = [
    "ResultsStore", "FINDINGS_COLUMNS", "REGION_COLUMNS", "CLUSTER_COLUMNS",
    "RANDOMIZATION_COLUMNS", "PERTURBATION_COLUMNS",
    "NODULE_REVIEW_CHOICES", "CLUSTER_REVIEW_CHOICES", "save_case_arrays", "load_case_arrays",
    "StoreError", "store_exists", "sanity_summary",
]

SCHEMA_VERSION = 13
DB_NAME = SQLITE_NAME
#: The meta row every write transaction increments (:meth:`ResultsStore.version`).
_WRITE_COUNT = "write_count"

#: Columns of findings.csv, in order (one row per nodule; failed cases have one row).
FINDINGS_COLUMNS = [
    "case_id", "nodule_id", "probability", "predicted_label", "rma", "rra", "pointing_hit",
    "peak_distance_mm", "near_mass", "detection_auc", "otsu_dice", "otsu_iou", "ring_0_5",
    "ring_5_10", "ring_10_20", "verdict", "p_without_nodule", "p_without_control",
    "rests_on_nodule", "reliance_status", *SURROUNDINGS_FIELDS, "applicability",
    "applicability_detail", "n_offmask_regions", "offmask_mass_share",
    "flag_score", "flagged", "flag_clusters", "volume_mm3", "center_z", "center_y", "center_x", "status", "error",
]
#: Off-mask region descriptors (discovery.regions.offmask) plus the keys and cohort-level fields.
REGION_COLUMNS = (["region_key"] + _OFFMASK_COLUMNS[:3] + ["case_region", "probability"]
                  + _OFFMASK_COLUMNS[3:] + ANATOMY_COLUMNS
                  + ["cluster", "embedding_x", "embedding_y"])
#: Cluster statistics (discovery.patterns.clustering) and the causal check (discovery.patterns.causal).
CLUSTER_COLUMNS = _PATTERN_COLUMNS + EFFECT_COLUMNS
#: ``discovery sanity``: cascading randomisation, one row per method and step.
RANDOMIZATION_COLUMNS = ["method", "layer", "step", "module", "randomised", "mean_spearman",
                         "n_rois", "n_draws", "n_constant"]
#: ``discovery sanity``: one row per nodule and method; deletion / insertion areas with a
#: constant eraser against random orders (the old measure), and ROAD's MoRF / LeRF areas with
#: imputation, their gap and the random maps' (discovery.explain.faithfulness.road_curves).
PERTURBATION_COLUMNS = ["case_id", "nodule_id", "method", "layer", "probability", "predicted_label",
                        "deletion_auc", "deletion_auc_random", "insertion_auc",
                        "insertion_auc_random", "road_morf_auc", "road_lerf_auc", "road_gap",
                        "road_random_auc", "road_gap_random"]
NODULE_REVIEW_CHOICES = ("on the tumour", "partly", "elsewhere", "can't tell")
CLUSTER_REVIEW_CHOICES = ("artifact or shortcut", "known sign", "candidate new pattern", "noise")

_TEXT = {"case_id", "nodule_id", "verdict", "status", "error", "region_key", "description",
         "exemplars", "method", "layer", "module", "randomised", "direction", "relation",
         "flag_clusters", "reliance_status", "applicability", "applicability_detail"}
#: Columns stored as text (the rest are numbers).
TEXT_COLUMNS = frozenset(_TEXT)
_INT = {"predicted_label", "n_offmask_regions", "region_index", "case_region", "n_voxels",
        "cluster", "n_regions", "n_cases", "n_nodules", "step", "n_rois", "n_draws", "n_constant",
        "flagged", "effect_n", "relied_upon"}


def _coltype(name: str) -> str:
    return "TEXT" if name in _TEXT else "INTEGER" if name in _INT else "REAL"


def _sql_type(backend: Backend, name: str) -> str:
    """Column *name*'s type in *backend*'s dialect (the tables' schema and the columns added
    to older stores)."""
    return {"TEXT": backend.text, "INTEGER": backend.integer, "REAL": backend.real}[_coltype(name)]


def _schema(backend: Backend) -> str:
    def cols(names: list[str]) -> str:
        return ",\n  ".join(f"{c} {_sql_type(backend, c)}" for c in names)

    nod, reg, clu = cols(FINDINGS_COLUMNS), cols(REGION_COLUMNS), cols(CLUSTER_COLUMNS)
    ran, per = cols(RANDOMIZATION_COLUMNS), cols(PERTURBATION_COLUMNS)
    text, integer, real = backend.text, backend.integer, backend.real
    return f"""
CREATE TABLE IF NOT EXISTS meta (key {text} PRIMARY KEY, value {text} NOT NULL);
CREATE TABLE IF NOT EXISTS cases (
  case_id {text} PRIMARY KEY, status {text} NOT NULL, error {text} NOT NULL DEFAULT '',
  n_nodules {integer} NOT NULL DEFAULT 0, shape {text}, spacing_mm {text}, source_kind {text},
  layout {text}, mask_source {text}, arrays {text}, scored_at {text} NOT NULL);
CREATE TABLE IF NOT EXISTS nodule_annotations (
  case_id {text} NOT NULL, nodule_id {text} NOT NULL, name {text} NOT NULL, value {real},
  PRIMARY KEY (case_id, nodule_id, name));
CREATE TABLE IF NOT EXISTS nodules (
  {nod},
  PRIMARY KEY (case_id, nodule_id));
CREATE TABLE IF NOT EXISTS regions (
  {reg},
  PRIMARY KEY (region_key));
CREATE TABLE IF NOT EXISTS clusters (
  {clu},
  PRIMARY KEY (cluster));
CREATE TABLE IF NOT EXISTS reviews (
  item_type {text} NOT NULL CHECK (item_type IN ('nodule', 'cluster')),
  item_id {text} NOT NULL, reviewer {text} NOT NULL, verdict {text} NOT NULL,
  note {text} NOT NULL DEFAULT '', updated_at {text} NOT NULL,
  UNIQUE (item_type, item_id, reviewer));
CREATE TABLE IF NOT EXISTS sanity_randomization (
  {ran},
  PRIMARY KEY (method, step));
CREATE TABLE IF NOT EXISTS sanity_perturbation (
  {per},
  PRIMARY KEY (case_id, nodule_id, method));
CREATE TABLE IF NOT EXISTS labels (
  case_id {text} NOT NULL, nodule_id {text} NOT NULL, malignant {integer} NOT NULL,
  PRIMARY KEY (case_id, nodule_id));
CREATE TABLE IF NOT EXISTS manifest (
  case_id {text} PRIMARY KEY, input_hash {text} NOT NULL, model_hash {text} NOT NULL,
  config_hash {text} NOT NULL,
  status {text} NOT NULL CHECK (status IN ('ok', 'no-mask', 'failed')),
  error {text} NOT NULL DEFAULT '', finished_at {text} NOT NULL);
CREATE TABLE IF NOT EXISTS review_audit (
  id {backend.serial_key}, item_type {text} NOT NULL, item_id {text} NOT NULL,
  reviewer {text} NOT NULL, old_verdict {text}, new_verdict {text} NOT NULL, note {text} NOT NULL,
  at {text} NOT NULL);
"""


#: Tables that gained columns within one schema version (nullable, no constraint): a store
#: written before them gains the columns, empty (NULL, read as NaN), when opened, and the
#: tool fills them on its next write (the clusters' ``stability``, the sanity rows' ROAD
#: areas).
_GROWN_TABLES = {"sanity_perturbation": PERTURBATION_COLUMNS, "clusters": CLUSTER_COLUMNS}


def _add_columns(con, backend: Backend) -> None:
    """Add the columns of :data:`_GROWN_TABLES` an older store lacks (in the open's
    transaction)."""
    for table, columns in _GROWN_TABLES.items():
        have = set(con.frame(f"SELECT * FROM {table} LIMIT 0").columns)
        for col in [c for c in columns if c not in have]:
            con.execute(f"ALTER TABLE {table} ADD COLUMN {col} {_sql_type(backend, col)}")


def _now(timespec: str = "seconds") -> str:
    return datetime.now(timezone.utc).isoformat(timespec=timespec)


def _clean(value: Any) -> Any:
    """Python scalars for the database; NaN stored as NULL (read back as NaN by pandas)."""
    if isinstance(value, (bool, np.bool_)):
        return int(value)
    if isinstance(value, (np.floating, float)):
        return None if math.isnan(float(value)) else float(value)
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, np.str_):
        return str(value)
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value)
    return value


def _upsert(table: str, columns: list[str], key: tuple[str, ...]) -> str:
    """``INSERT ... ON CONFLICT (key) DO UPDATE`` of every other column (SQLite and
    PostgreSQL alike)."""
    updates = ", ".join(f"{c} = excluded.{c}" for c in columns if c not in key)
    return (f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))}) "
            f"ON CONFLICT ({', '.join(key)}) DO UPDATE SET {updates}")


def _write_meta(con, values: dict[str, Any]) -> None:
    """Upsert meta keys (JSON values) in the caller's transaction."""
    con.executemany(_upsert("meta", ["key", "value"], ("key",)),
                    [(k, json.dumps(v)) for k, v in values.items()])


class ResultsStore:
    """Open (creating if needed) the results store of the results folder *results_dir*.

    Parameters
    ----------
    results_dir : path
        The results folder (per-case arrays; ``discovery.sqlite`` unless the tables are on
        PostgreSQL).
    create : bool
        False: the store must exist (``FileNotFoundError`` otherwise).
    url : str, optional
        Keep the tables on PostgreSQL (``postgresql://user[:password]@host[:port]/database``);
        the folder then remembers the database in ``store.json`` (without the password) and
        later opens without *url* use it.  None: whatever the folder uses, SQLite for a new one.

    Raises
    ------
    StoreError
        The URL is not PostgreSQL's or not the folder's, the server cannot be reached, or the
        database holds another results folder's tables.
    ValueError
        The tables were written by another schema version.

    Notes
    -----
    One connection per thread (connections must not be shared across threads).  ``location``
    says where the tables are (the file name, or the URL without password).
    """

    def __init__(self, results_dir: str | Path, *, create: bool = True, url: str | None = None):
        self.root = Path(results_dir)
        self.backend, pointer = resolve_backend(self.root, url, create=create)
        self.location = self.backend.label
        if create:
            self.root.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        con = self._con()
        try:
            meta = {}
            if con.has_table("meta"):
                meta = dict(con.execute("SELECT key, value FROM meta WHERE key IN "
                                        "('schema_version', 'results_id')").fetchall())
            elif not create:
                raise StoreError(f"the results database {self.location} holds no results "
                                 "tables; run `discovery score` first")
            found = meta.get("schema_version")
            if found is not None and found != str(SCHEMA_VERSION):
                raise SchemaMismatch(
                    f"the results store {self.location} has schema version {found}; this "
                    f"version of the tool writes version {SCHEMA_VERSION}. Score into a new "
                    "results folder: `discovery score INPUT --out NEW_RESULTS` with the same "
                    "input, model and labels (versions 11 and 12 add the reliance on each "
                    "nodule's surroundings: p_without_surroundings, rests_on_surroundings, "
                    "surroundings_median_hu, surroundings_max_hu; version 10 each nodule's "
                    "applicability "
                    "flags: applicability, applicability_detail; version 9 the reliance on the "
                    "nodule).")
            stored_id = json.loads(meta["results_id"]) if "results_id" in meta else None
            expected = (pointer or {}).get("results_id")
            if self.backend.kind == "postgresql" and found is not None and stored_id != expected:
                raise StoreError(
                    f"the database {self.location} holds the tables of another results folder; "
                    "give each results folder a database of its own (or a schema of its own "
                    "with the URL parameter options=-csearch_path=NAME)")
        except BaseException:
            self.close()
            raise
        con.script(_schema(self.backend))  # idempotent (IF NOT EXISTS), one transaction
        results_id = stored_id or expected or new_results_id()
        with self.write(count=False) as con:
            _add_columns(con, self.backend)
            for key, value in (("schema_version", str(SCHEMA_VERSION)),
                               ("results_id", json.dumps(results_id)), (_WRITE_COUNT, "0")):
                con.execute("INSERT INTO meta (key, value) VALUES (?, ?) "
                            "ON CONFLICT (key) DO NOTHING", (key, value))
        if self.backend.kind == "postgresql" and (pointer or {}).get("results_id") != results_id:
            write_pointer(self.root, self.backend, results_id, SCHEMA_VERSION)

    # -- connections ---------------------------------------------------------------------
    def _con(self) -> Connection:
        con = getattr(self._local, "con", None)
        if con is None:
            con = self.backend.connect()
            self._local.con = con
        return con

    @contextmanager
    def write(self, *, count: bool = True) -> Iterator[Connection]:
        """A write transaction (waits for other writers), committed on success, rolled back
        on error; it also increments the write counter (:meth:`version`) unless *count* is
        False (opening a store, which changes no results)."""
        con = self._con()
        con.begin_write()
        try:
            yield con
            if count:
                con.execute("UPDATE meta SET value = CAST(CAST(value AS BIGINT) + 1 AS TEXT) "
                            "WHERE key = ?", (_WRITE_COUNT,))
        except BaseException:
            con.rollback()
            raise
        con.commit()

    def version(self) -> int:
        """A number that changes whenever anything is written to the tables, by this or any
        other process (every write transaction increments it, in that transaction; opening
        a store does not): one cheap query to tell whether cached tables are still current."""
        row = self._con().execute("SELECT value FROM meta WHERE key = ?",
                                  (_WRITE_COUNT,)).fetchone()
        return int(row[0]) if row else 0

    def close(self) -> None:
        con = getattr(self._local, "con", None)
        if con is not None:
            con.close()
            self._local.con = None

    def query(self, sql: str, params: Iterable[Any] = ()) -> pd.DataFrame:
        """The rows of a read query (``?`` parameter marks) as a DataFrame."""
        return self._con().frame(sql, params)

    # -- meta ----------------------------------------------------------------------------
    def set_meta(self, **values: Any) -> None:
        with self.write() as con:
            _write_meta(con, values)

    def threshold(self) -> float:
        """The decision threshold the results were scored with (:func:`decision_threshold`)."""
        return decision_threshold(self.meta())

    def meta(self) -> dict[str, Any]:
        """The ``meta`` rows, values decoded from JSON (the write counter left out)."""
        rows = self._con().execute("SELECT key, value FROM meta WHERE key <> ?",
                                   (_WRITE_COUNT,)).fetchall()
        out = {}
        for k, v in rows:
            try:
                out[k] = json.loads(v)
            except json.JSONDecodeError:
                out[k] = v
        return out

    # -- per-case results ----------------------------------------------------------------
    def put_case(self, case: dict[str, Any], nodules: list[dict[str, Any]],
                 regions: list[dict[str, Any]],
                 annotations: list[dict[str, Any]] | None = None, *,
                 manifest: dict[str, str] | None = None) -> None:
        """Replace everything stored for one case, in one transaction.

        ``annotations``: what the annotation source says of each nodule (``case_id``,
        ``nodule_id``, ``name``, ``value`` as a number), e.g. the LIDC readers' median
        malignancy; :meth:`findings` adds one column per name.
        ``manifest``: the hashes the results were computed from (``input_hash``,
        ``model_hash``, ``config_hash``); the case's ``manifest`` row (status and error
        taken from *case*) is written in the same transaction, or deleted when None.  Write
        the case's arrays file before calling this, so that a manifest row always means a
        complete case.
        """
        case = {**case, "scored_at": _now()}
        cols = ["case_id", "status", "error", "n_nodules", "shape", "spacing_mm", "source_kind",
                "layout", "mask_source", "arrays", "scored_at"]
        with self.write() as con:
            cid = case["case_id"]
            con.execute("DELETE FROM nodules WHERE case_id = ?", (cid,))
            con.execute("DELETE FROM regions WHERE case_id = ?", (cid,))
            con.execute("DELETE FROM nodule_annotations WHERE case_id = ?", (cid,))
            self._insert(con, "nodule_annotations", ["case_id", "nodule_id", "name", "value"],
                         annotations or [])
            defaults = {"error": "", "n_nodules": 0}  # the NOT NULL columns' defaults
            con.execute(_upsert("cases", cols, ("case_id",)),
                        [_clean(defaults.get(c) if case.get(c) is None else case[c])
                         for c in cols])
            self._insert(con, "nodules", FINDINGS_COLUMNS, nodules)
            self._insert(con, "regions", REGION_COLUMNS, regions)
            if manifest is None:
                con.execute("DELETE FROM manifest WHERE case_id = ?", (cid,))
            else:
                con.execute(
                    _upsert("manifest", ["case_id", "input_hash", "model_hash", "config_hash",
                                         "status", "error", "finished_at"], ("case_id",)),
                    (cid, str(manifest["input_hash"]), str(manifest["model_hash"]),
                     str(manifest["config_hash"]), case["status"], case.get("error") or "",
                     _now("milliseconds")))

    @staticmethod
    def _insert(con, table: str, columns: list[str], rows: list[dict[str, Any]]) -> None:
        if not rows:
            return
        sql = f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"
        con.executemany(sql, [[_clean(r.get(c)) for c in columns] for r in rows])

    def set_patterns(self, regions: pd.DataFrame, clusters: pd.DataFrame,
                     flags: pd.DataFrame | None = None, *, settings: str | None = None) -> None:
        """Store cluster assignments / 2-D map of every region, the cluster table and the
        nodules' shortcut flags (``discovery.patterns.causal.FLAG_COLUMNS``; all reset when None)
        and, in the same transaction, the meta ``pattern_settings`` (*settings*, the repr of
        the clustering's settings; left as it is when None)."""
        clusters = clusters.reindex(columns=CLUSTER_COLUMNS)
        with self.write() as con:
            if settings is not None:
                _write_meta(con, {"pattern_settings": settings})
            con.execute("UPDATE nodules SET flag_score = NULL, flagged = 0, flag_clusters = ''")
            if flags is not None:
                con.executemany(
                    "UPDATE nodules SET flag_score = ?, flagged = ?, flag_clusters = ? "
                    "WHERE case_id = ? AND nodule_id = ?",
                    [(_clean(f.flag_score), int(bool(f.flagged)), str(f.flag_clusters),
                      f.case_id, f.nodule_id) for f in flags.itertuples()])
            con.executemany(
                "UPDATE regions SET cluster = ?, embedding_x = ?, embedding_y = ? WHERE region_key = ?",
                [(int(r.cluster), _clean(r.embedding_x), _clean(r.embedding_y), r.region_key)
                 for r in regions.itertuples()])
            con.execute("DELETE FROM clusters")
            rows = clusters.to_dict("records")
            self._insert(con, "clusters", CLUSTER_COLUMNS, rows)

    def set_labels(self, labels: pd.DataFrame) -> None:
        """Replace the known true labels (``case_id``, ``nodule_id``, ``malignant`` 0/1)."""
        with self.write() as con:
            con.execute("DELETE FROM labels")
            con.executemany("INSERT INTO labels (case_id, nodule_id, malignant) VALUES (?, ?, ?)",
                            [(str(r.case_id), str(r.nodule_id), int(r.malignant))
                             for r in labels.itertuples()])

    def labels(self) -> pd.DataFrame:
        """Known true labels: ``case_id``, ``nodule_id``, ``malignant`` (empty if none)."""
        return self.query("SELECT case_id, nodule_id, malignant FROM labels "
                          "ORDER BY case_id, nodule_id")

    def set_sanity(self, randomization: list[dict[str, Any]], perturbation: list[dict[str, Any]]) -> None:
        """Replace the sanity rows of every method present in the new rows (one transaction)."""
        with self.write() as con:
            for table, rows in (("sanity_randomization", randomization),
                                ("sanity_perturbation", perturbation)):
                for method in sorted({r["method"] for r in rows}):
                    con.execute(f"DELETE FROM {table} WHERE method = ?", (method,))
            self._insert(con, "sanity_randomization", RANDOMIZATION_COLUMNS, randomization)
            self._insert(con, "sanity_perturbation", PERTURBATION_COLUMNS, perturbation)

    def sanity(self) -> tuple[pd.DataFrame, pd.DataFrame]:
        """``(randomization, perturbation)`` tables written by ``discovery sanity`` (may be empty)."""
        return (self.query(f"SELECT {', '.join(RANDOMIZATION_COLUMNS)} FROM sanity_randomization "
                           "ORDER BY method, step"),
                self.query("SELECT * FROM sanity_perturbation ORDER BY method, case_id, "
                           "nodule_id").reindex(columns=PERTURBATION_COLUMNS))

    def cases(self) -> pd.DataFrame:
        return self.query("SELECT * FROM cases ORDER BY case_id")

    def manifest(self) -> pd.DataFrame:
        """The ``manifest`` table (one row per case scored with hashes), by case id."""
        return self.query("SELECT case_id, input_hash, model_hash, config_hash, status, error, "
                          "finished_at FROM manifest ORDER BY case_id")

    def findings(self) -> pd.DataFrame:
        """One row per nodule (and per failed / mask-less case): FINDINGS_COLUMNS, then one
        column per annotation name stored with :meth:`put_case` (sorted; NaN where absent)."""
        nod = self.query(f"SELECT {', '.join(FINDINGS_COLUMNS)} FROM nodules")
        bad = self.query("SELECT case_id, status, error FROM cases WHERE case_id NOT IN "
                         "(SELECT DISTINCT case_id FROM nodules)")
        if len(bad):
            extra = pd.DataFrame({c: [None] * len(bad) for c in FINDINGS_COLUMNS})
            extra["case_id"] = bad["case_id"].values
            extra["nodule_id"] = ""
            extra["status"] = bad["status"].values
            extra["error"] = bad["error"].values
            extra["verdict"] = np.where(bad["status"].str.startswith("no-mask"), "no-mask", "")
            extra["n_offmask_regions"] = 0
            nod = pd.concat([nod, extra], ignore_index=True) if len(nod) else extra
        for col in FINDINGS_COLUMNS:
            if _coltype(col) == "REAL":
                nod[col] = pd.to_numeric(nod[col], errors="coerce").astype(float)
        nod["error"] = nod["error"].fillna("")
        nod = nod.sort_values(["case_id", "nodule_id"], kind="stable").reset_index(drop=True)
        ann = self.query("SELECT case_id, nodule_id, name, value FROM nodule_annotations")
        extra: list[str] = []
        if len(ann):
            wide = ann.pivot_table(index=["case_id", "nodule_id"], columns="name", values="value",
                                   aggfunc="first", dropna=False).reset_index()
            extra = sorted(c for c in wide.columns if c not in ("case_id", "nodule_id"))
            nod = nod.merge(wide, on=["case_id", "nodule_id"], how="left")
            for col in extra:
                nod[col] = pd.to_numeric(nod[col], errors="coerce").astype(float)
        return nod[FINDINGS_COLUMNS + extra]

    def regions(self, case_id: str | None = None, nodule_id: str | None = None) -> pd.DataFrame:
        """Off-mask regions (:data:`REGION_COLUMNS`, by ``region_key``): all of them, those of
        one case (*case_id*), or those of one nodule (*case_id* and *nodule_id*)."""
        if nodule_id is not None and case_id is None:
            raise ValueError("regions(nodule_id=...) needs the case_id too: nodule ids repeat "
                             "across cases")
        keys = [(c, v) for c, v in (("case_id", case_id), ("nodule_id", nodule_id))
                if v is not None]
        where = " AND ".join(f"{c} = ?" for c, _ in keys)
        return self.query(f"SELECT {', '.join(REGION_COLUMNS)} FROM regions"
                          f"{' WHERE ' + where if where else ''} ORDER BY region_key",
                          [str(v) for _, v in keys])

    def clusters(self) -> pd.DataFrame:
        df = self.query(f"SELECT {', '.join(CLUSTER_COLUMNS)} FROM clusters ORDER BY cluster")
        df["exemplars"] = [json.loads(x) if x else [] for x in df["exemplars"]]
        for col in CLUSTER_COLUMNS:  # NULL (not computed) -> NaN, never None
            if _coltype(col) == "REAL":
                df[col] = pd.to_numeric(df[col], errors="coerce").astype(float)
        df["relied_upon"] = df["relied_upon"].fillna(0).astype(bool)
        return df

    # -- reviews -------------------------------------------------------------------------
    def save_review(self, item_type: str, item_id: str, reviewer: str, verdict: str,
                    note: str = "") -> None:
        """Record a reviewer's verdict (insert or update) and append it to the audit trail."""
        choices = NODULE_REVIEW_CHOICES if item_type == "nodule" else CLUSTER_REVIEW_CHOICES
        if item_type not in ("nodule", "cluster"):
            raise ValueError(f"item_type must be 'nodule' or 'cluster'; received {item_type!r}")
        if verdict not in choices:
            raise ValueError(f"verdict for a {item_type} must be one of {choices}; received {verdict!r}")
        reviewer = reviewer.strip()
        if not reviewer:
            raise ValueError("a review needs the reviewer's name")
        now = _now()
        with self.write() as con:
            old = con.execute(
                "SELECT verdict FROM reviews WHERE item_type=? AND item_id=? AND reviewer=?",
                (item_type, item_id, reviewer)).fetchone()
            con.execute(
                "INSERT INTO reviews (item_type, item_id, reviewer, verdict, note, updated_at) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (item_type, item_id, reviewer) DO UPDATE "
                "SET verdict = excluded.verdict, note = excluded.note, updated_at = excluded.updated_at",
                (item_type, item_id, reviewer, verdict, note, now))
            con.execute(
                "INSERT INTO review_audit (item_type, item_id, reviewer, old_verdict, new_verdict, note, at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (item_type, item_id, reviewer, old[0] if old else None, verdict, note, now))

    def reviews(self, item_type: str | None = None) -> pd.DataFrame:
        if item_type is None:
            return self.query("SELECT * FROM reviews ORDER BY item_type, item_id, reviewer")
        return self.query("SELECT * FROM reviews WHERE item_type = ? ORDER BY item_id, reviewer",
                          (item_type,))

    def audit(self) -> pd.DataFrame:
        return self.query("SELECT * FROM review_audit ORDER BY id")


def sanity_summary(randomization: pd.DataFrame, perturbation: pd.DataFrame) -> pd.DataFrame:
    """One row per method of the ``discovery sanity`` tables (:meth:`ResultsStore.sanity`):
    ``method``, ``layer`` (the layer its maps were checked at; None when not recorded, by
    stores written before the perturbation rows kept it), ``spearman_fully_randomised``
    (mean over ROIs after every module is re-drawn; NaN when the method was not
    randomised), then the columns of
    :func:`discovery.explain.faithfulness_rule.method_summary` (old and new measure, status
    and verdict)."""
    randomization = randomization.reindex(columns=RANDOMIZATION_COLUMNS)  # also when empty
    perturbation = perturbation.reindex(columns=PERTURBATION_COLUMNS)
    rows = []
    for method in dict.fromkeys([*perturbation["method"], *randomization["method"]]):
        r = randomization[randomization["method"] == method].sort_values("step")
        p = perturbation[perturbation["method"] == method]
        known = [v for v in [*p["layer"], *r["layer"]] if isinstance(v, str) and v]
        rows.append({
            "method": method,
            "layer": known[0] if known else None,
            "spearman_fully_randomised": float(r["mean_spearman"].iloc[-1]) if len(r) else np.nan,
            **method_summary(perturbation[perturbation["method"] == method]),
        })
    return pd.DataFrame(rows)


# -- arrays: discovery.store.arrays (re-exported here) --------------------------------
