"""Files <-> arrays with geometry. No model code lives here."""

from .errors import (
    DataError,
    GeometryMismatchError,
    MaskError,
    ModelError,
    NoSeriesError,
    SeriesValidationError,
    UnreadableFileError,
)
from .volume import Mask, Volume, affine_from_spacing, check_same_grid

__all__ = [
    "DataError", "GeometryMismatchError", "MaskError", "ModelError", "NoSeriesError",
    "SeriesValidationError", "UnreadableFileError", "Mask", "Volume", "affine_from_spacing",
    "check_same_grid",
]
