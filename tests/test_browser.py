"""The review app in a real browser: Playwright drives Debian's Chromium against a running
``discovery app`` server.

What it checks, on the tiny results folder of ``conftest.build_tiny_results`` (or on the
folder named by ``DISCOVERY_BROWSER_RESULTS``, copied first so it is never written to):

* the server started by the CLI answers its health check, and every page renders without a
  Streamlit exception or error box;
* on the Case page the image is shown, the "Axial slice" slider moves with the keyboard and
  the image caption follows it;
* a review entered through the sidebar name box and the review form is saved: the page says
  so, and the store holds exactly one row for that reviewer, item and verdict;
* full-page screenshots of the Case, Patterns and Overview pages are not blank.  They are
  written to the test's tmp folder and, when ``DISCOVERY_SCREENSHOTS=DIR`` is set, copied to
  ``DIR/app_{case,patterns,overview}_browser.png``.

Skips (with the reason) when ``/usr/bin/chromium`` is missing, unless
``DISCOVERY_REQUIRE_BROWSER=1`` (set by ``.ci/run``), where a missing browser fails.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from _app_server import running_app
from conftest import build_tiny_results
from discovery.store.tables import NODULE_REVIEW_CHOICES, ResultsStore

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic"]
VIEWPORT = {"width": 1400, "height": 900}
TIMEOUT_MS = 30_000
FIRST_LOAD_MS = 120_000  # the first script run imports the app's whole stack (torch included)
REVIEWER = "Test Reviewer"
VERDICT = "partly"
SCREENSHOT_NAMES = {"case": "app_case_browser.png", "patterns": "app_patterns_browser.png",
                    "overview": "app_overview_browser.png"}
MIN_STD = 20.0       # pixel std: an error or text-only page is about 16, these pages 29-50
MIN_COLOURS = 500    # distinct RGB colours: pages with pictures have > 1000

_REQUIRED = os.environ.get("DISCOVERY_REQUIRE_BROWSER", "") == "1"
pytestmark = [
    pytest.mark.e2e, pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.is_file() and not _REQUIRED,
                       reason=f"browser test needs Chromium at {CHROMIUM} "
                              "(apt-get install chromium; .ci/run installs it)"),
]


@pytest.fixture
def results(tmp_path) -> Path:
    """The results folder the app shows; a private copy, as the test writes a review (with
    the tables on PostgreSQL the copy names the same database: the review goes there)."""
    given = os.environ.get("DISCOVERY_BROWSER_RESULTS")
    if given:
        src = Path(given)
        from discovery.store.tables import store_exists

        if not store_exists(src):  # discovery.sqlite, or store.json naming a PostgreSQL database
            pytest.fail(f"DISCOVERY_BROWSER_RESULTS has no results store: {src}")
        return Path(shutil.copytree(src, tmp_path / "results",
                                    ignore=shutil.ignore_patterns("*.sqlite-wal", "*.sqlite-shm")))
    return build_tiny_results(tmp_path / "results")


# -- page helpers ----------------------------------------------------------------------------
def _settle(page) -> None:
    """Wait until the script run triggered by the last action has finished."""
    page.wait_for_timeout(300)  # let a rerun start before asking whether it is over
    page.wait_for_selector('[data-testid="stApp"][data-test-script-state="notRunning"]',
                           timeout=TIMEOUT_MS)


def _no_errors(page, name: str) -> None:
    for testid in ("stException", "stAlertContentError"):
        boxes = page.locator(f'[data-testid="{testid}"]')
        assert boxes.count() == 0, f"{name} page shows an error: {boxes.first.inner_text()[:500]}"


def _full_screenshot(page, path: Path) -> Path:
    """Screenshot of the whole page: Streamlit scrolls inside its main pane, so the window is
    made as tall as the pane's content first."""
    height = page.evaluate("""() => {
        const main = document.querySelector('[data-testid="stMain"]');
        const side = document.querySelector('[data-testid="stSidebarContent"]');
        return Math.max(main ? main.scrollHeight : 0, side ? side.scrollHeight : 0,
                        document.documentElement.scrollHeight);
    }""")
    page.set_viewport_size({"width": VIEWPORT["width"], "height": int(min(height, 12000)) + 40})
    page.wait_for_timeout(800)  # charts re-layout on resize
    page.screenshot(path=str(path), full_page=True)
    page.set_viewport_size(VIEWPORT)
    return path


def _assert_not_blank(path: Path) -> None:
    img = np.asarray(Image.open(path).convert("RGB"))
    colours = len(np.unique(img.reshape(-1, 3).astype(np.uint32) @ np.array([65536, 256, 1],
                                                                             np.uint32)))
    std = float(img.std())
    assert std > MIN_STD and colours > MIN_COLOURS, \
        f"{path.name} looks blank: pixel std {std:.1f}, {colours} colours"


def _slice_of(caption: str) -> int:
    match = re.search(r"axial slice (\d+) of (\d+)", caption)
    assert match, f"unexpected image caption {caption!r}"
    return int(match.group(1))


# -- the test -----------------------------------------------------------------------------------
def test_review_app_in_chromium(results, tmp_path):
    if not CHROMIUM.is_file():
        pytest.fail(f"DISCOVERY_REQUIRE_BROWSER=1 but there is no Chromium at {CHROMIUM}")
    from playwright.sync_api import expect, sync_playwright

    shots: dict[str, Path] = {}
    timings: dict[str, float] = {}
    t0 = time.monotonic()
    with running_app(results, log_path=tmp_path / "app.log") as url, sync_playwright() as pw:
        timings["server"] = time.monotonic() - t0
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = None
        try:
            page = browser.new_page(viewport=VIEWPORT)
            page.set_default_timeout(TIMEOUT_MS)

            # -- Case page: image, slice slider, caption ----------------------------------------
            page.goto(f"{url}/case")
            # the image, or an error box: a page that failed should fail the test at once
            page.wait_for_selector('[data-testid="stImage"] img, [data-testid="stException"], '
                                   '[data-testid="stAlertContentError"]', timeout=FIRST_LOAD_MS)
            _settle(page)
            timings["first page"] = time.monotonic() - t0
            _no_errors(page, "Case")
            caption = page.locator('[data-testid="stImageCaption"]').first
            before = _slice_of(caption.inner_text())
            slider = page.get_by_role("slider", name="Axial slice")
            n_max = int(slider.get_attribute("max"))
            steps = min(3, n_max - before)
            key = "ArrowRight"
            if steps <= 0:  # key slice at the top: move down instead
                steps, key = min(3, before), "ArrowLeft"
            assert steps > 0, "the case has a single slice; cannot test the slider"
            slider.focus()
            for _ in range(steps):
                slider.press(key)
            expected = before + steps if key == "ArrowRight" else before - steps
            expect(caption).to_contain_text(f"axial slice {expected} of {n_max}")
            _settle(page)
            img = page.locator('[data-testid="stImage"] img').first
            expect(img).to_be_visible()
            assert img.evaluate("i => i.complete && i.naturalWidth") > 0, "the slice image is empty"

            # -- reviewer name and review form ----------------------------------------------------
            name_box = page.get_by_role("textbox", name="Reviewer name")
            name_box.fill(REVIEWER)
            name_box.press("Enter")
            _settle(page)
            form = page.locator('[data-testid="stForm"]').first
            form.get_by_role("radiogroup").get_by_text(VERDICT, exact=True).click()
            form.get_by_role("button", name="Save review").click()
            success = page.locator('[data-testid="stAlertContentSuccess"]')
            expect(success).to_contain_text(f"Saved: '{VERDICT}' by {REVIEWER}.")
            _settle(page)
            _no_errors(page, "Case")
            # the slider kept its position through the reruns
            assert _slice_of(caption.inner_text()) == expected
            shots["case"] = _full_screenshot(page, tmp_path / SCREENSHOT_NAMES["case"])

            # -- Patterns and Overview (navigated through the sidebar links) ------------------
            page.locator('[data-testid="stSidebarNav"]').get_by_role("link", name="Patterns").click()
            expect(page.get_by_role("heading", name="Patterns")).to_be_visible()
            _settle(page)
            _no_errors(page, "Patterns")
            expect(page.get_by_role("heading", name="Map of all off-mask regions")).to_be_visible()
            shots["patterns"] = _full_screenshot(page, tmp_path / SCREENSHOT_NAMES["patterns"])

            page.locator('[data-testid="stSidebarNav"]').get_by_role("link", name="Overview").click()
            expect(page.get_by_role("heading", name="Overview")).to_be_visible()
            _settle(page)
            _no_errors(page, "Overview")
            # the reviewer name survives page switches
            expect(page.get_by_role("textbox", name="Reviewer name")).to_have_value(REVIEWER)
            shots["overview"] = _full_screenshot(page, tmp_path / SCREENSHOT_NAMES["overview"])
        except Exception:
            if page is not None:  # keep what the page showed, for the failure report
                with contextlib.suppress(Exception):
                    page.screenshot(path=str(tmp_path / "failure.png"), full_page=True)
            raise
        finally:
            browser.close()
    timings["total"] = time.monotonic() - t0

    # -- the store holds the review exactly once ----------------------------------------------------
    store = ResultsStore(results, create=False)
    reviews = store.reviews()
    store.close()
    mine = reviews[reviews["reviewer"] == REVIEWER]
    assert len(mine) == 1, mine
    row = mine.iloc[0]
    assert (row["item_type"], row["verdict"]) == ("nodule", VERDICT)
    assert VERDICT in NODULE_REVIEW_CHOICES
    assert re.fullmatch(r"[^/]+/n\d+", row["item_id"]), row["item_id"]
    if not os.environ.get("DISCOVERY_BROWSER_RESULTS"):
        assert len(reviews) == 1 and row["item_id"] == "case-A/n1"

    for path in shots.values():
        _assert_not_blank(path)
    out = os.environ.get("DISCOVERY_SCREENSHOTS")
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        for path in shots.values():
            shutil.copy2(path, Path(out) / path.name)
    print("browser test timings (s): " + ", ".join(f"{k} {v:.1f}" for k, v in timings.items()))


def test_overview_follows_the_background_checks_without_a_reload(tmp_path):
    """`discovery app --sanity` runs the checks behind the app: the Overview shows their
    progress as the progress file changes, and when they end the page reruns by itself (the
    progress bar goes; here the tiny results hold no sanity rows, so 'not checked' shows)."""
    if not CHROMIUM.is_file():
        pytest.fail(f"DISCOVERY_REQUIRE_BROWSER=1 but there is no Chromium at {CHROMIUM}")
    from playwright.sync_api import sync_playwright

    from discovery import background

    res = build_tiny_results(tmp_path / "results")
    state = {"stage": "MoRF/LeRF, imputed (gradcam)", "total": 50, "methods": ["gradcam"],
             "pid": os.getpid(), "started": time.time()}
    background.write_progress(res, state="running", done=3, **state)
    with running_app(res, log_path=tmp_path / "app.log") as url, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport=VIEWPORT)
            page.goto(url, timeout=FIRST_LOAD_MS)
            page.wait_for_selector("text=running in the background", timeout=FIRST_LOAD_MS)
            assert page.locator("text=3 of 50").count() == 1
            assert page.locator("text=is being checked now").count() == 1
            background.write_progress(res, state="running", done=40, **state)
            page.wait_for_selector("text=40 of 50", timeout=TIMEOUT_MS)
            background.write_progress(res, state="done", done=50, **state)
            page.wait_for_selector("text=running in the background", state="detached",
                                   timeout=TIMEOUT_MS)
            page.wait_for_selector("text=was not checked", timeout=TIMEOUT_MS)
            _no_errors(page, "overview")
        finally:
            browser.close()
