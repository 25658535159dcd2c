"""Per-stage seconds and peak memory of the pipeline on one standard-size scan.

The scan: 512 x 512 x 300 voxels at 0.7 x 0.7 x 1.0 mm, three nodules, written as a real
DICOM series + NIfTI mask by the synthetic generator, then read back and scored as
``discovery score`` would.  Prints a Markdown table (paste it into docs/benchmarks/speed.md).

Peak memory is the process's resident-set high-water mark (Linux ``VmHWM``), reset before each
stage through ``/proc/self/clear_refs``, so each row shows the peak reached *during* that stage
(arrays held from earlier stages included).

Usage: ``python benchmarks/pipeline.py [--model DIR] [--json FILE] [--repeat N]``
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from data_tools.dicom import load_dicom_series  # noqa: E402
from data_tools.nifti import load_nifti_mask  # noqa: E402
from data_tools.synthetic import BENCHMARK_GEOMETRY, SyntheticConfig, generate_case, write_case  # noqa: E402
from discovery.model.card import load_model  # noqa: E402
from discovery.pipeline import analyze_scan  # noqa: E402
from discovery.store.arrays import ct_int16, flatten_outside_air  # noqa: E402
from discovery.store.tables import save_case_arrays  # noqa: E402
from _memory import reset_peak, rss_mib  # noqa: E402


@contextmanager
def _measure(rows: list, name: str):
    reset_peak()
    t0 = time.perf_counter()
    yield
    rows.append({"stage": name, "seconds": time.perf_counter() - t0, "peak_rss_mib": rss_mib()})


def run(model_dir: str | None) -> tuple[list[dict], dict]:
    shape, spacing = BENCHMARK_GEOMETRY
    cfg = SyntheticConfig(fixed_geometry=BENCHMARK_GEOMETRY, nodules_per_case=(3, 3))
    t0 = time.perf_counter()
    case = generate_case(11, config=cfg)
    gen_s = time.perf_counter() - t0
    model, card = load_model(model_dir)
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        case_dir = Path(tmp) / "case"
        t0 = time.perf_counter()
        write_case(case, case_dir)
        write_s = time.perf_counter() - t0
        del case
        total0 = time.perf_counter()
        with _measure(rows, "read DICOM series (300 files)"):
            volume = load_dicom_series(case_dir, integer_hu=True)   # as discovery score
        with _measure(rows, "read NIfTI mask"):
            mask = load_nifti_mask(case_dir / "mask.nii.gz")
        timings: dict[str, float] = {}
        with _measure(rows, "analyze_scan (all below)"):
            result = analyze_scan(volume, mask, model, card, case_id="case-bench", timings=timings)
        labels = {"roi": "  ROI resampling", "model": "  classify + Grad-CAM",
                  "reliance": "  reliance on the nodule (nodule and control replaced, re-scored)",
                  "align": "  map to scan grid + alignment", "offmask": "  off-mask regions",
                  "descriptors": "  lung field and region descriptors"}
        for key in timings:  # every stage analyze_scan timed, the unnamed ones by their key
            rows.append({"stage": labels.get(key, f"  {key}"), "seconds": timings[key],
                         "peak_rss_mib": float("nan")})
        rest = rows[2]["seconds"] - sum(timings.values())
        rows.append({"stage": "  nodule sites, full-grid maps (rest)", "seconds": rest, "peak_rss_mib": float("nan")})
        with _measure(rows, "save viewer arrays (Zarr; outside air flattened, as discovery score)"):
            ct = volume.array if volume.array.dtype == np.int16 else ct_int16(volume.array)
            flatten_outside_air(ct, keep=[n.box for n in result.nodules], out=ct)
            rel = save_case_arrays(tmp, "case-bench", ct=ct,
                                   mask=mask.array, attribution=result.attribution,
                                   region_map=result.region_map, affine=volume.affine)
        case_mib = (Path(tmp) / rel).stat().st_size / 2 ** 20
        total = time.perf_counter() - total0
    rows.append({"stage": "total (read -> saved)", "seconds": total, "peak_rss_mib": rss_mib()})
    info = {"case_file_mib": case_mib, "shape_zyx": list(shape), "spacing_mm": list(spacing), "n_nodules": len(result.nodules),
            "generate_s": gen_s, "write_dicom_s": write_s, "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__}
    return rows, info


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    rows, info = run(args.model)
    print(f"scan {info['shape_zyx'][::-1]} voxels (x, y, z) at {info['spacing_mm'][::-1]} mm, "
          f"{info['n_nodules']} nodules; {info['cores']} cores, torch {info['torch']} "
          f"({info['torch_threads']} threads)\n")
    print(f"case file on disk: {info['case_file_mib']:.1f} MiB (cases/<case_id>.zarr.zip)\n")
    print("| stage | seconds | peak RSS (MiB) |\n|---|---:|---:|")
    for r in rows:
        peak = "" if np.isnan(r["peak_rss_mib"]) else f"{r['peak_rss_mib']:.0f}"
        print(f"| {r['stage']} | {r['seconds']:.2f} | {peak} |")
    print(f"\n(setup, not part of the pipeline: generating the phantom {info['generate_s']:.1f} s, "
          f"writing 300 DICOM files {info['write_dicom_s']:.1f} s)")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "info": info}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
