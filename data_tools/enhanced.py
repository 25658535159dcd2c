"""Enhanced CT (multi-frame): one file, many frames, geometry in the functional groups.

Enhanced CT Image Storage keeps every slice as a frame of one file.  Each frame's position
comes from its per-frame ``PlanePositionSequence``; orientation, pixel spacing and the rescale
(``PlaneOrientationSequence``, ``PixelMeasuresSequence``, ``PixelValueTransformationSequence``)
from the per-frame groups where present, else the shared ones.  Frames are sorted along the
slice normal and must be evenly spaced and share orientation and spacing; the volume is the
same ``(z, y, x)`` float32 HU with an LPS affine that :func:`data_tools.dicom.read_ct_files`
gives a single-frame series.  A tilted (sheared) or unevenly spaced multi-frame CT is refused
with the reason.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from .errors import SeriesValidationError, UnreadableFileError, file_label
from .volume import Volume

__all__ = ["ENHANCED_CT", "is_enhanced_ct", "read_enhanced_ct"]

log = logging.getLogger(__name__)

#: SOP Class UID of Enhanced CT Image Storage.
ENHANCED_CT = "1.2.840.10008.5.1.4.1.1.2.1"


def is_enhanced_ct(ds) -> bool:
    """Whether dataset *ds* is an Enhanced CT image with more than one frame."""
    return str(ds.get("SOPClassUID", "")) == ENHANCED_CT and int(ds.get("NumberOfFrames", 1) or 1) > 1


def _group(frame, shared, sequence: str):
    """The item of functional group *sequence* for a frame: its own, else the shared one."""
    for source in (frame, shared):
        if source is not None and sequence in source and len(source[sequence].value):
            return source[sequence].value[0]
    return None


def _frame_geometry(ds, label: str):
    """Per frame: position (3,), orientation (6,), pixel spacing (2,), slope, intercept."""
    shared = (ds.SharedFunctionalGroupsSequence[0]
              if "SharedFunctionalGroupsSequence" in ds else None)
    frames = ds.get("PerFrameFunctionalGroupsSequence", None) or []
    n = int(ds.NumberOfFrames)
    if len(frames) != n:
        raise SeriesValidationError(f"{label} has {n} frames but {len(frames)} per-frame "
                                    "functional groups; re-export it.", path=None)
    out = []
    for k, frame in enumerate(frames):
        pos, ori = _group(frame, shared, "PlanePositionSequence"), _group(frame, shared, "PlaneOrientationSequence")
        pix, val = _group(frame, shared, "PixelMeasuresSequence"), _group(frame, shared, "PixelValueTransformationSequence")
        if pos is None or ori is None or pix is None:
            raise SeriesValidationError(
                f"{label}: frame {k + 1} has no plane position, orientation or pixel measures in "
                "its functional groups, so its place in the patient is unknown.", path=None)
        if val is None or "RescaleSlope" not in val or "RescaleIntercept" not in val:
            raise SeriesValidationError(
                f"{label}: frame {k + 1} has no RescaleSlope/RescaleIntercept (Pixel Value "
                "Transformation); the stored values cannot be turned into HU.", path=None)
        out.append((np.asarray(pos.ImagePositionPatient, float),
                    np.asarray(ori.ImageOrientationPatient, float),
                    np.asarray(pix.PixelSpacing, float), float(val.RescaleSlope),
                    float(val.RescaleIntercept)))
    return out


def read_enhanced_ct(path: str | Path) -> Volume:
    """Read an Enhanced CT file into a :class:`~data_tools.volume.Volume`.

    Returns
    -------
    Volume
        ``(frames, Rows, Columns)`` float32 HU in increasing order along the slice normal;
        affine as :func:`data_tools.dicom.read_ct_files` (column 0 the step between frames);
        metadata ``format`` = ``"dicom-enhanced"``, ``modality``, ``frames``.

    Raises
    ------
    SeriesValidationError
        Missing functional groups or rescale, frames of different orientation or spacing,
        uneven steps, a tilted stack.
    UnreadableFileError
        The file or its pixel data cannot be read.
    """
    import pydicom

    path = Path(path)
    label = file_label(path)
    try:
        ds = pydicom.dcmread(path)
        stored = ds.pixel_array
    except (OSError, ValueError, AttributeError, RuntimeError, NotImplementedError,
            pydicom.errors.InvalidDicomError) as exc:
        raise UnreadableFileError(f"{label} cannot be read as an Enhanced CT image "
                                  f"({type(exc).__name__}).", path=path) from None
    try:
        geometry = _frame_geometry(ds, label)
    except SeriesValidationError as exc:
        raise SeriesValidationError(str(exc), path=path) from None
    ori, spacing = geometry[0][1], geometry[0][2]
    for k, (_, o, s, _, _) in enumerate(geometry):
        if not (np.allclose(o, ori, atol=1e-4) and np.allclose(s, spacing, atol=1e-4)):
            raise SeriesValidationError(f"{label}: frame {k + 1} has another orientation or "
                                        "pixel spacing than frame 1; a volume needs one grid.",
                                        path=path)
    normal = np.cross(ori[:3], ori[3:])
    order = np.argsort([float(g[0] @ normal) for g in geometry], kind="stable")
    positions = np.stack([geometry[k][0] for k in order])
    steps = np.diff(positions @ normal)
    if len(steps) and (steps.min() <= 0 or steps.max() - steps.min() > max(0.1, 0.05 * steps.mean())):
        raise SeriesValidationError(f"{label}: the frames are not evenly spaced along the slice "
                                    f"normal (steps {steps.min():.2f} to {steps.max():.2f} mm).",
                                    path=path)
    step = (positions[-1] - positions[0]) / max(len(positions) - 1, 1)
    if len(steps) and np.linalg.norm(step - (step @ normal) * normal) > 1e-3 * np.linalg.norm(step):
        raise SeriesValidationError(f"{label}: the frames are sheared (a gantry tilt); tilted "
                                    "Enhanced CT is not supported, export single frames.",
                                    path=path)
    frames = stored.reshape(len(geometry), *stored.shape[-2:])
    hu = np.stack([frames[k].astype(np.float64) * geometry[k][3] + geometry[k][4] for k in order])
    affine = np.eye(4)
    affine[:3, 0] = step if len(steps) else normal
    affine[:3, 1] = ori[3:] * spacing[0]
    affine[:3, 2] = ori[:3] * spacing[1]
    affine[:3, 3] = positions[0]
    log.info("read Enhanced CT: %d frames of %d x %d", len(geometry), *frames.shape[1:])
    return Volume(hu.astype(np.float32), affine,
                  {"format": "dicom-enhanced", "modality": str(ds.get("Modality", "")),
                   "frames": str(len(geometry))})
