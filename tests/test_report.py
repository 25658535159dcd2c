"""The HTML report on the tiny results folder (no model needed)."""

import re

from discovery.report.html import build_html


def test_report_shows_the_three_outcomes_side_by_side(tiny_results):
    html = build_html(tiny_results)
    start = html.index("three outcomes")
    section = html[start:html.index("<h2>Summary</h2>")]
    cells = section.split('class="outcome"')[1:]
    assert len(cells) == 3
    titles = [re.search(r"<h3>(.*?)</h3>", c).group(1) for c in cells]
    assert titles[0].startswith("On the tumour") and "shortcut" in titles[1]
    assert "candidate pattern" in titles[2]
    counts = [re.search(r'class="n"[^>]*>(\d+) nodule', c).group(1) for c in cells]
    assert counts == ["0", "1", "0"]  # case-A rests on the metal-dense cluster 0
    assert "2600 HU" in cells[1] and cells[1].count("<img") == 1
    assert "case-A · n1 · p 0.83 → 0.31 without it" in cells[1]
    # the cluster section keeps its exemplars, one per patient
    patterns = html[html.index("Off-mask attention patterns"):]
    assert patterns.count("<figure>") == 2


def test_tables_csv_and_parquet_hold_the_same_versioned_tables(tiny_results, tmp_path):
    import pandas as pd
    import pyarrow.parquet as pq

    from discovery.report.html import EXPORT_SCHEMA_VERSION, tables, write_report
    from discovery.store.tables import FINDINGS_COLUMNS

    frames = tables(tiny_results)
    assert list(frames["findings"].columns)[:len(FINDINGS_COLUMNS)] == FINDINGS_COLUMNS
    assert frames["findings"].attrs["schema_version"] == EXPORT_SCHEMA_VERSION
    write_report(tiny_results, tmp_path / "f.csv", fmt="csv")
    write_report(tiny_results, tmp_path / "f.parquet", fmt="parquet")
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "f.csv", "f.parquet", "f.patterns.csv", "f.patterns.parquet"]  # no temporary left
    for name, stem in (("findings", "f"), ("patterns", "f.patterns")):
        from_csv = pd.read_csv(tmp_path / f"{stem}.csv", keep_default_na=False, na_values=[""])
        from_pq = pd.read_parquet(tmp_path / f"{stem}.parquet")
        assert list(from_csv.columns) == list(from_pq.columns) == list(frames[name].columns)
        assert len(from_csv) == len(from_pq) == len(frames[name])
        pd.testing.assert_frame_equal(from_pq.reset_index(drop=True), frames[name],
                                      check_dtype=False)
        meta = pq.read_schema(tmp_path / f"{stem}.parquet").metadata
        assert meta[b"ct_nodule_discovery.schema_version"] == str(EXPORT_SCHEMA_VERSION).encode()
        assert meta[b"ct_nodule_discovery.table"] == name.encode()
    assert str(tiny_results) not in (tmp_path / "f.csv").read_text()
