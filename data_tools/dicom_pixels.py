"""Pixel data of one DICOM image: native little-endian pixels read straight from their bytes,
compressed ones decoded by pydicom's plug-ins, with the decoder hints the readers' messages give.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from pydicom.errors import BytesLengthException
from pydicom.pixels import get_decoder
from pydicom.uid import (
    UID,
    JPEG2000TransferSyntaxes,
    JPEGLSTransferSyntaxes,
    JPEGTransferSyntaxes,
)

from .dicom_series import READ_ERRORS
from .errors import UnreadableFileError, file_label

__all__ = ["decoder_available", "decoder_hint", "decoder_state", "stored_pixels"]

log = logging.getLogger(__name__)


def decoder_hint(tsyntax) -> str:
    if tsyntax in JPEG2000TransferSyntaxes:
        return "pylibjpeg and pylibjpeg-openjpeg (or python-gdcm)"
    if tsyntax in JPEGTransferSyntaxes or tsyntax in JPEGLSTransferSyntaxes:
        return "pylibjpeg and pylibjpeg-libjpeg (or python-gdcm)"
    return "pylibjpeg with pylibjpeg-openjpeg / pylibjpeg-libjpeg, or python-gdcm"


def decoder_available(tsyntax) -> bool:
    """Whether an installed pydicom pixel-data plugin can decode *tsyntax*."""
    try:
        return bool(get_decoder(tsyntax).is_available)
    except NotImplementedError:
        return False


def decoder_state(tsyntax) -> str:
    return ("the installed decoders failed on it" if decoder_available(tsyntax)
            else "no installed decoder can read it")


_NATIVE_LE = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1"}  # implicit / explicit VR little endian


def _native_pixels(ds, rows: int, cols: int, transfer_syntax: str) -> np.ndarray | None:
    """Stored values straight from native little-endian pixel bytes, or None to let pydicom
    decode (other syntaxes, unusual bit layouts).  Bits above BitsStored are dropped and
    signed values sign-extended, as PS3.5 8.1.1 defines them."""
    if transfer_syntax not in _NATIVE_LE:
        return None
    alloc, stored_bits = int(ds.get("BitsAllocated", 0) or 0), int(ds.get("BitsStored", 0) or 0)
    signed = int(ds.get("PixelRepresentation", 0) or 0) == 1
    high = int(ds.get("HighBit", stored_bits - 1) or 0)
    if alloc not in (8, 16, 32) or not 0 < stored_bits <= alloc or high != stored_bits - 1:
        return None
    raw = ds.PixelData
    n = rows * cols
    if len(raw) < n * alloc // 8:
        return None  # pydicom gives the precise error
    dtype = np.dtype(f"<{'i' if signed else 'u'}{alloc // 8}")
    arr = np.frombuffer(raw, dtype=dtype, count=n).reshape(rows, cols)
    if stored_bits < alloc:
        shift = alloc - stored_bits
        if signed:
            arr = (arr << shift) >> shift
        else:
            arr = arr & ((1 << stored_bits) - 1)
    return arr


def _j2k_sign(ds, stored: np.ndarray, label: str) -> np.ndarray:
    """JPEG 2000 pixels whose codestream is signed (SIZ Ssiz bit 7) while PixelRepresentation
    says unsigned (a Toshiba quirk: padding -2048 then reads as 63488): the codestream's
    sign is used, with a warning.  Both pylibjpeg and GDCM follow PixelRepresentation there,
    which turns air and padding into tens of thousands of HU."""
    if int(ds.get("PixelRepresentation", 0) or 0) != 0 or stored.dtype.kind != "u":
        return stored
    from pydicom.encaps import generate_frames

    try:
        frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    except (StopIteration, ValueError, TypeError):
        return stored
    at = frame.find(b"\xff\x4f\xff\x51")                 # SOC, then SIZ
    if at < 0 or len(frame) < at + 43:
        return stored
    ssiz = frame[at + 42]                                 # component 0's Ssiz
    if not ssiz & 0x80:
        return stored
    bits = (ssiz & 0x7F) + 1
    log.warning("%s: the JPEG 2000 codestream is signed (%d bits) but PixelRepresentation says "
                "unsigned; using the codestream's sign", label, bits)
    values = stored.astype(np.int64)
    return np.where(values >= 1 << (bits - 1), values - (1 << bits), values).astype(np.int32)


def stored_pixels(ds, *, path: Path, rows: int, cols: int, transfer_syntax: str) -> np.ndarray:
    """Stored values of one single-frame image *ds* (read from *path*), shape ``(rows,
    cols)``: native little-endian pixels straight from their bytes, anything else decoded
    by pydicom (JPEG 2000 with the codestream's sign, :func:`_j2k_sign`).

    Raises
    ------
    UnreadableFileError
        No pixel data, no decoder for its transfer syntax, a failed decode or a shape other
        than ``(rows, cols)``; the message names the file by its base name.
    """
    label = file_label(path)
    try:
        fast = _native_pixels(ds, rows, cols, transfer_syntax) if "PixelData" in ds else None
    except READ_ERRORS:
        fast = None
    if fast is not None:
        return fast
    if "PixelData" not in ds:
        raise UnreadableFileError(
            f"{label} has no pixel data; it is probably truncated. Re-copy or re-export the "
            "series.", path=path,
        )
    tsyntax = None
    try:
        tsyntax = UID(str(ds.file_meta.TransferSyntaxUID))
        stored = ds.pixel_array
    except (RuntimeError, NotImplementedError, ImportError) as exc:
        if tsyntax is not None and tsyntax.is_transfer_syntax and tsyntax.is_compressed:
            raise UnreadableFileError(
                f"{label} stores its pixels with the compressed transfer syntax "
                f"'{tsyntax.name}', and {decoder_state(tsyntax)}. Install "
                f"{decoder_hint(tsyntax)}, or export the series uncompressed.", path=path,
            ) from None
        raise UnreadableFileError(
            f"{label}: the pixel data cannot be decoded ({type(exc).__name__}).", path=path
        ) from None
    except (ValueError, AttributeError, TypeError, EOFError, BytesLengthException) as exc:
        raise UnreadableFileError(
            f"{label}: the pixel data cannot be decoded ({type(exc).__name__}); the file is "
            "probably truncated or corrupt. Re-copy or re-export the series.", path=path,
        ) from None
    if tsyntax in JPEG2000TransferSyntaxes:
        stored = _j2k_sign(ds, stored, label)
    if stored.shape != (rows, cols):
        raise UnreadableFileError(
            f"{label}: pixel data has shape {stored.shape}, but Rows x Columns is "
            f"{rows} x {cols}.", path=path,
        )
    return stored
