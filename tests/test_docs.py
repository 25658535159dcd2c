"""The documentation, checked in every test run so that a broken link or a missing page fails.

* ``mkdocs build --strict`` of ``mkdocs.yml`` (the pages in ``docs/``, the API reference from the
  docstrings by mkdocstrings) exits 0: a link to a missing page, file or anchor, a page left out
  of the nav, or a docstring griffe cannot read is a warning, and ``--strict`` makes it an error;
* the built site holds every page of the nav, and the API pages render real public names;
* every relative link and image of ``README.md`` (Markdown and HTML) points at an existing file.

The build takes a few seconds (about 3 s on the 2-core machine), so it is not marked slow.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]

#: API page -> anchors of public names it must render (the object's full path, as mkdocstrings
#: writes it), one per subpackage at least
API_NAMES = {
    "api/explain.md": ["discovery.explain.methods.predict_and_explain",
                       "discovery.explain.methods.explain"],
    "api/model.md": ["discovery.model.card.load_model", "discovery.model.external.load_any_model"],
    "api/align.md": ["discovery.align.metrics.align", "discovery.align.metrics.AlignThresholds"],
    "api/regions.md": ["discovery.regions.offmask.extract_offmask_regions"],
    "api/patterns.md": ["discovery.patterns.clustering.cluster_regions",
                        "discovery.patterns.outcomes.read_outcomes"],
    "api/store.md": ["discovery.store.tables.ResultsStore"],
    "api/batch.md": ["discovery.batch.score.score_folder"],
    "api/report.md": ["discovery.report.write.write_report", "discovery.report.write.tables"],
    "api/data_tools.md": ["data_tools.Volume", "data_tools.Mask", "data_tools.DataError"],
}


def _nav_pages(nav) -> list[str]:
    """Every Markdown file named in mkdocs.yml's nav, in order."""
    if isinstance(nav, str):
        return [nav]
    if isinstance(nav, list):
        return [p for item in nav for p in _nav_pages(item)]
    if isinstance(nav, dict):
        return [p for value in nav.values() for p in _nav_pages(value)]
    return []


def _built_page(site: Path, page: str) -> Path:
    """Where mkdocs writes *page* with directory URLs (guide/app.md -> guide/app/index.html)."""
    stem = page[:-len(".md")]
    if stem == "index" or stem.endswith("/index"):
        return site / f"{stem}.html"
    return site / stem / "index.html"


def test_docs_build_strict_with_every_nav_page(tmp_path):
    site = tmp_path / "site"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict",
                           "--site-dir", str(site)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{proc.stderr}\n{proc.stdout}"

    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    pages = _nav_pages(config["nav"])
    assert "index.md" in pages and set(API_NAMES) <= set(pages)
    missing = [p for p in pages if not _built_page(site, p).is_file()]
    assert not missing, f"nav pages not built: {missing}"

    for page, names in API_NAMES.items():
        html = _built_page(site, page).read_text()
        absent = [n for n in names if f'id="{n}"' not in html]
        assert not absent, f"{page}: public names not rendered: {absent}"


_CODE = re.compile(r"```.*?```|`[^`\n]*`", re.S)
_MD_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_HTML_LINK = re.compile(r"""\b(?:src|href)\s*=\s*["']([^"']+)["']""")


def readme_links(text: str) -> list[str]:
    """The targets of README's Markdown links and images and of its HTML src / href, code left out."""
    text = _CODE.sub("", text)
    return _MD_LINK.findall(text) + _HTML_LINK.findall(text)


def test_readme_link_finder_sees_markdown_and_html_but_not_code():
    text = ('[a](docs/a.md) ![b](docs/b.png "title") <img src="docs/c.png"> '
            '<a href="docs/d.md#x">d</a> `[no](e.md)`\n```\n[no](f.md)\n```\n')
    assert readme_links(text) == ["docs/a.md", "docs/b.png", "docs/c.png", "docs/d.md#x"]


def test_readme_relative_links_point_at_existing_files():
    links = readme_links((ROOT / "README.md").read_text())
    relative = [t for t in links if not re.match(r"[a-z][a-z0-9+.-]*:", t) and not t.startswith("#")]
    assert relative, "README.md has no relative links: the link finder is broken"
    broken = [t for t in relative if not (ROOT / t.split("#")[0]).exists()]
    assert not broken, f"README.md links to files that do not exist: {broken}"
