"""The HTML report on the tiny results folder (no model needed)."""

import re

from discovery.report import build_html


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
