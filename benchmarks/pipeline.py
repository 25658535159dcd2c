"""Per-stage seconds and peak memory of the pipeline on one standard-size scan.

The scan: 512 x 512 x 300 voxels at 0.7 x 0.7 x 1.0 mm, three nodules, written as a real
DICOM series + NIfTI mask by the synthetic generator, then read back and scored as
``discovery score`` would.  Prints a Markdown table (paste it into docs/benchmarks/speed.md).

Peak memory is the process's resident-set high-water mark (Linux ``VmHWM``), reset before each
stage through ``/proc/self/clear_refs``, so each row shows the peak reached *during* that stage
(arrays held from earlier stages included).

With ``--command N``: also the whole ``discovery score`` command on that scan, N times in a
fresh process each (start-up, model load, clustering and tables included; wall seconds and
the child's peak resident set), alternating with SimpleITK's ``ImageSeriesReader`` reading the
same 300 files to float32 (GDCM's file discovery and sort included) in a fresh process each,
so that the two are measured in the same run.  Each command run also reports its phases
(start-up and imports, reading, analysis, flattening, writing, clustering, tables, the rest,
the exit), timed in the child through the names ``discovery.batch.score`` calls them by.

Usage: ``python benchmarks/pipeline.py [--model DIR] [--json FILE] [--command N]``
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
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


_SITK = ("import sys, SimpleITK as sitk; r = sitk.ImageSeriesReader(); "
         "r.SetFileNames(r.GetGDCMSeriesFileNames(sys.argv[1])); "
         "r.SetOutputPixelType(sitk.sitkFloat32); a = sitk.GetArrayViewFromImage(r.Execute()); "
         "print(a.shape)")


def _tree_rss_mib(pid: int) -> float:
    """Resident MiB of process *pid* and its children now (``/proc``; 0 once gone)."""
    total = 0
    try:
        kids = open(f"/proc/{pid}/task/{pid}/children").read().split()
    except OSError:
        kids = []
    for p in [str(pid), *kids]:
        try:
            for line in open(f"/proc/{p}/status"):
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024.0


def _child(argv: list[str], prelude: str = "", env: dict | None = None
           ) -> tuple[float, float, str, float]:
    """Wall seconds, peak RSS (MiB), the stderr of one child process (``wait4`` rusage) and
    the peak of its resident set plus its own children's (the read-ahead), sampled every
    10 ms; *prelude* runs in the child first.

    The child reads its own high-water mark (``VmHWM`` of ``/proc/self/status``) as it exits:
    the ``ru_maxrss`` that ``wait4`` reports can keep the forking parent's resident set."""
    t0 = time.perf_counter()
    shim = prelude + ("import atexit, runpy, sys\n"
            "def hwm():\n"
            "    for line in open('/proc/self/status'):\n"
            "        if line.startswith('VmHWM:'):\n"
            "            sys.stderr.write('VMHWM ' + line.split()[1] + '\\n')\n"
            "atexit.register(hwm)\n"
            "sys.argv = sys.argv[1:]\n"
            "if sys.argv[0] == '-m':\n"
            "    sys.argv = sys.argv[1:]\n"
            "    runpy.run_module(sys.argv[0], run_name='__main__', alter_sys=True)\n"
            "else:\n"
            "    code, sys.argv = sys.argv[1], [sys.argv[0]] + sys.argv[2:]\n"
            "    exec(compile(code, '<c>', 'exec'), {'__name__': '__main__'})\n")
    argv = [argv[0], "-c", shim, *argv[1:]]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env=None if env is None else {**os.environ, **env})
    tree, stop = [0.0], threading.Event()

    def sample():
        while not stop.wait(0.01):
            tree[0] = max(tree[0], _tree_rss_mib(proc.pid))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    chunks: list[bytes] = []
    drain = threading.Thread(target=lambda: chunks.append(proc.stderr.read()), daemon=True)
    drain.start()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    stop.set()
    drain.join()
    err = b"".join(chunks).decode(errors="replace")
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{argv[3:5]} failed ({proc.returncode}): {err[-2000:]}")
    hwm = [line.split()[1] for line in err.splitlines() if line.startswith("VMHWM ")]
    return wall, (float(hwm[-1]) if hwm else usage.ru_maxrss) / 1024.0, err, tree[0]


#: Run in the child before ``discovery score``: times its phases through the public names
#: ``discovery.batch.score`` calls them by, and writes them to stderr at exit.  The hooks go
#: in when the command has forked its read-ahead and imports the batch (what it does next),
#: so that the timing does not move the imports before the fork.
_TIMELINE = (
    "import atexit, functools, json, sys, time\n"
    "_t0 = time.perf_counter()\n"
    "_spent = {}\n"
    "def _wrap(owner, name, key=None):\n"
    "    f, key = getattr(owner, name), key or name\n"
    "    @functools.wraps(f)\n"
    "    def g(*a, **k):\n"
    "        t = time.perf_counter()\n"
    "        try:\n"
    "            return f(*a, **k)\n"
    "        finally:\n"
    "            _spent[key] = _spent.get(key, 0.0) + time.perf_counter() - t\n"
    "            _spent['tables written'] = time.perf_counter() - _t0\n"
    "    setattr(owner, name, g)\n"
    "import discovery.batch.readahead as _r\n"
    "_start = _r.start_read_ahead\n"
    "def _started(*a, **k):\n"
    "    ahead = _start(*a, **k)\n"
    "    import discovery.batch.score as _s\n"
    "    _spent['start-up and imports'] = time.perf_counter() - _t0\n"
    "    for _n in " + repr(("read_case", "analyze_scan", "flatten_outside_air",
                            "save_case_arrays", "recluster", "write_tables")) + ":\n"
    "        _wrap(_s, _n)\n"
    "    _wrap(_r.ReadAhead, 'take', 'read_case')   # receiving the case read ahead\n"
    "    return ahead\n"
    "_r.start_read_ahead = _started\n"
    "atexit.register(lambda: sys.stderr.write('TIMELINE ' + json.dumps(_spent) + '\\n'))\n")

#: The phases of the whole command, in order, and their names in the table.
PHASES = (("start-up and imports", "start-up, finding the cases, the read-ahead forked, imports "
                                   "(`import discovery.batch.score`)"),
          ("read_case", "reading the series and the mask (`read_case`; with the read-ahead, "
                        "waiting for it and mapping its arrays: `ReadAhead.take`)"),
          ("analyze_scan", "the analysis (`analyze_scan`)"),
          ("flatten_outside_air", "flattening the outside air"),
          ("save_case_arrays", "writing the case file (`save_case_arrays`)"),
          ("recluster", "clustering the regions, scikit-learn's import included (`recluster`)"),
          ("write_tables", "writing findings.csv and patterns.csv"),
          ("other", "the rest until the tables are written: arguments, the batch plan, the "
                    "store"),
          ("exit", "after the tables: the summary printed, the interpreter's exit"))


def _timeline(stderr: str, wall: float) -> dict[str, float]:
    """The phases' seconds of one timed child (:data:`_TIMELINE`), *wall* its whole time."""
    line = [s for s in stderr.splitlines() if s.startswith("TIMELINE ")]
    if not line:
        return {}
    spent = json.loads(line[-1][len("TIMELINE "):])
    end = spent.pop("tables written", wall)
    return {**spent, "other": end - sum(spent.values()), "exit": wall - end}


def whole_command(case_dir: Path, out_root: Path, model_dir: str | None, repeat: int) -> dict:
    """``discovery score`` (with its read-ahead, and without: ``DISCOVERY_READ_AHEAD=0``) and
    SimpleITK's read of the same series, alternating, each in a fresh process (module
    docstring)."""
    score, plain, sitk = [], [], []
    for i in range(repeat):
        argv = [sys.executable, "-m", "discovery.cli", "score", str(case_dir),
                "--out", str(out_root / f"run{i}")]
        if model_dir is not None:
            argv += ["--model", model_dir]
        score.append(_child(argv, prelude=_TIMELINE))
        argv[argv.index("--out") + 1] = str(out_root / f"plain{i}")
        plain.append(_child(argv, prelude=_TIMELINE, env={"DISCOVERY_READ_AHEAD": "0"}))
        sitk.append(_child([sys.executable, "-c", _SITK, str(case_dir)]))
    med = statistics.median
    return {"score_s": [r[0] for r in score], "score_peak_mib": [r[1] for r in score],
            "score_tree_peak_mib": [r[3] for r in score],
            "phases": [_timeline(r[2], r[0]) for r in score],
            "plain_s": [r[0] for r in plain], "plain_peak_mib": [r[1] for r in plain],
            "plain_phases": [_timeline(r[2], r[0]) for r in plain],
            "simpleitk_s": [r[0] for r in sitk], "simpleitk_peak_mib": [r[1] for r in sitk],
            "ratio": med(r[0] for r in score) / med(r[0] for r in sitk)}


def write_standard_case(case_dir: Path) -> dict:
    """Generate the standard scan (seed 11) and write it as a DICOM series + NIfTI mask."""
    cfg = SyntheticConfig(fixed_geometry=BENCHMARK_GEOMETRY, nodules_per_case=(3, 3))
    t0 = time.perf_counter()
    case = generate_case(11, config=cfg)
    gen_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    write_case(case, case_dir)
    return {"generate_s": gen_s, "write_dicom_s": time.perf_counter() - t0}


def run(model_dir: str | None, command_repeat: int = 0) -> tuple[list[dict], dict]:
    shape, spacing = BENCHMARK_GEOMETRY
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        case_dir = Path(tmp) / "case"
        # the scan is made in a child, so that this process holds no large arrays while the
        # whole command is timed (a parent holding ~1 GiB slowed the children by 1-2 s)
        made = subprocess.run([sys.executable, __file__, "--write-case", str(case_dir)],
                              check=True, capture_output=True, text=True)
        setup = json.loads(made.stdout.strip().splitlines()[-1])
        command = (whole_command(case_dir, Path(tmp), model_dir, command_repeat)
                   if command_repeat else None)
        model, card = load_model(model_dir, compiled=True)        # as discovery score loads it
        total0 = time.perf_counter()
        with _measure(rows, "read DICOM series (300 files)"):
            volume = load_dicom_series(case_dir, integer_hu=True)   # as discovery score
        with _measure(rows, "read NIfTI mask"):
            mask = load_nifti_mask(case_dir / "mask.nii.gz")
        timings: dict[str, float] = {}
        with _measure(rows, "analyze_scan (all below)"):
            result = analyze_scan(volume, mask, model, card, case_id="case-bench", timings=timings)
        labels = {"roi": "  ROI resampling", "model": "  classify + Grad-CAM",
                  "reliance": "  reliance on the nodule and its surroundings (each, and a control, replaced and re-scored)",
                  "align": "  map to scan grid + alignment", "offmask": "  off-mask regions",
                  "descriptors": "  lung field and region descriptors"}
        for key in timings:  # every stage analyze_scan timed, the unnamed ones by their key
            rows.append({"stage": labels.get(key, f"  {key}"), "seconds": timings[key],
                         "peak_rss_mib": float("nan")})
        rest = rows[2]["seconds"] - sum(timings.values())
        rows.append({"stage": "  nodule sites, full-grid maps (rest)", "seconds": rest, "peak_rss_mib": float("nan")})
        with _measure(rows, "save viewer arrays (Zarr; outside air flattened, as discovery score)"):
            ct = volume.array if volume.array.dtype == np.int16 else ct_int16(volume.array)
            flatten_outside_air(ct, keep=[n.box for n in result.nodules], out=ct,
                                threads=torch.get_num_threads())
            rel = save_case_arrays(tmp, "case-bench", ct=ct,
                                   mask=mask.array, attribution=result.attribution,
                                   region_map=result.region_map, affine=volume.affine)
        case_mib = (Path(tmp) / rel).stat().st_size / 2 ** 20
        total = time.perf_counter() - total0
        n_nodules = len(result.nodules)
    rows.append({"stage": "total (read -> saved)", "seconds": total, "peak_rss_mib": rss_mib()})
    info = {"case_file_mib": case_mib, "shape_zyx": list(shape), "spacing_mm": list(spacing), "n_nodules": n_nodules,
            **setup, "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "model": type(model).__name__, "command": command}
    return rows, info


def _print_phases(runs: list[dict[str, float]]) -> None:
    """The whole command's phases (:data:`PHASES`), each run's seconds and their median."""
    runs = [r for r in runs if r]
    if not runs:
        return
    print("\nThe whole command by phase (seconds, each run; the analysis and the case file as "
          "`discovery score` does them):\n\n| phase | runs | median |\n|---|---|---:|")
    for key, name in PHASES:
        values = [r.get(key, 0.0) for r in runs]
        print(f"| {name} | {', '.join(f'{v:.2f}' for v in values)} | "
              f"{statistics.median(values):.2f} |")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--json", default=None)
    ap.add_argument("--command", type=int, default=0, metavar="N",
                    help="also time the whole discovery score command N times (fresh processes)")
    ap.add_argument("--write-case", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.write_case:
        print(json.dumps(write_standard_case(Path(args.write_case))))
        return 0
    rows, info = run(args.model, args.command)
    print(f"scan {info['shape_zyx'][::-1]} voxels (x, y, z) at {info['spacing_mm'][::-1]} mm, "
          f"{info['n_nodules']} nodules; {info['cores']} cores, torch {info['torch']} "
          f"({info['torch_threads']} threads); network: {info['model']}\n")
    print(f"case file on disk: {info['case_file_mib']:.1f} MiB (cases/<case_id>.zarr.zip)\n")
    print("| stage | seconds | peak RSS (MiB) |\n|---|---:|---:|")
    for r in rows:
        peak = "" if np.isnan(r["peak_rss_mib"]) else f"{r['peak_rss_mib']:.0f}"
        print(f"| {r['stage']} | {r['seconds']:.2f} | {peak} |")
    print(f"\n(setup, not part of the pipeline: generating the phantom {info['generate_s']:.1f} s, "
          f"writing 300 DICOM files {info['write_dicom_s']:.1f} s)")
    cmd = info["command"]
    if cmd:
        fmt = lambda xs, f: ", ".join(f.format(x) for x in xs)  # noqa: E731
        print(f"\n`discovery score` on the scan, whole command: {fmt(cmd['score_s'], '{:.2f}')} s "
              f"at {fmt(cmd['score_peak_mib'], '{:.0f}')} MiB peak; SimpleITK reading the "
              f"series: {fmt(cmd['simpleitk_s'], '{:.2f}')} s "
              f"({fmt(cmd['simpleitk_peak_mib'], '{:.0f}')} MiB); ratio of medians "
              f"{cmd['ratio']:.1f}.  With its read-ahead child, the two processes' resident "
              f"sets together peaked at {fmt(cmd['score_tree_peak_mib'], '{:.0f}')} MiB "
              f"(sampled every 10 ms).  Without the read-ahead (DISCOVERY_READ_AHEAD=0, "
              f"interleaved): {fmt(cmd['plain_s'], '{:.2f}')} s at "
              f"{fmt(cmd['plain_peak_mib'], '{:.0f}')} MiB")
        _print_phases(cmd["phases"])
        print("\nWithout the read-ahead:")
        _print_phases(cmd["plain_phases"])
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "info": info}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
