"""Write tiny synthetic CT series as real DICOM Part 10 files (for tests only).

Every file has file meta, CT Image Storage SOP class, explicit VR little endian, int16 pixels.
Slices are written with shuffled file names and shuffled InstanceNumbers so that a reader
can only get the order right from ImagePositionPatient.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid
from pydicom.valuerep import format_number_as_ds

AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


@dataclass
class WrittenSeries:
    """What was written, in slice order (increasing along the slice normal)."""

    files: list[Path]          # file of the k-th slice
    instances: list[int]       # InstanceNumber of the k-th slice
    positions: np.ndarray      # (z, 3) ImagePositionPatient as written (parsed back), LPS mm
    hu: np.ndarray             # (z, y, x) float32, stored * slope + intercept per slice
    affine: np.ndarray         # (4, 4) expected [z, y, x, 1] -> LPS mm
    series_uid: str


def _ds(values) -> list[float]:
    """Values as the DICOM DS strings would hold them (<= 16 characters)."""
    return [float(format_number_as_ds(float(v))) for v in values]


def ct_dataset(stored: np.ndarray, *, position, orientation=AXIAL, pixel_spacing=(0.7, 0.8),
               slope=1.0, intercept=-1024.0, instance=1, series_uid=None, study_uid=None,
               slice_thickness=None, image_type=("ORIGINAL", "PRIMARY", "AXIAL"),
               modality="CT", description="synthetic chest") -> FileDataset:
    """One single-frame CT slice; *stored* is a (rows, cols) int16 array."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset("", {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.FrameOfReferenceUID = ds.StudyInstanceUID
    ds.PatientName = "Doe^Jane"
    ds.PatientID = "SYN-0001"
    ds.StudyDate = "20240101"
    ds.Modality = modality
    ds.SeriesDescription = description
    ds.ImageType = list(image_type)
    ds.Manufacturer = "SyntheticCT"
    ds.ManufacturerModelName = "Factory-1"
    ds.ConvolutionKernel = "B30f"
    ds.KVP = "120"
    if slice_thickness is not None:
        ds.SliceThickness = format_number_as_ds(float(slice_thickness))
    ds.InstanceNumber = int(instance)
    ds.ImagePositionPatient = [format_number_as_ds(float(v)) for v in position]
    ds.ImageOrientationPatient = [format_number_as_ds(float(v)) for v in orientation]
    ds.PixelSpacing = [format_number_as_ds(float(v)) for v in pixel_spacing]
    ds.RescaleSlope = format_number_as_ds(float(slope))
    ds.RescaleIntercept = format_number_as_ds(float(intercept))
    ds.RescaleType = "HU"
    stored = np.asarray(stored, dtype="<i2")
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.PixelData = stored.tobytes()
    return ds


def write_ct_series(folder, *, n=8, rows=16, cols=16, slice_step=2.5,
                    pixel_spacing=(0.7, 0.8), orientation=AXIAL,
                    origin=(-100.0, -120.0, -50.0), slopes=None, intercepts=None,
                    slice_thickness=None, seed=0, image_type=("ORIGINAL", "PRIMARY", "AXIAL"),
                    modality="CT", prefix="IM") -> WrittenSeries:
    """Write an *n*-slice series into *folder* and return what a reader should get back.

    Positions are ``origin + k * slice_step * normal`` (normal = row cosine x column cosine).
    Default rescale differs per slice (slopes cycle 1, 0.5, 2; intercepts -1024, -1000.5, ...).
    """
    rng = np.random.default_rng(seed)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    iop = np.array(_ds(orientation))
    normal = np.cross(iop[:3], iop[3:])
    slopes = [(1.0, 0.5, 2.0)[k % 3] for k in range(n)] if slopes is None else slopes
    intercepts = ([-1024.0 + 23.5 * (k % 4) for k in range(n)]
                  if intercepts is None else intercepts)
    name_order = rng.permutation(n)
    instance_order = rng.permutation(n) + 1
    series_uid, study_uid = generate_uid(), generate_uid()
    files, instances, positions, hu = [], [], [], []
    for k in range(n):
        pos = np.array(_ds(np.asarray(origin) + k * slice_step * normal))
        stored = rng.integers(-1000, 3000, size=(rows, cols)).astype(np.int16)
        ds = ct_dataset(stored, position=pos, orientation=orientation,
                        pixel_spacing=pixel_spacing, slope=slopes[k], intercept=intercepts[k],
                        instance=instance_order[k], series_uid=series_uid, study_uid=study_uid,
                        slice_thickness=slice_thickness, image_type=image_type,
                        modality=modality)
        path = folder / f"{prefix}{name_order[k]:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        files.append(path)
        instances.append(int(instance_order[k]))
        positions.append(pos)
        hu.append((stored.astype(np.float64) * float(ds.RescaleSlope)
                   + float(ds.RescaleIntercept)).astype(np.float32))
    positions = np.stack(positions)
    ps = _ds(pixel_spacing)
    affine = np.eye(4)
    affine[:3, 0] = (positions[-1] - positions[0]) / (n - 1) if n > 1 else normal * slice_step
    affine[:3, 1] = iop[3:] * ps[0]
    affine[:3, 2] = iop[:3] * ps[1]
    affine[:3, 3] = positions[0]
    return WrittenSeries(files, instances, positions, np.stack(hu), affine, series_uid)
