"""Pure rendering of CT slices with attribution, mask and off-mask region overlays.

Shared by the review app and the HTML and PDF reports.  Everything here works on plain
numpy arrays and returns ``uint8`` images; there is no Streamlit and no matplotlib figure
(matplotlib is only asked, lazily, for the colormap's lookup table), so a 512 x 512 slice
renders in a few milliseconds.

Conventions
-----------
* 2-D arrays are ``(y, x)``, as an axial slice ``volume[z]`` of a ``(z, y, x)`` volume.
* RGB images are ``(y, x, 3)`` ``uint8``.
* Attribution is raw (e.g. ReLU'd Grad-CAM, >= 0) and is never renormalised silently: the
  caller passes ``attr_max`` (typically the maximum of the whole case) so that colours mean
  the same on every slice.
"""

from __future__ import annotations

import io
from functools import lru_cache
from typing import NamedTuple

import numpy as np

from data_tools.volume import spacing_from_affine
from discovery.report.style import fmt
from discovery.schema import SURROUNDINGS_MM

__all__ = [
    "WINDOWS", "MASK_COLOR", "REGION_COLOR", "COLORMAP", "window_image", "contour",
    "overlay_slice", "colorbar_image", "colorbar_ticks", "labelled_colorbar", "to_png_bytes",
    "KeySlice", "key_slice", "key_slice_choice", "KEY_SLICE_RULE", "KEY_SLICE_FALLBACK",
    "crop_around", "upscale", "thumbnail",
    "densest_near_nodule", "densest_near_region", "side_by_side",
    "exemplar_image",
]

#: Display windows, ``name: (width, level)`` in HU.
WINDOWS = {"lung": (1500, -600), "mediastinum": (400, 40), "bone": (2500, 480)}
#: Colour of the annotated-mask contour (bright green).
MASK_COLOR = (0, 255, 0)
#: Colour of the off-mask region contours (cyan).
REGION_COLOR = (0, 255, 255)
#: Perceptually uniform colormap used for attribution.
COLORMAP = "inferno"
#: How :func:`key_slice` picks the slice the reports show, in their words.
KEY_SLICE_RULE = "most attribution on the nodule"
#: What :func:`key_slice` falls back to when the map is zero on every slice of the nodule.
KEY_SLICE_FALLBACK = "largest cross-section; no attribution on the nodule"


@lru_cache(maxsize=8)
def _lut(name: str = COLORMAP) -> np.ndarray:
    """(256, 3) uint8 lookup table of a matplotlib colormap (read-only)."""
    from matplotlib import colormaps  # lazy: only the table is needed

    lut = (colormaps[name](np.linspace(0.0, 1.0, 256))[:, :3] * 255.0).round().astype(np.uint8)
    lut.setflags(write=False)
    return lut


@lru_cache(maxsize=32)
def _blend_table(opacity: float) -> np.ndarray:
    """Packed RGBA (uint32, native order) for every (gray level, colour index or 256 =
    transparent) pair: ``table[gray * 257 + index]``, blended with *opacity*."""
    gray = np.arange(256, dtype=np.float32)[:, None, None]
    lut = np.concatenate([_lut().astype(np.float32), np.full((1, 3), np.nan, np.float32)])
    mixed = gray * (1.0 - opacity) + lut[None, :, :] * opacity  # (256, 257, 3)
    mixed[:, 256, :] = gray[:, 0, :]                              # transparent: the gray level
    rgba = np.zeros((256, 257, 4), dtype=np.uint8)
    rgba[:, :, :3] = np.rint(mixed).astype(np.uint8)
    table = rgba.reshape(-1, 4).view(np.uint32).ravel()
    table.setflags(write=False)
    return table


def window_image(hu2d, *, width: float, level: float) -> np.ndarray:
    """Map HU to gray ``uint8``: ``level - width/2`` -> 0, ``level + width/2`` -> 255.

    Values are rounded to the nearest integer (half to even), so HU exactly at *level*
    gives 128 (127.5 rounded); everything below the window is 0, above it 255.
    """
    if not width > 0:
        raise ValueError(f"window width must be > 0; received {width!r}")
    hu = np.asarray(hu2d, dtype=np.float32)
    scaled = (hu - (float(level) - float(width) / 2.0)) * np.float32(255.0 / float(width))
    return np.rint(np.clip(scaled, 0.0, 255.0)).astype(np.uint8)


def contour(labels2d) -> np.ndarray:
    """1-pixel inner outline of every labelled area of *labels2d* (nonzero = inside).

    A pixel is on the outline when it is labelled and one of its 4 neighbours has another
    value (outside the image counts as 0).  For a single binary object this equals
    ``m & ~scipy.ndimage.binary_erosion(m)``; with several labels, touching objects keep
    their own outlines.
    """
    lab = np.asarray(labels2d)
    inside = lab != 0
    if not inside.any():
        return np.zeros(lab.shape, dtype=bool)
    p = np.pad(lab, 1, mode="constant", constant_values=0)
    c = p[1:-1, 1:-1]
    differs = (p[:-2, 1:-1] != c) | (p[2:, 1:-1] != c) | (p[1:-1, :-2] != c) | (p[1:-1, 2:] != c)
    return inside & differs


def overlay_slice(
    hu2d,
    *,
    attribution2d=None,
    mask2d=None,
    regions2d=None,
    window: str | tuple[float, float] = "lung",
    opacity: float = 0.45,
    attr_max: float | None = None,
    threshold: float = 0.0,
) -> np.ndarray:
    """Render one slice as RGB: gray CT, attribution heat map, mask and region contours.

    Parameters
    ----------
    hu2d : array (y, x)
        CT in HU.
    attribution2d : array (y, x), optional
        Raw attribution (>= 0).  Coloured with :data:`COLORMAP` on the fixed scale
        ``[0, attr_max]`` (values above ``attr_max`` saturate) and alpha-blended with
        *opacity*.  Pixels with attribution ``<= 0`` or ``< threshold * attr_max`` are
        transparent.
    mask2d : array (y, x), optional
        Nodule label mask; its outline is drawn 1 pixel wide in :data:`MASK_COLOR`.
    regions2d : array (y, x), optional
        Off-mask region labels; outlines in :data:`REGION_COLOR` (drawn under the mask
        outline).
    window : str or (width, level)
        A key of :data:`WINDOWS` or an explicit ``(width, level)`` in HU.
    opacity : float in [0, 1]
        Opacity of the heat map; 0 gives the plain gray image (plus contours).
    attr_max : float, optional
        Top of the colour scale, in raw attribution units.  Pass the case maximum so that
        the same value has the same colour on every slice.  **If None, the maximum of this
        slice is used**, i.e. the slice is normalised on its own and colours are not
        comparable between slices.
    threshold : float in [0, 1]
        Share of ``attr_max`` below which attribution is not drawn.

    Returns
    -------
    ndarray (y, x, 3) uint8
    """
    width, level = WINDOWS[window] if isinstance(window, str) else window
    gray = window_image(hu2d, width=width, level=level)
    rgb = np.repeat(gray[:, :, None], 3, axis=2)
    opacity = float(np.clip(opacity, 0.0, 1.0))
    if attribution2d is not None and opacity > 0.0:
        a = np.asarray(attribution2d, dtype=np.float32)
        if a.shape != gray.shape:
            raise ValueError(f"attribution shape {a.shape} != CT slice shape {gray.shape}")
        top = float(a.max()) if attr_max is None else float(attr_max)
        if top > 0.0 and np.isfinite(top):
            show = (a > 0.0) & (a >= np.float32(float(threshold) * top))
            if show.any():
                idx = np.clip(a * np.float32(255.0 / top), 0.0, 255.0)
                idx = np.rint(idx, out=idx).astype(np.uint16)
                idx[~show] = 256  # transparent
                code = gray.astype(np.intp) * 257 + idx
                rgb = np.take(_blend_table(round(opacity, 4)), code).view(np.uint8)
                rgb = np.ascontiguousarray(rgb.reshape(gray.shape + (4,))[:, :, :3])
    if regions2d is not None:
        rgb[contour(regions2d)] = REGION_COLOR
    if mask2d is not None:
        rgb[contour(mask2d)] = MASK_COLOR
    return rgb


def colorbar_image(*, attr_max: float, height: int = 200, width: int = 24,
                   horizontal: bool = False) -> np.ndarray:
    """The attribution colour scale as RGB.

    Vertical (default): ``(height, width, 3)``, ``attr_max`` at the top, 0 at the bottom.
    Horizontal: ``(width, height, 3)`` reading 0 (left) to ``attr_max`` (right), i.e.
    *height* is the length of the bar and *width* its thickness.  *attr_max* only labels
    the scale (see :func:`colorbar_ticks`); it must be > 0.
    """
    if not (attr_max is not None and np.isfinite(attr_max) and attr_max > 0):
        raise ValueError(f"attr_max must be a finite number > 0; received {attr_max!r}")
    ramp = np.linspace(0.0, 255.0, int(height)).round().astype(np.uint8)
    colours = _lut()[ramp]  # (height, 3), 0 first
    if horizontal:
        return np.ascontiguousarray(np.broadcast_to(colours[None, :, :], (int(width), int(height), 3)))
    return np.ascontiguousarray(np.broadcast_to(colours[::-1, None, :], (int(height), int(width), 3)))


def colorbar_ticks(attr_max: float, n: int = 5) -> list[tuple[float, str]]:
    """``n`` evenly spaced ticks ``(fraction of the scale from 0, label)`` of ``[0, attr_max]``
    (labels: :func:`discovery.report.style.fmt`)."""
    n = max(int(n), 2)
    return [(k / (n - 1), fmt(attr_max * k / (n - 1))) for k in range(n)]


def labelled_colorbar(*, attr_max: float, length: int = 320, thickness: int = 14,
                      n_ticks: int = 5) -> np.ndarray:
    """A horizontal colour bar with tick marks and labels below it, on white (RGB uint8)."""
    from PIL import Image, ImageDraw  # lazy

    bar = colorbar_image(attr_max=attr_max, height=length, width=thickness, horizontal=True)
    pad_x, text_h = 24, 16
    img = Image.new("RGB", (length + 2 * pad_x, thickness + 4 + text_h), "white")
    img.paste(Image.fromarray(bar), (pad_x, 0))
    draw = ImageDraw.Draw(img)
    for frac, label in colorbar_ticks(attr_max, n_ticks):
        x = pad_x + round(frac * (length - 1))
        draw.line([(x, thickness), (x, thickness + 3)], fill="black")
        w = draw.textlength(label)
        draw.text((min(max(x - w / 2, 0), img.width - w), thickness + 4), label, fill="black")
    return np.asarray(img)


def to_png_bytes(rgb) -> bytes:
    """Encode an RGB (or gray) ``uint8`` image as PNG."""
    from PIL import Image  # lazy

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


class KeySlice(NamedTuple):
    """The slice :func:`key_slice_choice` picked and the rule that picked it, in the reports'
    words (:data:`KEY_SLICE_RULE` or :data:`KEY_SLICE_FALLBACK`)."""

    index: int
    rule: str


def key_slice_choice(mask, label: int, *, attribution=None, slices=None) -> KeySlice:
    """The axial slice (axis 0) the reports show for the nodule *label*, and why.

    Without *attribution*: the slice holding the most voxels of *label* (its largest
    cross-section).  With *attribution* (same shape as *mask*): among the slices holding
    *label*, the one with the most attribution inside the label's in-plane bounding box, so
    that the overlay shows where the model looked at the nodule (on thick slices the largest
    cross-section can lie outside the few slices the map covers); the largest cross-section
    when that attribution is zero on every such slice.  Ties go to the lowest index.
    *slices*: the indices of the slices that hold *label*, when the caller knows them (the
    app's cached label counts), so that only those slices are read.  The rule says which of
    the two chose, so that a caption never claims the map chose a slice it did not.

    Raises ValueError when *label* is not in *mask* or *attribution* has another shape.
    """
    mask = np.asarray(mask)
    if attribution is not None and np.shape(attribution) != mask.shape:
        raise ValueError(f"attribution must have the mask's shape {mask.shape}; received "
                         f"{np.shape(attribution)}")
    # a view of every slice, or only the given ones (copied: they are few)
    pick = slice(None) if slices is None else np.asarray(slices, dtype=np.int64).reshape(-1)
    zs = np.arange(mask.shape[0])[pick]
    m = mask[pick] == label
    counts = m.reshape(m.shape[0], -1).sum(axis=1)
    if not counts.any():
        raise ValueError(f"label {label!r} is not in the mask")
    largest = KeySlice(int(zs[np.argmax(counts)]), KEY_SLICE_FALLBACK)
    if attribution is None:
        return largest
    ys, xs = np.nonzero(m.any(axis=0))
    box = np.asarray(attribution)[pick, ys.min():ys.max() + 1, xs.min():xs.max() + 1]
    score = np.where(counts > 0, box.reshape(box.shape[0], -1).sum(axis=1, dtype=np.float64),
                     -np.inf)
    return KeySlice(int(zs[np.argmax(score)]), KEY_SLICE_RULE) if score.max() > 0 else largest


def key_slice(mask, label: int, *, attribution=None, slices=None) -> int:
    """Index of the axial slice :func:`key_slice_choice` picks (same parameters)."""
    return key_slice_choice(mask, label, attribution=attribution, slices=slices).index


def crop_around(arr2d, center_yx, half_size: int) -> np.ndarray:
    """The ``(2*half_size + 1)``-pixel square of *arr2d* centred on *center_yx* (rounded).

    Parts outside the array are padded with the array's minimum (air for CT, 0 for masks
    and attribution).  Extra trailing axes (e.g. RGB) are kept.
    """
    arr = np.asarray(arr2d)
    h = int(half_size)
    if h < 0:
        raise ValueError(f"half_size must be >= 0; received {half_size!r}")
    cy, cx = (int(round(float(c))) for c in center_yx)
    size = 2 * h + 1
    out = np.full((size, size) + arr.shape[2:], arr.min() if arr.size else 0, dtype=arr.dtype)
    y0, x0 = cy - h, cx - h
    sy0, sx0 = max(y0, 0), max(x0, 0)
    sy1, sx1 = min(y0 + size, arr.shape[0]), min(x0 + size, arr.shape[1])
    if sy1 > sy0 and sx1 > sx0:
        out[sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0] = arr[sy0:sy1, sx0:sx1]
    return out


def upscale(img, min_size: int) -> np.ndarray:
    """Nearest-neighbour enlargement by the smallest integer factor that makes the shorter
    side at least *min_size* pixels (no change if it already is)."""
    arr = np.asarray(img)
    short = max(min(arr.shape[0], arr.shape[1]), 1)
    k = max(1, -(-int(min_size) // short))
    if k == 1:
        return arr
    return np.repeat(np.repeat(arr, k, axis=0), k, axis=1)


def thumbnail(
    arrays: dict,
    *,
    z: float,
    center_yx,
    half_size: int = 32,
    region: int | None = None,
    nodule: int | None = None,
    window: str | tuple[float, float] = "lung",
    opacity: float = 0.45,
    threshold: float = 0.0,
    attr_max: float | None = None,
) -> np.ndarray:
    """An overlay crop of one axial slice of a scored case (exemplars, outcome panels).

    Parameters
    ----------
    arrays : dict
        A case's stored arrays (:func:`discovery.store.tables.load_case_arrays`): ``ct`` (HU),
        ``attribution``, ``mask`` (nodule labels) and ``region_map`` (off-mask regions),
        each ``(z, y, x)`` on the scan grid.
    z : float
        Slice index (rounded, clipped to the volume).
    center_yx : (float, float)
        Crop centre, voxel coordinates.
    half_size : int
        The crop is ``2 * half_size + 1`` pixels square.
    region : int, optional
        Outline only this off-mask region (label of ``region_map``); default all of them.
    nodule : int, optional
        Outline only this nodule's mask; default every nodule.
    window, opacity, threshold
        As for :func:`overlay_slice`; the colour scale runs from 0 to the case's attribution
        maximum (one scale per case, as in the viewer).
    attr_max : float, optional
        That maximum, when the caller already has it (the app caches it per case); computed
        from ``arrays["attribution"]`` otherwise.

    Returns
    -------
    ndarray (2*half_size+1, 2*half_size+1, 3) uint8
    """
    zi = int(np.clip(round(float(z)), 0, arrays["ct"].shape[0] - 1))
    crop = {name: crop_around(arrays[name][zi], center_yx, half_size)
            for name in ("ct", "attribution", "mask", "region_map")}
    regions2d = crop["region_map"] if region is None else (crop["region_map"] == int(region))
    mask2d = crop["mask"] > 0 if nodule is None else crop["mask"] == int(nodule)
    if attr_max is None:
        attr_max = float(np.max(arrays["attribution"])) if arrays["attribution"].size else 0.0
    return overlay_slice(crop["ct"].astype(np.float32), attribution2d=crop["attribution"],
                         mask2d=mask2d, regions2d=regions2d.astype(np.int16), window=window,
                         opacity=opacity, attr_max=attr_max if attr_max > 0 else None,
                         threshold=threshold)


def densest_near_region(arrays: dict, region: int, *, reach_vox: int = 2) -> tuple[int, int, int]:
    """Voxel ``(z, y, x)`` of the highest CT value within *reach_vox* voxels of off-mask region
    *region* (``region_map`` label): where a bead or calcification next to a region is, so a
    picture can show it (the region's centroid slice may miss a 4 mm structure).

    Raises ``ValueError`` when the case has no such region.
    """
    from scipy import ndimage

    sel = np.asarray(arrays["region_map"]) == int(region)
    if not sel.any():
        raise ValueError(f"region {region} is not in this case's region map")
    zz, yy, xx = np.nonzero(sel)
    lo = np.maximum([zz.min(), yy.min(), xx.min()], reach_vox) - reach_vox
    hi = np.asarray([zz.max(), yy.max(), xx.max()]) + reach_vox + 1
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    cube = ndimage.generate_binary_structure(3, 3)  # "within reach_vox" in every direction
    near = (ndimage.binary_dilation(sel[box], structure=cube, iterations=int(reach_vox))
            if reach_vox else sel[box])
    k = np.unravel_index(_densest_in(np.asarray(arrays["ct"])[box], near), near.shape)
    return tuple(int(s.start + i) for s, i in zip(box, k))


def _densest_in(ct: np.ndarray, where: np.ndarray) -> int:
    """Flat index of the highest value of *ct* among the True voxels of *where* (the first
    on ties; *where* not empty)."""
    idx = np.flatnonzero(where)
    return int(idx[np.argmax(ct.ravel()[idx])])


def densest_near_nodule(arrays: dict, nodule: int, *, reach_mm: float) -> tuple[int, int, int]:
    """Voxel ``(z, y, x)`` of the highest CT value within *reach_mm* of nodule *nodule*
    (``mask`` label; the mask itself included), distances in mm from the case's ``affine``:
    where a clip or marker beside the nodule is, so its picture can show it.

    Raises ``ValueError`` when the case has no such nodule.
    """
    from discovery.model.edit import grow_mm

    sel = np.asarray(arrays["mask"]) == int(nodule)
    if not sel.any():
        raise ValueError(f"nodule {nodule} is not in this case's mask")
    near = grow_mm(sel, reach_mm, spacing_from_affine(arrays["affine"]))
    k = np.unravel_index(_densest_in(np.asarray(arrays["ct"]), near), near.shape)
    return tuple(int(i) for i in k)


def side_by_side(*images: np.ndarray, gap: int = 4) -> np.ndarray:
    """RGB images of equal height joined left to right with a white gap of *gap* pixels."""
    if not images:
        raise ValueError("side_by_side needs at least one image")
    h = images[0].shape[0]
    if any(im.shape[0] != h for im in images):
        raise ValueError(f"images must share a height; received {[im.shape for im in images]}")
    white = np.full((h, int(gap), 3), 255, np.uint8)
    parts = []
    for i, im in enumerate(images):
        if i:
            parts.append(white)
        parts.append(np.asarray(im, np.uint8))
    return np.concatenate(parts, axis=1)


def exemplar_image(arrays: dict, exemplar, *, half_size: int = 32, threshold: float = 0.0,
                   opacity: float = 0.4, attr_max: float | None = None) -> np.ndarray:
    """The picture of one overview exemplar: the plain crop and the overlay, side by side.

    *exemplar* has ``z``, ``center_yx``, ``region``, ``nodule`` and ``focus``
    (:class:`discovery.patterns.outcomes.Exemplar`).  With ``focus == "densest"`` the crop goes to the
    slice of the densest voxel next to the region (:func:`densest_near_region`; without a
    region, within :data:`~discovery.schema.SURROUNDINGS_MM` of the nodule:
    :func:`densest_near_nodule`) and is centred halfway between it and ``center_yx`` (the
    nodule), so nodule and artifact share the picture.  ``attr_max`` as for :func:`thumbnail`.
    """
    z, (cy, cx) = exemplar.z, exemplar.center_yx
    if getattr(exemplar, "focus", "centroid") == "densest":
        if exemplar.region is not None:
            dz, dy, dx = densest_near_region(arrays, exemplar.region)
        elif exemplar.nodule is not None:
            dz, dy, dx = densest_near_nodule(arrays, exemplar.nodule, reach_mm=SURROUNDINGS_MM)
        else:
            dz, dy, dx = z, cy, cx
        z, cy, cx = dz, (cy + dy) / 2.0, (cx + dx) / 2.0
    if attr_max is None:  # one scan of the volume for both pictures
        attr_max = float(np.max(arrays["attribution"])) if arrays["attribution"].size else 0.0
    kw = dict(z=z, center_yx=(cy, cx), half_size=half_size, region=exemplar.region,
              nodule=exemplar.nodule, threshold=threshold, attr_max=attr_max)
    return side_by_side(thumbnail(arrays, opacity=0.0, **kw),
                        thumbnail(arrays, opacity=opacity, **kw))
