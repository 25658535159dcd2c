"""Several readers' masks of one nodule: consensus masks and per-reference alignment.

LIDC-IDRI gives up to four readers' contours per nodule, and the readers disagree, most of
all at the border of small nodules.  An attribution map judged against one reader can look
"off-mask" against another, so :func:`reader_metrics` scores the map against every reader
and against consensus masks at several agreement levels.

A consensus mask at level ``c`` holds the voxels that at least a fraction ``c`` of the
readers include (``c = 0.5`` is the usual LIDC choice; ``c = 1`` is the intersection and
any ``c <= 1 / R`` the union of ``R`` readers).
"""

from __future__ import annotations

import math

import numpy as np

from data_tools.checks import check_nonneg, check_spacing
from discovery.align.metrics import (
    AlignThresholds,
    check_map_and_mask,
    pointing_game,
    relevance_mass,
    relevance_rank,
)

__all__ = ["DEFAULT_LEVELS", "METRIC_COLUMNS", "consensus_mask", "reader_metrics"]

#: Consensus levels scored by default by :func:`reader_metrics`.
DEFAULT_LEVELS = (0.25, 0.5, 0.75)

#: Keys of every row returned by :func:`reader_metrics`, in order.
METRIC_COLUMNS = ("reference", "level", "n_voxels", "rma", "rra", "pointing_hit")

#: Slack on the vote fraction, so that e.g. 2 of 4 readers pass level 0.5 and 1 of 3 passes
#: level 1/3 despite floating-point rounding of the level.
_LEVEL_EPS = 1e-9


# --------------------------------------------------------------------------- validation


def _check_level(level) -> float:
    try:
        v = float(level)
    except (TypeError, ValueError):
        raise ValueError(f"level must be a fraction in (0, 1]; received {level!r}") from None
    if not (math.isfinite(v) and 0.0 < v <= 1.0):
        raise ValueError(f"level must be a fraction in (0, 1]; received {level!r}")
    return v


def _stack_masks(masks) -> np.ndarray:
    """Validate the readers' masks; return a bool array of shape (R, z, y, x)."""
    if isinstance(masks, np.ndarray):
        if masks.ndim != 4:
            raise ValueError(
                "masks must be a sequence of 3-D (z, y, x) arrays or one (R, z, y, x) array; "
                f"received an array of shape {masks.shape}"
            )
        items = list(masks)
    else:
        try:
            items = [np.asarray(m) for m in masks]
        except TypeError:
            raise ValueError(
                "masks must be a sequence of 3-D (z, y, x) arrays or one (R, z, y, x) array; "
                f"received {type(masks).__name__}"
            ) from None
    if not items:
        raise ValueError("masks must hold at least one reader's mask; received none")
    shape = items[0].shape
    for i, m in enumerate(items, start=1):
        if m.ndim != 3:
            raise ValueError(
                f"every mask must be a 3-D (z, y, x) array; reader {i} has shape {m.shape}"
            )
        if m.shape != shape:
            raise ValueError(
                f"all readers' masks must have the same (z, y, x) shape; reader 1 has "
                f"{shape} and reader {i} has {m.shape}"
            )
        if m.dtype.kind not in "biu":
            raise ValueError(
                f"masks must be bool or integer (nonzero = inside); reader {i} has dtype "
                f"{m.dtype}. Threshold a probabilistic mask before calling."
            )
    return np.stack([m.astype(bool, copy=False) for m in items])


def _consensus(stack: np.ndarray, level: float) -> np.ndarray:
    votes = np.count_nonzero(stack, axis=0)
    return votes >= level * stack.shape[0] - _LEVEL_EPS


# --------------------------------------------------------------------------------- API


def consensus_mask(masks, *, level: float) -> np.ndarray:
    """Voxels included by at least a fraction ``level`` of the readers.

    Parameters
    ----------
    masks : sequence of ndarray of bool or int, each shape (z, y, x); or ndarray (R, z, y, x)
        One mask per reader (nonzero = inside), all on the same grid.  An empty reader mask
        is allowed: it counts as a reader who included nothing.
    level : float
        Fraction in (0, 1].  A voxel is in when ``votes / R >= level`` (with a 1e-9
        slack, so 2 of 4 readers pass 0.5).  ``level=1`` gives the intersection and any
        ``level <= 1 / R`` the union.

    Returns
    -------
    ndarray of bool, shape (z, y, x)
        The consensus mask (possibly empty).

    Raises
    ------
    ValueError
        For no readers, masks that are not 3-D, of different shapes or of a non-integer
        dtype, or a ``level`` outside (0, 1].
    """
    level = _check_level(level)
    return _consensus(_stack_masks(masks), level)


def reader_metrics(
    attr,
    masks,
    spacing_mm,
    *,
    levels=DEFAULT_LEVELS,
    tolerance_mm: float = AlignThresholds().pointing_tolerance_mm,
) -> list[dict]:
    """Alignment of one attribution map with every reader's mask and with consensus masks.

    Parameters
    ----------
    attr : ndarray, shape (z, y, x)
        Non-negative, finite attribution magnitudes.
    masks : sequence of ndarray of bool or int, each (z, y, x); or ndarray (R, z, y, x)
        One mask per reader, on the grid of ``attr``; reader ``i`` (from 1) is reported as
        ``"reader_i"`` in the given order.
    spacing_mm : sequence of 3 floats
        Voxel size ``(dz, dy, dx)`` in mm.
    levels : sequence of float, optional
        Consensus levels in (0, 1] (see :func:`consensus_mask`); may be empty.
    tolerance_mm : float, optional
        Tolerance of the pointing game (mm, inclusive); default that of
        :class:`discovery.align.metrics.AlignThresholds` (4 mm).

    Returns
    -------
    list of dict
        One row per reader, then one per level in the given order, each with the keys of
        :data:`METRIC_COLUMNS`:

        * ``reference``: ``"reader_1"``, ..., ``"consensus_0.50"`` (level to 2 decimals);
        * ``level``: the consensus level, NaN for a single reader;
        * ``n_voxels``: voxels in that reference mask (int);
        * ``rma``, ``rra``: :func:`discovery.align.metrics.relevance_mass` and
          :func:`discovery.align.metrics.relevance_rank`;
        * ``pointing_hit``: :func:`discovery.align.metrics.pointing_game` with ``tolerance_mm``.

        Metrics are NaN for an empty reference mask (``n_voxels == 0``: a reader who drew
        nothing, or a level no voxel reaches) and for an all-zero ``attr``.
        ``pandas.DataFrame(rows)`` gives a table.

    Raises
    ------
    ValueError
        On bad masks (see :func:`consensus_mask`), masks not on the grid of ``attr``, bad
        ``attr``, ``spacing_mm``, ``tolerance_mm`` or levels, or two levels that round to
        the same name.
    """
    stack = _stack_masks(masks)
    attr, _ = check_map_and_mask(attr, stack[0])
    spacing_mm = check_spacing(spacing_mm)
    tolerance_mm = check_nonneg(tolerance_mm, "tolerance_mm")
    try:
        levels = [_check_level(c) for c in levels]
    except TypeError:
        raise ValueError(f"levels must be a sequence of fractions; received {levels!r}") from None

    rows = []
    for name, level, m in _references(stack, levels):
        rows.append(
            {
                "reference": name,
                "level": level,
                "n_voxels": int(np.count_nonzero(m)),
                "rma": relevance_mass(attr, m),
                "rra": relevance_rank(attr, m),
                "pointing_hit": pointing_game(attr, m, spacing_mm, tolerance_mm=tolerance_mm),
            }
        )
    return rows


def _references(stack: np.ndarray, levels: list[float]) -> list[tuple[str, float, np.ndarray]]:
    """``(name, level, mask)`` of every reader (level NaN), then of every consensus level;
    ``ValueError`` when two levels round to the same name."""
    references = [(f"reader_{i}", math.nan, m) for i, m in enumerate(stack, start=1)]
    names = set()
    for c in levels:
        name = f"consensus_{c:.2f}"
        if name in names:
            raise ValueError(
                f"levels must differ at 2 decimals; received {list(levels)!r} "
                f"(two of them are named {name!r})"
            )
        names.add(name)
        references.append((name, c, _consensus(stack, c)))
    return references
