"""How to store a case's CT: the alternatives measured on a real scan and a synthetic one.

Each candidate encodes the int16 HU volume losslessly (checked by decoding it again); the
table gives the compression ratio (raw bytes / encoded bytes), encode and decode seconds and
the MiB a standard scan (512 x 512 x 300 int16 = 150 MiB raw) would take at that ratio:

* ``npz, stored`` -- the previous format (an uncompressed zip of ``.npy``, memory-mapped);
* ``npz, deflate`` -- ``numpy.savez_compressed`` (the format before that);
* ``Zstd 3``, ``Zstd 9`` -- plain Zstandard (numcodecs) on the raw bytes;
* ``Blosc LZ4 / Zstd``, byte or bit shuffle -- Blosc as Zarr uses it;
* the chosen one through :func:`discovery.store.arrays.save_case_arrays` (Zarr in a zip,
  Blosc-Zstd level 1 with byte shuffle, chunks of whole axial slices), file size included.

Volumes: the CT of ``../shared/realdata/lung-pet-ct-dx`` (a real scan, 64 slices of 512 x 512,
read with pydicom in place; skipped when the folder is absent) and the synthetic standard scan
of ``benchmarks/pipeline.py`` (seed 11).

Usage: ``python benchmarks/storage.py [--json FILE]``
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data_tools.synthetic import BENCHMARK_GEOMETRY, SyntheticConfig, generate_case  # noqa: E402
from discovery.store.arrays import flatten_outside_air, load_case_arrays, save_case_arrays  # noqa: E402

REAL = Path(__file__).resolve().parents[2] / "shared" / "realdata" / "lung-pet-ct-dx"
STANDARD_MIB = 512 * 512 * 300 * 2 / 2 ** 20


def _real_ct() -> np.ndarray | None:
    import pydicom

    files = sorted(REAL.rglob("*.dcm"))
    if not files:
        return None
    slices = [pydicom.dcmread(f) for f in files]
    slices.sort(key=lambda d: float(d.ImagePositionPatient[2]))
    return np.stack([d.pixel_array * float(d.RescaleSlope) + float(d.RescaleIntercept)
                     for d in slices]).round().astype(np.int16)


def _synthetic_ct() -> np.ndarray:
    cfg = SyntheticConfig(fixed_geometry=BENCHMARK_GEOMETRY, nodules_per_case=(3, 3))
    return np.rint(generate_case(11, config=cfg).hu).astype(np.int16)


def _candidates(ct: np.ndarray) -> dict:
    """``name -> (encode() -> bytes, decode(bytes) -> array)`` for *ct*."""
    from numcodecs import Blosc, Zstd

    def npz(compressed: bool):
        def enc():
            buf = io.BytesIO()
            (np.savez_compressed if compressed else np.savez)(buf, ct=ct)
            return buf.getvalue()
        return enc, lambda b: np.load(io.BytesIO(b))["ct"]

    def codec(c):
        return (lambda: c.encode(np.ascontiguousarray(ct)),
                lambda b: np.frombuffer(c.decode(b), dtype=ct.dtype).reshape(ct.shape))

    return {
        "npz, stored (previous format)": npz(False),
        "npz, deflate (numpy.savez_compressed)": npz(True),
        "Zstd 3": codec(Zstd(level=3)),
        "Zstd 9": codec(Zstd(level=9)),
        "Blosc LZ4 5, byte shuffle": codec(Blosc(cname="lz4", clevel=5, shuffle=Blosc.SHUFFLE)),
        "Blosc Zstd 5, byte shuffle": codec(Blosc(cname="zstd", clevel=5, shuffle=Blosc.SHUFFLE)),
        "Blosc Zstd 5, bit shuffle": codec(Blosc(cname="zstd", clevel=5, shuffle=Blosc.BITSHUFFLE)),
        "Blosc Zstd 1, byte shuffle": codec(Blosc(cname="zstd", clevel=1, shuffle=Blosc.SHUFFLE)),
        "Blosc Zstd 1, bit shuffle": codec(Blosc(cname="zstd", clevel=1, shuffle=Blosc.BITSHUFFLE)),
    }


def _row(name: str, ratio: float, t_enc: float, t_dec: float) -> dict:
    return {"format": name, "ratio": ratio, "encode_s": t_enc, "decode_s": t_dec,
            "standard_scan_mib": STANDARD_MIB / ratio}


def _through_file(ct: np.ndarray, prepare) -> tuple:
    """``(stored, n, read back, file bytes, encode s, decode s)``: ``prepare(ct) -> (stored,
    n)`` and :func:`save_case_arrays` timed together as encoding, :func:`load_case_arrays` as
    decoding."""
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        stored, n = prepare(ct)
        rel = save_case_arrays(tmp, "c", ct=stored)
        t_enc = time.perf_counter() - t0
        t0 = time.perf_counter()
        back = load_case_arrays(tmp, "c")["ct"]
        t_dec = time.perf_counter() - t0
        size = (Path(tmp) / rel).stat().st_size
    return stored, n, back, size, t_enc, t_dec


def measure(ct: np.ndarray) -> list[dict]:
    rows = []
    for name, (enc, dec) in _candidates(ct).items():
        t0 = time.perf_counter()
        blob = enc()
        t_enc = time.perf_counter() - t0
        t0 = time.perf_counter()
        back = dec(blob)
        t_dec = time.perf_counter() - t0
        if not np.array_equal(back, ct):
            raise AssertionError(f"{name} is not lossless")
        rows.append(_row(name, ct.nbytes / len(blob), t_enc, t_dec))
    _, _, back, size, t_enc, t_dec = _through_file(ct, lambda a: (a, 0))
    if not np.array_equal(back, ct):
        raise AssertionError("save_case_arrays is not lossless")
    rows.append(_row("Zarr zip, Blosc Zstd 1 byte shuffle, slice chunks (file), lossless",
                     ct.nbytes / size, t_enc, t_dec))
    # the default of discovery score: the air around the patient flattened to -1000 HU, the
    # rest exact (the time of finding that air counts as encoding time)
    flat, n_flat, back, size, t_enc, t_dec = _through_file(ct, flatten_outside_air)
    changed = back != ct
    if not np.array_equal(back, flat) or not (back[changed] == -1000).all():
        raise AssertionError("the flattened file changed more than the outside air")
    rows.append(_row("**chosen**: the same file, the air around the patient at -1000 HU "
                     f"({100 * n_flat / ct.size:.0f} % of the voxels), the rest exact",
                     ct.nbytes / size, t_enc, t_dec))
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", default=None)
    args = p.parse_args()
    out = {}
    for label, ct in (("real scan (Lung-PET-CT-Dx A0001)", _real_ct()),
                      ("synthetic standard scan", _synthetic_ct())):
        if ct is None:
            print(f"{label}: not found ({REAL}), skipped\n")
            continue
        rows = measure(ct)
        out[label] = {"shape_zyx": list(ct.shape), "rows": rows}
        print(f"{label}: {ct.shape[::-1]} voxels (x, y, z), {ct.nbytes / 2 ** 20:.0f} MiB int16\n")
        print("| format | ratio | encode s | decode s | a standard scan's CT (MiB) |")
        print("|---|---:|---:|---:|---:|")
        for r in rows:
            print(f"| {r['format']} | {r['ratio']:.2f} | {r['encode_s']:.2f} | "
                  f"{r['decode_s']:.2f} | {r['standard_scan_mib']:.0f} |")
        print()
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
