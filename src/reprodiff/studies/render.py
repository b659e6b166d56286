"""The study layer's page parts: a leaf module (it imports nothing from ``studies``) that turns figures, tables,
sample grids and failure lists into one self-contained HTML page (images inline as data URIs, inline CSS, no
external requests), and the same figures and score tables into files a paper can use: every plot as PNG, SVG and
PDF (``figure_files``, ``save_figure``), score tables as LaTeX ``booktabs`` tables (``latex_table``). Plots are
matplotlib ``Figure`` objects on the Agg canvas, so no display is needed; each series has its own colour and its
own marker (``series_style``), so a plot also reads in greyscale."""

from __future__ import annotations

import base64
import html
import io
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import torch
from matplotlib.figure import Figure
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

from ..data import npz_images
from ..files import atomic_write, image_grid

__all__ = ["CSS", "FIGURE_FORMATS", "GRID_PX", "SCRIPT", "SeriesStyle", "Table", "failed_html", "figure_files",
           "figure_html", "fmt_interval", "grid_png", "labelled_grid", "latex_document", "latex_escape", "latex_table",
           "npz_rows", "page_html", "png_bytes", "save_figure", "series_style", "table_html"]

GRID_PX = 64  # tiny images are upscaled (nearest neighbour) to about this many pixels

CSS = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #222; max-width: 1240px;
       margin: 0 auto; padding: 1.5em; background: #fff; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; } h2 { margin-top: 1.8em; border-bottom: 1px solid #ddd; }
figure { margin: 1em 0; } figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
img.grid { image-rendering: pixelated; } figcaption { color: #555; font-size: 0.9em; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.88em; }
th, td { border: 1px solid #ddd; padding: 0.3em 0.55em; text-align: center; vertical-align: top; }
th { background: #f4f4f4; } td.missing { color: #a33; } .ci, .chance { color: #777; font-size: 0.85em; }
dl.summary { display: grid; grid-template-columns: max-content auto; gap: 0.2em 1.2em; }
dl.summary dt { font-weight: 600; } dl.summary dd { margin: 0; }
pre { background: #f7f7f7; padding: 0.8em; overflow-x: auto; font-size: 0.85em; }
"""

# Lets a headless browser (and the tests) see that every embedded figure decoded: <body data-images-loaded>.
SCRIPT = """
addEventListener("load", function () {
  var imgs = Array.prototype.slice.call(document.images);
  document.body.dataset.imagesTotal = imgs.length;
  document.body.dataset.imagesLoaded = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
});
"""


FIGURE_FORMATS = ("png", "svg", "pdf")  # every plot is written in each: raster for the page, vector for a paper
# no creation dates in the vector files and a fixed SVG id salt: the same figure gives the same bytes
_METADATA = {"svg": {"Date": None}, "pdf": {"CreationDate": None, "ModDate": None}, "png": {}}

# Tableau's 10 colours (distinct in colour and in lightness) and 10 marker shapes / bar hatches, cycled together
COLORS = ("#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7", "#9c755f",
          "#bab0ac")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "*")
HATCHES = ("", "//", "..", "xx", "\\\\", "oo", "++", "--", "||", "**")


@dataclass(frozen=True)
class SeriesStyle:
    """How series ``i`` of a plot is drawn: colour, marker (lines) and hatch (bars)."""

    color: str
    marker: str
    hatch: str


def series_style(i: int) -> SeriesStyle:
    """The style of series ``i``: the first 10 series differ in colour and in marker/hatch; past 10, the marker
    shifts against the colour, so any two of the first 100 series differ in at least one of them."""
    k = (i + i // len(COLORS)) % len(MARKERS)
    return SeriesStyle(COLORS[i % len(COLORS)], MARKERS[k], HATCHES[k])


def png_bytes(fig: Figure, dpi: int = 100) -> bytes:
    """A matplotlib figure as PNG bytes (Agg canvas, white background)."""
    return _figure_bytes(fig, "png", dpi)


def _figure_bytes(fig: Figure, fmt: str, dpi: int = 100) -> bytes:
    buf = io.BytesIO()
    with matplotlib.rc_context({"svg.hashsalt": "reprodiff", "svg.fonttype": "none", "pdf.fonttype": 42}):
        fig.savefig(buf, format=fmt, dpi=dpi, facecolor="white", metadata=_METADATA[fmt])
    return buf.getvalue()


def figure_files(stem: str, fig: Figure, dpi: int = 100) -> dict[str, bytes]:
    """``{stem.png, stem.svg, stem.pdf: bytes}``: one figure in every ``FIGURE_FORMATS`` (SVG text stays text,
    PDF fonts embedded as TrueType), rendered before anything is written."""
    return {f"{stem}.{fmt}": _figure_bytes(fig, fmt, dpi) for fmt in FIGURE_FORMATS}


def save_figure(fig: Figure, folder: str | os.PathLike[str], stem: str) -> list[Path]:
    """Write ``folder/stem.{png,svg,pdf}``, each atomically (``files.atomic_write``); returns the paths."""
    return [atomic_write(Path(folder) / name, lambda f, d=data: f.write(d))
            for name, data in figure_files(stem, fig).items()]


def grid_png(grid: Tensor) -> bytes:
    """A uint8 ``[H, W, C]`` grid as PNG bytes."""
    arr = grid.numpy()
    buf = io.BytesIO()
    Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr).save(buf, format="PNG")
    return buf.getvalue()


def _add_labels(grid: Tensor, labels: list[str], cell: int, pad: int) -> Tensor:
    """Put a white margin with one right-aligned label per row on the left of a uint8 ``[H, W, C]`` grid."""
    arr = grid.numpy()
    img = Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr).convert("RGB")
    font = ImageFont.load_default(size=max(11, min(16, cell // 4)))
    probe = ImageDraw.Draw(img)
    boxes = [probe.textbbox((0, 0), text, font=font) for text in labels]
    margin = max(b[2] - b[0] for b in boxes) + 16
    canvas = Image.new("RGB", (margin + img.width, img.height), "white")
    canvas.paste(img, (margin, 0))
    draw = ImageDraw.Draw(canvas)
    for r, (text, box) in enumerate(zip(labels, boxes, strict=True)):
        y = pad + r * (cell + pad) + cell // 2 - (box[1] + box[3]) // 2
        draw.text((margin - 8 - (box[2] - box[0]), y), text, fill="black", font=font)
    return torch.from_numpy(np.asarray(canvas).copy())


def labelled_grid(rows: list[tuple[str, Tensor]]) -> Tensor:
    """One labelled row per ``(label, images [K, C, H, W] in [-1, 1])``, every row cut to the shortest;
    tiny images upscaled (nearest) to about ``GRID_PX`` pixels. Returns uint8 ``[H, W, 3]``."""
    count = min(x.shape[0] for _, x in rows)
    shape = rows[0][1].shape[1:]
    scale, pad = max(1, GRID_PX // max(shape[1:])), 2
    grid = image_grid(torch.cat([x[:count] for _, x in rows]), ncol=count, pad=pad, scale=scale)
    return _add_labels(grid, [label for label, _ in rows], cell=shape[1] * scale, pad=pad)


def figure_html(png: bytes, alt: str, caption: str, css_class: str = "") -> str:
    """An inline ``<figure>`` (the PNG as a data URI) with its caption (HTML)."""
    data = base64.b64encode(png).decode("ascii")
    cls = f' class="{css_class}"' if css_class else ""
    return (f'<figure><img{cls} src="data:image/png;base64,{data}" alt="{html.escape(alt)}">'
            f"<figcaption>{caption}</figcaption></figure>")


def table_html(header: list[str], rows: list[list[str]]) -> str:
    """A plain table; cells are escaped text."""
    e = html.escape
    head = "".join(f"<th>{e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{e(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def fmt_interval(value: float | None, ci: Sequence[float | None] | None, digits: int = 2) -> str:
    """``"0.42 [0.33, 0.51]"``: a score and its interval (``"-"`` for a missing score; the value alone without an
    interval)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    lo, hi = ci if ci else (None, None)
    if lo is None or hi is None or math.isnan(float(lo)):
        return f"{value:.{digits}f}"
    return f"{value:.{digits}f} [{float(lo):.{digits}f}, {float(hi):.{digits}f}]"


@dataclass(frozen=True)
class Table:
    """A score table for a paper: a caption, a ``label`` (``\\label{tab:...}``), a header and rows of text cells."""

    caption: str
    label: str
    header: list[str]
    rows: list[list[str]]


_LATEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
          "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "[": "{[}", "]": "{]}",
          "<": r"\textless{}", ">": r"\textgreater{}"}


def latex_escape(text: str) -> str:
    """``text`` as literal LaTeX text: the ten special characters escaped, brackets braced (a cell that starts with
    ``[`` is not read as the optional argument of the row end ``\\\\``), ``<``/``>`` as text symbols."""
    return "".join(_LATEX.get(c, c) for c in str(text))


def latex_table(table: Table) -> str:
    """A ``booktabs`` table (``\\toprule``, ``\\midrule``, ``\\bottomrule``; no vertical rules), every cell
    escaped; the first column left-aligned, the others centred."""
    e = latex_escape
    cols = "l" + "c" * (len(table.header) - 1)
    lines = [r"\begin{table}[htbp]", r"\centering", f"\\caption{{{e(table.caption)}}}",
             f"\\label{{tab:{table.label}}}", f"\\begin{{tabular}}{{{cols}}}", r"\toprule",
             " & ".join(e(h) for h in table.header) + r" \\", r"\midrule"]
    lines += [" & ".join(e(c) for c in row) + r" \\" for row in table.rows]
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def latex_document(title: str, tables: list[Table]) -> str:
    """The tables of one study as a ``.tex`` file to ``\\input`` (it needs ``\\usepackage{booktabs}``)."""
    head = f"% {latex_escape(title)}: written by reprodiff; needs \\usepackage{{booktabs}}\n"
    return head + "\n".join(latex_table(t) for t in tables)


def page_html(title: str, intro: str, sections: list[tuple[str, str]], config: dict[str, Any]) -> str:
    """A self-contained report page (every study kind's report): ``sections`` are ``(heading, html)``
    pairs; images inline as data URIs (``figure_html``), inline CSS, no external requests."""
    body = "".join(f"<h2>{html.escape(h)}</h2>{part}" for h, part in sections)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(title)}</title><style>{CSS}</style></head>
<body>
<h1>{html.escape(title)}</h1>
{intro}
{body}
<h2>Configuration</h2><details><summary>study config</summary>
<pre>{html.escape(json.dumps(config, indent=2))}</pre></details>
<script>{SCRIPT}</script>
</body></html>
"""

def npz_rows(root: Path, files: list[tuple[str, str | os.PathLike[str]]], count: int, key: str = "images"
             ) -> list[tuple[str, Tensor]]:
    """``(label, the first count images in [-1, 1])`` for each ``(label, npz path under root)`` that exists."""
    return [(label, npz_images(root / path, key)[:count]) for label, path in files if (root / path).is_file()]


def grid_section(rows: list[tuple[str, Tensor]]) -> bytes | None:
    """The labelled grid of ``rows`` as PNG bytes (None when there are no rows)."""
    return grid_png(labelled_grid(rows)) if rows else None


def failed_html(failed: list[dict[str, Any]]) -> str:
    """The runs a study recorded as failed: one item per ``{"n"?, "model", "error"}``."""
    if not failed:
        return "<p>None: every run finished.</p>"
    e = html.escape
    items = "".join(f"<li>{'n = ' + e(str(f['n'])) + ', ' if 'n' in f else ''}{e(str(f.get('model', '?')))}: "
                    f"<code>{e(str(f.get('error', '')))}</code></li>" for f in failed)
    return f"<ul>{items}</ul>"
