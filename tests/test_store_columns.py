"""A results store written before a table gained a column (within one schema version) opens,
reads the new column as NaN, and is filled by the next write: the clusters' ``stability``
and the sanity rows' ROAD areas."""

from __future__ import annotations

import sqlite3

import numpy as np
import pandas as pd

from discovery.store.backends import SQLITE_NAME
from discovery.store.tables import CLUSTER_COLUMNS, ResultsStore
from tests.conftest import build_tiny_results


def _columns(db, table: str) -> set[str]:
    con = sqlite3.connect(db)
    try:
        return {row[1] for row in con.execute(f"PRAGMA table_info({table})")}
    finally:
        con.close()


def _drop(db, table: str, columns) -> None:
    con = sqlite3.connect(db)
    try:
        for col in columns:
            con.execute(f"ALTER TABLE {table} DROP COLUMN {col}")
        con.commit()
    finally:
        con.close()


def test_an_older_store_gains_the_new_columns_when_opened(tmp_path):
    root = build_tiny_results(tmp_path / "results")
    _drop(root / SQLITE_NAME, "clusters", ["stability"])
    _drop(root / SQLITE_NAME, "sanity_perturbation", ["road_gap", "road_gap_random"])

    store = ResultsStore(root)
    try:
        clusters = store.clusters()
        assert clusters["stability"].isna().all() and len(clusters) == 1
        assert clusters.loc[0, "n_regions"] == 2              # the rest is read as before
        assert {"road_gap", "road_gap_random"} <= _columns(root / SQLITE_NAME,
                                                            "sanity_perturbation")
        regions = store.regions()[["region_key", "cluster", "embedding_x", "embedding_y"]]
        filled = clusters.assign(stability=0.8)
        store.set_patterns(regions, filled.reindex(columns=CLUSTER_COLUMNS))
        assert store.clusters()["stability"].tolist() == [0.8]
    finally:
        store.close()
    # and a store that has the columns is left as it is
    store = ResultsStore(root)
    try:
        assert store.clusters()["stability"].tolist() == [0.8]
    finally:
        store.close()


def test_the_tiny_store_keeps_the_stability_it_was_given(tiny_results):
    store = ResultsStore(tiny_results)
    try:
        value = store.clusters()["stability"].to_numpy()
    finally:
        store.close()
    assert value.dtype == np.float64 and pd.notna(value).all()
