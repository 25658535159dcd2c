"""Where ``discovery train`` takes its labels from.

Three sources, named by one option (:func:`parse_label_source`):

* ``truth`` (the default): each cohort's ``truth.csv`` (the sample cohort's truth manifest);
* a labels CSV (``FILE.csv``): ``case_dir`` or ``case_id``, ``nodule_label`` or ``nodule_id``
  and ``malignant`` (0/1), keyed as the findings are, so that ``findings.csv`` with a
  ``malignant`` column added works (:func:`data_tools.cases.read_labels`);
* the LIDC-IDRI readers' malignancy ratings (``lidc`` or ``lidc:malignant>=4,benign<=2``):
  a nodule (grouped across readers and labelled as the findings name it, ``n1``, ``n2``, ...
  by :func:`data_tools.lidc.lidc_mask`) is malignant when the median of its readers'
  ``malignancy`` ratings (1-5) is at least ``malignant_at_least``, benign when it is at most
  ``benign_at_most``; nodules in between, rated by fewer than ``min_ratings`` readers, or
  not rated at all (a case that is not LIDC) are left out (:class:`LidcRatingRule`).

:func:`labelled_cases` reads the cases and yields each one's volume, nodule sites and labels;
:class:`LabelCounts` tallies what was kept and left out, for the CLI to print.
"""

from __future__ import annotations

import math
import numbers
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from data_tools.cases import discover_cases, read_case, read_labels
from data_tools.errors import DataError, file_label
from data_tools.volume import Volume
from discovery.model.rois import NoduleSite, nodule_sites

__all__ = ["LabelCounts", "LabelSource", "LabelledCase", "LidcRatingRule", "labelled_cases",
           "parse_label_source"]

#: LIDC malignancy ratings run from 1 (highly unlikely) to 5 (highly suspicious).
RATING_RANGE = (1, 5)


def _rating(name: str, value) -> float:
    if (isinstance(value, bool) or not isinstance(value, numbers.Real)
            or not math.isfinite(value) or not RATING_RANGE[0] <= value <= RATING_RANGE[1]):
        raise ValueError(f"{name} must be a malignancy rating in [{RATING_RANGE[0]}, "
                         f"{RATING_RANGE[1]}]; received {value!r}")
    return float(value)


@dataclass(frozen=True, kw_only=True)
class LidcRatingRule:
    """Malignant / benign from the LIDC readers' malignancy ratings (1-5).

    A nodule's statistic is the median over the readers who rated it (what
    :func:`data_tools.lidc.lidc_mask` reports as ``lidc_malignancy``).

    Attributes
    ----------
    malignant_at_least : float -- median >= this: malignant (1).
    benign_at_most : float -- median <= this: benign (0); must be below ``malignant_at_least``.
    min_ratings : int -- nodules rated by fewer readers are left out.
    """

    malignant_at_least: float = 4
    benign_at_most: float = 2
    min_ratings: int = 1

    def __post_init__(self):
        hi = _rating("malignant_at_least", self.malignant_at_least)
        lo = _rating("benign_at_most", self.benign_at_most)
        if lo >= hi:
            raise ValueError(f"benign_at_most ({self.benign_at_most:g}) must be below "
                             f"malignant_at_least ({self.malignant_at_least:g})")
        n = self.min_ratings
        if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1:
            raise ValueError(f"min_ratings must be an integer >= 1; received {n!r}")

    def label(self, median: float, n_ratings: int) -> int | None:
        """1, 0, or None (left out) for a nodule whose readers' median is *median*."""
        if n_ratings < self.min_ratings or not math.isfinite(median):
            return None
        if median >= self.malignant_at_least:
            return 1
        return 0 if median <= self.benign_at_most else None

    def describe(self) -> str:
        text = (f"median malignancy >= {self.malignant_at_least:g} malignant, "
                f"<= {self.benign_at_most:g} benign")
        return text + (f", at least {self.min_ratings} ratings" if self.min_ratings > 1 else "")


@dataclass(frozen=True)
class LabelSource:
    """Which labels to train on: ``kind`` ``"truth"`` (each cohort's ``truth.csv``),
    ``"csv"`` (``path``) or ``"lidc"`` (``rule``)."""

    kind: str = "truth"
    path: Path | None = None
    rule: LidcRatingRule | None = None

    def describe(self) -> str:
        """What a checkpoint and the model card record (no folder names)."""
        if self.kind == "lidc":
            return f"LIDC ratings: {self.rule.describe()}"
        return "truth.csv" if self.kind == "truth" else f"labels file {file_label(self.path)}"


_LIDC_TERM = re.compile(r"^\s*(malignant\s*>=|benign\s*<=|ratings\s*>=)\s*([0-9.]+)\s*$")
_LIDC_SYNTAX = ("lidc, or lidc:TERM,TERM,... with the terms malignant>=X, benign<=Y (ratings "
                "1-5) and ratings>=N (readers who rated the nodule), e.g. "
                "lidc:malignant>=4,benign<=2")


def parse_label_source(text: str | Path | None) -> LabelSource:
    """The label source an option names: None or ``truth`` -> each cohort's ``truth.csv``;
    ``lidc`` or ``lidc:malignant>=4,benign<=2,ratings>=2`` -> the readers' ratings under
    that :class:`LidcRatingRule`; anything else -> a labels CSV file.

    Raises
    ------
    ValueError
        ``lidc:...`` with a term it does not know, or values the rule refuses.
    """
    if text is None or str(text) == "truth":
        return LabelSource()
    spec = str(text)
    if spec != "lidc" and not spec.startswith("lidc:"):
        return LabelSource("csv", path=Path(spec))
    keys = {"malignant": "malignant_at_least", "benign": "benign_at_most",
            "ratings": "min_ratings"}
    kwargs: dict = {}
    for term in filter(None, (t.strip() for t in spec[5:].split(","))):
        m = _LIDC_TERM.match(term)
        if m is None:
            raise ValueError(f"unknown labelling rule term {term!r}; write {_LIDC_SYNTAX}")
        key = keys[re.sub(r"[\s<>=]", "", m.group(1))]
        try:
            value = float(m.group(2))
        except ValueError:
            raise ValueError(f"{term!r} needs a number; write {_LIDC_SYNTAX}") from None
        kwargs[key] = int(value) if key == "min_ratings" and value.is_integer() else value
    return LabelSource("lidc", rule=LidcRatingRule(**kwargs))


@dataclass
class LabelCounts:
    """What a label source kept and left out, summed over the cohorts."""

    source: LabelSource
    malignant: int = 0
    benign: int = 0
    between: int = 0      # lidc: rated, median strictly between the thresholds
    unrated: int = 0      # lidc: no (or too few) malignancy ratings
    unmatched: int = 0    # csv / truth: labels naming no nodule of the cohort(s)
    nodules: list[tuple[str, str, int]] = field(default_factory=list)  # kept, in ROI order
    failed: list[tuple[str, str]] = field(default_factory=list)  # (case_id, why): unreadable

    @property
    def kept(self) -> int:
        return self.malignant + self.benign

    def summary(self) -> str:
        """One line for the CLI (plus the cases that could not be read, one per line)."""
        failed = "".join(f"\n  {cid} left out, unreadable: {why}" for cid, why in self.failed)
        return self._counts_line() + failed

    def _counts_line(self) -> str:
        if self.source.kind == "lidc":
            rule = self.source.rule
            total = self.kept + self.between + self.unrated
            return (f"LIDC ratings: {total} nodules, {self.malignant} malignant (median >= "
                    f"{rule.malignant_at_least:g}), {self.benign} benign (median <= "
                    f"{rule.benign_at_most:g}), {self.between + self.unrated} left out "
                    f"({self.between} in between, {self.unrated} without "
                    f"{'enough ratings' if rule.min_ratings > 1 else 'a rating'})")
        return (f"{self.source.describe()}: {self.kept} nodules labelled, {self.malignant} "
                f"malignant, {self.benign} benign; {self.unmatched} label(s) naming no nodule "
                "of the cohort left out")

    def add(self, case_id: str, nodule_id: str, label: int | None, *, rated: bool = True):
        if label is None:
            if rated:
                self.between += 1
            else:
                self.unrated += 1
            return
        if label:
            self.malignant += 1
        else:
            self.benign += 1
        self.nodules.append((case_id, nodule_id, int(label)))


@dataclass(frozen=True, eq=False)
class LabelledCase:
    """One case's volume, its labelled nodule sites and their labels (same order)."""

    case_id: str
    volume: Volume
    sites: tuple[NoduleSite, ...]
    labels: tuple[int, ...]


def _from_table(cohort: Path, known, counts: LabelCounts, used: set,
                progress) -> Iterator[LabelledCase]:
    by_case = {cid: grp.set_index("nodule_id")["malignant"]
               for cid, grp in known.groupby("case_id", sort=False)}
    specs = [s for s in discover_cases(cohort) if s.case_id in by_case]
    for i, spec in enumerate(specs):
        case = _read_or_record(spec, counts)
        if case is None:
            continue
        sites = {s.nodule_id: s for s in nodule_sites(case.mask)} if case.mask is not None else {}
        chosen = [(sites[n], int(y)) for n, y in by_case[spec.case_id].items() if n in sites]
        for site, y in chosen:
            counts.add(spec.case_id, site.nodule_id, y)
            used.add((spec.case_id, site.nodule_id))
        yield LabelledCase(spec.case_id, case.volume, tuple(s for s, _ in chosen),
                           tuple(y for _, y in chosen))
        if progress:
            progress(i + 1, len(specs))


def _from_lidc(cohort: Path, rule: LidcRatingRule, counts: LabelCounts,
               progress) -> Iterator[LabelledCase]:
    specs = discover_cases(cohort)
    for i, spec in enumerate(specs):
        case = _read_or_record(spec, counts)
        if case is None:
            continue
        info = {int(n["label"]): n for n in case.nodules if "label" in n}
        chosen = []
        for site in nodule_sites(case.mask) if case.mask is not None else []:
            nodule = info.get(site.label, {})
            n_rated = int(nodule.get("lidc_malignancy_n", 0))
            y = rule.label(float(nodule.get("lidc_malignancy", math.nan)), n_rated)
            counts.add(spec.case_id, site.nodule_id, y, rated=n_rated >= rule.min_ratings)
            if y is not None:
                chosen.append((site, y))
        yield LabelledCase(spec.case_id, case.volume, tuple(s for s, _ in chosen),
                           tuple(y for _, y in chosen))
        if progress:
            progress(i + 1, len(specs))


def _read_or_record(spec, counts: LabelCounts):
    """The case read, or None with the reason recorded in *counts* (a broken case leaves the
    others to train on: the batch goes on, as ``discovery score`` does)."""
    try:
        return read_case(spec)
    except DataError as exc:
        counts.failed.append((spec.case_id, str(exc)))
        return None


def _truth_table(cohort: Path):
    path = cohort / "truth.csv"
    if not path.is_file():
        raise DataError(f"no labels file {file_label(path)}: training needs a CSV with "
                        "case_dir,nodule_label,malignant (or --labels FILE.csv, or --labels "
                        "lidc for LIDC-IDRI readers' ratings)", path=path)
    return read_labels(path)


def labelled_cases(cohorts, source: LabelSource, counts: LabelCounts, *,
                   progress: Callable[[int, int], None] | None = None) -> Iterator[LabelledCase]:
    """Read the cases of *cohorts* that *source* labels, one :class:`LabelledCase` each, and
    tally kept / left-out nodules in *counts* (complete once the iterator is exhausted).

    Raises
    ------
    DataError
        A missing or malformed labels file (named by its base name), an unreadable case.
    """
    shared = read_labels(source.path) if source.kind == "csv" else None
    shared_used: set = set()
    for cohort in (Path(c) for c in cohorts):
        if source.kind == "lidc":
            yield from _from_lidc(cohort, source.rule, counts, progress)
            continue
        table = _truth_table(cohort) if shared is None else shared
        used = set() if shared is None else shared_used
        yield from _from_table(cohort, table, counts, used, progress)
        if shared is None:
            counts.unmatched += len(table) - len(used)
    if shared is not None:
        counts.unmatched = len(shared) - len(shared_used)
