"""What every view of the results shares (HTML and PDF reports, the review app): colours,
the display threshold of the attribution overlay, number formatting, and a per-report cache
of case arrays.  Imports nothing heavy."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from discovery.schema import DISSOLVED_CLUSTER, STABLE_CLUSTER

__all__ = ["DISPLAY_THRESHOLD", "CROP_HALF_PX", "VERDICT_COLOURS", "OUTCOME_COLOURS", "MISSING",
           "STABILITY_BANDS", "fmt", "pct", "sentence", "applicability_warning",
           "stability_in_words", "verdicts_in_words", "CaseArrayCache"]

#: The overlay shows attribution >= this fraction of the case maximum (stated wherever shown).
DISPLAY_THRESHOLD = 0.2
#: Half-width in pixels of the crops around a nodule or a region in reports.
CROP_HALF_PX = 48
#: Badge colour of each verdict.
VERDICT_COLOURS = {"aligned": "#1b7f3b", "partial": "#b7791f", "off-mask": "#c53030",
                   "no-mask": "#4a5568", "no-attribution": "#4a5568"}
#: Colour of each of the three outcomes.
OUTCOME_COLOURS = {"on the tumour": "#1b7f3b", "shortcut": "#c53030",
                   "candidate sign": "#2b6cb0"}
#: How a missing value is shown.
MISSING = "–"
#: Reading of a cluster's stability (mean best Jaccard index with the clusterings from other
#: seeds, :func:`discovery.patterns.mixture.clusterwise_jaccard`), after Hennig (2007):
#: (lower bound, words), the first bound the value reaches.
STABILITY_BANDS = ((0.85, "highly stable"), (STABLE_CLUSTER, "stable"),
                   (DISSOLVED_CLUSTER, "a pattern, with doubts"),
                   (0.0, "dissolves: not a pattern of the data"))


def sentence(text: Any) -> str:
    """*text* as a sentence: stripped, first letter capitalised, a full stop at the end; ""
    for None, NaN or blank text."""
    if text is None or (isinstance(text, float) and math.isnan(text)):
        return ""
    text = str(text).strip()
    return (text[:1].upper() + text[1:] + ("" if text.endswith(".") else ".")) if text else ""


def verdicts_in_words(meta: dict) -> str:
    """How the verdicts of a results folder were decided, from its store *meta*: the
    thresholds (:func:`discovery.align.metrics.describe_verdicts`), then the model's verdict
    rule when the scoring used one (``verdict_rule_text``)."""
    from discovery.align.metrics import describe_verdicts

    rule = str(meta.get("verdict_rule_text") or "")
    return describe_verdicts() + (f"; {rule}" if rule else "")


def applicability_warning(code: Any, detail: Any) -> str | None:
    """The caution shown beside a nodule's verdict when the model is used outside what it
    knows (its ``applicability`` flags *code* and their *detail*,
    :mod:`discovery.model.domain`), in the app and the reports alike; None when *code* is
    ``"ok"``, empty or missing (results that predate the flags)."""
    if not isinstance(code, str) or code in ("", "ok"):
        return None
    return (f"Read this verdict with care — the model is used outside what it knows: {code}. "
            f"{sentence(detail)}").strip()


def stability_in_words(value: Any) -> str:
    """How reproducible a cluster is, for the app and the reports: its stability *value*
    with :data:`STABILITY_BANDS`' reading; "" when it was not measured (NaN, None: one
    clustering run, or a method other than the mixture)."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        return ""
    if math.isnan(v):
        return ""
    words = next(w for bound, w in STABILITY_BANDS if v >= bound)
    return (f"stability {v:.2f} ({words}): the mean Jaccard index with which the clusterings "
            "from other seeds find it again")


def fmt(value: Any, digits: int = 3) -> str:
    """A value for display.

    Missing values (None, NaN, empty string) show as :data:`MISSING`; other strings as they
    are; booleans and integers exactly; other numbers with *digits* significant digits, in
    fixed point from 0.001 to 10 000 (a whole number when the integer part is longer:
    2600.0 -> ``"2600"``) and in scientific notation outside (0 is ``"0"``).
    """
    if value is None or (isinstance(value, str) and not value):
        return MISSING
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return str(value)
    try:
        v = float(value)
    except (TypeError, ValueError):
        return str(value)
    if math.isnan(v):
        return MISSING
    if v == int(v) and abs(v) < 1e6 and not isinstance(value, float):
        return str(int(v))
    if v == 0:
        return "0"
    if not 1e-3 <= abs(v) < 1e4:
        return f"{v:.{max(digits - 1, 0)}e}"
    text = f"{v:.{digits}g}"
    # "g" turns to scientific notation once the integer part has more than *digits* digits
    # (2600 -> "2.6e+03"): show the whole number instead
    return f"{v:.0f}" if "e" in text else text


def pct(share: Any, digits: int = 3) -> str:
    """A share (0 to 1) as a percentage, ``fmt(100 * share, digits) + "%"``: 0.443 ->
    ``"44.3%"``, 1.0 -> ``"100%"``; missing -> :data:`MISSING`.  For shares in prose,
    where a bare 1 would read as a count."""
    try:
        v = float(share)
    except (TypeError, ValueError):
        return fmt(share, digits)
    return MISSING if math.isnan(v) else f"{fmt(100.0 * v, digits)}%"


class CaseArrayCache:
    """Each case's stored arrays read once (per report or per page), then served from memory.

    Parameters
    ----------
    results_dir : path
        The results folder.
    """

    def __init__(self, results_dir: str | Path):
        self.results_dir = Path(results_dir)
        self._arrays: dict[str, dict] = {}

    def __call__(self, case_id: str) -> dict:
        """The arrays of *case_id* (:func:`discovery.store.tables.load_case_arrays`)."""
        if case_id not in self._arrays:
            from discovery.store.tables import load_case_arrays

            self._arrays[case_id] = load_case_arrays(self.results_dir, case_id)
        return self._arrays[case_id]
