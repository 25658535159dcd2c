"""NIfTI read/write in the project's convention (``(z, y, x)`` arrays, LPS affine).

Reading brings any orientation to the closest canonical one (nibabel's RAS+), then flips the
first two voxel axes so that, like a typical axial DICOM series, columns run toward the
patient's Left, rows toward Posterior and slices toward Superior.  Writing is the exact
inverse, so ``load_nifti(save_nifti(v))`` returns ``v``'s array and affine.

Which affine (the rule)
-----------------------
* sform when its code is > 0, else qform when its code is > 0 (nibabel's and FSL's rule).
* When both are set and place a corner voxel of the volume more than
  ``XFORM_TOLERANCE_MM`` (0.5 mm) apart, the sform is still used, a warning gives the
  largest disagreement in mm, and ``metadata["xform_note"]`` records it.
* When neither is set, the orientation is unknown: the voxel sizes from ``pixdim`` are used
  with nibabel's default orientation, with a warning and ``metadata["xform_note"]``.
* 4-D images are refused unless the fourth axis has length 1; 2-D images are refused.
"""

from __future__ import annotations

import gzip
import io
import logging
import zlib
from pathlib import Path
from typing import Callable

import numpy as np

from .errors import DataError, MaskError, UnreadableFileError, file_label
from .volume import Mask, Volume

__all__ = ["load_nifti", "load_nifti_mask", "save_nifti", "is_nifti", "XFORM_TOLERANCE_MM"]

log = logging.getLogger(__name__)

XFORM_TOLERANCE_MM = 0.5

_LPS_FROM_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
# [i, j, k, 1] (nibabel array order) <- [z, y, x, 1] (ours) when i=x, j=y, k=z
_IJK_FROM_ZYX = np.array(
    [[0, 0, 1, 0], [0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1]], dtype=float
)


def is_nifti(path: str | Path) -> bool:
    """True for ``*.nii`` and ``*.nii.gz`` names."""
    name = Path(path).name.lower()
    return name.endswith(".nii") or name.endswith(".nii.gz")


#: Bytes of the header looked at to choose the image class (as ``nibabel.load`` sniffs).
_SNIFF_BYTES = 1024


def _from_bytes(path: Path, data: bytes):
    """The NIfTI image of a file's bytes, as ``nibabel.load(path)`` reads the file: gzip
    decompressed as the data are read (the header first, so that the size check precedes
    the voxels); NIfTI-1 or NIfTI-2 by the header, and a header that cannot be read or
    recognised is an ``ImageFileError``, as there."""
    import nibabel as nib
    from nibabel.filebasedimages import ImageFileError

    stream = io.BytesIO(data)
    if path.name.lower().endswith(".gz"):
        stream = gzip.GzipFile(fileobj=stream, mode="rb")
    try:
        head = stream.read(_SNIFF_BYTES)
        stream.seek(0)
    except (OSError, EOFError, zlib.error):
        raise ImageFileError("the header cannot be read") from None
    for klass in (nib.Nifti1Image, nib.Nifti2Image):
        if klass.header_class.may_contain_header(head):
            return klass.from_stream(stream)
    raise ImageFileError("not a NIfTI-1 or NIfTI-2 file")


def _read(path: Path, max_bytes: int | None = None,
          read: Callable[[Path], bytes | None] | None = None):
    import nibabel as nib
    from nibabel.filebasedimages import ImageFileError
    from nibabel.spatialimages import HeaderDataError

    raw = read(path) if read is not None else None
    if raw is None and not path.is_file():
        raise UnreadableFileError(f"NIfTI file {file_label(path)} does not exist", path=path)
    if (len(raw) if raw is not None else path.stat().st_size) == 0:
        raise UnreadableFileError(f"NIfTI file {file_label(path)} is empty (0 bytes)", path=path)
    try:
        img = nib.load(str(path)) if raw is None else _from_bytes(path, raw)
        shape = tuple(img.shape)
        if len(shape) not in (3, 4) or (len(shape) == 4 and shape[3] != 1):
            raise UnreadableFileError(
                f"NIfTI file {file_label(path)} has {len(shape)} dimensions (shape {shape}); a "
                "CT volume or label mask must be 3-D. Split a 4-D series into single volumes "
                "(e.g. fslsplit) and give one of them.", path=path,
            )
        need = int(np.prod(shape[:3])) * 4
        if max_bytes is not None and need > max_bytes:
            raise DataError(
                f"NIfTI file {file_label(path)} would need {need / 1024**3:.2f} GiB as a float32 "
                f"volume (shape {shape[:3]}), above the limit of {max_bytes / 1024**3:.2f} GiB. "
                "Raise the limit (max_bytes=, or discovery score --max-volume-gb) if the "
                "machine has the memory.", path=path)
        note = _xform_note(img, path)
        canonical = nib.as_closest_canonical(img)
        data = np.asanyarray(canonical.dataobj)
    except (EOFError, zlib.error, OSError, ValueError, ImageFileError, HeaderDataError) as exc:
        raise UnreadableFileError(
            f"NIfTI file {file_label(path)} cannot be read ({type(exc).__name__}); it is "
            "probably truncated or not a NIfTI file. Re-export or re-copy it.",
            path=path,
        ) from None
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise UnreadableFileError(
            f"NIfTI file {file_label(path)} has {data.ndim} dimensions (shape {data.shape}); "
            "a CT volume or label mask must be 3-D. Split 4-D series into single volumes.",
            path=path,
        )
    ni, nj, _ = data.shape
    # flip i (R->L) and j (A->P), then order as (k, j, i) = (z, y, x)
    arr = np.ascontiguousarray(data[::-1, ::-1, :].transpose(2, 1, 0))
    flip = np.array(
        [[0, 0, -1, ni - 1], [0, -1, 0, nj - 1], [1, 0, 0, 0], [0, 0, 0, 1]], dtype=float
    )
    affine = _LPS_FROM_RAS @ canonical.affine @ flip
    return arr, affine, note


def _xform_note(img, path: Path) -> str | None:
    """Apply the module's qform/sform rule; return a note when the choice matters."""
    header = getattr(img, "header", None)
    if header is None or not hasattr(header, "get_sform"):
        return None
    sform, s_code = header.get_sform(coded=True)
    qform, q_code = header.get_qform(coded=True)
    if not s_code and not q_code:
        log.warning("%s has neither a qform nor an sform; its orientation is unknown, so the "
                    "voxel sizes are used with the default orientation", file_label(path))
        return "no qform or sform: orientation assumed"
    if s_code and q_code:
        shape = np.array(img.shape[:3], dtype=float)
        corners = np.array([[i, j, k, 1.0] for i in (0, shape[0] - 1) for j in (0, shape[1] - 1)
                            for k in (0, shape[2] - 1)])
        gap = float(np.max(np.linalg.norm((corners @ sform.T - corners @ qform.T)[:, :3],
                                          axis=1)))
        if gap > XFORM_TOLERANCE_MM:
            log.warning("%s: the qform and sform disagree by up to %.1f mm; using the sform",
                        file_label(path), gap)
            return f"qform and sform disagree by up to {gap:.1f} mm; sform used"
    return None


def load_nifti(path: str | Path, *, max_bytes: int | None = None,
               read: Callable[[Path], bytes | None] | None = None) -> Volume:
    """Load a 3-D NIfTI image as a float32 :class:`Volume` (values after scl_slope/inter).

    Parameters
    ----------
    path : str or Path
        ``.nii`` or ``.nii.gz`` file.
    max_bytes : int or None
        Refuse, from the header, an image whose float32 array would be larger.
    read : callable(path) -> bytes or None, optional
        Gives the file's bytes (e.g. read once and hashed by the caller; see
        :data:`data_tools.dicom_series.ReadBytes`); None from it, or no *read*: the file is
        opened here.

    Returns
    -------
    Volume
        array (z, y, x) float32, affine to LPS mm, metadata ``{"format": "nifti"}``.

    Raises
    ------
    UnreadableFileError
        Missing, empty, truncated, or not 3-D.
    """
    path = Path(path)
    arr, affine, note = _read(path, max_bytes, read)
    meta = {"format": "nifti", "modality": "CT"}
    if note:
        meta["xform_note"] = note
    return Volume(arr.astype(np.float32, copy=False), affine, meta)


def load_nifti_mask(path: str | Path, *, read: Callable[[Path], bytes | None] | None = None
                    ) -> Mask:
    """Load a 3-D NIfTI label map (0 = background, 1..N = nodules) as a :class:`Mask`.

    *read*: as in :func:`load_nifti`.

    Raises
    ------
    UnreadableFileError
        As :func:`load_nifti`.
    MaskError
        Non-integer or negative labels.
    """
    path = Path(path)
    arr, affine, _ = _read(path, read=read)
    if not np.issubdtype(arr.dtype, np.integer):
        rounded = np.rint(arr)
        if not np.allclose(arr, rounded, atol=1e-3):
            raise MaskError(
                f"mask {file_label(path)} holds fractional values (dtype {arr.dtype}); a label "
                "mask must hold whole numbers. Threshold probability maps first.",
                path=path,
            )
        arr = rounded
    try:
        return Mask(arr, affine, {"format": "nifti"})   # int16, converted once, by Mask
    except MaskError as exc:
        raise MaskError(f"mask {file_label(path)}: {exc}", path=path) from None


def save_nifti(volume: Volume, path: str | Path, *, dtype=None) -> Path:
    """Write *volume* to ``path`` (``.nii`` or ``.nii.gz``); qform and sform both set.

    Parameters
    ----------
    volume : Volume or Mask
    path : str or Path
    dtype : numpy dtype, optional
        On-disk type; default ``int16`` for masks, ``float32`` otherwise.
    """
    import nibabel as nib

    path = Path(path)
    if dtype is None:
        dtype = np.int16 if isinstance(volume, Mask) else np.float32
    data = np.asarray(volume.array).transpose(2, 1, 0).astype(dtype)
    affine_ras = _LPS_FROM_RAS @ volume.affine @ _IJK_FROM_ZYX
    img = nib.Nifti1Image(data, affine_ras)
    img.set_qform(affine_ras, code=1)
    img.set_sform(affine_ras, code=1)
    img.header.set_xyzt_units("mm")
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, str(path))
    return path
