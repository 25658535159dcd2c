"""The PDF report (discovery.report.pdf) on the tiny results folder (no model needed).

Pages are counted in the PDF itself (``/Type /Page`` objects) and, where poppler-utils is
installed, rendered with ``pdftoppm`` and read back with ``pdftotext``.
"""

from __future__ import annotations

import re
import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest

from discovery.report.pdf import AUTHOR, MAX_FALLBACK, TITLE, select_nodule_pages, write_pdf
from discovery.report.write import write_report
from discovery.store.tables import ResultsStore

SHA = "0123456789abcdef" * 4
PDFTOPPM = shutil.which("pdftoppm")
PDFTOTEXT = shutil.which("pdftotext")
needs_pdftoppm = pytest.mark.skipif(PDFTOPPM is None, reason="pdftoppm (poppler-utils) is not "
                                    "installed: apt-get install -y poppler-utils")
needs_pdftotext = pytest.mark.skipif(PDFTOTEXT is None, reason="pdftotext (poppler-utils) is "
                                     "not installed: apt-get install -y poppler-utils")


def _pages(data: bytes) -> int:
    return len(re.findall(rb"/Type\s*/Page(?![A-Za-z])", data))


def _text(pdf, page: int | None = None) -> str:
    args = [PDFTOTEXT, "-layout"] + (["-f", str(page), "-l", str(page)] if page else [])
    return subprocess.run(args + [str(pdf), "-"], check=True, capture_output=True,
                          text=True).stdout


@pytest.fixture(scope="module")
def results(tiny_results, tmp_path_factory):
    """A copy of the tiny results folder (1 flagged nodule: case-A n1) with a model hash."""
    root = tmp_path_factory.mktemp("private_folder_xyz") / "results_qwerty"
    shutil.copytree(tiny_results, root)
    store = ResultsStore(root, create=False)
    store.set_meta(model_sha256=SHA, gradcam_layer="layer3", threshold=0.5)
    date = max(store.cases()["scored_at"])[:10]
    store.close()
    return root, date


@pytest.fixture(scope="module")
def pdf(results, tmp_path_factory):
    return write_pdf(results[0], tmp_path_factory.mktemp("out") / "report.pdf")


def test_one_page_per_flagged_nodule_after_the_summary(pdf, results):
    data = pdf.read_bytes()
    assert data.startswith(b"%PDF-") and data.rstrip().endswith(b"%%EOF")
    n = _pages(data)
    flagged = ResultsStore(results[0], create=False).findings()["flagged"] == 1
    assert int(flagged.sum()) == 1
    assert n >= 3  # summary (at least two pages on A4) + 1 nodule page
    assert re.search(rb"/MediaBox \[\s*0 0 595\.\d+ 841\.\d+\s*\]", data)  # A4 portrait
    if PDFTOTEXT:
        heads = [p for p in range(1, n + 1) if "Flagged nodule" in _text(pdf, p)]
        assert heads == [n]  # the last page, only that one


@needs_pdftotext
def test_pdf_text_has_the_summary_the_nodule_and_the_footer(pdf, results):
    _, date = results
    text = _text(pdf)
    n = _pages(pdf.read_bytes())
    for expected in (TITLE, "Counts", "by localisation verdict", "three outcomes",
                     "Using an artifact: a shortcut to distrust · 1 nodule",
                     "Metric distributions", "relevance mass in mask (RMA)",
                     "Off-mask attention patterns", "Cluster 0 (artifact)",
                     "Shortcut nodules", "case-C: could not read the CT series",
                     "Flagged nodule 1 of 1: case-A · n1", "P(malignant) 0.83 → 0.31",
                     "Grad-CAM, raw units", "Metrics", "(most attribution on the nodule)"):
        assert expected in " ".join(text.split()), expected
    index = _text(pdf, n - 1)
    assert re.search(rf"case-A\s+n1\s+partial\s+0\.83 → 0\.31\s+0\.2\s+{n}\b", index)
    for p in range(1, n + 1):  # the footer on every page
        page = _text(pdf, p)
        assert f"page {p} of {n}" in page
        assert f"SHA-256 {SHA[:12]}…" in page and f"results of {date}" in page
        assert SHA[:13] not in page


def test_no_path_or_folder_name_and_the_metadata(pdf, results):
    data = pdf.read_bytes()
    root, _ = results
    for secret in (str(root), root.name, root.parent.name, "private_folder_xyz", "/tmp", "/work",
                   str(pdf.parent)):
        assert secret.encode() not in data, secret
        if PDFTOTEXT:
            assert secret not in _text(pdf), secret
    assert f"/Author ({AUTHOR})".encode() in data and f"/Title ({TITLE})".encode() in data
    assert f"/Creator ({AUTHOR})".encode() in data
    assert b"CreationDate" not in data and b"ModDate" not in data
    assert not list(pdf.parent.glob(".*.tmp"))


def test_same_results_give_the_same_bytes(pdf, results, tmp_path):
    again = write_report(results[0], tmp_path / "again.pdf", fmt="pdf")  # the write.py branch
    assert again == tmp_path / "again.pdf"
    assert again.read_bytes() == pdf.read_bytes()


@needs_pdftoppm
def test_every_page_renders_and_is_not_blank(pdf, tmp_path):
    n = _pages(pdf.read_bytes())
    subprocess.run([PDFTOPPM, "-r", "30", "-png", str(pdf), str(tmp_path / "p")], check=True,
                   capture_output=True)
    from PIL import Image

    pngs = sorted(tmp_path.glob("p-*.png"))
    assert len(pngs) == n
    for png in pngs:
        img = np.asarray(Image.open(png).convert("L"), dtype=np.float32)
        assert img.shape[0] > img.shape[1]  # portrait
        ink = (img < 200).mean()
        assert ink > 0.01, f"{png.name} is (nearly) blank: {ink:.4f} of the page inked"
    last = np.asarray(Image.open(pngs[-1]).convert("RGB"), dtype=np.int16)
    green = (last[..., 1] > 200) & (last[..., 0] < 80) & (last[..., 2] < 80)
    assert green.sum() > 5  # the nodule page shows the mask contour


def test_fallback_pages_when_nothing_is_flagged(tiny_results_no_regions, tmp_path):
    out = write_pdf(tiny_results_no_regions, tmp_path / "r.pdf")
    data = out.read_bytes()
    n = _pages(data)
    if PDFTOTEXT:
        text = _text(out)
        assert "No nodule is shortcut-flagged in these results" in text
        heads = [p for p in range(1, n + 1) if "Nodule with off-mask attention" in _text(out, p)]
        assert heads == [n - 1, n]  # both nodules have share 0.2: case order
        assert "attention 1 of 2: case-A · n1" in _text(out, n - 1)
        assert "attention 2 of 2: case-B · n1" in _text(out, n)
        assert "Flagged nodule" not in text


def test_pages_by_probability_when_no_nodule_has_offmask_attention(tmp_path):
    """A report of clean cases (nothing flagged, no attention off any mask) still shows its
    nodules, highest P(malignant) first, and says why they are shown."""
    from conftest import build_tiny_results

    root = build_tiny_results(tmp_path / "clean", with_regions=False, offmask_share=0.0)
    out = write_pdf(root, tmp_path / "r.pdf")
    n = _pages(out.read_bytes())
    if PDFTOTEXT:
        text = _text(out)
        assert "none has attention off its mask" in text
        assert "Nodules with the most off-mask attention" not in text
        assert "show instead" not in text
        assert "Nodule 1 of 2: case-A · n1" in _text(out, n - 1)   # P 0.83
        assert "Nodule 2 of 2: case-B · n1" in _text(out, n)       # P 0.21
        assert "shown for its P(malignant)" in _text(out, n)


def test_results_without_a_scored_nodule_say_so_instead_of_empty_plots(tmp_path):
    """A folder of cases scored without a mask (no nodule): the metric section says there is
    nothing to plot rather than drawing six empty histograms, and no nodule page follows."""
    from discovery.store.tables import ResultsStore

    store = ResultsStore(tmp_path / "results")
    for cid in ("case-X", "case-Y"):
        store.put_case({"case_id": cid, "status": "no-mask", "error": "no mask file",
                        "n_nodules": 0, "source_kind": "dicom"}, [], [])
    store.close()
    out = write_pdf(tmp_path / "results", tmp_path / "r.pdf")
    if PDFTOTEXT:
        text = _text(out)
        assert "No scored nodule in these results: nothing to plot." in text
        assert "Histograms over the" not in text
        assert "No scored nodule in these results: no nodule pages follow." in text


def test_select_nodule_pages_flagged_first_else_highest_offmask_share():
    n = MAX_FALLBACK + 2
    f = pd.DataFrame({"case_id": [f"c{i:02d}" for i in range(n)], "nodule_id": "n1",
                      "status": "ok", "flagged": 0, "flag_score": np.nan,
                      "offmask_mass_share": np.linspace(0.0, 0.55, n)})
    f.loc[3, "offmask_mass_share"] = np.nan
    rows, fallback = select_nodule_pages(f)
    assert fallback and len(rows) == MAX_FALLBACK
    assert list(rows["case_id"]) == [f"c{i:02d}" for i in (11, 10, 9, 8, 7, 6, 5, 4, 2, 1)]
    rows, _ = select_nodule_pages(f, limit=3)
    assert list(rows["case_id"]) == ["c11", "c10", "c09"]
    f.loc[[2, 7], "flagged"] = 1
    f.loc[[2, 7], "flag_score"] = [0.2, 0.6]
    f.loc[0, ["flagged", "status"]] = [1, "failed"]  # not scored: never a page
    rows, fallback = select_nodule_pages(f)
    assert not fallback and list(rows["case_id"]) == ["c07", "c02"]
    # no off-mask attention anywhere: the nodules with the highest P(malignant) instead
    clean = f.assign(flagged=0, offmask_mass_share=0.0,
                     probability=np.linspace(0.9, 0.1, n)).drop(index=0)
    rows, fallback = select_nodule_pages(clean, limit=3)
    assert fallback and list(rows["case_id"]) == ["c01", "c02", "c03"]
    none, fallback = select_nodule_pages(clean.assign(status="failed"))
    assert fallback and none.empty


def test_select_nodule_pages_adds_the_shortcuts_through_metal_beside_a_nodule():
    # c0 flagged (drop 0.30); c1 a shortcut through metal beside it, not flagged (drop
    # 0.72 - 0.12 = 0.60); c2 not flagged, outcome "other": no page; c3 flagged, drop 0.10
    f = pd.DataFrame({"case_id": ["c0", "c1", "c2", "c3"], "nodule_id": "n1", "status": "ok",
                      "flagged": [1, 0, 0, 1], "flag_score": [0.30, np.nan, np.nan, 0.10],
                      "probability": [0.9, 0.72, 0.8, 0.6],
                      "p_without_surroundings": [0.85, 0.12, 0.2, 0.55],
                      "offmask_mass_share": 0.3})
    outcomes = f[["case_id", "nodule_id"]].assign(
        outcome=["shortcut", "shortcut", "other", "candidate sign"],
        outcome_cluster=[2, -1, -1, 4])
    rows, fallback = select_nodule_pages(f, outcomes=outcomes)
    assert not fallback
    assert list(rows["case_id"]) == ["c1", "c0", "c3"]
    np.testing.assert_allclose(rows["page_drop"], [0.60, 0.30, 0.10])
    assert list(rows["outcome_cluster"]) == [-1, 2, 4]
    assert list(rows["page_kind"]) == ["metal", "flagged", "flagged"]
    # without the outcomes: the flagged nodules only, as before
    rows, _ = select_nodule_pages(f)
    assert list(rows["case_id"]) == ["c0", "c3"]
    # a shortcut alone is enough for shortcut pages (no fallback)
    rows, fallback = select_nodule_pages(f.assign(flagged=0), outcomes=outcomes)
    assert not fallback and list(rows["case_id"]) == ["c1", "c0"]


@needs_pdftotext
def test_a_shortcut_through_metal_beside_a_nodule_gets_its_page(tiny_results_fresh, tmp_path):
    import sqlite3

    # case-B n1 made a call that rests on a clip beside the nodule: predicted malignant,
    # P 0.72 -> 0.12 without its surroundings, 2600 HU there, not flagged
    with sqlite3.connect(tiny_results_fresh / "discovery.sqlite") as con:
        con.execute("UPDATE nodules SET probability = 0.72, predicted_label = 1, "
                    "rests_on_surroundings = 1, p_without_surroundings = 0.12, "
                    "surroundings_max_hu = 2600, flag_clusters = '' WHERE case_id = 'case-B'")
    out = write_pdf(tiny_results_fresh, tmp_path / "r.pdf")
    n = _pages(out.read_bytes())
    text = " ".join(_text(out).split())
    assert "1 nodule(s) shortcut-flagged" in text
    assert "1 a shortcut through metal beside the nodule, within 5 mm of its mask" in text
    # largest drop first: case-B (0.60) before case-A (0.52)
    assert text.index("Shortcut nodule 1 of 2: case-B · n1") < text.index(
        "Flagged nodule 2 of 2: case-A · n1")
    pages = [" ".join(_text(out, k).split()) for k in range(1, n + 1)]
    page = next(p for p in pages if "Shortcut nodule 1 of 2" in p)
    assert "P(malignant) 0.72 → 0.12 once its surroundings, within 5 mm of the mask" in page
    assert "a voxel there is metal-dense (2600 HU)" in page
    assert "the densest voxel within 5 mm of the mask (2600 HU)" in page
    assert "Flagged nodule 2 of 2" in pages[-1]
    # one page each, as the index counts them: the metrics on the heading's page
    assert "Shortcut nodule 1 of 2" in pages[-2] and "Metrics" in pages[-2]
    assert "Metrics" in pages[-1]


@needs_pdftotext
def test_a_long_nodule_page_shrinks_its_key_slice_instead_of_spilling(tiny_results_fresh,
                                                                      tmp_path, monkeypatch):
    """A long heading (a shortcut's explanation) keeps its page one page (the index's page numbers
    count one each): the key slice row is drawn smaller until the metrics fit."""
    from discovery.report import pdfpages

    head = pdfpages._nodule_head
    scales = []

    def long_head(doc, ctx, row, k, n):
        head(doc, ctx, row, k, n)
        doc.text("A long explanation. " * 40)         # about seven lines
    monkeypatch.setattr(pdfpages, "_nodule_head", long_head)
    draw = pdfpages._draw_nodule_page
    monkeypatch.setattr(pdfpages, "_draw_nodule_page",
                        lambda doc, ctx, row, k, n, scale: (scales.append(scale),
                                                            draw(doc, ctx, row, k, n, scale)))
    out = write_pdf(tiny_results_fresh, tmp_path / "r.pdf")
    n = _pages(out.read_bytes())
    last = " ".join(_text(out, n).split())
    assert "Flagged nodule 1 of 1" in last and "Metrics" in last
    assert "Flagged nodule" not in " ".join(_text(out, n - 1).split())
    assert scales[0] == 1.0 and len(scales) > 1 and scales[-1] < 1.0


def test_failed_write_leaves_the_old_file_and_no_temporary(results, tmp_path, monkeypatch):
    from matplotlib.backends.backend_pdf import PdfPages

    out = tmp_path / "report.pdf"
    out.write_bytes(b"old")

    def boom(self, *a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(PdfPages, "savefig", boom)
    with pytest.raises(OSError, match="disk full"):
        write_pdf(results[0], out)
    assert out.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.pdf"]


def test_matplotlib_is_imported_only_inside_functions_and_the_cli_offers_pdf():
    import ast

    import discovery.report.pdf
    import discovery.report.pdflayout

    for mod in (discovery.report.pdf, discovery.report.pdflayout):
        tree = ast.parse(open(mod.__file__, encoding="utf-8").read())
        inside = {id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.Lambda))
                  for n in ast.walk(f)}
        plotting = [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))
                    and any(m.startswith(("matplotlib", "mpl_toolkits", "pylab"))
                            for m in ([a.name for a in n.names] if isinstance(n, ast.Import)
                                      else [n.module or ""]))]
        assert plotting, mod.__name__  # it does use matplotlib ...
        assert all(id(n) in inside for n in plotting), mod.__name__  # ... never at import time
    import discovery.cli as cli  # build_parser() imports torch: read its source instead

    src = open(cli.__file__, encoding="utf-8").read()
    report = src[src.index('sub.add_parser("report"'):]
    choices = re.search(r'"--format", choices=\[([^\]]*)\]', report).group(1)
    assert '"pdf"' in choices


def test_outcome_readings_are_computed_once_per_report(results, tmp_path, monkeypatch):
    import discovery.patterns.outcomes as outcomes
    import discovery.report.data as data

    calls = {"read_outcomes": 0, "cluster_readings": 0}
    real_read, real_readings = data.read_outcomes, outcomes.cluster_readings

    def read(*a, **k):
        calls["read_outcomes"] += 1
        return real_read(*a, **k)

    def readings(*a, **k):
        calls["cluster_readings"] += 1
        return real_readings(*a, **k)

    monkeypatch.setattr(data, "read_outcomes", read)
    monkeypatch.setattr(outcomes, "cluster_readings", readings)
    write_pdf(results[0], tmp_path / "r.pdf")
    assert calls == {"read_outcomes": 1, "cluster_readings": 1}


def _words(pdf, page: int) -> list[tuple[float, float, float, float, str]]:
    """``(x_min, y_min, x_max, y_max, word)`` of every word on *page* (points)."""
    html = subprocess.run([PDFTOTEXT, "-bbox", "-f", str(page), "-l", str(page), str(pdf), "-"],
                          check=True, capture_output=True, text=True).stdout
    return [(float(a), float(b), float(c), float(d), w) for a, b, c, d, w in re.findall(
        r'<word xMin="([\d.]+)" yMin="([\d.]+)" xMax="([\d.]+)" yMax="([\d.]+)">([^<]*)</word>',
        html)]


@needs_pdftotext
def test_nodule_page_text_stays_on_the_page_and_never_overlaps(results, tmp_path):
    """The nodule page's words lie inside the page's margins and no two of them overlap,
    with an applicability verdict as long as a real series gives (four flags): the metrics
    grid once ran a third column off the page and wrote long names over their values."""
    root = tmp_path / "results"
    shutil.copytree(results[0], root)
    import sqlite3

    with sqlite3.connect(root / "discovery.sqlite") as con:
        con.execute("UPDATE nodules SET applicability = 'larger-than-roi; slice-thickness; "
                    "nodule-size; intensity' WHERE case_id = 'case-A' AND nodule_id = 'n1'")
    out = write_pdf(root, tmp_path / "report.pdf")
    n = _pages(out.read_bytes())
    assert "Flagged nodule 1 of 1" in _text(out, n) and "Metrics" in _text(out, n)
    words = _words(out, n)
    text = " ".join(w for *_, w in words)
    for expected in ("applicability", "intensity", "relevance", "volume", "score"):
        assert expected in text, expected
    width = 595.28
    margin = 0.6 * 72 - 1.0
    assert all(margin <= x0 and x1 <= width - margin for x0, _, x1, _, _ in words), \
        [w for w in words if w[0] < margin or w[2] > width - margin]
    # poppler's boxes span the font's whole ascent and descent (30 pt for a 15 pt heading):
    # the middle 60 % of each box stands for the glyphs
    core = [(x0, (y0 + y1) / 2 - 0.3 * (y1 - y0), x1, (y0 + y1) / 2 + 0.3 * (y1 - y0), w)
            for x0, y0, x1, y1, w in words]
    overlaps = [(a[4], b[4]) for i, a in enumerate(core) for b in core[i + 1:]
                if min(a[2], b[2]) - max(a[0], b[0]) > 0.5
                and min(a[3], b[3]) - max(a[1], b[1]) > 0.5]
    assert not overlaps, overlaps[:5]
