"""Binary dilation and closing by a physical ball on an anisotropic grid, by shifted ORs.

The ball of radius ``r`` mm on a grid of spacing ``(dz, dy, dx)`` is every offset
``(i, j, k)`` with ``sqrt((i*dz)² + (j*dy)² + (k*dx)²) <= r``, the distance computed as
:func:`scipy.ndimage.distance_transform_edt` computes it, so that :func:`dilate_ball` equals
``distance_transform_edt(~binary, sampling=spacing) <= r`` voxel for voxel (tested), at a
fraction of its time and memory: the ball is a stack of discs, each disc a stack of
segments along x; the segments' dilations are built once by doubling, and the result is
an OR of shifted views (about 70 for a 4 mm ball on a 0.7 x 0.7 x 1 mm grid) with no
64-bit index arrays.
"""

from __future__ import annotations

import math

import numpy as np

from data_tools.checks import check_nonneg, check_spacing

__all__ = ["ball_half_widths", "close_ball", "dilate_ball"]


def ball_half_widths(spacing_mm, radius_mm: float) -> dict[tuple[int, int], int]:
    """Half-width along x of the ball's segment at each ``(i, j)`` offset in ``(z, y)``.

    Parameters
    ----------
    spacing_mm : sequence of 3 floats
        Voxel size ``(dz, dy, dx)`` in mm.
    radius_mm : float
        Ball radius in mm (``>= 0``).

    Returns
    -------
    dict
        ``{(i, j): w}``: the ball holds ``(i, j, k)`` exactly when ``|k| <= w``; offsets
        ``(i, j)`` the ball does not reach are absent.  ``{(0, 0): 0}`` for a radius below
        every spacing.
    """
    dz, dy, dx = check_spacing(spacing_mm)
    r = check_nonneg(radius_mm, "radius_mm")
    reach = [math.floor(r / s) + 1 for s in (dz, dy, dx)]
    k = np.arange(reach[2] + 1, dtype=np.float64)
    out = {}
    for i in range(-reach[0], reach[0] + 1):
        for j in range(-reach[1], reach[1] + 1):
            # the same float64 expression, in the same order, as distance_transform_edt
            inside = np.sqrt((i * dz) ** 2 + (j * dy) ** 2 + (k * dx) ** 2) <= r
            if inside[0]:
                out[(i, j)] = int(np.count_nonzero(inside)) - 1
    return out


def dilate_ball(binary, *, spacing_mm, radius_mm: float) -> np.ndarray:
    """Binary dilation of *binary* by the ball of *radius_mm* (module docstring).

    Parameters
    ----------
    binary : ndarray of bool, shape (z, y, x)
        Voxels outside the array count as False.
    spacing_mm, radius_mm
        As for :func:`ball_half_widths`.

    Returns
    -------
    ndarray of bool, shape (z, y, x)
        True where some True voxel of *binary* lies within *radius_mm*: equal to
        ``distance_transform_edt(~binary, sampling=spacing_mm) <= radius_mm`` whenever
        *binary* has a True voxel (all False otherwise).
    """
    binary = np.asarray(binary, dtype=bool)
    if binary.ndim != 3:
        raise ValueError(f"binary must be 3-D (z, y, x); received shape {binary.shape}")
    widths = ball_half_widths(spacing_mm, radius_mm)
    segments = _segments(binary, max(widths.values()))
    discs: dict[int, np.ndarray] = {}
    for i in sorted({abs(i) for i, _ in widths}):
        disc = np.zeros_like(binary)
        for (ii, j), w in widths.items():
            if ii == i:
                _or_shifted(disc, segments[w], (0, j, 0))
        discs[i] = disc
    out = np.zeros_like(binary)
    for i in sorted({i for i, _ in widths}):
        _or_shifted(out, discs[abs(i)], (i, 0, 0))
    return out


def close_ball(binary, *, spacing_mm, radius_mm: float) -> np.ndarray:
    """Binary closing (:func:`dilate_ball`, then erosion by the same ball) of *binary*.

    Voxels outside the array count as False for the dilation and are ignored by the
    erosion, as ``distance_transform_edt(dilated, ...) > radius_mm`` ignores them; pad the
    array by more than the radius if the closing must not depend on its edges.

    Returns
    -------
    ndarray of bool, shape (z, y, x)
    """
    dilated = dilate_ball(binary, spacing_mm=spacing_mm, radius_mm=radius_mm)
    if dilated.all():
        return dilated
    return ~dilate_ball(~dilated, spacing_mm=spacing_mm, radius_mm=radius_mm)


def _segments(binary: np.ndarray, widest: int) -> dict[int, np.ndarray]:
    """Dilations of *binary* along x by the segments ``[-w, w]``, ``w = 0..widest``."""
    out = {0: binary}
    for w in range(1, widest + 1):
        grown = out[w - 1].copy()
        _or_shifted(grown, binary, (0, 0, w))
        _or_shifted(grown, binary, (0, 0, -w))
        out[w] = grown
    return out


def _or_shifted(out: np.ndarray, src: np.ndarray, shift: tuple[int, int, int]) -> None:
    """``out |= src`` moved by *shift* voxels (what falls outside is dropped)."""
    dst, orig = [], []
    for s, n in zip(shift, src.shape):
        if abs(s) >= n:
            return
        dst.append(slice(max(0, s), n + min(0, s)))
        orig.append(slice(max(0, -s), n - max(0, s)))
    np.logical_or(out[tuple(dst)], src[tuple(orig)], out=out[tuple(dst)])
