"""The arrays of one case (CT, masks, attribution, region map, affine): one file per case.

A case's arrays live in ``RESULTS/cases/<case_id>.zarr.zip``: a `Zarr <https://zarr.dev>`_
(format 3) group in a zip file (:class:`zarr.storage.ZipStore`; members stored, not deflated),
every array chunked and compressed with Blosc-Zstd (level 1, byte shuffle), the CT kept as
int16 Hounsfield units, losslessly except for the air around the patient, which ``discovery
score`` stores as -1000 HU (:func:`flatten_outside_air`; ``--lossless-ct`` keeps it).  Any
Zarr reader opens it::

    import zarr
    group = zarr.open_group(zarr.storage.ZipStore("case-1a2b.zarr.zip", mode="r"), mode="r")
    ct = group["ct"][40]            # one axial slice; only its chunk is read

Mostly-zero arrays (masks, attribution and region maps: a few nodule boxes in a whole scan)
are stored as the flat C-order indices and values of their nonzero elements
(``<name>.nz-index``, ``<name>.nz-value``); the group attribute ``layout`` records, per
array, ``{"layout": "sparse", "shape": [...], "dtype": "<f4"}`` or ``{"layout": "dense"}``.
3-D arrays are chunked by whole axial slices (about 4 MiB of raw data a chunk), so a viewer
reads one slice without inflating the scan.

Measured (docs/benchmarks/speed.md): the CT of a real scan (Lung-PET-CT-Dx, 64 slices of
512 x 512) compresses 2.1 times with these settings losslessly and 3.4 times with the air
around the patient flattened.  The uncompressed ``.npz`` files of earlier versions
(``cases/<case_id>.npz``, memory-mapped) are still read; a re-scored case replaces its file.

Each file is written to a temporary name and renamed over the old one
(:func:`data_tools.files.atomic_path`), so a reader sees the old or the new case, never half
of one.
"""

from __future__ import annotations

import json
import math
import mmap
import struct
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from data_tools.files import atomic_path
from discovery.parallel import thread_map

__all__ = ["CASE_SUFFIX", "LEGACY_SUFFIX", "case_file", "ct_int16", "flatten_outside_air",
           "matches_stored_ct", "save_case_arrays", "load_case_arrays"]

#: The file of one case, ``cases/<case_id><CASE_SUFFIX>``.
CASE_SUFFIX = ".zarr.zip"
#: The uncompressed, memory-mapped zip of ``.npy`` members written before (read, not written).
LEGACY_SUFFIX = ".npz"
#: Compression of every array: Blosc with Zstandard, level 1, byte shuffle.  Of the Blosc and
#: plain Zstd settings tried on CT (docs/benchmarks/speed.md, ``benchmarks/storage.py``) the
#: fastest to write a case file at a size within 2 % of the smallest: on the standard scan
#: 0.26 s against 0.85 s for level 5 with bit shuffle, and 2 % smaller.  Files written with
#: other settings are read alike (the codec is recorded in each array's metadata).
_BLOSC = {"cname": "zstd", "clevel": 1, "shuffle": "shuffle"}
#: Chunks zarr encodes at once while writing a case file (zarr's default is 10): on a
#: standard scan's case 4 keep ~45 MiB less in memory during the write, same time
#: (docs/benchmarks/speed.md).
WRITE_CONCURRENCY = 4
#: Raw bytes per chunk of a 3-D array (whole axial slices).
_CHUNK_BYTES = 4 << 20
#: An array is stored sparse (flat indices + values of its nonzero elements) when it has at
#: least _SPARSE_MIN_SIZE elements, at most half of its blocks of _BLOCK consecutive elements
#: (C order) hold a nonzero element, and indices + values take at most half the dense bytes.
_SPARSE_MIN_SIZE = 1 << 16
_BLOCK = 4096
#: Legacy files: the member that says how each array is stored (absent in the deflated files
#: written before it; those are read as plain ``.npz``).
_LAYOUT_MEMBER = "__layout__.json"


#: Air HU: what :func:`flatten_outside_air` writes.
AIR_HU = -1000


def ct_int16(hu: np.ndarray) -> np.ndarray:
    """HU rounded to the nearest integer and clipped to int16, slice by slice (whole-volume
    ``np.clip(np.rint(hu))`` would hold two float copies of the scan at once).

    Parameters
    ----------
    hu : ndarray, shape (z, y, x), real

    Returns
    -------
    ndarray, shape (z, y, x), int16
    """
    hu = np.asarray(hu)
    if hu.ndim != 3:
        raise ValueError(f"hu must be 3-D (z, y, x); received shape {hu.shape}")
    out = np.empty(hu.shape, dtype=np.int16)
    info = np.iinfo(np.int16)
    for k in range(hu.shape[0]):
        out[k] = np.clip(np.rint(hu[k]), info.min, info.max)
    return out


def flatten_outside_air(ct: np.ndarray, *, keep=(), air_below_hu: float = -400.0,
                        flatten_below_hu: float = -900.0, out: np.ndarray | None = None,
                        threads: int = 1) -> tuple[np.ndarray, int]:
    """The CT with the air *around* the patient set to -1000 HU, for storage.

    Air outside the body holds no structure, only detector noise, and that noise is what
    keeps a lossless coder from compressing the CT further: set to one value it compresses to
    almost nothing, and a standard scan's case file halves (docs/benchmarks/speed.md).  The
    rule, per axial slice: the voxels below *air_below_hu* that are connected (4-neighbours,
    within the slice) to the image border are outside air; those of them below
    *flatten_below_hu* become :data:`AIR_HU`.  Everything else is kept exactly: the body, the
    lungs (air enclosed by the body), skin and blankets (-900 HU and above), and every voxel
    inside the *keep* boxes.  A lung cut open by the field of view connects to the border: its
    voxels below -900 HU would be flattened too (``discovery score --lossless-ct`` keeps them).

    Parameters
    ----------
    ct : ndarray, shape (z, y, x), integer or float
        HU.
    keep : iterable of tuple of slice
        Boxes ``(z, y, x)`` left exactly as they are (the analysed ROIs).
    air_below_hu, flatten_below_hu : float
        HU thresholds of the rule above.
    out : ndarray or None
        Where to write the result (may be *ct* itself); a new array when None.
    threads : int
        Slices done at once (SciPy releases the GIL while it labels); the result does not
        depend on it.

    Returns
    -------
    ct : ndarray, same shape and dtype as *ct*
    n_flattened : int
        Voxels set to -1000 HU.
    """
    from scipy import ndimage

    ct = np.asarray(ct)
    if ct.ndim != 3:
        raise ValueError(f"ct must be 3-D (z, y, x); received shape {ct.shape}")
    if out is None:
        result = ct.copy()
    else:
        result = out
        if result is not ct:
            result[...] = ct
    boxes = []
    for box in keep:
        if len(box) != 3 or not all(isinstance(b, slice) for b in box):
            raise ValueError(f"keep must hold (z, y, x) tuples of slices; received {box!r}")
        boxes.append((range(*box[0].indices(ct.shape[0])), box[1:]))

    def flatten(ks: range) -> int:
        n = 0
        for k in ks:
            labels, n_labels = ndimage.label(ct[k] < air_below_hu)
            outside = np.zeros(n_labels + 1, dtype=bool)
            outside[labels[0]] = outside[labels[-1]] = True
            outside[labels[:, 0]] = outside[labels[:, -1]] = True
            outside[0] = False
            if not outside.any():
                continue
            flat = np.take(outside, labels)          # faster than outside[labels]
            flat &= ct[k] < flatten_below_hu
            for zs, in_plane in boxes:
                if k in zs:
                    flat[in_plane] = False
            np.copyto(result[k], AIR_HU, where=flat)   # slice k only: threads never share one
            n += int(np.count_nonzero(flat))
        return n

    n_threads = max(1, int(threads))
    chunks = [range(i, ct.shape[0], n_threads) for i in range(n_threads)]
    return result, sum(thread_map(flatten, chunks, threads=n_threads))


def matches_stored_ct(ct: np.ndarray, stored: np.ndarray, *,
                      flatten_below_hu: float = -900.0) -> bool:
    """Whether *stored* (a case file's CT) is *ct* (int16 HU, as read again from the input)
    up to :func:`flatten_outside_air`: equal everywhere except voxels stored as -1000 HU whose
    input value was below *flatten_below_hu*."""
    ct, stored = np.asarray(ct), np.asarray(stored)
    if ct.shape != stored.shape:
        return False
    differ = ct != stored
    return bool((stored[differ] == AIR_HU).all() and (ct[differ] < flatten_below_hu).all())


def case_file(results_dir: str | Path, case_id: str) -> Path | None:
    """The file holding the arrays of *case_id* in *results_dir* (``cases/<case_id>.zarr.zip``,
    or the ``.npz`` of an earlier version), or None when there is none."""
    folder = Path(results_dir) / "cases"
    for suffix in (CASE_SUFFIX, LEGACY_SUFFIX):
        path = folder / f"{case_id}{suffix}"
        if path.is_file():
            return path
    return None


def _sparse_index(arr: np.ndarray) -> np.ndarray | None:
    """Flat C-order indices of the nonzero elements of *arr* (any bit set: -0.0 and NaN
    count as values), or None when *arr* is not to be stored sparse (see
    :data:`_SPARSE_MIN_SIZE`).  Only the blocks that hold a nonzero element are searched."""
    if (arr.dtype.kind not in "biuf" or arr.dtype.itemsize not in (1, 2, 4, 8)
            or not arr.flags.c_contiguous or arr.size < _SPARSE_MIN_SIZE):
        return None
    bits = arr.reshape(-1).view(f"u{arr.dtype.itemsize}")
    n_blocks = bits.size // _BLOCK
    head = bits[:n_blocks * _BLOCK].reshape(n_blocks, _BLOCK)
    hit = np.flatnonzero(head.max(axis=1))
    if 2 * len(hit) > n_blocks:
        return None
    rows, cols = np.nonzero(head[hit])
    index = np.concatenate([hit[rows].astype(np.int64) * _BLOCK + cols,
                            np.flatnonzero(bits[n_blocks * _BLOCK:]) + n_blocks * _BLOCK])
    if arr.size <= np.iinfo(np.uint32).max:
        index = index.astype(np.uint32)
    if 2 * index.size * (index.itemsize + arr.itemsize) > arr.nbytes:
        return None
    return index


def _chunks(arr: np.ndarray) -> tuple[int, ...]:
    """Whole axial slices, about :data:`_CHUNK_BYTES` a chunk, for 3-D arrays; one chunk
    otherwise."""
    if arr.ndim != 3 or arr.size == 0:
        return tuple(max(int(s), 1) for s in arr.shape)
    per_slice = max(arr.shape[1] * arr.shape[2] * arr.itemsize, 1)
    return (int(min(max(_CHUNK_BYTES // per_slice, 1), arr.shape[0])), *arr.shape[1:])


def save_case_arrays(results_dir: str | Path, case_id: str, **arrays: np.ndarray) -> str:
    """Write the arrays of one case to ``cases/<case_id>.zarr.zip``; return that path relative
    to *results_dir*.

    Parameters
    ----------
    results_dir : path
        The results folder (``cases/`` is created in it).
    case_id : str
        The case's pseudonymous id (the file name).
    **arrays : ndarray
        Numeric arrays by name (``ct`` int16 HU ``(z, y, x)``, ``mask``, ``attribution``,
        ``region_map``, ``affine`` (4, 4), ...).  Mostly-zero ones are stored sparse.

    Raises
    ------
    ValueError
        An array that is not numeric or boolean (nothing is written).

    Notes
    -----
    A ``.npz`` of an earlier version for the same case is removed once the new file is in
    place, so a case never has two files.
    """
    import zarr
    from zarr.codecs import BloscCodec
    from zarr.storage import ZipStore

    folder = Path(results_dir) / "cases"
    folder.mkdir(parents=True, exist_ok=True)
    members: dict[str, np.ndarray] = {}
    layout: dict[str, dict[str, Any]] = {}
    for name, value in arrays.items():
        arr = np.ascontiguousarray(np.asanyarray(value))
        if arr.dtype.kind not in "biuf":
            raise ValueError(f"case arrays must be numeric or boolean; {name!r} of case "
                             f"{case_id!r} has dtype {arr.dtype}")
        index = _sparse_index(arr)
        if index is None:
            members[name] = arr
            layout[name] = {"layout": "dense"}
        else:
            members[f"{name}.nz-index"] = index
            members[f"{name}.nz-value"] = arr.reshape(-1)[index]
            layout[name] = {"layout": "sparse", "shape": list(arr.shape), "dtype": arr.dtype.str}
    codec = BloscCodec(**_BLOSC)
    with atomic_path(folder / f"{case_id}{CASE_SUFFIX}") as tmp, \
            zarr.config.set({"async.concurrency": WRITE_CONCURRENCY}):
        store = ZipStore(tmp, mode="w")
        try:
            group = zarr.create_group(store, attributes={"layout": layout, "version": 2})
            for name, arr in members.items():
                out = group.create_array(name, shape=arr.shape, dtype=arr.dtype,
                                         chunks=_chunks(arr), compressors=codec,
                                         fill_value=0)
                if arr.size:
                    out[...] = arr
        finally:
            store.close()
    (folder / f"{case_id}{LEGACY_SUFFIX}").unlink(missing_ok=True)
    return f"cases/{case_id}{CASE_SUFFIX}"


def load_case_arrays(results_dir: str | Path, case_id: str) -> dict[str, np.ndarray]:
    """Read the arrays of one case as saved by :func:`save_case_arrays`: same names, shapes
    and dtypes, as ordinary writable arrays (changes never reach the file).

    Files of earlier versions (``cases/<case_id>.npz``) are read too: their uncompressed
    members are memory-mapped copy-on-write, deflated ones read whole.

    Raises
    ------
    FileNotFoundError
        The case has no file in *results_dir*.
    """
    path = case_file(results_dir, case_id)
    if path is None:
        raise FileNotFoundError(f"case {case_id!r} has no arrays in {Path(results_dir).name}/"
                                f"cases (no {case_id}{CASE_SUFFIX}); score the case again")
    if path.name.endswith(LEGACY_SUFFIX):
        return _load_npz(path)
    import zarr
    from zarr.storage import ZipStore

    store = ZipStore(path, mode="r")
    try:
        group = zarr.open_group(store, mode="r")
        layout = dict(group.attrs["layout"])
        out: dict[str, np.ndarray] = {}
        for name, spec in layout.items():
            if spec["layout"] == "sparse":
                arr = _sparse(spec, group[f"{name}.nz-index"][...], group[f"{name}.nz-value"][...])
            else:
                arr = np.asarray(group[name][...])
            out[name] = arr
    finally:
        store.close()
    return out


def _sparse(spec: dict, index: np.ndarray, values: np.ndarray) -> np.ndarray:
    """The dense array of a sparse member (its ``layout`` entry, flat indices and values)."""
    arr = _lean_zeros(tuple(spec["shape"]), np.dtype(spec["dtype"]))
    arr.reshape(-1)[index] = values
    return arr


def _lean_zeros(shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """``np.zeros(shape, dtype)`` whose untouched pages stay unallocated in 4 KiB steps.

    A sparse array decoded into ``np.zeros`` memory gets a 2 MiB transparent huge page for
    every nonzero element where the kernel backs large allocations with huge pages: a scan's
    three nodule boxes then cost about 200 MiB instead of 20.  Private anonymous memory
    marked ``MADV_NOHUGEPAGE`` avoids that (reading untouched pages costs a page fault each,
    about 0.2 s per 300 MiB, once)."""
    nbytes = math.prod(shape) * dtype.itemsize
    flags = getattr(mmap, "MAP_PRIVATE", None), getattr(mmap, "MAP_ANONYMOUS", None)
    advice = getattr(mmap, "MADV_NOHUGEPAGE", None)
    if nbytes < (2 << 20) or None in flags or advice is None:
        return np.zeros(shape, dtype)
    buf = mmap.mmap(-1, nbytes, flags=flags[0] | flags[1])
    try:
        buf.madvise(advice)
    except OSError:  # advice only
        pass
    return np.frombuffer(buf, dtype=dtype).reshape(shape)


# -- the uncompressed .npz files of earlier versions (read only) ------------------------
def _mapped_npy(fh, mm, info: zipfile.ZipInfo) -> np.ndarray | None:
    """The ``.npy`` member *info* of the open zip file *fh* as a copy-on-write view of the
    mapping *mm*, or None when it cannot be mapped (compressed, empty, or no mapping)."""
    if mm is None or info.compress_type != zipfile.ZIP_STORED:
        return None
    fh.seek(info.header_offset)
    header = fh.read(30)
    if header[:4] != b"PK\x03\x04":
        raise ValueError(f"bad zip entry {info.filename!r} in a case file")
    name_len, extra_len = struct.unpack("<HH", header[26:30])
    fh.seek(info.header_offset + 30 + name_len + extra_len)
    version = np.lib.format.read_magic(fh)
    shape, fortran, dtype = (np.lib.format.read_array_header_1_0(fh) if version == (1, 0)
                             else np.lib.format.read_array_header_2_0(fh))
    if dtype.hasobject:
        raise ValueError(f"object arrays are not read from case files ({info.filename!r})")
    offset = fh.tell()
    if math.prod(shape) == 0 or offset + math.prod(shape) * dtype.itemsize > len(mm):
        return None
    return np.ndarray(shape, dtype=dtype, buffer=mm, offset=offset,
                      order="F" if fortran else "C")


def _load_npz(path: Path) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    with open(path, "rb") as fh, zipfile.ZipFile(fh) as zf:
        infos = {i.filename: i for i in zf.infolist()}
        stored = any(i.compress_type == zipfile.ZIP_STORED and i.file_size for i in infos.values())
        mm = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_COPY) if stored else None

        def member(name: str) -> np.ndarray:
            arr = _mapped_npy(fh, mm, infos[name])
            if arr is None:
                with zf.open(infos[name]) as stream:
                    return np.lib.format.read_array(stream, allow_pickle=False)
            return arr

        if _LAYOUT_MEMBER in infos:
            layout = json.loads(zf.read(_LAYOUT_MEMBER))["arrays"]
        else:  # files of earlier versions (deflated): every member is one array
            layout = {n[:-4]: {"layout": "dense"} for n in infos if n.endswith(".npy")}
        for name, spec in layout.items():
            if spec["layout"] == "sparse":
                arr = _sparse(spec, member(f"{name}.nz-index.npy"), member(f"{name}.nz-value.npy"))
            else:
                arr = member(f"{name}.npy")
            out[name] = arr
    return out
