"""Ground-glass halos for the synthetic phantom (private to :mod:`data_tools.synthetic`).

A ground-glass halo is a rim of raised lung density (ground glass, about -700 to -500 HU:
denser than aerated lung at about -860 HU, far lighter than soft tissue) around a nodule,
a real peritumoral sign (haemorrhage or tumour growth along the alveolar walls).  Unlike the
other planted kinds it lives entirely in the lung-density range: on a -1000..3000 HU input
it spans about 4 % of the scale.

Halos are planted after every other structure, from a random stream of their own, so that a
cohort without halos is the one generated before they existed (same arrays, byte for byte).
"""

from __future__ import annotations

import logging

import numpy as np
from scipy import ndimage as ndi

from . import _phantom as ph

log = logging.getLogger(__name__)

__all__ = ["KIND", "PARENCHYMA_MAX_HU", "plant_halos", "paint_halo"]

#: The planted kind's name in the truth manifest and the planted label map.
KIND = "ground_glass_halo"
#: Relative amplitude of the halo's uneven outer edge (its width varies by this fraction).
WOBBLE = 0.3
#: Smallest halo kept, in voxels (on coarse grids a thin halo may vanish).
MIN_VOXELS = 3
#: Lung voxels at or above this HU before the lesions are painted are vessels: a halo
#: leaves them as they are and does not count them among its voxels.
PARENCHYMA_MAX_HU = -500.0


def _halo_shape(grid: ph.Grid, own: np.ndarray, free: np.ndarray, width: float,
                hrng) -> np.ndarray:
    """Occupancy (float32, box shape) of a rim of nominal *width* mm beyond the voxels
    *own*, its outer edge made uneven by smooth noise drawn from *hrng*, zero outside *free*.

    The rim's inner edge is the nodule's surface, half a voxel beyond its mask voxels'
    centres; its outer edge lies ``width * (1 + WOBBLE * noise)`` mm further out (noise of
    unit standard deviation, clipped so the rim keeps between 0.4 and 1.6 of its width)."""
    vox = grid.voxel_mm
    d_own = ndi.distance_transform_edt(~own, sampling=grid.spacing).astype(np.float32)
    cell = tuple(max(2, int(round(4.0 / s))) for s in grid.spacing)  # ~4 mm lumps
    noise = ph.smooth_noise(hrng, own.shape, cell)
    reach = width * np.clip(1.0 + WOBBLE * noise, 0.4, 1.6)
    return ph.occupancy(d_own - 0.5 * vox - reach, vox) * free


def plant_halos(grid: ph.Grid, lung: np.ndarray, nodule_labels: np.ndarray,
                planted: np.ndarray, items: list, nodules: list, cfg, hrng) -> None:
    """Plant a ground-glass halo around each nodule that draws one, in place.

    Each nodule (in placement order) draws from *hrng* whether it has a halo
    (``cfg.p_halo_malignant`` / ``cfg.p_halo_benign``), then its width
    (``cfg.halo_width_mm``, mm beyond the nodule's surface), its density (``cfg.halo_hu``)
    and the noise of its uneven edge.  The halo fills the *lung* voxels of its rim that
    belong to no nodule and to no structure planted before; its voxels get the next label of
    *planted* and an item is appended to *items* (``kind``, ``nodule``, ``label``, ``sl``,
    ``frac``, ``voxels``, ``hu``, ``centre_mm``, ``width_mm``), as the other kinds do.

    Parameters
    ----------
    grid : Grid
    lung : ndarray of bool, grid shape
        Where a halo may go: the lung parenchyma without its vessels
        (HU < :data:`PARENCHYMA_MAX_HU` before the lesions are painted).
    nodule_labels : ndarray of int16, grid shape
        Nodule ``i`` (0-based in *nodules*) is label ``i + 1``.
    planted : ndarray of int16, grid shape
        The planted-structure label map, updated.
    items : list of dict
        The planted items so far, extended.
    nodules : list of dict
        Placed nodules (``centre_mm``, ``extent``, ``malignant``).
    cfg : SyntheticConfig
    hrng : numpy.random.Generator
        The halos' own stream.
    """
    for n_i, nod in enumerate(nodules):
        p = cfg.p_halo_malignant if nod["malignant"] else cfg.p_halo_benign
        if not hrng.random() < p:
            continue
        width = float(hrng.uniform(*cfg.halo_width_mm))
        hu = float(hrng.uniform(*cfg.halo_hu))
        sl, off = grid.box(nod["centre_mm"], nod["extent"] + 1.6 * width + 2 * grid.voxel_mm)
        if sl is None or not (own := nodule_labels[sl] == n_i + 1).any():
            continue
        free = lung[sl] & (nodule_labels[sl] == 0)
        frac = _halo_shape(grid, own, free, width, hrng)
        voxels = (frac >= 0.5) & (planted[sl] == 0)
        if voxels.sum() < MIN_VOXELS:
            log.debug("no room for a ground-glass halo around nodule %d", n_i + 1)
            continue
        where = np.nonzero(voxels)
        centre = nod["centre_mm"] + np.array([float(np.mean(off[a].ravel()[where[a]]))
                                              for a in range(3)])
        label = len(items) + 1
        planted[sl][voxels] = label
        items.append(dict(kind=KIND, nodule=n_i, label=label, sl=sl, frac=frac, voxels=voxels,
                          hu=hu, centre_mm=centre, width_mm=round(width, 2)))


def paint_halo(hu: np.ndarray, item: dict) -> None:
    """Raise the density of the halo's voxels towards ``item["hu"]`` by their occupancy, in
    place; denser voxels already there (vessels) keep their value."""
    region = hu[item["sl"]]
    target = np.maximum(region, np.float32(item["hu"]))
    target -= region
    target *= item["frac"]
    region += target
