"""Speed of the review app's case page on one standard-size scan (issue 6, "Speed").

The case: 512 x 512 x 300 voxels at 0.7 x 0.7 x 1.0 mm, int16 CT from the synthetic phantom
(lungs, vessels, three nodules), its three-label nodule mask, a float32 attribution map
(Grad-CAM-like: a trilinearly upsampled coarse map inside a 48 mm box around each nodule, zero
elsewhere, as ``analyze_scan`` writes it), the off-mask region map and the region activations,
stored with :func:`discovery.store.tables.save_case_arrays` exactly as ``discovery score`` stores them
(``discovery.batch.score._compute_case``).  No model is run: the arrays have the real sizes and types.

Measured, as the case page does it, outside Streamlit:

* **first view** -- the page's cache miss: ``app.common.load_viewer_arrays`` (what the cached
  ``_load_arrays`` runs: the stored arrays plus ``attr_max``, ``attr_peak_z`` and the per-slice
  label counts), the nodule's key slice (``app.common.key_slice``), then the first axial slice
  rendered (``render.overlay_slice`` with the page's defaults: lung window, opacity 0.45,
  threshold 0.2, mask and region contours), enlarged to its display size and encoded as
  ``st.image`` encodes it (Streamlit's own ``image_to_url``: an RGB array becomes a JPEG,
  quality 100), plus the colour bar.  "Cold" first drops the case file from the page cache
  (``posix_fadvise(DONTNEED)``), as after a reboot or on a busy server; "warm" right after;
* **slice step** -- the same render + resize + encode of another slice (median over 20
  slices spread over the volume), for axial, coronal (``ct[:, y, :]``) and sagittal
  (``ct[:, :, x]``) planes; the reformatted planes are enlarged to square millimetres
  (``discovery.report.planes`` when present, else nearest-neighbour here);
* **peak RSS** -- the process's resident-set high-water mark (Linux ``VmHWM``, reset through
  ``/proc/self/clear_refs``) while opening the case and stepping through it, file-backed pages
  of memory-mapped arrays included.

With ``--results RESULTS`` (a scored results folder), also the table reads of one full run of
the case page (findings, the nodule's regions, the nodule reviews twice for the review form),
straight from the store as before and through ``app.common``'s ``st.cache_data`` tables
(a cache hit: the store's write counter, ``ResultsStore.version``, plus unpickling).  A slice step reruns only the
viewer fragment, which reads no table at all.

Prints a Markdown table (stage | seconds (median of N) | target | met?) for docs/benchmarks/speed.md.

Usage: ``python benchmarks/app.py [--json FILE] [--repeat N] [--steps N] [--results DIR]``
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(_ROOT))

import numpy as np  # noqa: E402
from scipy import ndimage as ndi  # noqa: E402

from data_tools.synthetic import BENCHMARK_GEOMETRY, SyntheticConfig, generate_case  # noqa: E402
from discovery.report import planes, render  # noqa: E402
from discovery.store.arrays import flatten_outside_air  # noqa: E402
from discovery.store.tables import save_case_arrays  # noqa: E402
from _memory import reset_peak, rss_mib  # noqa: E402

import streamlit.logger  # noqa: E402

streamlit.logger.set_log_level("error")  # the caches' "no runtime" warnings outside an app
from app import common  # noqa: E402
from discovery.store.tables import ResultsStore  # noqa: E402


CASE_ID = "case-bench"
FIRST_VIEW_TARGET_S = 2.0
STEP_TARGET_S = 0.150
PAGE = dict(window="lung", opacity=0.45, threshold=0.2)  # the case page's defaults


# -- memory -------------------------------------------------------------------------------
# -- the case -------------------------------------------------------------------------------
def build_case(seed: int = 11) -> tuple[dict[str, np.ndarray], tuple[float, float, float]]:
    """The stored arrays of one standard-size case (module docstring) and its spacing."""
    shape, spacing = BENCHMARK_GEOMETRY
    case = generate_case(seed, config=SyntheticConfig(fixed_geometry=BENCHMARK_GEOMETRY,
                                                      nodules_per_case=(3, 3)))
    ct = np.clip(np.rint(case.hu), -32768, 32767).astype(np.int16)
    mask = case.mask.astype(np.int16)
    affine = case.affine
    centres = [n["center_zyx"] for n in case.nodules]
    del case
    rng = np.random.default_rng(seed)
    attribution = np.zeros(shape, np.float32)
    region_map = np.zeros(shape, np.int16)
    half = [int(round(24.0 / s)) for s in spacing]  # 48 mm ROI
    n_regions = 0
    boxes = []
    for c in centres:
        box = tuple(slice(max(int(round(ci)) - h, 0), min(int(round(ci)) + h + 1, n))
                    for ci, h, n in zip(c, half, shape))
        boxes.append(box)
        bshape = tuple(s.stop - s.start for s in box)
        coarse = rng.random((6, 6, 6)).astype(np.float32)  # Grad-CAM cells
        cam = ndi.zoom(coarse, [b / 6.0 for b in bshape], order=1)[tuple(slice(0, b) for b in bshape)]
        grid = np.indices(bshape, dtype=np.float32)
        shift = rng.normal(0.0, 4.0, 3)
        d2 = sum(((g - (ci - s.start) - sh) / (0.4 * b)) ** 2
                 for g, ci, s, sh, b in zip(grid, c, box, shift, bshape))
        cam = np.maximum(cam * np.exp(-d2) - 0.1, 0.0).astype(np.float32) * np.float32(rng.uniform(0.5, 3.0))
        np.maximum(attribution[box], cam, out=attribution[box])
        labels, n = ndi.label((cam > 0.5 * cam.max()) & (mask[box] == 0))
        sizes = np.bincount(labels.ravel())
        for k in range(1, n + 1):
            if sizes[k] >= 20:
                n_regions += 1
                region_map[box][labels == k] = n_regions
    flatten_outside_air(ct, keep=boxes, out=ct)     # as discovery score stores the CT
    arrays = {"ct": ct, "mask": mask, "attribution": attribution, "region_map": region_map,
              "affine": affine,
              "region_deep": rng.random((n_regions, 64)).astype(np.float32)}
    return arrays, tuple(float(s) for s in spacing)


def _case_files(root: Path) -> list[Path]:
    return sorted(p for p in (root / "cases").rglob("*") if p.is_file())


def _drop_from_page_cache(root: Path) -> None:
    for path in _case_files(root):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


# -- what the page does -------------------------------------------------------------------
def _encode_as_st_image(rgb: np.ndarray) -> int:
    """Encode *rgb* as ``st.image(rgb, width="stretch")`` does; return the byte count."""
    try:
        from streamlit.elements.lib.image_utils import _np_array_to_bytes  # noqa: PLC0415
    except ImportError:  # pragma: no cover - other Streamlit versions
        return len(render.to_png_bytes(rgb))
    # image_to_url's path for an ndarray: clip check, then JPEG (RGB, "auto") at quality 100
    if rgb.min() < 0 or rgb.max() > 255:
        raise ValueError("image out of range")
    return len(_np_array_to_bytes(rgb, output_format="auto"))


def _spacing_to_display(rgb: np.ndarray, plane: str, spacing) -> np.ndarray:
    return planes.resize_to(rgb, planes.display_size(rgb.shape, plane, spacing))


def _cut(arr: np.ndarray, plane: str, k: int) -> np.ndarray:
    return planes.plane_slice(arr, plane, k)


def show_slice(arrays: dict, plane: str, k: int, spacing, *, timings: dict | None = None) -> int:
    """Render, resize and encode one slice and the colour bar as the case page does per
    rerun; return the encoded size.  *timings* collects seconds per step."""
    t0 = time.perf_counter()
    attr_max = float(arrays["attr_max"])
    rgb = render.overlay_slice(
        _cut(arrays["ct"], plane, k), attribution2d=_cut(arrays["attribution"], plane, k),
        mask2d=_cut(arrays["mask"], plane, k), regions2d=_cut(arrays["region_map"], plane, k),
        attr_max=attr_max if attr_max > 0 else None, **PAGE)
    t1 = time.perf_counter()
    shown = _spacing_to_display(rgb, plane, spacing)
    t2 = time.perf_counter()
    n = _encode_as_st_image(shown)
    if attr_max > 0:
        n += _encode_as_st_image(render.labelled_colorbar(attr_max=attr_max, length=360))
    t3 = time.perf_counter()
    if timings is not None:
        for key, value in (("render", t1 - t0), ("resize", t2 - t1), ("encode", t3 - t2)):
            timings.setdefault(key, []).append(value)
    return n


def first_view(root: Path, spacing, *, cold: bool, keep: bool = False) -> dict:
    """Open the case as the page does on a cache miss; seconds per step (and the arrays
    under ``"arrays"`` with *keep*)."""
    if cold:
        _drop_from_page_cache(root)
    gc.collect()
    t0 = time.perf_counter()
    arrays = common.load_viewer_arrays(str(root), CASE_ID)
    t1 = time.perf_counter()
    z = common.key_slice(arrays, 1)
    z = arrays["ct"].shape[0] // 2 if z is None else z
    t2 = time.perf_counter()
    show_slice(arrays, "axial", z, spacing)
    t3 = time.perf_counter()
    out = {"load": t1 - t0, "key": t2 - t1, "show": t3 - t2, "total": t3 - t0}
    if keep:
        out["arrays"] = arrays
    return out


def _med(values) -> float:
    return float(np.median(values))


def build_and_save(root: Path, seed: int, repeat: int) -> dict:
    """Build the case and store it in *root* (*repeat* times, timed); its facts."""
    t0 = time.perf_counter()
    arrays, spacing = build_case(seed)
    build_s = time.perf_counter() - t0
    saves = []
    for _ in range(repeat):
        t = time.perf_counter()
        save_case_arrays(root, CASE_ID, **arrays)
        saves.append(time.perf_counter() - t)
    files = _case_files(root)
    return {"shape_zyx": list(arrays["ct"].shape), "spacing_mm": list(spacing),
            "raw_mib": sum(a.nbytes for a in arrays.values()) / 2**20,
            "disk_mib": sum(p.stat().st_size for p in files) / 2**20,
            "files": [p.name for p in files], "build_case_s": build_s, "save_s": saves}


def run(repeat: int, steps: int, seed: int) -> tuple[list[dict], dict]:
    rows: list[dict] = []

    def row(stage, seconds, n, target=None, note=""):
        met = "" if target is None else ("yes" if seconds <= target else "**no**")
        rows.append({"stage": stage, "seconds": seconds, "n": n, "target_s": target, "met": met,
                     "note": note})

    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
        root = Path(tmp)
        # built and saved in a child process, so that this one's memory is the viewer's only
        subprocess.run([sys.executable, __file__, "--_build", tmp, "--seed", str(seed),
                        "--repeat", str(min(repeat, 3))], check=True)
        info = json.loads((root / "build.json").read_text())
        spacing = tuple(info["spacing_mm"])
        shape = tuple(info["shape_zyx"])
        base_rss = rss_mib("VmRSS")

        reset_peak()
        cold = [first_view(root, spacing, cold=True) for _ in range(repeat)]
        warm = [first_view(root, spacing, cold=False) for _ in range(repeat)]
        gc.collect()
        # steps right after a cold open: what a reviewer does first
        view = first_view(root, spacing, cold=True, keep=True)["arrays"]
        step_rows = {}
        for plane, axis in (("axial", 0), ("coronal", 1), ("sagittal", 2)):
            n = shape[axis]
            idx = np.linspace(0, n - 1, steps + 1).round().astype(int)[1:]
            timings: dict = {}
            totals = []
            for k in idx:
                t = time.perf_counter()
                show_slice(view, plane, int(k), spacing, timings=timings)
                totals.append(time.perf_counter() - t)
            step_rows[plane] = (totals, timings)
        peak_rss = rss_mib("VmHWM")
        # what the case page also ran on every rerun: argmax of the whole (read-only) attribution
        t = time.perf_counter()
        np.unravel_index(int(np.argmax(view["attribution"])), view["attribution"].shape)
        argmax_s = time.perf_counter() - t
        view = None
        gc.collect()

    row("first view, cold page cache (load + key slice + render + encode)",
        _med([r["total"] for r in cold]), repeat, FIRST_VIEW_TARGET_S)
    row("  load arrays + attr_max / peak / label counts", _med([r["load"] for r in cold]), repeat)
    row("  key slice + first slice render + encode", _med([r["key"] + r["show"] for r in cold]), repeat)
    row("first view, warm page cache", _med([r["total"] for r in warm]), repeat, FIRST_VIEW_TARGET_S)
    for plane, (totals, timings) in step_rows.items():
        row(f"{plane} slice step (render + resize + encode)", _med(totals), len(totals), STEP_TARGET_S)
        row(f"  {plane}: render / resize / encode",
            _med(timings["render"]), len(totals),
            note=f"{_med(timings['render']):.3f} / {_med(timings['resize']):.3f} / "
                 f"{_med(timings['encode']):.3f}")
    row("save viewer arrays (save_case_arrays)", _med(info["save_s"]), len(info["save_s"]))
    info.update({"peak_rss_mib": peak_rss, "base_rss_mib": base_rss, "argmax_per_rerun_s": argmax_s,
                 "first_step_s": {p: v[0][0] for p, v in step_rows.items()},
                 "max_step_s": {p: max(v[0]) for p, v in step_rows.items()},
                 "cores": os.cpu_count(),
                 "loadavg": os.getloadavg(), "cpu": platform.processor() or platform.machine(),
                 "numpy": np.__version__})
    return rows, info


def table_reads(results: Path, repeat: int) -> list[tuple[str, float, int]]:
    """Seconds (median of *repeat*) of the case page's table reads per full run, uncached and
    through the cached tables of ``app.common`` (after one warming read)."""
    store = ResultsStore(results, create=False)
    try:
        nodule = store.findings().dropna(subset=["probability"]).iloc[0]
        case_id, nodule_id = nodule["case_id"], nodule["nodule_id"]

        def direct():  # what the page read on every rerun before the cache
            store.findings()
            regions = store.regions()
            regions[(regions["case_id"] == case_id) & (regions["nodule_id"] == nodule_id)]
            store.reviews("nodule")
            store.reviews("nodule")

        def cached():
            common.findings(store)
            common.nodule_regions(store, case_id, nodule_id)
            common.reviews(store, "nodule")
            common.reviews(store, "nodule")

        out = []
        for name, fn in (("uncached (store)", direct), ("cached (app.common, hit)", cached)):
            fn()
            times = []
            for _ in range(repeat):
                t = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t)
            out.append((name, _med(times), repeat))
        out.append(("store write counter (ResultsStore.version, read per cached table)",
                    _med([_timed(store.version) for _ in range(repeat)]), repeat))
        return out
    finally:
        store.close()


def _timed(fn, *args) -> float:
    t = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", default=None, help="also write the rows and facts to this file")
    ap.add_argument("--repeat", type=int, default=5, help="first-view repetitions (default 5)")
    ap.add_argument("--steps", type=int, default=20, help="slices per plane (default 20)")
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--results", type=Path, default=None,
                    help="a scored results folder: also time the case page's table reads")
    ap.add_argument("--_build", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._build:  # child process: build and store the case, write its facts
        info = build_and_save(Path(args._build), args.seed, max(args.repeat, 1))
        (Path(args._build) / "build.json").write_text(json.dumps(info))
        return 0
    rows, info = run(max(args.repeat, 1), max(args.steps, 1), args.seed)
    if args.results is not None:
        for name, seconds, n in table_reads(args.results, max(args.repeat, 1) * 4):
            rows.append({"stage": f"case page table reads per full run, {name}"
                         if "counter" not in name else name, "seconds": seconds, "n": n,
                         "target_s": None, "met": "", "note": f"{1000 * seconds:.3f} ms"})
    print(f"case {info['shape_zyx'][::-1]} voxels (x, y, z) at {info['spacing_mm'][::-1]} mm; "
          f"arrays {info['raw_mib']:.0f} MiB in memory, {info['disk_mib']:.0f} MiB on disk "
          f"({', '.join(info['files'])}); {info['cores']} cores, load average "
          f"{info['loadavg'][0]:.1f}\n")
    print("| stage | seconds (median of N) | N | target | met? |\n|---|---:|---:|---:|---|")
    for r in rows:
        target = "" if r["target_s"] is None else f"{r['target_s']:g} s"
        value = r["note"] or f"{r['seconds']:.3f}"
        print(f"| {r['stage']} | {value} | {r['n']} | {target} | {r['met']} |")
    print(f"| peak RSS while opening and stepping (MiB) | {info['peak_rss_mib']:.0f} "
          f"(idle {info['base_rss_mib']:.0f}) | | | |")
    first = ", ".join(f"{p} {v:.3f}" for p, v in info["first_step_s"].items())
    worst = ", ".join(f"{p} {v:.3f}" for p, v in info["max_step_s"].items())
    print(f"\nFirst step after the cold open (s): {first}; slowest step (s): {worst}.")
    print(f"np.argmax over the whole read-only attribution (s): "
          f"{info['argmax_per_rerun_s']:.3f}.  Building the case (not timed above): "
          f"{info['build_case_s']:.0f} s.")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "info": info}, indent=2, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
