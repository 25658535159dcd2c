"""Arrays with their geometry: the one in-memory convention of the project.

Conventions
-----------
* Arrays are indexed ``(z, y, x)``: slice, row, column.
* ``affine`` is a 4x4 matrix mapping a voxel index written in the same order,
  ``[z, y, x, 1]``, to patient coordinates in **LPS millimetres** (DICOM's frame:
  +x to the patient's Left, +y Posterior, +z Superior).  Column 0 is therefore the step
  between slices, column 1 the step between rows, column 2 the step between columns.
* ``spacing_mm`` is ``(dz, dy, dx)``, the norms of those three columns.

Loaders (:mod:`data_tools.dicom`, :mod:`data_tools.nifti`) return :class:`Volume` and
:class:`Mask`; nothing downstream needs to know which file format a scan came from.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Mapping

import numpy as np

from .errors import GeometryMismatchError, MaskError

__all__ = ["Volume", "Mask", "affine_from_spacing", "spacing_from_affine", "describe_grid",
           "check_same_grid"]

#: Two grids are "the same" when shapes match and affines agree within this (mm).
GRID_TOLERANCE_MM = 1e-3


def affine_from_spacing(spacing_mm, origin_mm=(0.0, 0.0, 0.0)) -> np.ndarray:
    """Axis-aligned affine for ``(z, y, x)`` indices.

    Parameters
    ----------
    spacing_mm : sequence of 3 floats
        ``(dz, dy, dx)`` in mm.
    origin_mm : sequence of 3 floats
        Patient LPS position (x, y, z) in mm of voxel ``(0, 0, 0)``.

    Returns
    -------
    ndarray, shape (4, 4)
        Maps ``[z, y, x, 1]`` to ``[L, P, S, 1]``: column 0 points along +S, column 1 along +P,
        column 2 along +L.
    """
    dz, dy, dx = (float(s) for s in spacing_mm)
    aff = np.zeros((4, 4))
    aff[2, 0] = dz  # slice index -> superior
    aff[1, 1] = dy  # row index -> posterior
    aff[0, 2] = dx  # column index -> left
    aff[:3, 3] = np.asarray(origin_mm, dtype=float)
    aff[3, 3] = 1.0
    return aff


def spacing_from_affine(affine) -> tuple[float, float, float]:
    """``(dz, dy, dx)`` in mm: the norms of the first three columns of *affine* (4x4 or
    3x3, ``[z, y, x, 1] -> LPS mm``; see the module docstring)."""
    norms = np.linalg.norm(np.asarray(affine, dtype=float)[:3, :3], axis=0)
    return (float(norms[0]), float(norms[1]), float(norms[2]))


def describe_grid(shape, affine) -> str:
    """One-line description of a voxel grid for error messages (shape, spacing, origin)."""
    sp = spacing_from_affine(affine)
    origin = np.asarray(affine, dtype=float)[:3, 3]
    return (
        f"shape (z, y, x)={tuple(int(s) for s in shape)}, "
        f"spacing_mm=({sp[0]:.3f}, {sp[1]:.3f}, {sp[2]:.3f}), "
        f"origin_mm=({origin[0]:.2f}, {origin[1]:.2f}, {origin[2]:.2f})"
    )


@dataclass(frozen=True, eq=False)
class Volume:
    """A scalar image with its geometry.

    Attributes
    ----------
    array : ndarray, shape (z, y, x)
        Voxel values; for CT, Hounsfield units as float32, or as int16 where a reader was
        asked to keep them exact (``integer_hu``): code that computes with HU converts the
        part it uses.
    affine : ndarray, shape (4, 4)
        ``[z, y, x, 1]`` -> patient LPS mm (see module docstring).
    metadata : Mapping[str, str]
        *Safe* descriptive metadata only (modality, manufacturer model, kernel, ...).
        Never patient identifiers, UIDs or paths.
    """

    array: np.ndarray
    affine: np.ndarray
    metadata: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self):
        arr = np.asarray(self.array)
        if arr.ndim != 3:
            raise ValueError(f"Volume.array must be 3-D (z, y, x); received shape {arr.shape}")
        aff = np.asarray(self.affine, dtype=float)
        if aff.shape != (4, 4):
            raise ValueError(f"Volume.affine must be 4x4; received shape {aff.shape}")
        if abs(np.linalg.det(aff[:3, :3])) < 1e-9:
            raise ValueError("Volume.affine is singular (a zero-length or repeated axis)")
        object.__setattr__(self, "array", arr)
        object.__setattr__(self, "affine", aff)
        object.__setattr__(self, "metadata", MappingProxyType(dict(self.metadata)))

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.array.shape)  # type: ignore[return-value]

    @property
    def spacing_mm(self) -> tuple[float, float, float]:
        """``(dz, dy, dx)`` in mm."""
        return spacing_from_affine(self.affine)

    def voxel_to_world(self, zyx) -> np.ndarray:
        """Map voxel indices ``(..., 3)`` in ``(z, y, x)`` order to LPS mm ``(..., 3)``."""
        zyx = np.asarray(zyx, dtype=float)
        return zyx @ self.affine[:3, :3].T + self.affine[:3, 3]

    def world_to_voxel(self, lps_mm) -> np.ndarray:
        """Map LPS mm ``(..., 3)`` to fractional ``(z, y, x)`` indices ``(..., 3)``."""
        lps = np.asarray(lps_mm, dtype=float)
        inv = np.linalg.inv(self.affine[:3, :3])
        return (lps - self.affine[:3, 3]) @ inv.T

    def describe(self) -> str:
        return describe_grid(self.shape, self.affine)


@dataclass(frozen=True, eq=False)
class Mask(Volume):
    """An integer label map on a voxel grid: 0 = background, 1..N = one label per nodule."""

    def __post_init__(self):
        super().__post_init__()
        arr = self.array
        if not (np.issubdtype(arr.dtype, np.integer) or arr.dtype == bool):
            if not np.all(np.equal(np.mod(arr, 1), 0)):
                raise MaskError(
                    f"a label mask must hold whole numbers; received dtype {arr.dtype} with "
                    "fractional values. Threshold a probability map before using it as a mask."
                )
        if arr.size and arr.min() < 0:
            raise MaskError(f"a label mask must be >= 0; received minimum {arr.min()}")
        if arr.size and arr.max() > np.iinfo(np.int16).max:
            raise MaskError(f"a label mask holds labels up to {np.iinfo(np.int16).max}; received "
                            f"maximum {arr.max()}. Relabel the nodules 1..N.")
        object.__setattr__(self, "array", arr.astype(np.int16, copy=False))

    @property
    def labels(self) -> list[int]:
        """The nodule labels present, sorted, background excluded."""
        return [int(v) for v in np.unique(self.array) if v != 0]


def check_same_grid(image: Volume, mask: Volume, *, what: str = "mask",
                    tolerance_mm: float = GRID_TOLERANCE_MM) -> None:
    """Raise :class:`GeometryMismatchError` unless *mask* lies on *image*'s voxel grid.

    The message names both geometries so the user can see which one to resample.
    """
    same = image.shape == mask.shape and np.allclose(
        image.affine, mask.affine, atol=tolerance_mm, rtol=0
    )
    if not same:
        raise GeometryMismatchError(
            f"the {what} does not lie on the image's voxel grid: image has "
            f"{image.describe()}; {what} has {mask.describe()}. Resample the {what} onto the "
            "image grid (nearest neighbour) or pair it with the scan it was drawn on."
        )
