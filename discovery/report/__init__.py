"""What leaves the tool: HTML and PDF reports, CSV / Parquet tables, DICOM exports, and the
rendering they share with the app.

``write``: :func:`write_report` in any format and the exported :func:`tables`; ``html``,
``pdf`` (laid out with ``pdflayout``), ``dicom``: the formats; ``data``: what a report reads
from a results folder, once; ``style``: colours, display threshold, number formatting;
``render``: windowed slices, overlays, colour bars; ``planes``: axial / coronal / sagittal
cuts.
"""

from discovery.lazy import attach

__getattr__, __dir__, __all__ = attach(__name__, {
    "write": ["write_report", "tables", "EXPORT_SCHEMA_VERSION", "REPORT_FORMATS"],
    "html": ["build_html"],
    "pdf": ["write_pdf"],
    "dicom": ["export_dicom"],
    "data": ["ReportData"],
    "style": ["fmt"],
    "render": [],
    "planes": [],
    "pdflayout": [],
})
