"""Load time of one CT series: ``data_tools.dicom.load_dicom_series`` vs SimpleITK.

The series (default 300 slices of 512 x 512, int16, uncompressed explicit VR little endian,
RescaleSlope 1 / RescaleIntercept -1024, CT headers from ``tests/_dicom_factory.ct_dataset``,
shuffled file names) is written once into a temporary folder (or ``--keep DIR``).  Then:

* ours: ``load_dicom_series(folder)`` -- finds the series, validates every header (geometry,
  spacing, shared matrix, rescale), sorts along the slice normal, returns float32 HU;
* SimpleITK: ``ImageSeriesReader.GetGDCMSeriesFileNames(folder)`` (GDCM's scan and IPP sort)
  + ``Execute`` with float32 output (rescale applied) + ``GetArrayFromImage``.

Both are warmed with one untimed read each (the OS page cache cannot be dropped here, so
every timed read is a warm-cache read), then timed ``--repeats`` times, alternating which
goes first.  The table reports best and median wall seconds and the ratio of the medians.
Both results are compared (same HU values within 1e-3, same slice order) before timing.

Peak RSS is the process's high-water mark (Linux ``VmHWM``) during one read, reset through
``/proc/self/clear_refs`` before it; it includes the interpreter and imported libraries.

Usage: ``python benchmarks/load.py [--slices 300] [--size 512] [--repeats 3] [--keep DIR]
[--json FILE] [--profile]``  (``--profile`` prints cProfile's top 15 lines of one of our
reads by cumulative time).
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import json
import logging
import os
import platform
import pstats
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import numpy as np  # noqa: E402
import pydicom  # noqa: E402
import SimpleITK as sitk  # noqa: E402
from pydicom.uid import generate_uid  # noqa: E402

from _dicom_factory import ct_dataset  # noqa: E402
from data_tools.dicom import load_dicom_series  # noqa: E402
from _memory import reset_peak, rss_mib  # noqa: E402

SPACING = (0.7, 0.7)
STEP_MM = 1.0


def write_series(folder: Path, slices: int, size: int, seed: int = 0) -> Path:
    """Write the benchmark series into *folder* (reused if a matching one is already there)."""
    folder.mkdir(parents=True, exist_ok=True)
    marker = folder / "benchmark.json"
    spec = {"slices": slices, "size": size, "seed": seed}
    if marker.exists() and json.loads(marker.read_text()) == spec:
        print(f"reusing the series in {folder}")
        return folder
    for old in folder.glob("*.dcm"):
        old.unlink()
    rng = np.random.default_rng(seed)
    names = rng.permutation(slices)
    study, series = generate_uid(), generate_uid()
    yy, xx = np.mgrid[:size, :size]
    body = ((yy - size / 2) ** 2 / (0.42 * size) ** 2 + (xx - size / 2) ** 2 / (0.48 * size) ** 2) < 1
    t0 = time.perf_counter()
    for k in range(slices):
        hu = np.where(body, rng.normal(0, 30, (size, size)) - 100, -1000)   # a noisy ellipse
        stored = np.clip(np.rint(hu + 1024), 0, 4095).astype(np.int16)
        origin = (-size * SPACING[1] / 2, -size * SPACING[0] / 2, -k * STEP_MM)
        ds = ct_dataset(stored, position=origin, pixel_spacing=SPACING, slope=1.0,
                        intercept=-1024.0, instance=k + 1, series_uid=series, study_uid=study,
                        slice_thickness=STEP_MM, description="benchmark chest")
        ds.SeriesNumber = 2
        ds.StudyTime = "101500"
        ds.SliceLocation = origin[2]
        ds.WindowCenter, ds.WindowWidth = "-600", "1500"
        ds.save_as(folder / f"IM{names[k]:05d}.dcm", enforce_file_format=True)
    marker.write_text(json.dumps(spec))
    print(f"wrote {slices} files ({slices * size * size * 2 / 2**20:.0f} MiB of pixels) "
          f"in {time.perf_counter() - t0:.1f} s")
    return folder


def read_ours(folder: Path) -> np.ndarray:
    return load_dicom_series(folder).array


def read_sitk(folder: Path) -> np.ndarray:
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    reader.SetOutputPixelType(sitk.sitkFloat32)
    return sitk.GetArrayFromImage(reader.Execute())


def compare(ours: np.ndarray, theirs: np.ndarray) -> str:
    """'same', 'reversed' (same slices in the opposite order) or raise."""
    if ours.shape != theirs.shape:
        raise SystemExit(f"shape differs: ours {ours.shape}, SimpleITK {theirs.shape}")
    if np.allclose(ours, theirs, atol=1e-3, rtol=0):
        return "same"
    if np.allclose(ours, theirs[::-1], atol=1e-3, rtol=0):
        return "reversed"
    diff = float(np.max(np.abs(ours.astype(np.float64) - theirs)))
    raise SystemExit(f"the two readers disagree (max |difference| {diff:.3f} HU)")


def timed(fn, folder: Path) -> tuple[float, float]:
    gc.collect()
    reset_peak()
    t0 = time.perf_counter()
    arr = fn(folder)
    seconds = time.perf_counter() - t0
    peak = rss_mib("VmHWM")
    del arr
    return seconds, peak


def run(folder: Path, repeats: int) -> dict:
    ours, theirs = read_ours(folder), read_sitk(folder)          # warm-up (untimed) + check
    order = compare(ours, theirs)
    if order != "same":
        raise SystemExit("SimpleITK returned the slices in the opposite order")
    shape, dtype = ours.shape, (str(ours.dtype), str(theirs.dtype))
    del ours, theirs
    gc.collect()
    base = rss_mib("VmRSS")
    times = {"ours": [], "sitk": []}
    peaks = {"ours": [], "sitk": []}
    readers = {"ours": read_ours, "sitk": read_sitk}
    for r in range(repeats):
        for name in (("ours", "sitk") if r % 2 == 0 else ("sitk", "ours")):
            s, p = timed(readers[name], folder)
            times[name].append(s)
            peaks[name].append(p)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "slices": shape[0], "matrix": f"{shape[1]}x{shape[2]}", "repeats": repeats,
        "ours_best_s": min(times["ours"]), "ours_median_s": med["ours"],
        "sitk_best_s": min(times["sitk"]), "sitk_median_s": med["sitk"],
        "ratio_median": med["ours"] / med["sitk"],
        "ours_peak_rss_mib": max(peaks["ours"]), "sitk_peak_rss_mib": max(peaks["sitk"]),
        "rss_before_reads_mib": base, "slice_order": order, "dtypes": dtype,
        "times_s": times, "cache": "warm (one untimed read of each first; caches not dropped)",
        "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
        "python": platform.python_version(), "pydicom": pydicom.__version__,
        "simpleitk": sitk.Version_VersionString(), "sitk_threads":
            sitk.ProcessObject.GetGlobalDefaultNumberOfThreads(),
    }


def profile(folder: Path) -> None:
    prof = cProfile.Profile()
    prof.enable()
    read_ours(folder)
    prof.disable()
    print("\ncProfile of one load_dicom_series read (top 15 by cumulative time):")
    pstats.Stats(prof, stream=sys.stdout).sort_stats("cumulative").print_stats(15)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slices", type=int, default=300)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--keep", default=None, help="write (or reuse) the series here and keep it")
    ap.add_argument("--json", default=None)
    ap.add_argument("--profile", action="store_true")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        folder = write_series(Path(args.keep) if args.keep else Path(tmp) / "series",
                              args.slices, args.size)
        res = run(folder, args.repeats)
        if args.profile:
            profile(folder)
    print(f"\n{res['cores']} cores ({res['cpu']}), Python {res['python']}, pydicom "
          f"{res['pydicom']}, SimpleITK {res['simpleitk']} ({res['sitk_threads']} threads); "
          f"{res['repeats']} repeats, {res['cache']}; outputs {res['dtypes'][0]} / "
          f"{res['dtypes'][1]}, identical values, same slice order\n")
    print("| slices | matrix | ours best s | ours median s | SimpleITK best s | "
          "SimpleITK median s | ratio (ours/SimpleITK, median) | peak RSS MB (ours / SimpleITK) |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|")
    print(f"| {res['slices']} | {res['matrix']} | {res['ours_best_s']:.2f} | "
          f"{res['ours_median_s']:.2f} | {res['sitk_best_s']:.2f} | {res['sitk_median_s']:.2f} | "
          f"{res['ratio_median']:.2f} | {res['ours_peak_rss_mib']:.0f} / "
          f"{res['sitk_peak_rss_mib']:.0f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
