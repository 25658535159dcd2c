"""What leaves the tool: HTML and PDF reports, CSV / Parquet tables, DICOM exports, and the
rendering they share with the app.

``render``: windowed slices, overlays, colour bars; ``planes``: axial / coronal / sagittal
cuts; ``html``, ``pdf``, ``dicom``: the formats.
"""

from discovery.lazy import attach

__getattr__, __dir__, __all__ = attach(__name__, {
    "html": ["write_report", "build_html"],
    "pdf": ["write_pdf"],
    "dicom": ["export_dicom"],
    "render": [],
    "planes": [],
})
