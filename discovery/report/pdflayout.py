"""Page layout for the PDF report (:mod:`discovery.report.pdf`): A4 portrait pages of
matplotlib ``Figure`` objects, a cursor that moves down the page, text wrapped with the font's
own glyph widths, boxes, images and section headings.

Sizes and positions are in inches from the top-left corner of the page.  matplotlib is
imported inside the functions only (never at import time); no pyplot.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

__all__ = ["PAGE_W", "PAGE_H", "MARGIN", "TOP", "BOTTOM", "CONTENT_W", "DPI", "FONT", "MIN_PT",
           "GRAY", "INK", "Doc", "image_height", "wrap", "text_height", "heading",
           "name_value_columns", "scale_bar"]

#: A4 portrait, inches.
PAGE_W, PAGE_H = 8.27, 11.69
#: Side margins; space above the content; space below it (for the footer), inches.
MARGIN, TOP, BOTTOM = 0.6, 0.55, 0.75
#: Width of the text column, inches.
CONTENT_W = PAGE_W - 2 * MARGIN
#: Raster resolution of the embedded images (dots per inch).
DPI = 200
#: The one font (shipped with matplotlib: the same glyphs everywhere).
FONT = "DejaVu Sans"
#: Smallest font size used anywhere (points).
MIN_PT = 8
#: Secondary text and body text colours.
GRAY, INK = "#4a5568", "#1a202c"


class Doc:
    """Pages (``Figure`` objects) and a cursor ``y`` (inches from the top of the last page).

    With ``dry=True`` nothing is drawn: only the cursor moves (to count pages ahead).
    """

    def __init__(self, *, dry: bool = False):
        self.pages: list = []
        self.y = 0.0
        self.dry = dry

    def new_page(self) -> None:
        """Start a page; the cursor goes to its top."""
        self.y = TOP
        if self.dry:
            self.pages.append(None)
            return
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        fig = Figure(figsize=(PAGE_W, PAGE_H), dpi=DPI)
        FigureCanvasAgg(fig)
        self.pages.append(fig)

    @property
    def fig(self):
        """The last page."""
        return self.pages[-1]

    def need(self, height: float) -> None:
        """Start a new page unless *height* inches still fit on this one."""
        if not self.pages or self.y + height > PAGE_H - BOTTOM:
            self.new_page()

    @staticmethod
    def rect(x: float, top: float, w: float, h: float) -> list[float]:
        """Figure-fraction rectangle of a box given in inches from the top-left corner."""
        return [x / PAGE_W, 1.0 - (top + h) / PAGE_H, w / PAGE_W, h / PAGE_H]

    def text(self, s: str, *, x: float = MARGIN, top: float | None = None, size: float = 9,
             width: float = CONTENT_W, advance: bool = True, weight: str = "normal",
             **kw) -> float:
        """Text wrapped to *width* inches at (x, top); returns its height in inches and,
        with *advance*, moves the cursor below it."""
        size = max(float(size), MIN_PT)
        lines = wrap(str(s), width, size, weight)
        top = self.y if top is None else top
        if not self.dry:  # one Text per line on its own baseline: rows line up whatever the glyphs
            for i, line in enumerate(lines):
                base = top + size * (0.8 + 1.3 * i) / 72.0
                self.fig.text(x / PAGE_W, 1.0 - base / PAGE_H, line, fontsize=size,
                              va="baseline", ha="left", weight=weight, **kw)
        h = text_height(len(lines), size)
        if advance:
            self.y = top + h
        return h

    def box(self, top: float, h: float, face: str, *, edge: str | None = None,
            x: float = MARGIN, w: float = CONTENT_W) -> None:
        """A filled rectangle (*face*, outline *edge*) behind the content."""
        if self.dry:
            return
        from matplotlib.patches import Rectangle

        r = self.rect(x, top, w, h)
        self.fig.add_artist(Rectangle((r[0], r[1]), r[2], r[3], transform=self.fig.transFigure,
                                      facecolor=face, edgecolor=edge or face, lw=0.6, zorder=-1))

    def image(self, rgb: np.ndarray, x: float, top: float, w: float, *, aspect: float = 1.0):
        """An RGB image *w* inches wide at (x, top); *aspect* = pixel height / pixel width
        (mm).  Returns the axes."""
        ax = self.fig.add_axes(self.rect(x, top, w, image_height(rgb, w, aspect)))
        ax.imshow(rgb, interpolation="nearest", aspect="auto")
        ax.set_xticks([])
        ax.set_yticks([])
        for s in ax.spines.values():
            s.set_edgecolor("#2d3748")
            s.set_linewidth(0.6)
        return ax


def image_height(rgb: np.ndarray, w: float, aspect: float = 1.0) -> float:
    """Height (inches) of image *rgb* drawn *w* inches wide with pixel *aspect*
    (height / width)."""
    return w * rgb.shape[0] * aspect / rgb.shape[1]


@lru_cache(maxsize=20000)
def _width_pt(s: str, size: float, weight: str) -> float:
    from matplotlib.font_manager import FontProperties
    from matplotlib.textpath import text_to_path

    prop = FontProperties(family=FONT, size=size, weight=weight)
    return float(text_to_path.get_text_width_height_descent(s, prop, ismath=False)[0])


def wrap(s: str, width_in: float, size: float, weight: str = "normal") -> list[str]:
    """Greedy word wrap measured with the font's glyph widths (a word longer than the line
    stays whole)."""
    limit = width_in * 72.0
    out: list[str] = []
    for para in s.split("\n"):
        line = ""
        for word in para.split():
            trial = f"{line} {word}" if line else word
            if line and _width_pt(trial, size, weight) > limit:
                out.append(line)
                line = word
            else:
                line = trial
        out.append(line)
    return out


def text_height(n_lines: int, size: float) -> float:
    """Height (inches) of *n_lines* lines of *size* points, as :meth:`Doc.text` sets them."""
    return n_lines * size * 1.3 / 72.0 + 0.04


def heading(doc: Doc, s: str, *, keep: float = 1.5) -> None:
    """A section heading with a rule, kept together with the next *keep* inches."""
    doc.need(0.5 + keep)
    doc.y += 0.12
    doc.text(s, size=13, weight="bold", color=INK)
    doc.box(doc.y + 0.02, 0.014, "#2d3748")  # the rule
    doc.y += 0.14


def name_value_columns(doc: Doc, columns, *, name_widths, pitch: float = 0.175) -> None:
    """Columns of ``(name, value)`` pairs side by side across the text column, one pair a
    line (names in gray, *name_widths* inches each column; values in bold after them),
    from the cursor; the cursor then moves below the longest column."""
    width = CONTENT_W / len(columns)
    for c, (column, name_w) in enumerate(zip(columns, name_widths)):
        for r, (name, value) in enumerate(column):
            x, y = MARGIN + c * width, doc.y + 0.02 + r * pitch
            doc.text(name, x=x, top=y, advance=False, color=GRAY, width=name_w)
            doc.text(value, x=x + name_w + 0.1, top=y, advance=False, weight="bold",
                     width=width - name_w - 0.15)
    doc.y += 0.02 + max(len(c) for c in columns) * pitch


def scale_bar(ax, n_px: int, px_mm: float, *, mm: float = 10.0) -> None:
    """A white *mm* bar with its label on a dark translucent box, lower left."""
    from matplotlib.font_manager import FontProperties
    from mpl_toolkits.axes_grid1.anchored_artists import AnchoredSizeBar

    if not (np.isfinite(px_mm) and px_mm > 0) or mm / px_mm > 0.6 * n_px:
        return
    bar = AnchoredSizeBar(ax.transData, mm / px_mm, f"{mm:g} mm", "lower left", color="white",
                          pad=0.3, borderpad=0.6, sep=3, frameon=True, size_vertical=n_px / 120,
                          fontproperties=FontProperties(family=FONT, size=8))
    bar.patch.set(facecolor="black", alpha=0.55, edgecolor="none")
    ax.add_artist(bar)
