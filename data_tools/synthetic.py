"""Seeded synthetic chest-CT cohort: real DICOM CT series, nodule masks and a truth manifest.

Each case is a chest phantom (body, fat, muscle, heart, aorta, trachea, spine, ribs, two lungs
with branching vessels) holding 2-4 lung nodules, benign or malignant, with four kinds of
structure planted *outside* the nodule masks:

* ``pleural_tail`` - a thin soft-tissue band from a nodule to the pleura (a real peritumoral
  sign, correlated with malignancy);
* ``satellite_nodule`` - a small soft-tissue nodule a few millimetres beyond a nodule's edge
  (a separate tumour nodule near the primary, a real sign correlated with malignancy);
* ``marker_bead`` - a small metal-bright sphere near a nodule (a label-correlated shortcut
  artifact; its probabilities are configurable so it can be decorrelated from the label);
* ``granuloma`` - a calcified sphere near a nodule, independent of the label;
* ``ground_glass_halo`` - a rim of ground glass (about -700 to -500 HU) around a nodule, a
  real sign that lives in the lung-density range (off by default; :mod:`data_tools._halo`);
* ``bulla`` - an air space without a visible wall (about -1000 HU, darker than the lung
  around it) a few millimetres beyond a nodule's edge (off by default): the one planted
  kind *below* the parenchyma's density, made to check that discovery is not bound to
  structures denser than the lung.

Cohort layout (``generate_cohort``)::

    OUT/<PatientID>/CT000001.dcm ...   one file per slice, shuffled order
    OUT/<PatientID>/mask.nii.gz        nodule labels 1..N on the CT grid
    OUT/_truth/<PatientID>_planted.nii.gz  planted-structure labels 1..M on the CT grid
    OUT/truth.json, OUT/truth.csv      the manifest

The planted patient identifiers (names, IDs, dates, institution) are fake but realistic and
recorded in ``truth.json`` so privacy tests can check they never leak.  Arrays follow
:mod:`data_tools.volume`: ``(z, y, x)``, affine to LPS mm.
"""

from __future__ import annotations

import csv
import json
import logging
import multiprocessing
import shutil
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Callable

import numpy as np
from scipy import ndimage as ndi

from . import _halo, _identity
from . import _phantom as ph
from .checks import check_int
from .errors import UnreadableFileError
from .nifti import save_nifti
from .volume import Mask, affine_from_spacing

__all__ = ["SyntheticConfig", "SyntheticCase", "generate_case", "write_case",
           "generate_cohort", "load_truth", "RESCALE_VARIANTS", "BENCHMARK_GEOMETRY",
           "GENERATOR_VERSION"]

log = logging.getLogger(__name__)

GENERATOR_VERSION = "1"
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
#: HU range every case is clipped to (a 12-bit scanner range); all rescale variants hold it.
HU_RANGE = (-1024.0, 3071.0)
#: Stored-value encodings: slope, intercept, signedness and BitsStored.
RESCALE_VARIANTS = {
    "uint16_m1024": {"slope": 1.0, "intercept": -1024.0, "signed": False, "bits_stored": 12},
    "int16_0": {"slope": 1.0, "intercept": 0.0, "signed": True, "bits_stored": 16},
    "int16_half": {"slope": 0.5, "intercept": -1024.0, "signed": True, "bits_stored": 16},
    "uint16_x2": {"slope": 2.0, "intercept": -1024.0, "signed": False, "bits_stored": 16},
}
#: A large fixed geometry for benchmarks: shape (z, y, x) and spacing (dz, dy, dx) mm.
BENCHMARK_GEOMETRY = ((300, 512, 512), (1.0, 0.7, 0.7))

_KERNELS = ("B60f", "LUNG", "YC", "FC51", "BONEPLUS", "B70s")
_RANGE_FIELDS = ("n_slices", "pixel_spacing_mm", "slice_spacing_mm", "nodules_per_case",
                 "malignant_diameter_mm", "benign_diameter_mm", "noise_sigma_hu",
                 "blur_sigma_vox", "vessel_trees_per_lung", "tail_width_mm", "bead_diameter_mm",
                 "bead_distance_mm", "bead_hu", "granuloma_diameter_mm", "granuloma_distance_mm",
                 "granuloma_hu", "satellite_diameter_mm", "satellite_distance_mm", "satellite_hu",
                 "halo_width_mm", "halo_hu")
_PROB_FIELDS = ("p_malignant", "p_irregular_malignant", "p_round_benign", "p_tail_malignant",
                "p_tail_benign", "p_bead_malignant", "p_bead_benign", "p_granuloma",
                "p_satellite_malignant", "p_satellite_benign", "p_halo_malignant", "p_halo_benign",
                "p_bulla_malignant", "p_bulla_benign")


@dataclass(frozen=True)
class SyntheticConfig:
    """Every generation knob.  ``(lo, hi)`` pairs are drawn uniformly per case (integers
    inclusive).  Lengths in mm, intensities in HU, blur in voxels (in-plane; the same width in
    mm is used along z).

    Attributes
    ----------
    shape_yx, n_slices, pixel_spacing_mm, slice_spacing_mm
        Matrix (rows = columns), number of slices and spacings drawn per case.
    fixed_geometry : ((nz, ny, nx), (dz, dy, dx)) or None
        Replaces the four fields above (e.g. :data:`BENCHMARK_GEOMETRY`).
    nodules_per_case : (int, int)
        Nodules per case; fewer are kept only if the lungs have no room.
    p_malignant, p_irregular_malignant, p_round_benign
        Label prior; P(lobulated or spiculated | malignant); P(round | benign).
    malignant_diameter_mm, benign_diameter_mm
        Nodule diameters (malignant larger on average; the ranges overlap).
    p_tail_malignant, p_tail_benign, tail_width_mm
        Pleural tail (a real peritumoral sign) probability per label, and band width.
    p_satellite_malignant, p_satellite_benign, satellite_diameter_mm, satellite_distance_mm, satellite_hu
        Satellite nodule (a real peritumoral sign: a separate soft-tissue nodule near the
        primary) probability per label, diameter, distance from the nodule's edge (its
        nominal radius) to the satellite's centre, and density.
        Off by default (both 0): a demo model trained with them at 0.6 / 0.05 relied on the
        bead and the tail more than on the satellites (mean probability change when removed
        -0.35, -0.09, -0.03), and its Grad-CAM gave them no cluster of their own; two later
        variants with larger satellites at 70-80 % / 3 % relied on them by -0.11 with the
        same result (docs/benchmarks/discovery.md, the demo-model variants).  Drawn from
        a random stream of their own, so that with both probabilities 0 a cohort is the same
        as one generated before this kind existed.
    p_bead_malignant, p_bead_benign, bead_diameter_mm, bead_distance_mm, bead_hu
        Marker bead (a label-correlated shortcut artifact).  Set both probabilities equal to
        decorrelate it from the label.  Distance is centre to centre.
    p_granuloma, granuloma_diameter_mm, granuloma_distance_mm, granuloma_hu
        Calcified granuloma, independent of the label.
    p_halo_malignant, p_halo_benign, halo_width_mm, halo_hu
        Ground-glass halo (a real sign in the lung-density range): probability per label,
        width beyond the nodule's surface (mm; its outer edge uneven by about 30 %) and
        density.  Off by default (both 0); drawn from a random stream of its own and planted
        after every other structure, so that with both probabilities 0 a cohort is the same
        as one generated before this kind existed.
    noise_sigma_hu, blur_sigma_vox
        Gaussian noise (HU) and Gaussian blur (voxels) per case.
    vessel_trees_per_lung : (int, int)
        Branching vessel trees grown from each hilum.
    rescale_variants : tuple of str
        Stored-value encodings (keys of :data:`RESCALE_VARIANTS`) cycled through the cohort.
    """

    shape_yx: int = 256
    n_slices: tuple[int, int] = (96, 120)
    pixel_spacing_mm: tuple[float, float] = (0.8, 1.1)
    slice_spacing_mm: tuple[float, float] = (1.0, 1.5)
    nodules_per_case: tuple[int, int] = (2, 4)
    p_malignant: float = 0.5
    p_irregular_malignant: float = 0.85
    p_round_benign: float = 0.85
    malignant_diameter_mm: tuple[float, float] = (8.0, 25.0)
    benign_diameter_mm: tuple[float, float] = (5.0, 18.0)
    p_tail_malignant: float = 0.7
    p_tail_benign: float = 0.05
    p_bead_malignant: float = 0.4
    p_bead_benign: float = 0.02
    p_granuloma: float = 0.3
    noise_sigma_hu: tuple[float, float] = (8.0, 30.0)
    blur_sigma_vox: tuple[float, float] = (0.4, 0.9)
    vessel_trees_per_lung: tuple[int, int] = (8, 12)
    tail_width_mm: tuple[float, float] = (3.0, 4.5)
    bead_diameter_mm: tuple[float, float] = (3.5, 5.0)
    bead_distance_mm: tuple[float, float] = (9.0, 16.0)
    bead_hu: tuple[float, float] = (2500.0, 2900.0)
    granuloma_diameter_mm: tuple[float, float] = (3.0, 5.0)
    granuloma_distance_mm: tuple[float, float] = (9.0, 18.0)
    granuloma_hu: tuple[float, float] = (400.0, 900.0)
    p_satellite_malignant: float = 0.0
    p_satellite_benign: float = 0.0
    satellite_diameter_mm: tuple[float, float] = (4.0, 6.0)
    satellite_distance_mm: tuple[float, float] = (7.0, 11.0)
    satellite_hu: tuple[float, float] = (20.0, 60.0)
    p_halo_malignant: float = 0.0
    p_halo_benign: float = 0.0
    halo_width_mm: tuple[float, float] = (3.0, 6.0)
    halo_hu: tuple[float, float] = (-700.0, -500.0)
    p_bulla_malignant: float = 0.0
    p_bulla_benign: float = 0.0
    bulla_diameter_mm: tuple[float, float] = (6.0, 10.0)
    bulla_distance_mm: tuple[float, float] = (5.0, 10.0)
    bulla_hu: tuple[float, float] = (-1000.0, -980.0)
    rescale_variants: tuple[str, ...] = tuple(RESCALE_VARIANTS)
    fixed_geometry: tuple[tuple[int, int, int], tuple[float, float, float]] | None = None

    def __post_init__(self):
        for name in _RANGE_FIELDS:
            v = getattr(self, name)
            if len(v) != 2 or not float(v[0]) <= float(v[1]):
                raise ValueError(f"SyntheticConfig.{name} must be a (low, high) pair with "
                                 f"low <= high; received {v!r}")
        for name in _PROB_FIELDS:
            if not 0.0 <= float(getattr(self, name)) <= 1.0:
                raise ValueError(f"SyntheticConfig.{name} must be a probability in [0, 1]; "
                                 f"received {getattr(self, name)!r}")
        for name in ("pixel_spacing_mm", "slice_spacing_mm", "bead_diameter_mm",
                     "granuloma_diameter_mm", "tail_width_mm", "satellite_diameter_mm",
                     "halo_width_mm", "bulla_diameter_mm"):
            if float(getattr(self, name)[0]) <= 0:
                raise ValueError(f"SyntheticConfig.{name} must be > 0; "
                                 f"received {getattr(self, name)!r}")
        if self.noise_sigma_hu[0] < 0 or self.blur_sigma_vox[0] < 0:
            raise ValueError("SyntheticConfig noise and blur must be >= 0")
        if self.shape_yx < 64 or self.n_slices[0] < 16 or self.nodules_per_case[0] < 1:
            raise ValueError("SyntheticConfig needs shape_yx >= 64, n_slices >= 16 and at least "
                             f"one nodule per case; received shape_yx={self.shape_yx}, "
                             f"n_slices={self.n_slices}, nodules_per_case={self.nodules_per_case}")
        if self.benign_diameter_mm[0] < 3 or self.malignant_diameter_mm[1] > 30:
            raise ValueError("nodule diameters must lie in 3..30 mm so a 48 mm ROI holds them")
        unknown = [v for v in self.rescale_variants if v not in RESCALE_VARIANTS]
        if not self.rescale_variants or unknown:
            raise ValueError(f"SyntheticConfig.rescale_variants must name some of "
                             f"{sorted(RESCALE_VARIANTS)}; received {self.rescale_variants!r}")
        if self.fixed_geometry is not None:
            shape, spacing = self.fixed_geometry
            if len(shape) != 3 or len(spacing) != 3 or min(spacing) <= 0 or min(shape) < 16:
                raise ValueError("SyntheticConfig.fixed_geometry must be ((nz, ny, nx), "
                                 "(dz, dy, dx)) with positive values; "
                                 f"received {self.fixed_geometry!r}")

    def to_dict(self) -> dict:
        """JSON-ready dict (tuples become lists)."""
        return json.loads(json.dumps(asdict(self)))

    @classmethod
    def from_dict(cls, d: dict) -> "SyntheticConfig":
        """Inverse of :meth:`to_dict`; fields missing from *d* keep their defaults, so a dict
        of overrides is a config too (unknown keys are rejected with ValueError)."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown SyntheticConfig fields {unknown}")

        def tup(v):
            return tuple(tup(x) for x in v) if isinstance(v, list) else v
        d = dict(d)
        if "p_satellite_malignant" not in d:  # written before satellites existed: none
            d.setdefault("p_satellite_benign", 0.0)
            d["p_satellite_malignant"] = 0.0
        return cls(**{k: tup(v) for k, v in d.items()})

    @classmethod
    def read(cls, path: str | Path) -> "SyntheticConfig":
        """:meth:`from_dict` of a JSON file (such as ``sample_data/demo_model/cohort.json``).

        Raises ValueError naming the file (not its folder) when it cannot be read, is not
        JSON or holds unknown or invalid fields."""
        path = Path(path)
        try:
            return cls.from_dict(json.loads(path.read_text()))
        except (OSError, ValueError, TypeError) as exc:
            raise ValueError(f"cohort settings {path.name}: {exc}") from None


@dataclass(frozen=True, eq=False)
class SyntheticCase:
    """One generated case, in memory.

    Attributes
    ----------
    hu : ndarray, shape (z, y, x), float32
        Hounsfield units, clipped to ``HU_RANGE``.
    affine : ndarray, shape (4, 4)
        ``[z, y, x, 1]`` -> LPS mm.
    mask : ndarray, shape (z, y, x), int16
        0 background, ``1..N`` one label per nodule.
    planted : ndarray, shape (z, y, x), int16
        0 background, ``1..M`` one label per planted structure.
    nodules, planted_items : list of dict
        Truth records (see ``truth.json``); voxel centres ``center_zyx`` are fractional indices.
    identifiers : dict
        Fake patient/visit identifiers written into every DICOM file.
    acquisition : dict
        Spacing, shape, noise, blur, rescale, kernel... of this case.
    uids : dict
        ``StudyInstanceUID``, ``SeriesInstanceUID``, ``FrameOfReferenceUID`` and
        ``SOPInstanceUIDs`` (one per slice, in z order).
    file_order : tuple of int
        ``file_order[j]`` is the slice index stored in file ``CT{j+1:06d}.dcm``.
    lung : ndarray, shape (z, y, x), bool
        The lung parenchyma of the phantom (not written to disk).
    """

    hu: np.ndarray
    affine: np.ndarray
    mask: np.ndarray
    planted: np.ndarray
    nodules: list
    planted_items: list
    identifiers: dict
    acquisition: dict
    uids: dict = field(default_factory=dict)
    file_order: tuple = ()
    seed: int = 0
    index: int = 0
    lung: np.ndarray | None = None

    @property
    def case_dir(self) -> str:
        """Folder name of the case: its PatientID."""
        return self.identifiers["PatientID"]


# ----------------------------------------------------------------------------- generation

def _nodule_specs(rng, cfg: SyntheticConfig, srng=None) -> list[dict]:
    """Nodule specs from *rng*; the satellite draws come from *srng* (its own stream; *rng*
    when not given)."""
    srng = rng if srng is None else srng
    specs = []
    for _ in range(int(rng.integers(cfg.nodules_per_case[0], cfg.nodules_per_case[1] + 1))):
        malignant = bool(rng.random() < cfg.p_malignant)
        if malignant:
            margin = (("lobulated", "spiculated")[int(rng.random() < 0.55)]
                      if rng.random() < cfg.p_irregular_malignant else "round")
            diameter = rng.uniform(*cfg.malignant_diameter_mm)
        else:
            margin = ("round" if rng.random() < cfg.p_round_benign
                      else ("lobulated", "spiculated")[int(rng.random() < 0.3)])
            diameter = rng.uniform(*cfg.benign_diameter_mm)
        specs.append({
            "malignant": malignant, "margin": margin, "diameter_mm": float(diameter),
            "tail": bool(rng.random() < (cfg.p_tail_malignant if malignant else cfg.p_tail_benign)),
            "bead": bool(rng.random() < (cfg.p_bead_malignant if malignant else cfg.p_bead_benign)),
            "granuloma": bool(rng.random() < cfg.p_granuloma),
            "satellite": bool(srng.random() < (cfg.p_satellite_malignant if malignant
                                               else cfg.p_satellite_benign)),
        })
    # tails need room near the pleura: place them first
    return sorted(specs, key=lambda s: not s["tail"])


def _composite(hu: np.ndarray, sl, frac: np.ndarray, value) -> None:
    region = hu[sl]
    region += frac * (np.asarray(value, dtype=np.float32) - region)


def _lps(affine, zyx) -> list[float]:
    return [round(float(v), 3) for v in affine[:3, :3] @ np.asarray(zyx, float) + affine[:3, 3]]


def _draw_geometry(cfg: SyntheticConfig, rng) -> ph.Grid:
    """The case's grid: the fixed geometry, or shape and spacing drawn from *rng*."""
    if cfg.fixed_geometry is not None:
        shape = tuple(int(v) for v in cfg.fixed_geometry[0])
        spacing = tuple(round(float(v), 4) for v in cfg.fixed_geometry[1])
    else:
        nz = int(rng.integers(cfg.n_slices[0], cfg.n_slices[1] + 1))
        p = round(float(rng.uniform(*cfg.pixel_spacing_mm)), 4)
        spacing = (round(float(rng.uniform(*cfg.slice_spacing_mm)), 4), p, p)
        shape = (nz, cfg.shape_yx, cfg.shape_yx)
    grid = ph.Grid(shape, spacing)
    if np.any(grid.extent_mm < 2 * 26.0 + 4.0):
        raise ValueError(f"volume {shape} at spacing {spacing} mm spans {grid.extent_mm.round(1)} "
                         "mm; every axis must span >= 56 mm so a 48 mm ROI fits around a nodule")
    return grid


def _rescale_variant(cfg: SyntheticConfig, seed: int, index: int) -> str:
    """The stored-value encoding of case *index*: the variants cycled from a per-seed offset."""
    variant_names = cfg.rescale_variants
    offset = int(np.random.default_rng([seed, 3]).integers(len(variant_names)))
    return variant_names[(index + offset) % len(variant_names)]


def _add_vessels(grid: ph.Grid, hu: np.ndarray, lung: np.ndarray, rng, info: dict,
                 cfg: SyntheticConfig) -> int:
    """Grow and render the vessel trees into *hu* (in place); returns their voxel count."""
    vessels = np.zeros(grid.shape, np.float32)
    ph.render_capsules(grid, ph.grow_vessels(grid, lung, rng, info, cfg.vessel_trees_per_lung),
                       vessels)
    vessels *= lung
    n_vessel_voxels = int(np.count_nonzero(vessels >= 0.5))
    tmp = np.float32(40.0) - hu  # blood / vessel wall ~ 40 HU, composited by occupancy
    tmp *= vessels
    hu += tmp
    return n_vessel_voxels


def _place_lesions(grid: ph.Grid, hu: np.ndarray, lung: np.ndarray, rng, streams,
                   cfg: SyntheticConfig):
    """Nodules and planted structures: ``(nodules, mask, planted, items)``; the satellites,
    halos and bullae drawn from the three generators of *streams* (streams of their own;
    halos spare the vessels of *hu*, which is not modified)."""
    srng, hrng, brng = streams
    nodules = ph.place_nodules(grid, lung, rng, _nodule_specs(rng, cfg, srng))
    if not nodules:
        raise ValueError(f"no nodule fits in a volume of shape {grid.shape} at spacing "
                         f"{grid.spacing} mm; use more slices, a larger matrix or a larger "
                         "pixel spacing")
    mask = np.zeros(grid.shape, np.int16)
    for i, nod in enumerate(nodules):
        mask[nod["sl"]][nod["frac"] >= 0.5] = i + 1
    planted, items = ph.plant_items(grid, lung, mask, rng, nodules, cfg, srng=srng, brng=brng)
    _halo.plant_halos(grid, lung & (hu < _halo.PARENCHYMA_MAX_HU), mask, planted, items,
                      nodules, cfg, hrng)
    return nodules, mask, planted, items


def _paint_lesions(hu: np.ndarray, nodules: list, items: list, rng, *, blur: float,
                   noise: float, spacing) -> None:
    """Composite halos, tails, nodules, granulomas, satellites and bullae, blur, paint the
    beads, add noise and clip, in place (drawing each nodule's ``hu`` from *rng*)."""
    shape = hu.shape
    for it in items:
        if it["kind"] == _halo.KIND:
            _halo.paint_halo(hu, it)
    for it in items:
        if it["kind"] == "pleural_tail":
            _composite(hu, it["sl"], it["frac"], it["hu"])
    for nod in nodules:
        nod["hu"] = float(rng.uniform(20.0, 60.0))
        _composite(hu, nod["sl"], nod["frac"], nod["hu"])
    for it in items:
        if it["kind"] in ("granuloma", "satellite_nodule", "bulla"):
            _composite(hu, it["sl"], it["frac"], it["hu"])
    if blur > 0:  # same width in mm along z as in-plane
        ndi.gaussian_filter(hu, sigma=(blur * spacing[1] / spacing[0], blur, blur), output=hu)
    for it in items:  # metal is painted after the blur: it stays saturated
        if it["kind"] == "marker_bead":
            _composite(hu, it["sl"], it["frac"], it["hu"])
    for k0 in range(0, shape[0], 32):  # slab by slab: no volume-sized temporaries
        slab = rng.standard_normal((min(32, shape[0] - k0),) + shape[1:], dtype=np.float32)
        slab *= np.float32(noise)
        hu[k0:k0 + 32] += slab
    np.clip(hu, *HU_RANGE, out=hu)


def _nodule_records(grid: ph.Grid, affine, mask: np.ndarray, nodules: list,
                    items: list) -> list[dict]:
    """Truth records of the nodules (``truth.json``)."""
    records = []
    for i, nod in enumerate(nodules):
        zyx = grid.to_idx(nod["centre_mm"])
        kinds = {it["kind"] for it in items if it["nodule"] == i}
        records.append({
            "label": i + 1, "malignant": nod["malignant"], "diameter_mm": nod["diameter_mm"],
            "margin": nod["margin"], "center_zyx": [round(float(v), 2) for v in zyx],
            "center_lps_mm": _lps(affine, zyx),
            "n_voxels": int(np.count_nonzero(mask[nod["sl"]] == i + 1)),
            "hu": round(nod["hu"], 1), "has_pleural_tail": "pleural_tail" in kinds,
            "has_marker_bead": "marker_bead" in kinds, "has_granuloma": "granuloma" in kinds,
            "has_satellite_nodule": "satellite_nodule" in kinds,
            "has_ground_glass_halo": _halo.KIND in kinds, "has_bulla": "bulla" in kinds,
        })
    return records


def _item_records(grid: ph.Grid, affine, items: list) -> list[dict]:
    """Truth records of the planted structures (``truth.json``)."""
    records = []
    for it in items:
        zyx = grid.to_idx(it["centre_mm"])
        rec = {"label": it["label"], "kind": it["kind"], "nodule_label": it["nodule"] + 1,
               "center_zyx": [round(float(v), 2) for v in zyx], "center_lps_mm": _lps(affine, zyx),
               "n_voxels": int(it["voxels"].sum()), "hu": round(float(it["hu"]), 1)}
        rec.update({k: it[k] for k in ("width_mm", "length_mm", "diameter_mm", "distance_mm")
                    if k in it})
        records.append(rec)
    return records


def _acquisition(grid: ph.Grid, origin, rng, *, variant: str, noise: float, blur: float,
                 n_vessel_voxels: int) -> dict:
    """The acquisition record; slice thickness, kVp and kernel are drawn from *rng*."""
    shape, spacing = grid.shape, grid.spacing
    spec = RESCALE_VARIANTS[variant]
    return {
        "shape": list(shape), "spacing_mm": list(spacing), "origin_lps_mm": list(origin),
        "noise_hu": noise, "blur_sigma_vox": blur, "blur_sigma_mm": round(blur * spacing[1], 3),
        "rescale": {"variant": variant, "slope": spec["slope"], "intercept": spec["intercept"],
                    "pixel_representation": int(spec["signed"]),
                    "bits_stored": spec["bits_stored"]},
        "slice_thickness_mm": float(rng.choice([0.625, 1.0, 1.25, 1.5, 2.0, 2.5])),
        "kvp": int(rng.choice([100, 120, 140])),
        "kernel": str(_KERNELS[int(rng.integers(len(_KERNELS)))]),
        "n_vessel_voxels": n_vessel_voxels,
    }


def generate_case(seed: int, *, config: SyntheticConfig = SyntheticConfig(),
                  index: int = 0) -> SyntheticCase:
    """Generate one case in memory; the same ``(seed, index, config)`` gives the same case.

    Parameters
    ----------
    seed : int
        Cohort seed (>= 0).
    config : SyntheticConfig
    index : int
        Case number within the cohort (>= 0); identifiers are unique across indices.

    Returns
    -------
    SyntheticCase
        ``hu`` (z, y, x) float32 HU, ``mask``/``planted`` (z, y, x) int16 label maps, the
        4x4 affine and the truth records.

    Raises
    ------
    ValueError
        Bad seed/index, or a geometry too small to hold one nodule with its 48 mm ROI.
    """
    check_int("seed", seed)
    check_int("index", index)
    cfg = config
    rng = np.random.default_rng([seed, index, 0])  # the draws below keep their order
    grid = _draw_geometry(cfg, rng)
    shape, spacing = grid.shape, grid.spacing
    variant = _rescale_variant(cfg, seed, index)
    noise = round(float(rng.uniform(*cfg.noise_sigma_hu)), 2)
    blur = round(float(rng.uniform(*cfg.blur_sigma_vox)), 3)
    z0 = round(float(rng.uniform(-420.0, -120.0)), 2)
    origin = (round(-(shape[2] - 1) / 2 * spacing[2], 4),  # FOV centred on x = y = 0
              round(-(shape[1] - 1) / 2 * spacing[1], 4), z0)
    affine = affine_from_spacing(spacing, origin)

    hu, lung, info = ph.build_anatomy(grid, rng)
    n_vessel_voxels = _add_vessels(grid, hu, lung, rng, info, cfg)
    srng = np.random.default_rng([seed, index, 7])  # satellites: a stream of their own
    hrng = np.random.default_rng([seed, index, 8])  # ground-glass halos: another
    brng = np.random.default_rng([seed, index, 9])  # bullae: another
    nodules, mask, planted, items = _place_lesions(grid, hu, lung, rng, (srng, hrng, brng),
                                                   cfg)
    _paint_lesions(hu, nodules, items, rng, blur=blur, noise=noise, spacing=spacing)

    nodule_records = _nodule_records(grid, affine, mask, nodules, items)
    item_records = _item_records(grid, affine, items)
    acquisition = _acquisition(grid, origin, rng, variant=variant, noise=noise, blur=blur,
                               n_vessel_voxels=n_vessel_voxels)
    log.debug("generated synthetic case %d: shape %s, %d nodules, %d planted", index, shape,
              len(nodules), len(items))
    return SyntheticCase(hu=hu, affine=affine, mask=mask, planted=planted, nodules=nodule_records,
                         planted_items=item_records,
                         identifiers=_identity.fake_identifiers(seed, index),
                         acquisition=acquisition,
                         uids=_identity.series_uids(seed, index, shape[0]),
                         file_order=tuple(int(v) for v in rng.permutation(shape[0])),
                         seed=int(seed), index=int(index), lung=lung)


# ----------------------------------------------------------------------------- writing
def _ds(v: float) -> str:
    """Decimal String of at most 16 characters."""
    s = f"{round(float(v), 4):.4f}".rstrip("0").rstrip(".")
    return "0" if s in ("-0", "") else s


def _stored(hu_slice: np.ndarray, rescale: dict) -> np.ndarray:
    """Stored pixel values (little-endian int16/uint16) of one slice of HU."""
    dtype = np.dtype("<i2") if rescale["pixel_representation"] else np.dtype("<u2")
    info = np.iinfo(dtype)
    hi = info.max
    if not rescale["pixel_representation"]:
        hi = min(hi, 2 ** rescale["bits_stored"] - 1)
    raw = np.rint((hu_slice.astype(np.float64) - rescale["intercept"]) / rescale["slope"])
    return np.clip(raw, info.min, hi).astype(dtype)


def _write_series(case: SyntheticCase, case_dir: Path) -> None:
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    ids, acq, uids = case.identifiers, case.acquisition, case.uids
    r = acq["rescale"]
    nz, ny, nx = case.hu.shape
    dz, dy, dx = acq["spacing_mm"]
    common = {
        "SpecificCharacterSet": "ISO_IR 100", "ImageType": ["ORIGINAL", "PRIMARY", "AXIAL"],
        "SOPClassUID": CT_IMAGE_STORAGE, "StudyDate": ids["StudyDate"],
        "SeriesDate": ids["StudyDate"], "ContentDate": ids["StudyDate"],
        "StudyTime": ids["StudyTime"], "SeriesTime": ids["StudyTime"],
        "ContentTime": ids["StudyTime"], "AccessionNumber": ids["AccessionNumber"],
        "Modality": "CT",
        "Manufacturer": "SyntheticCT", "InstitutionName": ids["InstitutionName"],
        "ReferringPhysicianName": ids["ReferringPhysicianName"], "StudyDescription": "Chest CT",
        "SeriesDescription": "Axial lung", "ManufacturerModelName": "Phantom-1",
        "PatientName": ids["PatientName"], "PatientID": ids["PatientID"],
        "PatientBirthDate": ids["PatientBirthDate"], "PatientSex": ids["PatientSex"],
        "PatientAge": ids["PatientAge"], "BodyPartExamined": "CHEST",
        "SliceThickness": _ds(acq["slice_thickness_mm"]), "KVP": str(acq["kvp"]),
        "SoftwareVersions": f"synthetic-{GENERATOR_VERSION}",
        "ReconstructionDiameter": _ds(nx * dx), "ConvolutionKernel": acq["kernel"],
        "PatientPosition": "HFS", "StudyInstanceUID": uids["StudyInstanceUID"],
        "SeriesInstanceUID": uids["SeriesInstanceUID"], "StudyID": "1", "SeriesNumber": 2,
        "AcquisitionNumber": 1, "ImageOrientationPatient": ["1", "0", "0", "0", "1", "0"],
        "FrameOfReferenceUID": uids["FrameOfReferenceUID"], "PositionReferenceIndicator": "",
        "SamplesPerPixel": 1, "PhotometricInterpretation": "MONOCHROME2", "Rows": ny,
        "Columns": nx, "PixelSpacing": [_ds(dy), _ds(dx)], "BitsAllocated": 16,
        "BitsStored": r["bits_stored"], "HighBit": r["bits_stored"] - 1,
        "PixelRepresentation": r["pixel_representation"], "WindowCenter": "-600",
        "WindowWidth": "1500", "RescaleIntercept": _ds(r["intercept"]),
        "RescaleSlope": _ds(r["slope"]), "RescaleType": "HU",
    }
    # one dataset for all slices, each slice's own elements set again (building 60 cost as much)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CT_IMAGE_STORAGE
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset("", {}, file_meta=meta, preamble=b"\0" * 128)
    for key, value in common.items():
        setattr(ds, key, value)
    for j, k in enumerate(case.file_order):
        sop = uids["SOPInstanceUIDs"][k]
        meta.MediaStorageSOPInstanceUID = sop
        path = case_dir / f"CT{j + 1:06d}.dcm"
        ipp = case.affine @ np.array([k, 0.0, 0.0, 1.0])
        ds.SOPInstanceUID = sop
        ds.InstanceNumber = nz - k  # superior slice first, as many scanners do
        ds.ImagePositionPatient = [_ds(ipp[0]), _ds(ipp[1]), _ds(ipp[2])]
        ds.SliceLocation = _ds(ipp[2])
        ds.PixelData = _stored(case.hu[k], r).tobytes()
        ds.save_as(path, enforce_file_format=True)


def write_case(case: SyntheticCase, case_dir: str | Path, *,
               planted_path: str | Path | None = None) -> Path:
    """Write the DICOM series (``CT000001.dcm``...) and ``mask.nii.gz`` into *case_dir*.

    Parameters
    ----------
    case : SyntheticCase
    case_dir : str or Path
        Created if missing; must not already hold files.
    planted_path : str or Path, optional
        Where to write the planted-structure label map (``.nii.gz``); skipped when None.

    Returns
    -------
    Path
        *case_dir*.
    """
    case_dir = Path(case_dir)
    if case_dir.exists() and any(case_dir.iterdir()):
        raise ValueError(f"case folder {case_dir.name!r} already holds files; write each case "
                         "into an empty folder")
    case_dir.mkdir(parents=True, exist_ok=True)
    _write_series(case, case_dir)
    save_nifti(Mask(case.mask, case.affine), case_dir / "mask.nii.gz")
    if planted_path is not None:
        save_nifti(Mask(case.planted, case.affine), Path(planted_path))
    return case_dir


def _case_record(case: SyntheticCase) -> dict:
    uids = {k: v for k, v in case.uids.items() if k != "SOPInstanceUIDs"}
    return {"case_dir": case.case_dir, "identifiers": dict(case.identifiers), "uids": uids,
            "acquisition": case.acquisition, "nodules": case.nodules,
            "planted": case.planted_items}


_CSV_COLUMNS = ("case_dir", "nodule_label", "malignant", "diameter_mm", "margin", "center_z",
                "center_y", "center_x", "has_pleural_tail", "has_marker_bead", "has_granuloma",
                "has_satellite_nodule", "has_ground_glass_halo", "has_bulla")


def _clear_previous(out: Path) -> None:
    truth = out / "truth.json"
    if not truth.is_file():
        raise ValueError(f"output folder {out.name!r} is not empty and holds no truth.json; "
                         "refusing to overwrite something that is not a synthetic cohort")
    for rec in load_truth(out).get("cases", []):
        d = out / str(rec.get("case_dir", ""))
        if d.parent == out and d.is_dir() and d.name and not d.name.startswith("_"):
            shutil.rmtree(d)
    shutil.rmtree(out / "_truth", ignore_errors=True)
    for name in ("truth.json", "truth.csv"):
        (out / name).unlink(missing_ok=True)


def _write_one(out: Path, seed: int, config: SyntheticConfig, index: int) -> tuple[dict, list]:
    """Generate and write case *index* of a cohort; its truth record and truth.csv rows."""
    case = generate_case(seed, config=config, index=index)
    write_case(case, out / case.case_dir,
               planted_path=out / "_truth" / f"{case.case_dir}_planted.nii.gz")
    rows = [{"case_dir": case.case_dir, "nodule_label": n["label"],
             **dict(zip(("center_z", "center_y", "center_x"), n["center_zyx"])),
             **{k: int(n[k]) if k == "malignant" or k.startswith("has_") else n[k]
                for k in _CSV_COLUMNS[2:] if not k.startswith("center_")}}
            for n in case.nodules]
    return _case_record(case), rows


def _written_cases(out: Path, n_cases: int, seed: int, config: SyntheticConfig, workers: int):
    """``(record, rows)`` of each case in index order, written here or on *workers* processes."""
    if workers == 1 or n_cases == 1:
        yield from (_write_one(out, seed, config, i) for i in range(n_cases))
        return
    with ProcessPoolExecutor(max_workers=min(workers, n_cases),
                             mp_context=multiprocessing.get_context("spawn")) as pool:
        yield from pool.map(_write_one, *zip(*[(out, seed, config, i) for i in range(n_cases)]))


def generate_cohort(out_dir: str | Path, *, n_cases: int, seed: int,
                    config: SyntheticConfig = SyntheticConfig(),
                    progress: Callable[[int, int], None] | None = None,
                    overwrite: bool = False, workers: int = 1) -> Path:
    """Generate and write *n_cases* cases plus the truth manifest.

    Parameters
    ----------
    out_dir : str or Path
        Cohort folder; created if missing.  Must be empty unless ``overwrite`` is set, in
        which case the previous cohort recorded in its ``truth.json`` is removed first.
    n_cases : int
        Number of cases (>= 1).
    seed : int
        Cohort seed; case *i* is ``generate_case(seed, index=i)``.
    config : SyntheticConfig
    progress : callable(done, total), optional
        Called after each case is written.
    overwrite : bool
    workers : int
        Processes writing cases at once (>= 1, spawned); the cohort is the same for any number.

    Returns
    -------
    Path
        Path of ``truth.json``.
    """
    check_int("n_cases", n_cases, 1), check_int("seed", seed), check_int("workers", workers, 1)
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise ValueError(f"output folder {out.name!r} is not empty; choose an empty folder "
                             "or pass overwrite=True to replace a previous synthetic cohort")
        _clear_previous(out)
    (out / "_truth").mkdir(parents=True, exist_ok=True)
    records, rows = [], []
    for i, (record, case_rows) in enumerate(_written_cases(out, n_cases, seed, config, workers)):
        records.append(record)
        rows += case_rows
        log.info("synthetic cohort: wrote case %d of %d", i + 1, n_cases)
        if progress is not None:
            progress(i + 1, n_cases)
    truth = {"seed": int(seed), "config": config.to_dict(), "generator_version": GENERATOR_VERSION,
             "cases": records}
    (path := out / "truth.json").write_text(json.dumps(truth, indent=1))
    with open(out / "truth.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=_CSV_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    return path


def load_truth(cohort_dir: str | Path) -> dict:
    """Read ``truth.json`` of a cohort folder (or the file itself).

    Returns
    -------
    dict
        ``{"seed", "config", "generator_version", "cases": [...]}`` as written.

    Raises
    ------
    UnreadableFileError
        Missing, unreadable or not a truth manifest.
    """
    path = Path(cohort_dir)
    if path.is_dir():
        path = path / "truth.json"
    if not path.is_file():
        raise UnreadableFileError("truth manifest 'truth.json' not found in the cohort folder; "
                                  "generate the cohort with generate_cohort()", path=path)
    try:
        truth = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UnreadableFileError(f"truth manifest 'truth.json' cannot be read "
                                  f"({type(exc).__name__})", path=path) from None
    if not isinstance(truth, dict) or not isinstance(truth.get("cases"), list):
        raise UnreadableFileError("'truth.json' is not a synthetic-cohort manifest (no 'cases' "
                                  "list)", path=path)
    return truth
