"""What a case's ``manifest`` row records: three SHA-256 hex digests that a batch
(:mod:`discovery.batch.score`) compares to skip the cases it has already scored.

``input_hash``
    Over the case's input files, sorted by name: for each its name, size and the SHA-256
    of its content (a change to a file shared by several cases, like LUNA16's
    ``annotations.csv``, rescores all of them).  The files: every file under a DICOM case
    folder (any depth, named relative to it), or the image file (a MetaImage header with
    its data file(s)); then the annotation file(s) (NIfTI mask, LIDC XML files, MSD label
    map, LUNA16 annotations.csv) named by base name.  Folder names above the case do not
    count, so a moved input is not rescored.  Who hashes: the calling process hashes the
    cases that have a manifest row it may skip (reading each file in 1 MiB chunks, a file
    shared by several cases once per batch), to decide; every case scored is hashed by its
    worker from the bytes it reads the case from (:class:`HashingReader`: a DICOM series
    and NIfTI images and masks are read from disk once, hashed and parsed from the same
    bytes; the files a reader opens itself, such as a MetaImage's data or an LIDC XML, are
    read again to be hashed).  Both give the same value.
``model_hash``
    The model card's weights SHA-256.
``config_hash``
    Over a canonical JSON (sorted keys) of the per-case settings:
    :class:`discovery.pipeline.ScoreSettings`, ``max_bytes``, the case's layout, image and
    annotation kinds and the series it asks for, and the card's preprocessing
    (architecture, ROI size and spacing, HU window, Grad-CAM layer, threshold).
    :class:`discovery.patterns.clustering.PatternSettings` are not in it: the cohort-level
    clustering runs again after every batch.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

from data_tools.layouts import CaseSpec
from data_tools.metaimage import metaimage_data_files

if TYPE_CHECKING:  # annotations only: this module imports no model code
    from discovery.model.card import ModelCard
    from discovery.pipeline import ScoreSettings

__all__ = ["case_input_hash", "case_config_hash", "HashingReader", "FileMemo"]

_CHUNK = 1 << 20
_HASH_VERSION = b"discovery-case-input-v1\0"
#: the model card fields that change what a case's analysis computes
_CARD_KEYS = ("architecture", "roi_size_vox", "roi_spacing_mm", "hu_window", "classes",
              "gradcam_layer", "card_version", "training_domain", "verdict_rule")

FileMemo = dict[tuple[str, int, int], str]


def _file_sha256(path: Path, st: os.stat_result, memo: FileMemo | None) -> str:
    key = (str(path), st.st_size, st.st_mtime_ns)
    if memo is not None and key in memo:
        return memo[key]
    h = hashlib.sha256()
    buf = bytearray(_CHUNK)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as fh:
        while n := fh.readinto(buf):
            h.update(view[:n])
    if memo is not None:
        memo[key] = h.hexdigest()
    return h.hexdigest()


def _case_files(spec: CaseSpec, exclude: Path | None = None) -> list[tuple[str, Path]]:
    """``(name, path)`` of every input file of *spec*, sorted by name (module docstring)."""
    files: dict[str, Path] = {}
    image = Path(spec.image)
    inside: set[Path] = set()
    if image.is_dir():
        skip = exclude.resolve() if exclude is not None else None
        for root, dirs, names in os.walk(image):
            if skip is not None:
                dirs[:] = [d for d in dirs if (Path(root) / d).resolve() != skip]
            for name in names:
                path = Path(root) / name
                files["image/" + path.relative_to(image).as_posix()] = path
                inside.add(path)
    else:
        files["image/" + image.name] = image
        if spec.image_kind == "metaimage":
            for data in metaimage_data_files(image):
                files["image/" + data.name] = data
    for ann in (spec.mask, *spec.mask_candidates):
        if ann is not None and Path(ann) not in inside:
            files["annotation/" + Path(ann).name] = Path(ann)
    return sorted(files.items())


def _input_digest(files: list[tuple[str, Path]], known: dict[str, tuple[int, str]],
                  memo: FileMemo | None) -> str:
    """The input hash of *files* (:func:`_case_files`); *known*: ``name -> (size, SHA-256)``
    of the files already read and hashed, the others are read here."""
    h = hashlib.sha256(_HASH_VERSION)
    for name, path in files:
        if name in known:
            size, digest = known[name]
        else:
            try:
                st = path.stat()
                size, digest = st.st_size, _file_sha256(path, st, memo)
            except OSError:
                h.update(f"{name}\0missing\0".encode("utf-8", "surrogateescape"))
                continue
        h.update(f"{name}\0{size}\0{digest}\0".encode("utf-8", "surrogateescape"))
    return h.hexdigest()


def case_input_hash(spec: CaseSpec, *, exclude: str | Path | None = None,
                    memo: FileMemo | None = None) -> str:
    """SHA-256 (hex) over the input files of one case: for each file, sorted by name, its
    name, size and content's SHA-256 (module docstring: which files, which names).

    ``exclude``: a folder not to descend into (the results folder, when it lies inside a
    case folder).  ``memo``: digests already computed in this batch, by path, size and
    modification time.  A file that cannot be read counts as missing (the case is then
    rescored, and reports the problem when read).
    """
    return _input_digest(_case_files(spec, None if exclude is None else Path(exclude)), {}, memo)


class HashingReader:
    """The input files of one case, each read once for the case's readers and hashed as it
    is read (a :data:`data_tools.dicom_series.ReadBytes` for
    :func:`data_tools.cases.read_case`); :meth:`input_hash` then reads only the files they
    did not ask for, and gives :func:`case_input_hash`'s value.

    Files outside the case's input files, and any once *budget* bytes have been handed out
    (the batch's ``max_bytes``: a scan too large to score is refused from its headers, not
    held in memory), are left to the readers, which open them themselves.  The annotation
    files' bytes are kept, as the mask readers ask for them again after the DICOM scan."""

    def __init__(self, spec: CaseSpec, exclude: Path | None, budget: int | None):
        self._files = _case_files(spec, exclude)
        self._names = {path: name for name, path in self._files}
        self._keep = {Path(p) for p in (spec.mask, *spec.mask_candidates) if p is not None}
        self._kept: dict[Path, bytes] = {}
        self._left = budget
        self.digests: dict[str, tuple[int, str]] = {}

    def __call__(self, path: Path) -> bytes | None:
        path = Path(path)
        if path in self._kept:
            return self._kept[path]
        name = self._names.get(path)
        if name is None or name in self.digests:
            return None
        try:
            if self._left is not None and path.stat().st_size > self._left:
                return None
            data = path.read_bytes()
        except OSError:  # left to the reader, which reports it; hashed as missing
            return None
        if self._left is not None:
            self._left -= len(data)
        self.digests[name] = (len(data), hashlib.sha256(data).hexdigest())
        if path in self._keep:
            self._kept[path] = data
        return data

    def input_hash(self) -> str:
        self._kept.clear()
        return _input_digest(self._files, self.digests, None)


def case_config_hash(spec: CaseSpec, *, settings: ScoreSettings, max_bytes: int | None,
                     card: ModelCard) -> str:
    """SHA-256 (hex) of the canonical JSON of what, besides the input files and the weights,
    decides a case's results (module docstring)."""
    payload = {
        "settings": dataclasses.asdict(settings), "max_bytes": max_bytes,
        "layout": spec.layout, "image_kind": spec.image_kind, "mask_kind": spec.mask_kind,
        "source_key": spec.source_key,
        # a verdict rule decides verdicts; a card without one hashes as before the rules
        "card": {k: getattr(card, k) for k in _CARD_KEYS
                 if k != "verdict_rule" or card.verdict_rule},
        "threshold": card.threshold,
    }
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
