"""Geometry helpers for the synthetic chest phantom (private to :mod:`data_tools.synthetic`).

Everything here works in *phantom millimetres* ``(z, y, x)``: ``z`` runs from the first slice
(``z = k * dz``), ``y`` and ``x`` are measured from the centre of the field of view (``+y``
posterior, ``+x`` patient left, as in LPS).  Structures are described in mm, so they look the
same whatever the voxel spacing; anatomy is scaled to the field of view so a chest fills it.

Occupancy is rendered with a one-voxel partial-volume ramp: for a signed distance ``sd`` (mm,
negative inside) the fraction is ``clip(0.5 - sd / voxel_mm, 0, 1)``; a voxel belongs to a
structure's label when its centre is inside (fraction >= 0.5).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

log = logging.getLogger(__name__)

#: Half side of the classifier's region of interest around a nodule (mm); a 48 mm cube.
ROI_HALF_MM = 24.0


@dataclass(frozen=True)
class Grid:
    """A voxel grid: ``shape`` (z, y, x) and ``spacing`` (dz, dy, dx) in mm."""

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]

    @property
    def centre_idx(self) -> np.ndarray:
        return np.array([0.0, (self.shape[1] - 1) / 2.0, (self.shape[2] - 1) / 2.0])

    @property
    def voxel_mm(self) -> float:
        """Geometric-mean voxel size (mm): the width of the partial-volume ramp."""
        return float(np.prod(self.spacing) ** (1.0 / 3.0))

    @property
    def extent_mm(self) -> np.ndarray:
        """Distance (mm) between the first and last voxel centres along z, y, x."""
        return (np.array(self.shape) - 1) * np.array(self.spacing)

    def to_idx(self, p_mm) -> np.ndarray:
        return np.asarray(p_mm, dtype=float) / np.array(self.spacing) + self.centre_idx

    def to_mm(self, idx) -> np.ndarray:
        return (np.asarray(idx, dtype=float) - self.centre_idx) * np.array(self.spacing)

    def axes_mm(self):
        """Broadcastable coordinate arrays ``Z (nz,1,1)``, ``Y (1,ny,1)``, ``X (1,1,nx)``."""
        nz, ny, nx = self.shape
        z = (np.arange(nz, dtype=np.float32) * self.spacing[0]).reshape(nz, 1, 1)
        y = ((np.arange(ny, dtype=np.float32) - (ny - 1) / 2) * self.spacing[1]).reshape(1, ny, 1)
        x = ((np.arange(nx, dtype=np.float32) - (nx - 1) / 2) * self.spacing[2]).reshape(1, 1, nx)
        return z, y, x

    def box(self, centre_mm, half_mm):
        """Voxel box around *centre_mm* (clipped to the grid).

        Returns ``(slices, (Z, Y, X))`` where Z, Y, X are broadcastable mm offsets of the box's
        voxel centres from *centre_mm*; ``slices`` is None when the box misses the grid.
        """
        c = self.to_idx(centre_mm)
        half = np.atleast_1d(np.asarray(half_mm, dtype=float)) / np.array(self.spacing)
        lo = np.maximum(np.floor(c - half).astype(int), 0)
        hi = np.minimum(np.ceil(c + half).astype(int) + 1, np.array(self.shape))
        if np.any(hi <= lo):
            return None, None
        sl = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
        offs = []
        for ax in range(3):
            v = (np.arange(lo[ax], hi[ax]) - c[ax]) * self.spacing[ax]
            shape = [1, 1, 1]
            shape[ax] = v.size
            offs.append(v.reshape(shape).astype(np.float32))
        return sl, tuple(offs)

    def inside(self, p_mm, mask: np.ndarray) -> bool:
        """True when the voxel nearest to *p_mm* exists and is set in *mask*."""
        i = np.rint(self.to_idx(p_mm)).astype(int)
        if np.any(i < 0) or np.any(i >= np.array(self.shape)):
            return False
        return bool(mask[i[0], i[1], i[2]])


# ----------------------------------------------------------------------------- shapes
def sd_sphere(off, c, r):
    z, y, x = off
    return np.sqrt((z - c[0]) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2) - r


def sd_ellipsoid(off, c, axes, rot):
    """Approximate signed distance to an ellipsoid; rows of *rot* are its axes (zyx)."""
    q = [off[i] - c[i] for i in range(3)]
    k2 = 0.0
    for i in range(3):
        u = rot[i, 0] * q[0] + rot[i, 1] * q[1] + rot[i, 2] * q[2]
        k2 = k2 + (u / axes[i]) ** 2
    return (np.sqrt(k2) - 1.0) * float(min(axes))


def sd_capsule(off, p0, p1, r0, r1):
    """Signed distance to a segment p0-p1 whose radius tapers linearly from r0 to r1."""
    d = np.asarray(p1, dtype=float) - np.asarray(p0, dtype=float)
    l2 = max(float(d @ d), 1e-9)
    q = [off[i] - p0[i] for i in range(3)]
    t = np.clip((q[0] * d[0] + q[1] * d[1] + q[2] * d[2]) / l2, 0.0, 1.0)
    dist = np.sqrt((q[0] - t * d[0]) ** 2 + (q[1] - t * d[1]) ** 2 + (q[2] - t * d[2]) ** 2)
    return dist - (r0 + t * (r1 - r0))


def sd_union(off, parts):
    """Union (minimum) of the signed distances of *parts* (tuples ``(kind, *args)``)."""
    fns = {"sphere": sd_sphere, "ellipsoid": sd_ellipsoid, "capsule": sd_capsule}
    out = None
    for kind, *args in parts:
        sd = fns[kind](off, *args)
        out = sd if out is None else np.minimum(out, sd)
    return out


def occupancy(sd, voxel_mm: float) -> np.ndarray:
    return np.clip(0.5 - sd / voxel_mm, 0.0, 1.0).astype(np.float32)


def unit(v) -> np.ndarray:
    v = np.asarray(v, dtype=float)
    return v / max(float(np.linalg.norm(v)), 1e-9)


def random_unit(rng) -> np.ndarray:
    return unit(rng.standard_normal(3))


def random_rotation(rng) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    return q * np.sign(np.diag(r))


def smooth_noise(rng, shape, cell) -> np.ndarray:
    """Zero-mean smooth noise (std ~1): a coarse random lattice, one node per *cell* voxels
    along each axis, interpolated linearly axis by axis (two gathers per axis)."""
    coarse = [int(np.ceil(n / c)) + 2 for n, c in zip(shape, cell)]
    g = rng.standard_normal(coarse).astype(np.float32)
    for ax, (n, c) in enumerate(zip(shape, cell)):
        pos = np.arange(n) / c + 0.5
        i0 = np.floor(pos).astype(int)
        w = (pos - i0).astype(np.float32)
        wshape = [1, 1, 1]
        wshape[ax] = n
        w = w.reshape(wshape)
        lo = np.take(g, i0, axis=ax)
        hi = np.take(g, np.minimum(i0 + 1, coarse[ax] - 1), axis=ax)
        lo *= 1 - w
        hi *= w
        lo += hi
        g = lo
    g *= np.float32(1.6)
    return g


# ----------------------------------------------------------------------------- anatomy
def _superellipse(x, y, a, b, p=2.0):
    return np.abs(x / a) ** p + np.abs(y / b) ** p


@dataclass(frozen=True)
class _Chest:
    """Size of one phantom's chest, in mm: body semi-axes ``A`` (x) and ``B`` (y), anatomy
    scale ``s`` (relative to a 290 x 220 mm adult chest), body centre offset ``yb``, fat
    thickness ``tf``, z extent ``lz`` and field of view ``fov_x``, ``fov_y``."""

    A: float
    B: float
    s: float
    yb: float
    tf: float
    lz: float
    fov_x: float
    fov_y: float


def _draw_chest(grid: Grid, rng) -> _Chest:
    """Chest size scaled to the field of view (draws the body axes, then the fat thickness)."""
    _, ny, nx = grid.shape
    _, dy, dx = grid.spacing
    fov_x, fov_y = nx * dx, ny * dy
    lz = max(grid.extent_mm[0], 1.0)
    A = 0.425 * fov_x * rng.uniform(0.96, 1.02)
    B = 0.325 * fov_y * rng.uniform(0.96, 1.02)
    s = min(A / 145.0, B / 110.0)  # anatomy scale relative to a 290 x 220 mm adult chest
    yb = 0.01 * fov_y
    tf = rng.uniform(8.0, 16.0) * s  # subcutaneous fat over muscle
    return _Chest(A=A, B=B, s=s, yb=yb, tf=tf, lz=lz, fov_x=fov_x, fov_y=fov_y)


def _torso_slice(X2, Y2, ch: _Chest) -> tuple[np.ndarray, dict]:
    """The z-invariant 2-D slice (table, fat, muscle, aorta, spine, sternum) in HU, and the
    outlines the slice-by-slice step needs."""
    A, B, s, yb, tf = ch.A, ch.B, ch.s, ch.yb, ch.tf
    base = np.full((Y2.shape[0], X2.shape[1]), -1000.0, np.float32)

    def paint(mask2d, value):
        base[np.broadcast_to(mask2d, base.shape)] = value

    yt = yb + B + 10 * s  # carbon-fibre table under the patient's back
    paint((Y2 > yt) & (Y2 < yt + 7 * s) & (np.abs(X2) < 0.45 * ch.fov_x), -350.0)
    paint(_superellipse(X2, Y2 - yb, A, B, 2.3) <= 1.0, -100.0)
    inner = _superellipse(X2, Y2 - yb, A - tf, B - tf, 2.3) <= 1.0
    paint(inner, 45.0)
    ao_x, ao_y, ao_r = 0.10 * A, yb + 0.38 * B, 11.0 * s
    paint((X2 - ao_x) ** 2 + (Y2 - ao_y) ** 2 <= ao_r**2, 45.0)
    vy, vr = yb + 0.56 * B, 17.0 * s  # vertebral body (cortex brighter), canal, process
    rv = np.sqrt(X2**2 + (Y2 - vy) ** 2)
    spine_body = rv <= vr
    paint(spine_body, 260.0)
    paint((rv > vr - 2.5 * s) & spine_body, 650.0)
    canal_y = vy + vr + 8 * s
    ring = np.sqrt(X2**2 + (Y2 - canal_y) ** 2)
    paint((ring <= 12 * s) & (ring > 7 * s), 550.0)
    paint(ring <= 7 * s, 15.0)
    paint(_superellipse(X2, Y2 - (canal_y + 18 * s), 4 * s, 10 * s) <= 1.0, 600.0)
    paint(_superellipse(X2, Y2 - (yb - B + tf + 8 * s), 14 * s, 6 * s) <= 1.0, 450.0)
    keep_out = (((X2 - ao_x) ** 2 + (Y2 - ao_y) ** 2 <= (ao_r + 3 * s) ** 2)
                | (np.abs(X2) < 0.12 * A) | (rv <= vr + 6 * s) | ~inner)
    return base, {"spine_body": np.broadcast_to(spine_body, base.shape), "keep_out": keep_out}


def _lung_outlines(X2, Y2, ch: _Chest, rng) -> tuple[list, list]:
    """Per lung (right, -x, first) its 2-D superellipse value and diaphragm floor, and its
    centre and semi-axes (mm) for the vessel trees."""
    A, B, yb = ch.A, ch.B, ch.yb
    lungs2d, lung_info = [], []
    for side, size, dome in ((-1, 1.04, 0.22), (1, 0.96, 0.14)):  # right lung (-x) larger
        cx, cy = side * 0.47 * A, yb + 0.03 * B
        a = 0.33 * A * size * rng.uniform(0.95, 1.03)
        b = 0.70 * B * size * rng.uniform(0.95, 1.03)
        rn2 = np.clip(((X2 - cx) / a) ** 2 + ((Y2 - cy) / b) ** 2, 0.0, 1.0)
        floor = (dome * ch.lz * rng.uniform(0.8, 1.2)) * (1.0 - rn2)  # diaphragm dome
        lungs2d.append((_superellipse(X2 - cx, Y2 - cy, a, b, 2.2), floor))
        lung_info.append({"side": side, "centre_yx": (cy, cx), "semi_yx": (b, a)})
    return lungs2d, lung_info


def _stack_slices(grid: Grid, rng, X2, Y2, zz, ch: _Chest, base, torso: dict, disc,
                  lungs2d) -> tuple[np.ndarray, np.ndarray]:
    """Slice by slice: the torso plus discs, heart, trachea and lungs with a smooth texture
    (drawn from *rng*).  Returns ``hu`` (float32) and ``lung`` (bool)."""
    A, B, s, yb = ch.A, ch.B, ch.s, ch.yb
    zf = zz / ch.lz  # 0 at the inferior end, 1 superior
    soft = base > -500
    spine_body = torso["spine_body"]
    hz = np.sqrt(np.clip(1.0 - ((zf - 0.12) / 0.62) ** 2, 0.0, 1.0))  # heart, inferior part
    ha = 0.36 * A
    heart_q = _superellipse(X2 - 0.10 * A, Y2 - (yb - 0.30 * B), ha, 0.42 * B)
    trachea = np.broadcast_to((X2**2 + (Y2 - yb + 0.12 * B) ** 2) <= (8.5 * s) ** 2, base.shape)
    taper = np.sqrt(np.clip(1.0 - ((zf - 0.38) / 0.9) ** 2, 0.05, 1.0)) ** 2.2
    gravity = (-862.0 + 25.0 * np.clip((Y2 - yb) / B, -1, 1)).astype(np.float32)
    gravity = np.broadcast_to(gravity, base.shape)

    tex = smooth_noise(rng, grid.shape, (4, 8, 8))
    hu = np.empty(grid.shape, np.float32)
    lung = np.zeros(grid.shape, bool)
    for k in range(grid.shape[0]):
        sl = base.copy()
        if disc[k]:
            np.copyto(sl, np.float32(90.0), where=spine_body)
        lk = np.zeros(base.shape, bool)
        for shape2, floor in lungs2d:
            lk |= (shape2 <= taper[k]) & (zz[k] > floor)
        lk &= ~torso["keep_out"]
        if hz[k] > 0.05:
            hq = heart_q / hz[k] ** 2
            heart = hq <= 1.0
            np.copyto(sl, np.float32(-80.0), where=heart)  # pericardial fat rim
            np.copyto(sl, np.float32(40.0), where=hq <= (1.0 - 4 * s / (ha * max(hz[k], 0.3))) ** 2)
            lk &= ~heart
        if zf[k] > 0.6:
            np.copyto(sl, np.float32(-1000.0), where=trachea)
        tk = tex[k]
        np.add(sl, np.float32(6.0) * tk, out=sl, where=soft)
        np.copyto(sl, gravity + np.float32(14.0) * tk, where=lk)
        hu[k] = sl
        lung[k] = lk
    return hu, lung


def _add_ribs(grid: Grid, hu: np.ndarray, lung: np.ndarray, rng, zz, ch: _Chest) -> None:
    """Ribs, in place: 9 per side on a ring just outside the lungs, drifting around it with z
    (never over the lung)."""
    s, yb, lz = ch.s, ch.yb, ch.lz
    ring_a, ring_b = ch.A - ch.tf - 9 * s, ch.B - ch.tf - 9 * s
    for side in (-1, 1):
        for k in range(9):
            theta0 = np.deg2rad(30 + 135 * k / 8 + rng.uniform(-6, 6))
            period = rng.uniform(30, 45) * s
            phase = rng.uniform(0, 2 * np.pi)
            theta = theta0 + 0.12 * np.sin(2 * np.pi * zz / (3 * period) + phase)
            present = np.flatnonzero(np.cos(2 * np.pi * zz / period + phase) > -0.25)
            cx_r = side * ring_a * np.sin(theta)
            cy_r = yb - ring_b * np.cos(theta)
            mid = (lz / 2, float(np.mean(cy_r)), float(np.mean(cx_r)))
            sl, off = grid.box(mid, (lz, 22 * s + 12, 22 * s + 12))
            if sl is None or present.size == 0:
                continue
            yy = off[1] + mid[1] - cy_r[present].reshape(-1, 1, 1)
            xx = off[2] + mid[2] - cx_r[present].reshape(-1, 1, 1)
            ct = np.cos(theta[present]).reshape(-1, 1, 1)
            st = np.sin(theta[present]).reshape(-1, 1, 1)
            tang = xx * ct * side + yy * st  # along the ring
            rad = xx * st * side - yy * ct  # outward
            rho = (tang / (7.0 * s)) ** 2 + (rad / (4.5 * s)) ** 2
            if theta0 < np.deg2rad(50):
                val = np.where(rho <= 1.0, 110.0, -np.inf)  # costal cartilage
            else:
                val = np.where(rho <= 1.0, np.where(rho > 0.45, 700.0, 250.0), -np.inf)
            region = (present, sl[1], sl[2])
            sub, lsub = hu[region], lung[region]
            hu[region] = np.where(lsub, sub, np.maximum(sub, val)).astype(np.float32)


def build_anatomy(grid: Grid, rng) -> tuple[np.ndarray, np.ndarray, dict]:
    """Chest phantom in HU without vessels or lesions.

    The z-invariant structures (table, fat, muscle, aorta, spine, sternum) are drawn once on a
    2-D slice; the z-dependent ones (heart, trachea, discs, lungs) slice by slice.

    Returns
    -------
    hu : ndarray (z, y, x) float32
    lung : ndarray (z, y, x) bool, the lung parenchyma (pleura = its boundary)
    info : dict with the lung centres/semi-axes (mm) used to seed vessel trees
    """
    Z, Y, X = grid.axes_mm()
    Y2, X2 = Y[0], X[0]  # (ny, 1), (1, nx)
    zz = Z[:, 0, 0]
    ch = _draw_chest(grid, rng)  # the random draws below keep their order
    base, torso = _torso_slice(X2, Y2, ch)
    disc = np.mod(zz + rng.uniform(0, 28), 28.0 * ch.s) < 5.0 * ch.s
    lungs2d, lung_info = _lung_outlines(X2, Y2, ch, rng)
    hu, lung = _stack_slices(grid, rng, X2, Y2, zz, ch, base, torso, disc, lungs2d)
    _add_ribs(grid, hu, lung, rng, zz, ch)
    return hu, lung, {"lungs": lung_info, "lz": ch.lz, "B": ch.B, "yb": ch.yb, "scale": ch.s}


# ----------------------------------------------------------------------------- vessels
def _norm3(v):
    """*v* (3 plain floats) scaled to unit length, as a list."""
    n = math.sqrt(v[0] * v[0] + v[1] * v[1] + v[2] * v[2]) + 1e-12
    return [v[0] / n, v[1] / n, v[2] / n]


def _lung_test(grid: Grid, lung: np.ndarray):
    """``inside(q)``: True when the voxel nearest to *q* (mm, plain floats) is lung."""
    cidx = grid.centre_idx
    (dz, dy, dx), (cz, cy0, cx0), (nz, ny, nx) = grid.spacing, tuple(cidx), grid.shape

    def inside(q):  # plain floats: this runs once per step
        i, j, k = round(q[0] / dz + cz), round(q[1] / dy + cy0), round(q[2] / dx + cx0)
        return 0 <= i < nz and 0 <= j < ny and 0 <= k < nx and bool(lung[i, j, k])
    return inside


class _WalkDraws:
    """Random numbers of the vessel walks, drawn up front (jitter, then uniforms) and used
    in turn, cycling."""

    def __init__(self, rng, n: int):
        self.jitter = (rng.standard_normal((n, 3)) * 0.1).tolist()
        self.uniforms = rng.random((n, 5)).tolist()
        self.i = 0

    def next(self):
        i = self.i
        self.i = (i + 1) % len(self.jitter)
        return self.jitter[i], self.uniforms[i]


def _walk_trees(queue, hilum, inside, draws: _WalkDraws, segs: list, budget: int,
                branch_mm: float, decay_mm: float) -> None:
    """Grow the branches in *queue* breadth-first, appending ``(p, q, r0, r1)`` to *segs*
    until the queue is empty or *segs* holds *budget* segments."""
    while queue and len(segs) < budget:
        p, d, r = queue.popleft()
        for _ in range(200):
            step = min(max(2.0 * r, 1.0), 4.0)
            out = _norm3([p[0] - hilum[0], p[1] - hilum[1], p[2] - hilum[2]])
            (jz, jy, jx), u = draws.next()
            d = _norm3([d[0] + jz + 0.05 * out[0], d[1] + jy + 0.05 * out[1],
                        d[2] + jx + 0.05 * out[2]])
            q = [p[0] + d[0] * step, p[1] + d[1] * step, p[2] + d[2] * step]
            if not inside(q):
                break
            r_new = r * math.exp(-step / decay_mm)
            segs.append((p, q, r, r_new))
            p, r = q, r_new
            if u[0] < step / branch_mm:
                # a child leaves at 25-60 degrees, in a random plane containing d
                w = _norm3([u[1] - 0.5, u[2] - 0.5, u[3] - 0.5])
                axis = _norm3([d[1] * w[2] - d[2] * w[1], d[2] * w[0] - d[0] * w[2],
                               d[0] * w[1] - d[1] * w[0]])
                ang = math.radians(25 + 35 * u[4])
                if r * 0.6 >= 0.35:
                    child = [math.cos(ang) * d[i] + math.sin(ang) * axis[i] for i in range(3)]
                    queue.append((p, child, r * (0.6 + 0.2 * u[1])))
                r *= 0.85
            if r < 0.35 or len(segs) >= budget:
                break


def _grow_trees(grid: Grid, lung: np.ndarray, rng, info: dict, n_trees: tuple[int, int],
                max_segments: int) -> tuple[list, list]:
    """Vessel trees from each hilum: ``(segments (p, q, r0, r1), hila)`` in mm."""
    from collections import deque

    inside = _lung_test(grid, lung)
    segs: list[tuple] = []
    hila = []
    draws = _WalkDraws(rng, max_segments + 16)
    for li in info["lungs"]:
        side = li["side"]
        (cy, cx), (b, a) = li["centre_yx"], li["semi_yx"]
        hilum = [0.55 * info["lz"], cy - 0.05 * b, cx - side * 0.6 * a]
        hila.append(hilum)
        if not inside(hilum):
            continue
        budget = len(segs) + max_segments // 2
        queue = deque()
        for _ in range(int(rng.integers(n_trees[0], n_trees[1] + 1))):
            d = rng.standard_normal(3) * np.array([1.3, 0.9, 0.5])
            d[2] = side * (abs(d[2]) + 0.3)
            start = (np.array(hilum) + rng.normal(0, 2.0, 3)).tolist()
            queue.append((start, _norm3(d.tolist()), float(rng.uniform(2.2, 3.2))))
        _walk_trees(queue, hilum, inside, draws, segs, budget,
                    branch_mm=0.12 * (a + b),  # mean distance between bifurcations
                    decay_mm=2.0 * (a + b))
    return segs, hila


def _twigs(grid: Grid, lung: np.ndarray, rng, hila: list, n_twigs: int):
    """*n_twigs* (at most) short thin segments in the lung pointing away from the nearest
    hilum: ``(p0, p1, r0)`` in mm."""
    sp = np.array(grid.spacing)
    cidx = grid.centre_idx
    ds = lung[::2, ::2, ::2]
    flat = np.flatnonzero(ds)
    pick = rng.choice(flat, size=min(n_twigs, flat.size), replace=False)
    idx = np.stack(np.unravel_index(pick, ds.shape), axis=1) * 2
    idx = idx + rng.uniform(-1, 1, (pick.size, 3))
    p0 = (idx - cidx) * sp
    hil = np.array(hila)
    near = hil[np.argmin(np.linalg.norm(p0[:, None] - hil[None], axis=2), axis=1)]
    d = p0 - near
    d = d / (np.linalg.norm(d, axis=1, keepdims=True) + 1e-9) + rng.normal(0, 0.35, p0.shape)
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    p1 = p0 + d * rng.uniform(3.0, 9.0, (pick.size, 1))
    r0 = rng.uniform(0.4, 1.0, pick.size)
    return p0, p1, r0


def grow_vessels(grid: Grid, lung: np.ndarray, rng, info: dict, n_trees: tuple[int, int],
                 *, max_segments: int = 6000, twigs_per_litre: float = 1400.0):
    """Pulmonary vessels as capsules ``(p0 (n, 3), p1 (n, 3), r0 (n,), r1 (n,))`` in mm.

    Trees: branching random walks from each hilum; radii shrink slowly along a branch and at
    every bifurcation, from ~3 mm at the hilum to sub-millimetre twigs.  Trees grow
    breadth-first so the segment budget (half per lung) is shared between them.  Twigs:
    short thin segments scattered through the parenchyma, pointing away from the hilum, that
    stand for the peripheral vessels a walk of this budget cannot reach.
    """
    segs, hila = _grow_trees(grid, lung, rng, info, n_trees, max_segments)
    if segs:
        t0, t1, tr0, tr1 = (np.array(v, dtype=float) for v in zip(*segs))
    else:
        t0, t1, tr0, tr1 = np.zeros((0, 3)), np.zeros((0, 3)), np.zeros(0), np.zeros(0)
    n_twigs = int(twigs_per_litre * lung.sum() * np.prod(np.array(grid.spacing)) / 1e6)
    if n_twigs and hila:
        p0, p1, r0 = _twigs(grid, lung, rng, hila, n_twigs)
        t0, t1 = np.concatenate([t0, p0]), np.concatenate([t1, p1])
        tr0, tr1 = np.concatenate([tr0, r0]), np.concatenate([tr1, 0.8 * r0])
    return t0, t1, tr0, tr1


def render_capsules(grid: Grid, capsules, out: np.ndarray) -> None:
    """Max-composite the occupancy of capsules ``(p0, p1, r0, r1)`` (mm) into *out*.

    Vectorised: capsules are grouped by the size of their voxel box, each group is evaluated
    as one ``(n, pz, py, px)`` array and scattered with ``np.maximum.at``.
    """
    p0, p1, r0, r1 = (np.asarray(v, dtype=np.float64) for v in capsules)
    if p0.size == 0:
        return
    sp = np.array(grid.spacing)
    cidx = grid.centre_idx
    shape = np.array(grid.shape)
    vox = grid.voxel_mm
    lo_mm = np.minimum(p0, p1) - np.maximum(r0, r1)[:, None] - vox
    hi_mm = np.maximum(p0, p1) + np.maximum(r0, r1)[:, None] + vox
    lo = np.floor(lo_mm / sp + cidx).astype(int)
    dims = np.ceil(hi_mm / sp + cidx).astype(int) - lo + 1
    dims = 2 ** np.ceil(np.log2(np.maximum(dims, 1))).astype(int)  # few distinct box sizes
    flat_out = out.reshape(-1)
    keys, inverse = np.unique(dims, axis=0, return_inverse=True)
    for g, key in enumerate(keys):
        sel = np.flatnonzero(inverse.ravel() == g)
        for chunk in np.array_split(sel, max(1, int(sel.size * np.prod(key) // 2_000_000) + 1)):
            n = chunk.size
            if n == 0:
                continue
            ax_idx = [lo[chunk, a][:, None] + np.arange(key[a])[None] for a in range(3)]
            ax_mm = [(ax_idx[a] - cidx[a]) * sp[a] for a in range(3)]
            shp = [(n, -1, 1, 1), (n, 1, -1, 1), (n, 1, 1, -1)]
            q = [ax_mm[a].reshape(shp[a]) - p0[chunk, a].reshape(n, 1, 1, 1) for a in range(3)]
            d = (p1[chunk] - p0[chunk])
            l2 = np.maximum((d * d).sum(1), 1e-9).reshape(n, 1, 1, 1)
            dd = [d[:, a].reshape(n, 1, 1, 1) for a in range(3)]
            t = np.clip((q[0] * dd[0] + q[1] * dd[1] + q[2] * dd[2]) / l2, 0.0, 1.0)
            dist2 = (q[0] - t * dd[0]) ** 2 + (q[1] - t * dd[1]) ** 2 + (q[2] - t * dd[2]) ** 2
            rad = r0[chunk].reshape(n, 1, 1, 1) + t * (r1[chunk] - r0[chunk]).reshape(n, 1, 1, 1)
            f = np.clip(0.5 - (np.sqrt(dist2) - rad) / vox, 0.0, 1.0)
            valid = f > 0
            for a in range(3):
                ia = ax_idx[a].reshape(shp[a])
                valid &= (ia >= 0) & (ia < shape[a])
            iz, iy, ix = (np.broadcast_to(ax_idx[a].reshape(shp[a]), f.shape)[valid]
                          for a in range(3))
            flat = (iz * shape[1] + iy) * shape[2] + ix
            np.maximum.at(flat_out, flat, f[valid].astype(out.dtype))


# ----------------------------------------------------------------------------- nodules
def nodule_parts(rng, margin: str, radius: float, avoid_dir=None) -> tuple[list, float]:
    """Shape of a nodule centred at the origin: ``(parts, extent_mm)``."""
    if margin == "round":
        axes = radius * rng.uniform(0.88, 1.12, 3)
        axes *= radius / np.cbrt(np.prod(axes))  # keep the equivalent diameter
        return [("ellipsoid", np.zeros(3), axes, random_rotation(rng))], float(axes.max())
    if margin == "lobulated":
        parts = [("sphere", np.zeros(3), 0.68 * radius)]
        for _ in range(int(rng.integers(3, 6))):
            rl = radius * rng.uniform(0.45, 0.6)
            parts.append(("sphere", random_unit(rng) * (radius - rl), rl))
        return parts, radius
    if margin != "spiculated":
        raise ValueError(f"unknown nodule margin {margin!r}")
    parts = [("sphere", np.zeros(3), radius)]
    longest = 0.0
    n = int(rng.integers(6, 13))
    while len(parts) < n + 1:
        u = unit(random_unit(rng) * np.array([0.3, 1.0, 1.0]))  # spicules favour the axial plane
        if avoid_dir is not None and float(u @ avoid_dir) > np.cos(np.deg2rad(50)):
            continue
        length = rng.uniform(3.0, 10.0)
        longest = max(longest, length)
        parts.append(("capsule", u * 0.7 * radius, u * (radius + length),
                      rng.uniform(1.0, 1.5) + 0.04 * radius, 0.35))
    return parts, radius + longest


def lung_distance(grid: Grid, lung: np.ndarray):
    """Distance (mm) from each lung voxel to the pleura, on a 2x-decimated grid, with the
    index (on that grid) of the nearest non-lung voxel."""
    ds = lung[::2, ::2, ::2]
    dist, inds = ndi.distance_transform_edt(
        ds, sampling=tuple(2 * s for s in grid.spacing), return_indices=True)
    return dist.astype(np.float32), inds


def pleura_along(grid: Grid, lung, c, u, max_mm=30.0) -> float:
    """Distance (mm) from *c* along unit *u* to the first non-lung voxel (inf if none)."""
    h = 0.3 * min(grid.spacing)
    for t in np.arange(0.0, max_mm, h):
        if not grid.inside(c + t * u, lung):
            return float(t)
    return float("inf")


def place_nodules(grid: Grid, lung: np.ndarray, rng, specs: list[dict], *,
                  edge_mm: float = 26.0, pref_sep_mm: float = 45.0, attempts: int = 300):
    """Choose centres and shapes for *specs* (in order).

    Each nodule lies in the lung (core at least 4 mm from the pleura, or, for a pleural tail,
    its surface 7-14 mm and its centre at most 19.5 mm from it, so that most of the tail lies
    beyond a 5 mm margin around the nodule), its centre at least *edge_mm* from every volume face, and
    apart from the others (*pref_sep_mm* preferred).  A nodule with no room is shrunk, then
    loses its tail, then is dropped.  Returns the placed specs, each with ``centre_mm``,
    ``parts``, ``extent``, ``sl``/``frac`` (occupancy box) and ``tail_dir``/``pleura_mm``.
    """
    dist, inds = lung_distance(grid, lung)
    allowed = dist > 0
    for ax in range(3):
        pos = np.arange(dist.shape[ax]) * 2 * grid.spacing[ax]
        ok = (pos >= edge_mm) & (pos <= grid.extent_mm[ax] - edge_mm)
        shape = [1, 1, 1]
        shape[ax] = ok.size
        allowed &= ok.reshape(shape)
    vox = grid.voxel_mm
    placed: list[dict] = []
    for spec in specs:
        spec = dict(spec)
        diameter = float(spec["diameter_mm"])
        done = False
        while not done:
            r = diameter / 2
            if spec["tail"]:
                cand = allowed & (dist >= r + 8.0) & (dist <= min(r + 14.0, 19.0))
            else:
                cand = allowed & (dist >= r + 4.0)
            flat = np.flatnonzero(cand)
            picks = (rng.choice(flat, size=min(attempts, flat.size), replace=False)
                     if flat.size else [])
            for n_try, fi in enumerate(picks):
                di = np.array(np.unravel_index(fi, dist.shape))
                c = grid.to_mm(2 * di + rng.uniform(-0.5, 0.5, 3))
                tail_dir, pleura = None, None
                if spec["tail"]:
                    nearest = grid.to_mm(2 * inds[(slice(None),) + tuple(di)])
                    tail_dir = unit(nearest - c)
                    pleura = pleura_along(grid, lung, c, tail_dir)
                    if not (r + 7.0 <= pleura <= 19.5):
                        continue
                parts, extent = nodule_parts(rng, spec["margin"], r, tail_dir)
                sep = [np.linalg.norm(c - o["centre_mm"]) for o in placed]
                need = [extent + o["extent"] + 6.0 for o in placed]
                if n_try < 0.6 * len(picks):
                    need = [max(n, pref_sep_mm) for n in need]
                if any(s_ < n_ for s_, n_ in zip(sep, need)):
                    continue
                sl, off = grid.box(c, extent + 2 * vox)
                core = sd_sphere(off, np.zeros(3), 0.7 * r) <= 0
                if not np.all(lung[sl][core]):
                    continue
                frac = occupancy(sd_union(off, parts), vox) * lung[sl]
                spec.update(diameter_mm=round(diameter, 2), centre_mm=c, parts=parts,
                            extent=extent, sl=sl, frac=frac, tail_dir=tail_dir, pleura_mm=pleura)
                placed.append(spec)
                done = True
                break
            if not done:
                if diameter * 0.85 >= 5.0:
                    diameter *= 0.85
                elif spec["tail"]:
                    log.debug("no room for a pleural tail; placing the nodule without one")
                    spec["tail"] = False
                    diameter = float(spec["diameter_mm"])
                else:
                    log.debug("no room for a nodule of %.1f mm; skipped", diameter)
                    done = True
    return placed


# ----------------------------------------------------------------------------- planted
class _NoduleSurround:
    """The ROI box around one nodule where its planted structures go, with what placing
    them needs: offsets (mm) from the nodule centre, distance to the centre (``rc``) and to
    the nodule masks (``d_nod``), the lung, and the shared planted map and item list."""

    def __init__(self, grid: Grid, lung, nodule_labels, planted, items: list, n_i: int,
                 nod: dict):
        self.centre = nod["centre_mm"]
        self.sl, self.off = grid.box(self.centre, ROI_HALF_MM)
        off = self.off
        self.rc = np.sqrt(off[0] ** 2 + off[1] ** 2 + off[2] ** 2)
        self.samp = grid.spacing
        self.d_nod = ndi.distance_transform_edt(nodule_labels[self.sl] == 0, sampling=self.samp)
        self.lung = lung[self.sl]
        self.grid, self.vox = grid, grid.voxel_mm
        self.planted, self.items, self.n_i = planted, items, n_i

    def free(self) -> np.ndarray:
        """Distance (mm) of each box voxel to the structures planted so far."""
        return ndi.distance_transform_edt(self.planted[self.sl] == 0, sampling=self.samp)

    def accept(self, kind, frac, voxels, hu, centre, extra) -> None:
        """Label *voxels* in the planted map and record the item."""
        label = len(self.items) + 1
        self.planted[self.sl][voxels] = label
        self.items.append(dict(kind=kind, nodule=self.n_i, label=label, sl=self.sl, frac=frac,
                               voxels=voxels, hu=hu, centre_mm=centre, **extra))


def _plant_tail(box: _NoduleSurround, nod: dict, rng, cfg) -> None:
    """A slightly bent soft-tissue band from the nodule centre to just past the pleura."""
    width = rng.uniform(cfg.tail_width_mm[0], cfg.tail_width_mm[1])
    u = nod["tail_dir"]
    end = u * (nod["pleura_mm"] + 1.5)
    bend = unit(np.cross(u, random_unit(rng))) * rng.uniform(0, 1.2)
    mid = 0.55 * end + bend
    half = width / 2
    off, vox = box.off, box.vox
    frac = np.maximum(occupancy(sd_capsule(off, np.zeros(3), mid, half, half), vox),
                      occupancy(sd_capsule(off, mid, end, half, half), vox))
    vs = (frac >= 0.5) & box.lung & (box.d_nod > 2.0) & (box.rc <= 20.0) & (box.free() > 1.5)
    if vs.sum() >= 3:
        nz_idx = np.nonzero(vs)
        cz = np.array([float(np.mean(off[a].ravel()[nz_idx[a]])) for a in range(3)])
        box.accept("pleural_tail", frac, vs, rng.uniform(-30, 30), box.centre + cz,
                   {"width_mm": round(width, 2),
                    "length_mm": round(float(nod["pleura_mm"]), 2)})


def _plant_sphere(box: _NoduleSurround, nod: dict, kind: str, r_rng, d_rng, hu_rng,
                  draw) -> None:
    """A sphere of *kind* at a random free spot of the box (250 tries, drawn from *draw*)."""
    c, off, vox = box.centre, box.off, box.vox
    grid = box.grid
    rad = draw.uniform(*r_rng) / 2
    fr = box.free()
    # a satellite's and a bulla's distance is counted from the nodule's edge, the others'
    # from its centre
    base = float(nod["diameter_mm"]) / 2 if kind in ("satellite_nodule", "bulla") else 0.0
    for attempt in range(250):
        lo = base + d_rng[0]
        hi = base + d_rng[1] if attempt < 150 else 20.0 - rad - 0.5
        dist = draw.uniform(lo, max(hi, lo))
        p = c + random_unit(draw) * dist
        p = grid.to_mm(np.rint(grid.to_idx(p)))  # centre on a voxel: full-intensity core
        q = p - c
        sd = sd_sphere(off, q, rad)
        frac = occupancy(sd, vox)
        vs = sd <= 0
        ring = frac > 0
        if (vs.sum() == 0 or not np.all(box.lung[ring]) or np.any(box.d_nod[ring] <= 2.0)
                or np.any(box.rc[ring] > 20.0) or np.any(fr[ring] <= 1.5)):
            continue
        box.accept(kind, frac, vs, draw.uniform(*hu_rng), p,
                   {"diameter_mm": round(2 * rad, 2),
                    "distance_mm": round(float(np.linalg.norm(q)), 2)})
        return
    log.debug("no room for a %s next to nodule %d", kind, box.n_i + 1)


def plant_items(grid: Grid, lung: np.ndarray, nodule_labels: np.ndarray, rng,
                nodules: list[dict], cfg, *, srng=None, brng=None) -> tuple[np.ndarray, list[dict]]:
    """Place the requested tail/bead/granuloma/satellite/bulla of each nodule.

    The satellite nodules are placed after every other structure of every nodule, from
    *srng* (their own random stream), so that the other structures do not depend on whether
    satellites are planted; the bullae last, from *brng* (whether each nodule has one, then
    where), likewise.

    Returns the planted label map (int16, grid shape) and the item records (geometry for
    painting); each item dict has ``kind``, ``nodule``, ``label``, ``sl``, ``frac``
    (occupancy in its box), ``voxels`` (bool in its box), ``hu`` and ``centre_mm``.
    """
    srng = rng if srng is None else srng
    planted = np.zeros(grid.shape, np.int16)
    items: list[dict] = []
    passes = [(i, n, False) for i, n in enumerate(nodules)]
    passes += [(i, n, True) for i, n in enumerate(nodules) if n.get("satellite", False)]
    for n_i, nod, satellite_pass in passes:
        box = _NoduleSurround(grid, lung, nodule_labels, planted, items, n_i, nod)
        if nod["tail"] and not satellite_pass:
            _plant_tail(box, nod, rng, cfg)
        spheres = ((("satellite_nodule", True, cfg.satellite_diameter_mm,
                      cfg.satellite_distance_mm, cfg.satellite_hu, srng),) if satellite_pass else
                   (("granuloma", nod["granuloma"], cfg.granuloma_diameter_mm,
                     cfg.granuloma_distance_mm, cfg.granuloma_hu, rng),
                    ("marker_bead", nod["bead"], cfg.bead_diameter_mm, cfg.bead_distance_mm,
                     cfg.bead_hu, rng)))
        for kind, want, r_rng, d_rng, hu_rng, draw in spheres:
            if want:
                _plant_sphere(box, nod, kind, r_rng, d_rng, hu_rng, draw)
    if brng is not None and max(cfg.p_bulla_malignant, cfg.p_bulla_benign) > 0:
        for n_i, nod in enumerate(nodules):
            if brng.random() < (cfg.p_bulla_malignant if nod["malignant"] else
                                cfg.p_bulla_benign):
                box = _NoduleSurround(grid, lung, nodule_labels, planted, items, n_i, nod)
                _plant_sphere(box, nod, "bulla", cfg.bulla_diameter_mm, cfg.bulla_distance_mm,
                              cfg.bulla_hu, brng)
    return planted, items
