"""Writing a report file in one of the formats: HTML, PDF, or the findings and patterns
tables as CSV / Parquet.

Every file is written under a temporary name beside its target and moved into place
(:func:`data_tools.files.atomic_path`), so a reader never sees half a file.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from data_tools.files import atomic_path
from discovery.report.html import build_html
from discovery.report.pdf import write_pdf
from discovery.store.tables import TEXT_COLUMNS, ResultsStore

__all__ = ["EXPORT_SCHEMA_VERSION", "REPORT_FORMATS", "tables", "write_report"]

#: Version of the exported tables' schema (the columns of findings and patterns, their
#: meaning and units, as docs/guide/outputs.md documents them); raised whenever a column changes.
#: 2: applicability, applicability_detail; 3: the surroundings' reliance; 4: the clusters'
#: stability.
EXPORT_SCHEMA_VERSION = 4
#: The formats :func:`write_report` writes.
REPORT_FORMATS = ("html", "pdf", "csv", "parquet")


def tables(results_dir: str | Path) -> dict[str, pd.DataFrame]:
    """The exported tables as DataFrames: ``{"findings": ..., "patterns": ...}``.

    Exactly what ``--format csv`` / ``--format parquet`` write: findings one row per nodule
    (and per failed or mask-less case), patterns one row per cluster with the exemplar keys
    joined by ``;``.  Each frame's ``attrs`` hold ``schema_version`` and ``table``.

    Parameters
    ----------
    results_dir : str or Path
        A results folder written by ``discovery score``.

    Returns
    -------
    dict of str to pandas.DataFrame
        Text columns hold ``""`` where absent; numeric columns with gaps are float with NaN.
    """
    store = ResultsStore(results_dir, create=False)
    try:
        findings = store.findings()
        patterns = store.clusters()
    finally:
        store.close()
    patterns["exemplars"] = [";".join(x) for x in patterns["exemplars"]]
    out = {"findings": findings, "patterns": patterns}
    for name, df in out.items():
        for col in df.columns:
            if col in TEXT_COLUMNS:  # text: "" where absent
                df[col] = [("" if v is None or (isinstance(v, float) and math.isnan(v))
                            else str(v)) for v in df[col]]
            elif df[col].dtype == object:  # numbers with gaps (failed cases): float with NaN
                values = df[col].dropna()
                if len(values) and values.map(lambda v: isinstance(v, (int, float))).all():
                    df[col] = pd.to_numeric(df[col], errors="coerce").astype(float)
        df.attrs.update(schema_version=EXPORT_SCHEMA_VERSION, table=name)
    return out


def _table_paths(out: Path) -> dict[str, Path]:
    """findings -> *out*; patterns -> the same name with ``.patterns`` before the suffix."""
    return {"findings": out, "patterns": out.with_name(f"{out.stem}.patterns{out.suffix}")}


def _write_table(df: pd.DataFrame, path: Path, fmt: str) -> None:
    """*df* to *path* as ``csv`` (floats ``%.6g``) or ``parquet`` (schema version and table
    name in the file's metadata)."""
    with atomic_path(path) as tmp:
        if fmt == "csv":
            df.to_csv(tmp, index=False, float_format="%.6g")
            return
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.Table.from_pandas(df, preserve_index=False)
        meta = dict(table.schema.metadata or {})
        meta[b"ct_nodule_discovery.schema_version"] = str(EXPORT_SCHEMA_VERSION).encode()
        meta[b"ct_nodule_discovery.table"] = df.attrs.get("table", "").encode()
        pq.write_table(table.replace_schema_metadata(meta), tmp)


def write_report(results_dir: str | Path, out: str | Path, *, fmt: str = "html") -> Path:
    """Write the report of a results folder in *fmt* to *out*; return *out* as a Path.

    Parameters
    ----------
    results_dir : str or Path
        A results folder written by ``discovery score``.
    out : str or Path
        The output file; its folder is created.
    fmt : str
        One of :data:`REPORT_FORMATS`.  ``html``: the self-contained report
        (:func:`discovery.report.html.build_html`); ``pdf``:
        :func:`discovery.report.pdf.write_pdf`; ``csv`` / ``parquet``: the findings table to
        *out* and the patterns table beside it (``NAME.patterns.csv``), see :func:`tables`
        (schema version :data:`EXPORT_SCHEMA_VERSION`, also in the Parquet files' metadata).

    Raises
    ------
    ValueError
        An unknown *fmt*.
    """
    if fmt not in REPORT_FORMATS:
        raise ValueError(f"unknown report format {fmt!r}; choose one of {', '.join(REPORT_FORMATS)}")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "pdf":
        return write_pdf(results_dir, out)
    if fmt == "html":
        document = build_html(results_dir)
        with atomic_path(out) as tmp:
            tmp.write_text(document, encoding="utf-8")
        return out
    frames = tables(results_dir)
    for name, path in _table_paths(out).items():
        _write_table(frames[name], path, fmt)
    return out
