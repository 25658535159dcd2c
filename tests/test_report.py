"""The HTML report and the exported tables on the tiny results folder (no model needed);
the number formatter and the import structure of the report package."""

import ast
import html
import math
import re
from pathlib import Path

import numpy as np
import pytest

import discovery.report
from discovery.report.html import build_html
from discovery.report.style import MISSING, fmt, pct


def test_report_shows_the_three_outcomes_side_by_side(tiny_results):
    html = build_html(tiny_results)
    assert "(most attribution on the nodule), lung window" in html    # the key slice's rule
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
    assert "case-A · n1 · p 0.83 → 0.31 without its off-mask regions" in cells[1]
    # each nodule's section opens its table with its outcome and why
    nodules = html[html.index("<h2>Nodules</h2>"):html.index("Off-mask attention patterns")]
    assert ('<th class="l">outcome, and why</th><td>shortcut: artifact cluster 0; '
            'P(malignant) 0.83 → 0.31 without its off-mask regions</td>') in nodules
    assert '<th class="l">outcome, and why</th><td>other</td>' in nodules      # case-B
    # the cluster section keeps its exemplars, one per patient
    patterns = html[html.index("Off-mask attention patterns"):]
    assert patterns.count("<figure>") == 2
    # above the outcomes: the verdicts against the reliance on the nodule
    import html as html_lib

    from discovery.patterns.outcomes import agreement_reading
    from discovery.store.tables import ResultsStore

    text, weak = agreement_reading(ResultsStore(tiny_results, create=False).findings())
    before = section[:section.index('class="outcome"')]
    shown = (f'<p class="warn"><b>Warning.</b> {html_lib.escape(text)}</p>' if weak
             else f'<p class="note">{html_lib.escape(text)}</p>')
    assert shown in before
    # and the reliance on the nodules' surroundings (one nodule: said, not highlighted)
    assert ('<p class="note">1 of 1 predicted-malignant nodules rest on what lies within 5 mm'
            in before)
    assert "Truly malignant" not in before                   # no labels in this folder


def test_a_pattern_in_the_surroundings_is_highlighted_above_the_outcomes(tiny_results,
                                                                          monkeypatch):
    import discovery.report.data as data

    seen = []

    def reading(findings, labels):
        seen.append((len(findings), len(labels)))
        return "7 of 9 predicted-malignant nodules rest on it <there>.", True

    monkeypatch.setattr(data, "surroundings_reading", reading)
    page = build_html(tiny_results)
    before = page[page.index("three outcomes"):page.index('class="outcome"')]
    assert ("<p class=\"finding\"><b>The nodules' surroundings.</b> 7 of 9 "
            'predicted-malignant nodules rest on it &lt;there&gt;.</p>') in before
    assert seen == [(3, 0)]            # the whole findings table and the (empty) labels


def test_tables_csv_and_parquet_hold_the_same_versioned_tables(tiny_results, tmp_path):
    import pandas as pd
    import pyarrow.parquet as pq

    from discovery.report.write import EXPORT_SCHEMA_VERSION, tables, write_report
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


def test_write_report_html_is_atomic_and_refuses_an_unknown_format(tiny_results, tmp_path):
    from discovery.report.write import write_report

    out = write_report(tiny_results, tmp_path / "sub" / "r.html")
    assert out == tmp_path / "sub" / "r.html"
    text = out.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>")
    from discovery.patterns.outcomes import rules_summary  # the app's and the PDF's words

    assert html.escape(rules_summary()) in text and "0.05 or more" in rules_summary()
    assert [p.name for p in out.parent.iterdir()] == ["r.html"]  # no temporary left
    with pytest.raises(ValueError, match="unknown report format 'docx'"):
        write_report(tiny_results, tmp_path / "r.docx", fmt="docx")


@pytest.mark.parametrize("value, text", [
    (0.83, "0.83"), (0.30999999999999994, "0.31"), (0.123456, "0.123"), (12.345, "12.3"),
    (523.6, "524"), (999.7, "1000"), (2600.0, "2600"), (1234.5, "1234"), (-2600.4, "-2600"),
    (12345.6, "1.23e+04"), (0.0001234, "1.23e-04"), (0.0, "0"), (1.0, "1"), (3, "3"),
    (np.float32(0.5), "0.5"), (np.int64(7), "7"), (True, "True"), ("partial", "partial"),
    (None, MISSING), (float("nan"), MISSING), (np.nan, MISSING), ("", MISSING)])
def test_fmt_three_significant_digits_whole_numbers_and_a_dash_for_missing(value, text):
    assert fmt(value) == text


def test_fmt_digits_and_pct():
    assert fmt(math.pi, 2) == "3.1" and fmt(math.pi, 4) == "3.142" and fmt(1e5, 2) == "1.0e+05"
    assert [pct(v) for v in (0.443, 1.0, 0.0, 0.30625, None, np.nan)] == [
        "44.3%", "100%", "0%", "30.6%", MISSING, MISSING]


def _report_imports(path: Path) -> set[str]:
    """The discovery.report modules that *path* imports (at any level)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "discovery.report":
                out |= {f"discovery.report.{a.name}" for a in node.names}
            elif node.module.startswith("discovery.report."):
                out.add(node.module)
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("discovery.report.")}
    return out


def test_report_modules_import_one_way():
    """No cycle inside discovery.report, nothing imports the writer back, no private name
    crosses a module boundary."""
    folder = Path(discovery.report.__file__).parent
    graph = {f"discovery.report.{p.stem}": _report_imports(p) for p in folder.glob("*.py")
             if p.stem != "__init__"}
    assert not any("discovery.report.write" in deps for deps in graph.values())
    assert "discovery.report.pdf" not in graph["discovery.report.html"]
    assert "discovery.report.html" not in graph["discovery.report.pdf"]
    done: set[str] = set()

    def visit(module: str, path: tuple[str, ...]) -> None:
        assert module not in path, f"import cycle: {' -> '.join(path + (module,))}"
        if module in done:
            return
        for dep in graph.get(module, ()):
            visit(dep, path + (module,))
        done.add(module)

    for module in graph:
        visit(module, ())
    for p in folder.glob("*.py"):
        for node in ast.walk(ast.parse(p.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("discovery"):
                private = [a.name for a in node.names if a.name.startswith("_")]
                assert not private, f"{p.name} imports private {private} from {node.module}"


def test_package_exports_the_writer_and_the_tables():
    from discovery.report import write

    assert discovery.report.write_report is write.write_report
    assert discovery.report.tables is write.tables
    assert discovery.report.EXPORT_SCHEMA_VERSION == write.EXPORT_SCHEMA_VERSION
    assert set(write.REPORT_FORMATS) == {"html", "pdf", "csv", "parquet"}


def test_stability_in_words_reads_hennigs_bands_and_says_nothing_when_not_measured():
    from discovery.report.style import stability_in_words

    assert stability_in_words(0.92).startswith("stability 0.92 (highly stable)")
    assert "(stable)" in stability_in_words(0.75)
    assert "with doubts" in stability_in_words(0.5)
    assert "dissolves" in stability_in_words(0.49)
    assert stability_in_words(float("nan")) == stability_in_words(None) == ""


def test_the_report_says_how_stable_each_cluster_is(tiny_results):
    assert "Stability 0.92 (highly stable)" in build_html(tiny_results)


def test_sentence_capitalises_and_ends_with_one_full_stop():
    from discovery.report.style import sentence

    assert sentence("  inside lung, 4 mm  ") == "Inside lung, 4 mm."
    assert sentence("Done.") == "Done."
    assert sentence(None) == sentence(float("nan")) == sentence("  ") == ""
