"""Axial, coronal and sagittal planes of a ``(z, y, x)`` volume, shown as radiologists expect.

Conventions (the project's arrays: slices toward Superior, rows toward Posterior, columns
toward the patient's Left, as an axial DICOM series or a reoriented NIfTI):

* axial ``k``: ``array[k]``, rows = y (anterior at the top), columns = x (patient's right on
  the viewer's left) -- the radiological view;
* coronal ``j``: ``array[:, j, :]`` flipped so that superior is at the top, columns = x;
* sagittal ``i``: ``array[:, :, i]`` flipped so that superior is at the top, columns = y
  (anterior on the left).

Reformatted planes have rectangular pixels (slice step vs pixel spacing); :func:`display_size`
gives the on-screen size with square millimetres, and :func:`resize_to` enlarges by nearest
neighbour so labels and contours stay crisp.  Pure numpy/PIL; nothing here imports Streamlit.
"""

from __future__ import annotations

import numpy as np

__all__ = ["PLANES", "plane_slice", "plane_index", "plane_point", "zoom_box", "n_slices",
           "display_size", "resize_to"]

#: Plane names and the array axis each one steps along.
PLANES = {"axial": 0, "coronal": 1, "sagittal": 2}


def _check(plane: str) -> int:
    if plane not in PLANES:
        raise ValueError(f"plane must be one of {list(PLANES)}; received {plane!r}")
    return PLANES[plane]


def n_slices(shape, plane: str) -> int:
    """Number of slices of a ``(z, y, x)`` *shape* in *plane*."""
    return int(shape[_check(plane)])


def plane_slice(array3d, plane: str, index: int) -> np.ndarray:
    """One 2-D slice of *array3d* ``(z, y, x)`` in display orientation (module docstring).

    Returns a view where possible; shape ``(y, x)`` axial, ``(z, x)`` coronal, ``(z, y)``
    sagittal.
    """
    axis = _check(plane)
    arr = np.asarray(array3d)
    index = int(np.clip(index, 0, arr.shape[axis] - 1))
    if axis == 0:
        return arr[index]
    out = arr[:, index, :] if axis == 1 else arr[:, :, index]
    return out[::-1]


def plane_index(zyx, plane: str) -> int:
    """The slice of *plane* through the voxel ``(z, y, x)`` (rounded)."""
    return int(round(float(zyx[_check(plane)])))


def display_size(shape2d, plane: str, spacing_mm, *, min_size: int = 512) -> tuple[int, int]:
    """``(height, width)`` in screen pixels so that one screen pixel covers the same mm in
    both directions and the shorter side is at least *min_size*.

    Parameters
    ----------
    shape2d : (rows, cols)
        Shape of :func:`plane_slice`'s output.
    spacing_mm : (dz, dy, dx)
        Voxel spacing of the volume.
    """
    dz, dy, dx = (float(s) for s in spacing_mm)
    row_mm, col_mm = {"axial": (dy, dx), "coronal": (dz, dx), "sagittal": (dz, dy)}[plane]
    h_mm, w_mm = shape2d[0] * row_mm, shape2d[1] * col_mm
    scale = max(min_size / max(min(h_mm, w_mm), 1e-6), 1e-6)
    return max(1, int(round(h_mm * scale))), max(1, int(round(w_mm * scale)))


def resize_to(rgb, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of an ``(h, w[, c])`` image to ``size = (height, width)``."""
    arr = np.asarray(rgb)
    rows = np.minimum((np.arange(size[0]) * arr.shape[0]) // size[0], arr.shape[0] - 1)
    cols = np.minimum((np.arange(size[1]) * arr.shape[1]) // size[1], arr.shape[1] - 1)
    return arr[rows][:, cols]


def plane_point(zyx, plane: str, shape) -> tuple[float, float]:
    """Where the voxel ``(z, y, x)`` of a volume of *shape* lands in :func:`plane_slice`'s
    output: ``(row, col)``."""
    _check(plane)
    z, y, x = (float(v) for v in zyx)
    top = shape[0] - 1 - z  # superior at the top in the reformatted planes
    return {"axial": (y, x), "coronal": (top, x), "sagittal": (top, y)}[plane]


def zoom_box(shape2d, centre_rc, zoom: float) -> tuple[slice, slice]:
    """The ``(rows, cols)`` slices of a *zoom*-times enlargement of a 2-D image of *shape2d*
    centred on *centre_rc* as far as the image allows (``zoom <= 1``: the whole image)."""
    if zoom <= 1:
        return slice(0, shape2d[0]), slice(0, shape2d[1])
    out = []
    for n, c in zip(shape2d[:2], centre_rc):
        size = max(1, int(round(n / zoom)))
        lo = int(np.clip(round(float(c) - size / 2), 0, n - size))
        out.append(slice(lo, lo + size))
    return out[0], out[1]
