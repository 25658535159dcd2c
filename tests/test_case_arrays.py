"""Per-case arrays: the compressed Zarr case file, its sparse members, reading the ``.npz``
files of earlier versions, and the viewer's derived values (``app.common``)."""

from __future__ import annotations

import json
import mmap
import zipfile

import numpy as np
import pytest
import zarr
from zarr.storage import ZipStore

from discovery.report import render
from discovery.store.arrays import (case_file, ct_int16, flatten_outside_air, load_case_arrays,
                                    matches_stored_ct, save_case_arrays)

SHAPE = (20, 64, 64)  # 81,920 voxels in 20 blocks of 4,096: above the sparse layout's floor


def _case(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    ct = rng.integers(-1024, 1500, size=SHAPE).astype(np.int16)
    mask = np.zeros(SHAPE, np.int16)
    mask[5:9, 10:20, 10:20] = 1
    mask[12:14, 40:44, 30:36] = 2
    mask[3, 0, 0] = -1                      # a negative label counts as background
    attr = np.zeros(SHAPE, np.float32)
    attr[4:10, 8:24, 8:24] = rng.random((6, 16, 16), dtype=np.float32)
    attr[15, 50, 50] = -0.0                 # sign bit kept
    attr[16, 1, 2] = np.nan                 # NaN kept
    region_map = np.zeros(SHAPE, np.int16)
    region_map[6, 30:33, 30:33] = 1
    return {"ct": ct, "mask": mask, "attribution": attr, "region_map": region_map,
            "affine": np.diag([2.5, 0.7, 0.7, 1.0]), "region_deep": np.zeros((0, 0), np.float32),
            "flags": np.asfortranarray(rng.random((300, 300)) > 0.999)}


def _assert_same(got: dict, want: dict) -> None:
    assert list(got) == list(want)
    for k, v in want.items():
        assert got[k].dtype == v.dtype and got[k].shape == v.shape, k
        np.testing.assert_array_equal(got[k], v, err_msg=k)  # NaN == NaN here


def _owner(arr: np.ndarray):
    """The object that owns *arr*'s memory (an mmap for mapped or lean arrays)."""
    while isinstance(arr.base, np.ndarray):
        arr = arr.base
    return arr.base.obj if isinstance(arr.base, memoryview) else arr.base


def _group(path):
    store = ZipStore(path, mode="r")
    return store, zarr.open_group(store, mode="r")


def test_round_trip_keeps_names_order_dtypes_and_values(tmp_path):
    arrays = _case()
    rel = save_case_arrays(tmp_path, "c1", **arrays)
    assert rel == "cases/c1.zarr.zip" and case_file(tmp_path, "c1") == tmp_path / rel
    got = load_case_arrays(tmp_path, "c1")
    _assert_same(got, arrays)
    assert np.signbit(got["attribution"][15, 50, 50]) and np.isnan(got["attribution"][16, 1, 2])
    assert sorted(p.name for p in (tmp_path / "cases").iterdir()) == ["c1.zarr.zip"]  # no temp
    assert case_file(tmp_path, "nope") is None
    with pytest.raises(FileNotFoundError, match="nope"):
        load_case_arrays(tmp_path, "nope")


def test_file_is_a_compressed_zarr_group_any_reader_opens(tmp_path):
    arrays = _case()
    save_case_arrays(tmp_path, "c1", **arrays)
    path = tmp_path / "cases" / "c1.zarr.zip"
    store, group = _group(path)
    try:
        layout = group.attrs["layout"]
        assert {k: v["layout"] for k, v in layout.items()} == {
            "ct": "dense", "mask": "sparse", "attribution": "sparse", "region_map": "sparse",
            "affine": "dense", "region_deep": "dense", "flags": "dense"}
        np.testing.assert_array_equal(group["ct"][3], arrays["ct"][3])   # one slice, by zarr
        assert group["ct"].chunks[1:] == SHAPE[1:]                       # whole axial slices
        codec = group["ct"].compressors[0].to_dict()["configuration"]
        assert codec["cname"] == "zstd" and codec["shuffle"] == "shuffle"
        # mask: 400 + 48 labelled voxels + the -1; index uint32, values keep their dtype
        index, values = group["mask.nz-index"][...], group["mask.nz-value"][...]
    finally:
        store.close()
    assert index.dtype == np.uint32 and values.dtype == np.int16 and len(index) == 400 + 48 + 1
    assert (np.diff(index.astype(np.int64)) > 0).all()
    with zipfile.ZipFile(path) as zf:   # chunks are compressed by Blosc, not by the zip
        assert all(i.compress_type == zipfile.ZIP_STORED for i in zf.infolist())


def test_ct_is_stored_losslessly_and_smaller_than_raw(tmp_path):
    rng = np.random.default_rng(3)
    z, y, x = np.mgrid[0:40, 0:128, 0:128]
    body = ((y - 64) ** 2 + (x - 64) ** 2) < 55 ** 2
    ct = np.where(body, -850 + 40 * rng.standard_normal((40, 128, 128)), -1024).astype(np.int16)
    save_case_arrays(tmp_path, "c1", ct=ct)
    np.testing.assert_array_equal(load_case_arrays(tmp_path, "c1")["ct"], ct)
    assert (tmp_path / "cases" / "c1.zarr.zip").stat().st_size < 0.6 * ct.nbytes


def test_loaded_arrays_are_writable_copies(tmp_path):
    arrays = _case()
    save_case_arrays(tmp_path, "c1", **arrays)
    got = load_case_arrays(tmp_path, "c1")
    assert got["ct"].flags.writeable and got["attribution"].flags.writeable
    got["ct"][0, 0, 0] = 12345               # private to this process ...
    again = load_case_arrays(tmp_path, "c1")
    assert again["ct"][0, 0, 0] == arrays["ct"][0, 0, 0]  # ... never written to the file


def test_rewrite_replaces_the_case_while_old_arrays_stay_readable(tmp_path):
    save_case_arrays(tmp_path, "c1", **_case(0))
    old = load_case_arrays(tmp_path, "c1")
    new_arrays = _case(1)
    save_case_arrays(tmp_path, "c1", **new_arrays)
    _assert_same(load_case_arrays(tmp_path, "c1"), new_arrays)
    _assert_same(old, _case(0))


def test_failed_write_keeps_the_old_file_and_leaves_no_temp_file(tmp_path):
    arrays = _case()
    save_case_arrays(tmp_path, "c1", **arrays)
    with pytest.raises(ValueError, match="'bad' of case 'c1' has dtype object"):
        save_case_arrays(tmp_path, "c1", ct=arrays["ct"], bad=np.array([{"a": 1}], dtype=object))
    assert sorted(p.name for p in (tmp_path / "cases").iterdir()) == ["c1.zarr.zip"]
    _assert_same(load_case_arrays(tmp_path, "c1"), arrays)


def test_small_and_dense_arrays_stay_dense(tmp_path):
    small = np.zeros((10, 10, 10), np.float32)          # below the floor
    busy = np.zeros(SHAPE, np.float32)
    busy[:11, 0, 0] = 1.0                               # 11 of 20 blocks hold a nonzero
    crowded = np.zeros(SHAPE, np.int16)
    crowded[:10, :48] = 7                               # 10 blocks, but 3/4 of them nonzero
    save_case_arrays(tmp_path, "c2", small=small, busy=busy, crowded=crowded,
                     empty=np.zeros(SHAPE, np.int16))
    store, group = _group(tmp_path / "cases" / "c2.zarr.zip")
    try:
        layout = group.attrs["layout"]
    finally:
        store.close()
    assert [layout[k]["layout"] for k in ("small", "busy", "crowded", "empty")] == \
        ["dense", "dense", "dense", "sparse"]
    got = load_case_arrays(tmp_path, "c2")
    np.testing.assert_array_equal(got["busy"], busy)
    np.testing.assert_array_equal(got["crowded"], crowded)
    assert got["empty"].shape == SHAPE and not got["empty"].any()


# -- the .npz files of earlier versions: read, replaced when the case is written again --------
def _write_uncompressed_npz(path, arrays: dict) -> None:
    """The layout of the previous version: stored .npy members, sparse ones as nz-index /
    nz-value, and __layout__.json."""
    layout = {}
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for name, arr in arrays.items():
            members = {f"{name}.npy": arr}
            layout[name] = {"layout": "dense"}
            if name == "mask":
                idx = np.flatnonzero(arr).astype(np.uint32)
                members = {f"{name}.nz-index.npy": idx, f"{name}.nz-value.npy": arr.reshape(-1)[idx]}
                layout[name] = {"layout": "sparse", "shape": list(arr.shape), "dtype": arr.dtype.str}
            for member, value in members.items():
                with zf.open(member, "w", force_zip64=True) as fh:
                    np.lib.format.write_array(fh, np.ascontiguousarray(value), allow_pickle=False)
        zf.writestr("__layout__.json", json.dumps({"version": 1, "arrays": layout}))


@pytest.mark.parametrize("writer", ["numpy", "deflated", "uncompressed"])
def test_npz_files_of_earlier_versions_are_still_read(tmp_path, writer):
    arrays = {k: v for k, v in _case().items() if k != "flags"}
    (tmp_path / "cases").mkdir()
    path = tmp_path / "cases" / "old.npz"
    if writer == "numpy":
        np.savez_compressed(path, **arrays)
    elif writer == "deflated":  # deflate level 1, zip64 members
        with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
            for name, value in arrays.items():
                with zf.open(f"{name}.npy", "w", force_zip64=True) as fh:
                    np.lib.format.write_array(fh, value, allow_pickle=False)
    else:
        _write_uncompressed_npz(path, arrays)
    assert case_file(tmp_path, "old") == path
    got = load_case_arrays(tmp_path, "old")
    _assert_same(got, arrays)
    if writer == "uncompressed":   # memory-mapped copy-on-write, as that version read them
        assert isinstance(_owner(got["ct"]), mmap.mmap) and got["ct"].flags.writeable
    save_case_arrays(tmp_path, "old", **arrays)          # re-scored: one file, the new one
    assert sorted(p.name for p in (tmp_path / "cases").iterdir()) == ["old.zarr.zip"]
    _assert_same(load_case_arrays(tmp_path, "old"), arrays)


# -- the viewer's derived values (app.common) --------------------------------------------------
def _reference(arrays: dict) -> dict:
    """What app.common computed before: whole-volume max / argmax / per-slice bincount."""
    attr, mask = arrays["attribution"], arrays["mask"]
    n = int(mask.max())
    counts = (np.stack([np.bincount(np.clip(s, 0, None).ravel(), minlength=n + 1) for s in mask])
              if n > 0 else np.zeros((0, 1), np.int64))
    peak = np.unravel_index(np.argmax(attr), attr.shape)
    return {"attr_max": np.float64(attr.max()), "attr_peak_z": np.int64(peak[0]),
            "attr_peak": np.array(peak, np.int64), "label_counts": counts}


@pytest.mark.parametrize("variant", ["plain", "nan", "ties", "empty"])
def test_viewer_values_match_whole_volume_scans(tmp_path, variant):
    common = pytest.importorskip("app.common")
    arrays = {k: v for k, v in _case().items() if k != "flags"}
    attr = arrays["attribution"]
    if variant != "nan":
        attr[16, 1, 2] = 0.0
    if variant == "ties":  # the first maximum in C order wins, as np.argmax
        attr[7, 30, 40] = attr[2, 60, 1] = attr[2, 60, 0] = 5.0
    if variant == "empty":
        attr[:] = 0.0
        arrays["mask"][:] = 0
    save_case_arrays(tmp_path, "c1", **arrays)
    got = common.load_viewer_arrays(tmp_path, "c1")
    want = _reference(arrays)
    for key, value in want.items():
        assert np.asarray(got[key]).dtype == np.asarray(value).dtype, key
        np.testing.assert_array_equal(got[key], value, err_msg=key)
    assert all(not got[k].flags.writeable for k in arrays)
    for label in (1, 2):
        expected = (render.key_slice(arrays["mask"], label, attribution=arrays["attribution"])
                    if variant != "empty" else None)
        assert common.key_slice(got, label) == expected
    assert common.key_slice(got, 3) is None


def test_large_sparse_arrays_decode_into_lean_zeroed_memory(tmp_path):
    big = np.zeros((10, 256, 256), np.float32)  # 2.5 MiB: decoded into a private mapping
    big[3, 100:120, 50:70] = np.arange(400, dtype=np.float32).reshape(20, 20) + 1
    save_case_arrays(tmp_path, "c3", big=big)
    got = load_case_arrays(tmp_path, "c3")["big"]
    assert isinstance(_owner(got), mmap.mmap) and got.flags.writeable and got.flags.c_contiguous
    np.testing.assert_array_equal(got, big)
    assert float(got.max()) == 400.0 and int(np.count_nonzero(got)) == 400


def _chest_slice(rng) -> np.ndarray:
    """24 x 24: air with noise (-1000 +- 20) around a body ring (40 HU, rows/columns 4..19)
    enclosing a lung (-850, one emphysema voxel at -960) and a blanket voxel (-700) in the
    outside air."""
    sl = np.rint(rng.normal(-1000, 20, (24, 24))).astype(np.int16)
    sl[4:20, 4:20] = 40
    sl[7:17, 7:17] = -850
    sl[10, 10] = -960
    sl[2, 12] = -700
    return sl


def test_outside_air_is_flattened_the_body_and_lungs_stay_exact():
    rng = np.random.default_rng(0)
    ct = np.stack([_chest_slice(rng) for _ in range(3)])
    got, n = flatten_outside_air(ct)
    outside = np.ones((24, 24), bool)
    outside[4:20, 4:20] = False
    for k in range(3):
        expect = ct[k].copy()
        expect[outside & (ct[k] < -900)] = -1000
        np.testing.assert_array_equal(got[k], expect)
    assert n == int(np.count_nonzero(outside[None] & (ct < -900)))
    assert got[0, 10, 10] == -960 and got[0, 2, 12] == -700   # enclosed air, blanket: kept
    assert got.dtype == ct.dtype and not np.shares_memory(got, ct)
    # keep boxes stay exact; out= writes in place
    box = (slice(1, 2), slice(0, 6), slice(0, 6))
    kept, _ = flatten_outside_air(ct, keep=[box])
    np.testing.assert_array_equal(kept[box], ct[box])
    assert (got[box] != ct[box]).any()                  # without the box it would change
    np.testing.assert_array_equal(kept[2], got[2])
    inplace = ct.copy()
    flatten_outside_air(inplace, out=inplace)
    np.testing.assert_array_equal(inplace, got)
    for threads in (2, 5):                              # slices shared out: the same result
        on_threads = ct.copy()
        _, n_threads = flatten_outside_air(on_threads, out=on_threads, threads=threads)
        np.testing.assert_array_equal(on_threads, got)
        assert n_threads == n
    with pytest.raises(ValueError, match="3-D"):
        flatten_outside_air(ct[0])


def test_flattened_ct_compresses_better(tmp_path):
    rng = np.random.default_rng(1)
    ct = np.stack([_chest_slice(rng) for _ in range(40)])
    ct = np.tile(ct, (1, 8, 8))          # 192 x 192 slices, noisy air filling most of them
    flat, _ = flatten_outside_air(ct)
    save_case_arrays(tmp_path / "a", "c", ct=ct)
    save_case_arrays(tmp_path / "b", "c", ct=flat)
    size = [case_file(tmp_path / d, "c").stat().st_size for d in "ab"]
    assert size[1] < 0.6 * size[0]


def test_matches_stored_ct_allows_only_the_flattened_air():
    rng = np.random.default_rng(2)
    ct = np.stack([_chest_slice(rng) for _ in range(2)])
    flat, _ = flatten_outside_air(ct)
    assert matches_stored_ct(ct, flat) and matches_stored_ct(ct, ct)
    other = flat.copy()
    other[0, 10, 10] = -1000            # a lung voxel (-960 in the input) would not be flattened
    assert matches_stored_ct(ct, other)  # ... but the rule only sees values, so it passes
    other[0, 12, 12] = -1000            # a body voxel (40 HU) stored as air: another series
    assert not matches_stored_ct(ct, other)
    assert not matches_stored_ct(ct[:1], flat)


def test_ct_int16_rounds_and_clips_like_the_whole_volume_expression():
    rng = np.random.default_rng(3)
    hu = rng.normal(0, 20000, (4, 6, 7)).astype(np.float32)
    hu[0, 0, :4] = [0.5, 1.5, -0.5, -2.5]                 # round half to even, as np.rint
    expect = np.clip(np.rint(hu), -32768, 32767).astype(np.int16)
    got = ct_int16(hu)
    assert got.dtype == np.int16
    np.testing.assert_array_equal(got, expect)
    assert got.min() == -32768 and got.max() == 32767
    with pytest.raises(ValueError, match="3-D"):
        ct_int16(hu[0])
